//! The gateway's side of payments: what it owes each orchestrator per (capability, model).
//!
//! Before a job the gateway reserves the job's cost at the orchestrator's quoted price from
//! its balance there, paying (signing a credit for) only what the balance lacks. After the job
//! it settles (records the spend) or releases and takes the payment back. What the
//! orchestrator reports (its charge, the balance it sees) is checked against this ledger:
//! a charge above the agreed cost is never accepted, and a balance that disagrees is logged
//! and counted, never copied.

use std::sync::Arc;

use weir_payments::credit::{account, Wallet};
use weir_payments::{cost, Ledger, LedgerError, UnitPrice};

/// How this gateway pays orchestrators: what it sends with a job for the amount its balance
/// there lacks. Signed credits (the `Weir-Payment` header, [`Wallet`]) are the one scheme
/// today; Livepeer's off-chain payments and probabilistic tickets are others, each the
/// counterpart of the orchestrator's `PaymentScheme` that verifies it.
pub trait PaymentScheme: Send + Sync {
    /// Who pays: the sender id orchestrators keep balances under.
    fn sender(&self) -> String;
    /// The payment header's value for payment `id` of `amount` to `account` at `price`
    /// (`amount` 0 proves who is asking without moving money).
    fn pay(&self, id: &str, account: &str, amount: u64, price: UnitPrice) -> String;
}

/// Signed credits.
impl PaymentScheme for Wallet {
    fn sender(&self) -> String {
        Wallet::sender(self)
    }

    fn pay(&self, id: &str, account: &str, amount: u64, price: UnitPrice) -> String {
        Wallet::pay(self, id, account, amount, price)
    }
}

/// An open job with one orchestrator.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Job id (the reservation).
    pub job_id: String,
    /// Payment id sent with it.
    pub payment_id: String,
    /// What the balance lacked and was paid now.
    pub topup: u64,
    /// The job's cost at the agreed price.
    pub cost: u64,
    /// The header value to send.
    pub header: String,
    /// Orchestrator URL.
    pub orchestrator: String,
    /// `capability/model`.
    pub account: String,
    /// Model.
    pub model: String,
    /// Capability.
    pub capability: String,
    /// Units of the job.
    pub units: u64,
}

/// What the orchestrator said about the job, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// What the job is recorded as costing.
    pub charge: u64,
    /// Whether the orchestrator's reports disagreed with the ledger.
    pub disputed: bool,
}

/// The gateway ledger plus the payment scheme.
pub struct GatewayPayments {
    ledger: Arc<dyn Ledger>,
    scheme: Box<dyn PaymentScheme>,
    mismatches: prometheus::IntCounterVec,
}

impl GatewayPayments {
    /// Payments recorded in `ledger` and made with `scheme`; `mismatches` counts disputes.
    pub fn new(
        ledger: Arc<dyn Ledger>,
        scheme: Box<dyn PaymentScheme>,
        mismatches: prometheus::IntCounterVec,
    ) -> Self {
        GatewayPayments {
            ledger,
            scheme,
            mismatches,
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// This gateway's sender id.
    pub fn sender(&self) -> String {
        self.scheme.sender()
    }

    /// A signed payment of nothing: proves to an orchestrator who is asking (stream updates,
    /// stops) without moving money.
    pub fn authenticate(&self, account: &str, price: UnitPrice) -> String {
        let id = format!("auth-{:032x}", rand::random::<u128>());
        self.scheme.pay(&id, account, 0, price)
    }

    /// Reserve the cost of `units` at `price` with `orchestrator` and sign what must be paid.
    pub async fn prepare(
        &self,
        orchestrator: &str,
        capability: &str,
        model: &str,
        units: u64,
        price: UnitPrice,
    ) -> Result<Pending, String> {
        let account = account(capability, model);
        let cost = cost(units, price)
            .ok_or_else(|| format!("{units} units at {price:?} overflow the ledger"))?;
        let job_id = format!("gw-{:032x}", rand::random::<u128>());
        let payment_id = format!("pay-{:032x}", rand::random::<u128>());
        let (_, topup) = self
            .ledger
            .reserve_with_topup(
                &payment_id,
                &job_id,
                orchestrator,
                &account,
                model,
                units,
                cost,
            )
            .await
            .map_err(|e| e.to_string())?;
        let header = self.scheme.pay(&payment_id, &account, topup, price);
        Ok(Pending {
            job_id,
            payment_id,
            topup,
            cost,
            header,
            orchestrator: orchestrator.to_owned(),
            account,
            model: model.to_owned(),
            capability: capability.to_owned(),
            units,
        })
    }

    /// The job failed: release the reservation and take the payment back (the orchestrator
    /// does the same on its side when it gave no result).
    pub async fn abandon(&self, p: &Pending) {
        if let Err(e) = self
            .ledger
            .release_and_revoke(&p.job_id, Some(&p.payment_id))
            .await
        {
            tracing::error!(job = %p.job_id, error = %e, "could not release a reservation");
        }
    }

    /// The job produced its result: settle, record the spend, and check the orchestrator's
    /// reported charge and balance against the ledger.
    pub async fn settle(
        &self,
        p: &Pending,
        reported_charge: Option<u64>,
        reported_balance: Option<u64>,
    ) -> Result<Settled, LedgerError> {
        let mut disputed = false;
        // The orchestrator may charge less than agreed (its price went down), never more.
        let charge = match reported_charge {
            Some(c) if c <= p.cost => c,
            Some(c) => {
                tracing::warn!(orchestrator = %p.orchestrator, account = %p.account, reported = c, agreed = p.cost, "orchestrator reported a charge above the agreed cost; recording the agreed cost");
                disputed = true;
                p.cost
            }
            None => p.cost,
        };
        let balance = self
            .ledger
            .settle_charged(
                &p.job_id,
                charge,
                Some((&format!("{}-spend", p.job_id), &p.capability)),
            )
            .await?;
        if let Some(reported) = reported_balance {
            let expected = balance.amount;
            // Concurrent jobs may be in flight, so the two views can differ by what is held;
            // a report below what the ledger holds free is a dispute.
            if reported < expected {
                tracing::warn!(orchestrator = %p.orchestrator, account = %p.account, reported, expected, "orchestrator reports a lower balance than the ledger; not adopted");
                disputed = true;
            }
        }
        if disputed {
            self.mismatches
                .with_label_values(&[p.orchestrator.as_str()])
                .inc();
        }
        Ok(Settled { charge, disputed })
    }
}
