//! The payment-scheme seam: how a request proves it is paid for.

use std::time::Duration;

use axum::http::HeaderMap;
use weir_payments::credit::{self, Payment, PaymentError};
use weir_payments::trust::SenderTrust;
use weir_protocol::info::PAYMENT_HEADER;
use weir_protocol::AiHttpError;

use crate::handler::err;

/// How a request proves it is paid for: every handler gets its [`Payment`] from the one
/// scheme the orchestrator holds, and everything after (crediting, quoting, reserving,
/// settling: [`super::PaidJob`]) sees only that [`Payment`].
///
/// Today's scheme is [`SignedCredits`]. Livepeer's off-chain payments (probabilistic
/// micropayment tickets in the `Livepeer-Payment` header, redeemed on chain when they win) are
/// meant to become a second implementation of this trait, chosen by configuration; nothing
/// else in the orchestrator has to change for it.
pub(crate) trait PaymentScheme: Send + Sync {
    /// The verified payment `headers` carry, or why the request is refused (401 for a bad
    /// signature, 402 for a missing, stale or untrusted payment).
    fn verify(&self, headers: &HeaderMap) -> Result<Payment, AiHttpError>;
}

/// Signed credits: a `Weir-Payment` header holding a credit signed by a trusted sender
/// ([`weir_payments::credit`]), no older than `max_skew`.
pub(crate) struct SignedCredits {
    max_skew: Duration,
    senders: SenderTrust,
}

impl SignedCredits {
    /// Credits from the senders `trusted` lists (from anyone when `accept_any`), logged:
    /// loudly when open, with a warning when empty.
    pub(crate) fn new(
        trusted: &[String],
        accept_any: bool,
        max_skew: Duration,
    ) -> Result<SignedCredits, String> {
        let senders = SenderTrust::new(trusted, accept_any).map_err(|e| e.to_string())?;
        match &senders {
            SenderTrust::Open => tracing::warn!(
                "DEVELOPMENT ONLY: accept_any_sender is on, credits from ANY sender are accepted; \
                 anyone who can reach this orchestrator gets free work"
            ),
            s if s.refuses_all() => tracing::warn!(
                "no trusted_senders configured: every payment will be refused (402); list the \
                 gateways' public keys in [orchestrator] trusted_senders"
            ),
            SenderTrust::AllowList(keys) => {
                tracing::info!(
                    senders = keys.len(),
                    "payments accepted from trusted senders"
                )
            }
        }
        Ok(SignedCredits { max_skew, senders })
    }
}

impl PaymentScheme for SignedCredits {
    fn verify(&self, headers: &HeaderMap) -> Result<Payment, AiHttpError> {
        let value = headers
            .get(PAYMENT_HEADER)
            .ok_or_else(|| err(402, "payment required: send a signed Weir-Payment header"))?
            .to_str()
            .map_err(|_| err(402, "the Weir-Payment header is not ASCII"))?;
        let payment = credit::verify(value, self.max_skew).map_err(|e| match e {
            PaymentError::BadSignature(_) => err(401, e.to_string()),
            other => err(402, other.to_string()),
        })?;
        self.senders
            .check(&payment.sender)
            .map_err(|e| err(402, e.to_string()))?;
        Ok(payment)
    }
}
