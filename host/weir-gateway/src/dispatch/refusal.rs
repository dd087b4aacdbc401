//! Classifying a failed attempt: an orchestrator that could not be reached, or that answered
//! an error status, is moved past, retried later, retried at a new price, or ends the call.

use std::time::Duration;

use weir_payments::UnitPrice;
use weir_protocol::AiHttpError;

use super::{Attempt, Choice, Dispatcher};

impl Dispatcher {
    /// An orchestrator could not be reached or did not answer in time: record it, leave it out
    /// for a while, try the next.
    pub(super) fn unreachable<T>(
        &self,
        choice: &Choice,
        acct: &str,
        e: &reqwest::Error,
        timeout: Duration,
        took: Duration,
    ) -> Attempt<T> {
        self.discovery.record(&choice.url, acct, false, took);
        let why = if e.is_timeout() {
            format!("no answer within {timeout:?}")
        } else {
            format!("transport error: {e}")
        };
        self.suspend(&choice.url, &why);
        Attempt::Next(why)
    }

    /// An orchestrator answered `status` with `message` (the payment is already taken back):
    /// decide whether to retry it at a new price, later, or move on.
    pub(super) async fn refused<T>(
        &self,
        choice: &Choice,
        cap: &str,
        acct: &str,
        status: u16,
        message: String,
        took: Duration,
    ) -> Attempt<T> {
        let why = format!("{status}: {message}");
        match status {
            402 => self.payment_refused(choice, cap, acct, why, &message).await,
            // Full: try elsewhere without suspending (it is healthy, just busy).
            503 if message.contains("insufficient capacity") => Attempt::Busy(why),
            // Stale info (model gone): refresh and move on.
            404 => {
                self.discovery.refresh_one(&choice.url).await;
                Attempt::Next(why)
            }
            400 | 413 | 415 | 422 => Attempt::Fail(AiHttpError {
                status,
                body: weir_protocol::error::AiErrorBody::Message(
                    weir_protocol::error::HttpErrorBody::new(format!(
                        "orchestrator {} refused the request: {message}",
                        choice.url
                    )),
                ),
            }),
            _ => {
                self.discovery.record(&choice.url, acct, false, took);
                self.suspend(&choice.url, &why);
                Attempt::Next(why)
            }
        }
    }

    /// A 402: the price may have changed since the last refresh (retry at the new one), or
    /// the orchestrator lost a payment (write our balance belief down and pay again once), or
    /// it refuses a payment the ledger covers (do not trust it).
    async fn payment_refused<T>(
        &self,
        choice: &Choice,
        cap: &str,
        acct: &str,
        why: String,
        message: &str,
    ) -> Attempt<T> {
        self.discovery.refresh_one(&choice.url).await;
        match self.offered_now(choice, cap) {
            Some(p) if p != choice.price => {
                let max = self.config.max_price(cap, &choice.model);
                if max.is_some_and(|max| p.exceeds(&max)) {
                    Attempt::Next(format!(
                        "{why} (its new price {}/{} is above the max price)",
                        p.price_per_unit, p.pixels_per_unit
                    ))
                } else {
                    Attempt::Repriced(p)
                }
            }
            _ if message.contains("insufficient balance") => {
                self.balance_lost(choice, acct, why, message).await
            }
            _ => {
                // Same price, yet payment refused: do not pay more, do not trust it.
                self.suspend(
                    &choice.url,
                    &format!("refused a payment the ledger covers: {message}"),
                );
                Attempt::Next(why)
            }
        }
    }

    /// The price `choice`'s orchestrator offers its model for `cap` now, per discovery.
    fn offered_now(&self, choice: &Choice, cap: &str) -> Option<UnitPrice> {
        self.discovery.known().get(&choice.url).and_then(|k| {
            k.info.as_ref().and_then(|i| {
                i.models
                    .iter()
                    .find(|m| m.capability == cap && m.model_id == choice.model)
                    .map(|m| UnitPrice {
                        price_per_unit: m.price.price_per_unit,
                        pixels_per_unit: m.price.pixels_per_unit.max(1),
                    })
            })
        })
    }

    /// Same price and our ledger thinks the balance covers it: the orchestrator lost a
    /// payment (a crash cut its request off). Lower our belief to what it holds, never raise
    /// it, and pay the difference once.
    async fn balance_lost<T>(
        &self,
        choice: &Choice,
        acct: &str,
        why: String,
        message: &str,
    ) -> Attempt<T> {
        let held = message
            .split("holds ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        let Some(held) = held else {
            return Attempt::Next(why);
        };
        match self
            .payments
            .ledger()
            .write_down(&choice.url, acct, held)
            .await
        {
            Ok(lost) => {
                tracing::warn!(orchestrator = %choice.url, account = %acct, held, lost, "orchestrator holds less than our ledger; balance written down");
                Attempt::Repriced(choice.price)
            }
            Err(e) => Attempt::Next(format!("{why} (ledger: {e})")),
        }
    }
}
