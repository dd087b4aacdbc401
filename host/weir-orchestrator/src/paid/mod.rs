//! The one paid-job path every handler takes: AI jobs, transcoded segments, BYOC batch jobs
//! and live streams.
//!
//! A request's payment is verified by the orchestrator's [`PaymentScheme`] and matched to the
//! account of the work ([`Payer::for_account`]). A job then goes through [`PaidJob::open`]:
//! the price is quoted (and refused when above what the payment agreed to), a capacity slot is
//! taken, and the payment is credited together with the reservation of the job's cost. The job
//! runs, then is settled ([`PaidJob::settle`]) or released ([`PaidJob::release`]); a job
//! dropped midway (the client went away) is released too, payment included, so both sides keep
//! the same balance. A live stream is paid ahead instead ([`Payer::prepay`]): its payment is
//! credited and its balance debited as it runs.

mod debit;
mod scheme;

use std::sync::Arc;

use weir_models::capacity::{Capacity, Slot};
use weir_payments::credit::{self, Payment};
use weir_payments::{Ledger, LedgerError, UnitPrice};
use weir_protocol::AiHttpError;
use weir_runtime::{OutputSize, Price};

use crate::handler::err;
use crate::Orchestrator;

pub(crate) use debit::{debit_time, Debited, Meter};
pub(crate) use scheme::{PaymentScheme, SignedCredits};

/// A verified payment, checked to be for the account of the work it pays for.
pub(crate) struct Payer {
    /// The verified payment.
    pub(crate) payment: Payment,
    /// `capability/model`: whose balance the payment credits.
    pub(crate) account: String,
}

impl Payer {
    /// `payment` for the work `capability`/`model`; refused (402) when it is for another
    /// account. `work` names the work in the refusal (`job`, `stream`).
    pub(crate) fn for_account(
        payment: Payment,
        capability: &str,
        model: &str,
        work: &str,
    ) -> Result<Payer, AiHttpError> {
        let account = credit::account(capability, model);
        if payment.account != account {
            return Err(err(
                402,
                format!(
                    "the payment is for account `{}` but this {work} is `{account}`",
                    payment.account
                ),
            ));
        }
        Ok(Payer { payment, account })
    }

    /// The cost of `units` at the current `price`, refused (402) when the price is above the
    /// one the payment agreed to. `what` names the work in the refusal.
    pub(crate) fn agreed_charge(
        &self,
        what: &str,
        price: &Price,
        units: u64,
    ) -> Result<u64, AiHttpError> {
        let current = unit_price(price);
        let payment = &self.payment;
        if current.exceeds(&payment.price()) {
            return Err(err(
                402,
                format!(
                    "price changed: {what} now costs {}/{} {} per unit; the payment agreed to {}/{}",
                    current.price_per_unit,
                    current.pixels_per_unit,
                    price.currency,
                    payment.price_per_unit,
                    payment.pixels_per_unit
                ),
            ));
        }
        weir_payments::cost(units, current).ok_or_else(|| {
            err(
                400,
                format!("{units} units at this price overflow the ledger"),
            )
        })
    }

    /// Pay a stream ahead: credit the payment (once per payment id) and answer the balance,
    /// refused (402) unless it holds `secs` of `price` (the cost of starting `what`).
    pub(crate) async fn prepay(
        &self,
        ledger: &Arc<dyn Ledger>,
        what: &str,
        price: &Price,
        secs: u64,
    ) -> Result<u64, AiHttpError> {
        let needed = self.agreed_charge(what, price, secs)?;
        let p = &self.payment;
        let balance = ledger
            .credit(&p.id, &p.sender, &self.account, p.amount)
            .await
            .map_err(|e| match e {
                LedgerError::Conflict(id) => {
                    err(402, format!("payment id `{id}` was already used"))
                }
                other => err(500, format!("ledger: {other}")),
            })?
            .amount;
        if balance < needed {
            return Err(err(
                402,
                format!(
                    "insufficient balance: sender {} holds {balance} for {}, a stream needs {needed} ({secs} s of price) to start",
                    p.sender, self.account
                ),
            ));
        }
        Ok(balance)
    }
}

/// The price as the payment types carry it.
fn unit_price(price: &Price) -> UnitPrice {
    UnitPrice {
        price_per_unit: price.price_per_unit,
        pixels_per_unit: price.pixels_per_unit,
    }
}

/// Where a job's price comes from.
pub(crate) enum Quote<'a> {
    /// The pricing component, asked for `units` of `capability`/`model` producing `output`,
    /// with the load of `capacity`.
    Component {
        /// Capability id.
        capability: &'a str,
        /// Model id.
        model: &'a str,
        /// The capacity whose load the component sees.
        capacity: &'a Capacity,
        /// What the job produces.
        output: OutputSize,
    },
    /// A price fixed when the capability was offered (BYOC).
    Fixed(Price),
}

/// What a job asks of the paid path.
pub(crate) struct Order<'a> {
    /// Names the work when its price is refused (`upscale/model`, `transcode/h264`, ...).
    pub(crate) what: &'a str,
    /// The model the ledger records.
    pub(crate) model: &'a str,
    /// Units the reservation holds.
    pub(crate) units: u64,
    /// Start of the job's id (`job`, `seg`, `byoc`).
    pub(crate) id_prefix: &'static str,
}

/// A paid job: its payment applied, its cost reserved and its capacity slot held. Dropped
/// without [`PaidJob::settle`], it is released (payment included) in the background.
pub(crate) struct PaidJob {
    /// The job's id (also the reservation's).
    pub(crate) id: String,
    /// Who pays, and the account.
    pub(crate) payer: Payer,
    /// Units reserved (the order's).
    pub(crate) units: u64,
    /// The quoted price.
    pub(crate) price: Price,
    /// What is reserved: the cost of the order's units at `price`.
    pub(crate) reserved: u64,
    slot: Option<Slot>,
    held: Held,
}

impl PaidJob {
    /// Quote the price (402 when above the payment's, 503 when the pricing component fails),
    /// take a capacity slot with `take_slot`, then apply the payment and reserve the cost in
    /// one transaction (402 when the payment was used before or the balance is short).
    pub(crate) async fn open(
        o: &Orchestrator,
        payer: Payer,
        order: Order<'_>,
        quote: Quote<'_>,
        take_slot: impl FnOnce() -> Result<Slot, AiHttpError>,
    ) -> Result<PaidJob, AiHttpError> {
        let price = match quote {
            Quote::Component {
                capability,
                model,
                capacity,
                output,
            } => o
                .quote_for(
                    capability,
                    model,
                    capacity,
                    &payer.payment.sender,
                    output,
                    order.units,
                )
                .await
                .map_err(|e| o.pricing_error(e))?,
            Quote::Fixed(price) => price,
        };
        let reserved = payer.agreed_charge(order.what, &price, order.units)?;
        let slot = take_slot()?;
        let id = format!("{}-{:032x}", order.id_prefix, rand::random::<u128>());
        let held =
            Held::reserve(o.ledger(), &payer, &id, order.model, order.units, reserved).await?;
        Ok(PaidJob {
            id,
            payer,
            units: order.units,
            price,
            reserved,
            slot: Some(slot),
            held,
        })
    }

    /// The charge for `used` units at the quoted price, never more than what is reserved.
    pub(crate) fn charge_for(&self, used: u64) -> u64 {
        weir_payments::cost(used, unit_price(&self.price))
            .unwrap_or(self.reserved)
            .min(self.reserved)
    }

    /// Give the capacity slot back (the work is done; the ledger is not).
    pub(crate) fn free_slot(&mut self) {
        self.slot = None;
    }

    /// The capacity slot, for work that outlives the request (a streamed answer).
    pub(crate) fn take_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }

    /// Charge `charge` (at most what is reserved) and answer the balance left.
    pub(crate) async fn settle(self, charge: u64) -> Result<u64, AiHttpError> {
        self.held
            .settle(charge)
            .await
            .map_err(|e| err(500, format!("ledger: {e}")))
    }

    /// Take back the reservation and the payment applied with it (a failure is logged).
    pub(crate) async fn release(self) {
        let id = self.id;
        if let Err(e) = self.held.release().await {
            tracing::error!(job = %id, error = %e, "could not release a reservation");
        }
    }
}

/// A reservation that is released unless settled, even when the request is dropped midway.
struct Held {
    ledger: Arc<dyn Ledger>,
    id: String,
    /// The payment applied with this job, taken back with it.
    credit: Option<String>,
    open: bool,
}

impl Held {
    /// Apply the payer's payment and reserve `charge` for job `job_id` in one transaction.
    async fn reserve(
        ledger: &Arc<dyn Ledger>,
        payer: &Payer,
        job_id: &str,
        model: &str,
        units: u64,
        charge: u64,
    ) -> Result<Held, AiHttpError> {
        let (payment, account) = (&payer.payment, &payer.account);
        let (_, applied) = ledger
            .credit_and_reserve(
                &payment.id,
                payment.amount,
                job_id,
                &payment.sender,
                account,
                model,
                units,
                charge,
            )
            .await
            .map_err(|e| match e {
                LedgerError::Conflict(id) => err(
                    402,
                    format!("payment id `{id}` was already used for another payment"),
                ),
                LedgerError::Insufficient { balance, needed, .. } => err(
                    402,
                    format!("insufficient balance: sender {} holds {balance} for {account} (this payment of {} is not applied), the job costs {needed}", payment.sender, payment.amount),
                ),
                other => err(500, format!("ledger: {other}")),
            })?;
        Ok(Held {
            ledger: ledger.clone(),
            id: job_id.to_owned(),
            credit: applied.then(|| payment.id.clone()),
            open: true,
        })
    }

    async fn settle(mut self, charge: u64) -> Result<u64, LedgerError> {
        self.open = false;
        Ok(self
            .ledger
            .settle_charged(&self.id, charge, None)
            .await?
            .amount)
    }

    async fn release(mut self) -> Result<(), LedgerError> {
        self.open = false;
        self.ledger
            .release_and_revoke(&self.id, self.credit.as_deref())
            .await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.open {
            let ledger = self.ledger.clone();
            let id = std::mem::take(&mut self.id);
            let credit = self.credit.take();
            tokio::spawn(async move {
                if let Err(e) = ledger.release_and_revoke(&id, credit.as_deref()).await {
                    tracing::error!(job = %id, error = %e, "could not release a reservation");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(account: &str, price_per_unit: u64, pixels_per_unit: u64) -> Payment {
        Payment {
            kind: credit::PaymentKind::Credit,
            sender: "s".to_owned(),
            id: "p1".to_owned(),
            account: account.to_owned(),
            amount: 100,
            price_per_unit,
            pixels_per_unit,
            created_ms: 0,
        }
    }

    fn price(price_per_unit: u64, pixels_per_unit: u64) -> Price {
        Price {
            price_per_unit,
            pixels_per_unit,
            currency: "WEI".to_owned(),
        }
    }

    #[test]
    fn a_payment_for_another_account_is_refused_naming_the_work() {
        let refused = Payer::for_account(payment("llm/a", 1, 1), "llm", "b", "stream")
            .err()
            .expect("refused");
        assert_eq!(refused.status, 402);
        assert_eq!(
            refused.message(),
            "the payment is for account `llm/a` but this stream is `llm/b`"
        );
        let payer = Payer::for_account(payment("llm/b", 1, 1), "llm", "b", "job").expect("ok");
        assert_eq!(payer.account, "llm/b");
    }

    #[test]
    fn the_charge_is_refused_only_above_the_agreed_rate() {
        let payer = Payer::for_account(payment("llm/b", 2, 10), "llm", "b", "job").expect("ok");
        // 1/5 is the same rate as 2/10: agreed.
        assert_eq!(payer.agreed_charge("llm/b", &price(1, 5), 25), Ok(5));
        let refused = payer
            .agreed_charge("llm/b", &price(3, 10), 25)
            .expect_err("refused");
        assert_eq!(refused.status, 402);
        assert!(refused
            .message()
            .starts_with("price changed: llm/b now costs 3/10 WEI"));
    }
}
