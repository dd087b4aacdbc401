//! Off-chain payments: a gateway signs each payment it sends with its Ed25519 key; the
//! orchestrator verifies the signature, credits the sender's account once per payment id, and
//! charges jobs against that balance.
//!
//! Wire form of the `Weir-Payment` header: `base64url(payload JSON) "." base64url(signature)`,
//! the signature covering the payload bytes exactly. The payload's `kind` names the payment
//! method; only `credit` exists today. Probabilistic micropayment tickets would be a second
//! kind with its own verification, leaving the ledger flow unchanged.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::UnitPrice;

/// Longest accepted header value.
pub const MAX_HEADER_BYTES: usize = 4096;

/// How a payment pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentKind {
    /// A signed credit: the sender promises `amount` base units, settled off-chain.
    Credit,
}

/// What a payment says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Payment method.
    pub kind: PaymentKind,
    /// The sender: hex of its Ed25519 public key.
    pub sender: String,
    /// Unique id; crediting the same id twice applies once.
    pub id: String,
    /// The account credited: `capability/model`.
    pub account: String,
    /// Base units credited (may be 0 when the balance already covers the job).
    pub amount: u64,
    /// The price the sender expects to be charged, per `pixels_per_unit` units.
    pub price_per_unit: u64,
    /// Units per `price_per_unit`.
    pub pixels_per_unit: u64,
    /// When it was made (Unix milliseconds).
    pub created_ms: u64,
}

impl Payment {
    /// The price the sender agreed to.
    pub fn price(&self) -> UnitPrice {
        UnitPrice {
            price_per_unit: self.price_per_unit,
            pixels_per_unit: self.pixels_per_unit,
        }
    }
}

/// The account key of a capability and model.
pub fn account(capability: &str, model: &str) -> String {
    format!("{capability}/{model}")
}

/// Why a payment header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PaymentError {
    /// Not in the wire form, or its payload is not a payment.
    #[error("malformed payment header: {0}")]
    Malformed(String),
    /// The signature does not match the sender.
    #[error("payment signature does not verify for sender {0}")]
    BadSignature(String),
    /// Too old or from the future.
    #[error("payment made {0} ms away from now; at most {1} ms of clock skew is accepted")]
    Stale(i64, u64),
    /// A payment method this node does not take.
    #[error("payment method {0:?} is not supported")]
    UnsupportedKind(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A sender's signing key.
pub struct Wallet {
    key: SigningKey,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("sender", &self.sender())
            .finish()
    }
}

impl Wallet {
    /// A wallet from 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> Wallet {
        Wallet {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// A fresh random wallet.
    pub fn generate() -> Wallet {
        Wallet::from_secret(rand::random())
    }

    /// Read the key at `path` (hex), creating it (mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> std::io::Result<Wallet> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                bytes.map(Wallet::from_secret).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} does not hold a 32-byte hex key", path.display()),
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let wallet = Wallet::generate();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                std::io::Write::write_all(
                    &mut options.open(path)?,
                    hex::encode(wallet.key.to_bytes()).as_bytes(),
                )?;
                Ok(wallet)
            }
            Err(e) => Err(e),
        }
    }

    /// The sender id: hex of the public key.
    pub fn sender(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// A signed credit of `amount` to `account` at `price`, as a header value.
    pub fn pay(&self, id: &str, account: &str, amount: u64, price: UnitPrice) -> String {
        let payment = Payment {
            kind: PaymentKind::Credit,
            sender: self.sender(),
            id: id.to_owned(),
            account: account.to_owned(),
            amount,
            price_per_unit: price.price_per_unit,
            pixels_per_unit: price.pixels_per_unit,
            created_ms: now_ms(),
        };
        self.sign(&payment)
    }

    /// Sign any payment (tests use this to forge odd ones).
    pub fn sign(&self, payment: &Payment) -> String {
        let payload = serde_json::to_vec(payment).unwrap_or_default();
        let signature = self.key.sign(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// Check a `Weir-Payment` header: wire form, signature, and clock skew within `max_skew`.
pub fn verify(header: &str, max_skew: Duration) -> Result<Payment, PaymentError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(PaymentError::Malformed(format!(
            "longer than {MAX_HEADER_BYTES} bytes"
        )));
    }
    let (payload_b64, sig_b64) = header
        .trim()
        .split_once('.')
        .ok_or_else(|| PaymentError::Malformed("expected PAYLOAD.SIGNATURE".into()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|e| PaymentError::Malformed(format!("payload is not base64url: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| PaymentError::Malformed(format!("payload is not JSON: {e}")))?;
    if let Some(kind) = value.get("kind").and_then(|k| k.as_str()) {
        if kind != "credit" {
            return Err(PaymentError::UnsupportedKind(kind.to_owned()));
        }
    }
    let payment: Payment = serde_json::from_value(value)
        .map_err(|e| PaymentError::Malformed(format!("payload: {e}")))?;
    let key_bytes = hex::decode(&payment.sender)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| PaymentError::Malformed("sender is not a 32-byte hex key".into()))?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| PaymentError::Malformed("sender is not a valid Ed25519 key".into()))?;
    let sig_bytes = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| PaymentError::Malformed("signature is not 64 base64url bytes".into()))?;
    key.verify(&payload, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| PaymentError::BadSignature(payment.sender.clone()))?;
    if payment.pixels_per_unit == 0 {
        return Err(PaymentError::Malformed(
            "pixels_per_unit must be at least 1".into(),
        ));
    }
    let skew = now_ms() as i64 - payment.created_ms as i64;
    if skew.unsigned_abs() > max_skew.as_millis() as u64 {
        return Err(PaymentError::Stale(skew, max_skew.as_millis() as u64));
    }
    Ok(payment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICE: UnitPrice = UnitPrice {
        price_per_unit: 3,
        pixels_per_unit: 2,
    };

    #[test]
    fn signed_payments_verify_and_tampering_is_caught() {
        let wallet = Wallet::generate();
        let header = wallet.pay("p1", "upscale/m", 42, PRICE);
        let payment = verify(&header, Duration::from_secs(60)).expect("valid");
        assert_eq!(payment.sender, wallet.sender());
        assert_eq!((payment.amount, payment.price()), (42, PRICE));

        // Another key signing a payment in this sender's name.
        let mut forged = payment.clone();
        forged.amount = 1_000_000;
        let other = Wallet::generate();
        let (payload, _) = other
            .sign(&forged)
            .split_once('.')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .expect("form");
        let (_, sig) = header.split_once('.').expect("form");
        let err = verify(&format!("{payload}.{sig}"), Duration::from_secs(60)).expect_err("forged");
        assert_eq!(err, PaymentError::BadSignature(wallet.sender()));

        let mut old = payment;
        old.created_ms -= 3_600_000;
        assert!(matches!(
            verify(&wallet.sign(&old), Duration::from_secs(60)),
            Err(PaymentError::Stale(..))
        ));
        assert!(matches!(
            verify("nonsense", Duration::from_secs(60)),
            Err(PaymentError::Malformed(_))
        ));
        let ticket = format!("{}.AA", URL_SAFE_NO_PAD.encode(br#"{"kind":"ticket"}"#));
        assert_eq!(
            verify(&ticket, Duration::from_secs(60)),
            Err(PaymentError::UnsupportedKind("ticket".into()))
        );
    }

    #[test]
    fn wallets_persist() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("key");
        let a = Wallet::load_or_create(&path).expect("create");
        let b = Wallet::load_or_create(&path).expect("load");
        assert_eq!(a.sender(), b.sender());
    }
}
