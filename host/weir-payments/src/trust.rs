//! Which senders an orchestrator takes payments from.
//!
//! A credit is a promise settled off-chain, so a valid signature alone proves nothing: anyone
//! can generate a key. An orchestrator therefore accepts credits only from the gateways it
//! lists (`trusted_senders`), or from anyone in the explicit development-only open mode.

use std::collections::BTreeSet;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Why a sender list could not be built, or why a sender was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// A configured key is neither 32 bytes of hex nor of base64.
    #[error(
        "trusted sender {0:?} is not an Ed25519 public key (64 hex digits or base64 of 32 bytes)"
    )]
    BadKey(String),
    /// The sender is not on the allow-list.
    #[error("sender {0} is not trusted by this orchestrator")]
    Untrusted(String),
}

/// The senders whose credits are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderTrust {
    /// Anyone (local development only: credits are free work for strangers).
    Open,
    /// Only these senders (lowercase hex of their public keys, as the `Weir-Payment` header
    /// names them). Empty refuses every credit.
    AllowList(BTreeSet<String>),
}

impl SenderTrust {
    /// From configured keys (hex as in the `Weir-Payment` header, or base64) and the open flag.
    pub fn new<S: AsRef<str>>(keys: &[S], open: bool) -> Result<SenderTrust, TrustError> {
        if open {
            return Ok(SenderTrust::Open);
        }
        keys.iter()
            .map(|k| normalize(k.as_ref()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(SenderTrust::AllowList)
    }

    /// Whether no credit can ever be accepted (closed with an empty allow-list).
    pub fn refuses_all(&self) -> bool {
        matches!(self, SenderTrust::AllowList(keys) if keys.is_empty())
    }

    /// `Ok` when credits from `sender` (hex, as in a verified payment) are accepted.
    pub fn check(&self, sender: &str) -> Result<(), TrustError> {
        match self {
            SenderTrust::Open => Ok(()),
            SenderTrust::AllowList(keys) if keys.contains(&sender.to_ascii_lowercase()) => Ok(()),
            SenderTrust::AllowList(_) => Err(TrustError::Untrusted(sender.to_owned())),
        }
    }
}

/// A public key in the header's encoding: lowercase hex of its 32 bytes.
fn normalize(key: &str) -> Result<String, TrustError> {
    let key = key.trim();
    let bad = || TrustError::BadKey(key.to_owned());
    let bytes = match hex::decode(key) {
        Ok(b) => b,
        Err(_) => [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(key).ok())
            .ok_or_else(bad)?,
    };
    let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| bad())?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::Wallet;

    #[test]
    fn only_listed_senders_are_trusted() {
        let gateway = Wallet::generate();
        let stranger = Wallet::generate();
        let trust = SenderTrust::new(&[gateway.sender()], false).expect("valid");
        assert_eq!(trust.check(&gateway.sender()), Ok(()));
        assert_eq!(
            trust.check(&stranger.sender()),
            Err(TrustError::Untrusted(stranger.sender()))
        );
        assert!(trust
            .check(&stranger.sender())
            .unwrap_err()
            .to_string()
            .contains("is not trusted by this orchestrator"));
    }

    #[test]
    fn keys_may_be_hex_or_base64() {
        let gateway = Wallet::generate();
        let bytes = hex::decode(gateway.sender()).expect("hex");
        for key in [
            gateway.sender().to_uppercase(),
            STANDARD.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
        ] {
            let trust = SenderTrust::new(&[key.as_str()], false).expect("valid");
            assert_eq!(trust.check(&gateway.sender()), Ok(()), "{key}");
        }
        assert!(matches!(
            SenderTrust::new(&["abcd"], false),
            Err(TrustError::BadKey(_))
        ));
    }

    #[test]
    fn closed_and_empty_refuses_everyone_and_open_takes_anyone() {
        let anyone = Wallet::generate().sender();
        let closed = SenderTrust::new::<&str>(&[], false).expect("valid");
        assert!(closed.refuses_all());
        assert!(closed.check(&anyone).is_err());
        let open = SenderTrust::new::<&str>(&[], true).expect("valid");
        assert!(!open.refuses_all());
        assert_eq!(open.check(&anyone), Ok(()));
    }
}
