//! The read-only `weir:host/payments` view the node gives its components: balances and totals
//! from the [`LedgerSnapshot`] of the roles' ledgers, prices from the gateway's discovery.
//! Every answer comes from memory; no call reads a database.

use std::sync::{Arc, OnceLock};

use weir_gateway::discovery::{normalize, Discovery};
use weir_payments::{LedgerSnapshot, Totals};
use weir_runtime::{GuestError, PaymentsSource, Price};

/// The node's payments view; the ledgers and discovery are attached once the roles start.
pub(crate) struct PolicyPayments {
    snapshot: Arc<LedgerSnapshot>,
    discovery: OnceLock<Arc<Discovery>>,
}

impl PolicyPayments {
    /// A view of nothing yet: every query answers `unsupported` until a ledger is attached.
    pub(crate) fn new() -> Arc<PolicyPayments> {
        Arc::new(PolicyPayments {
            snapshot: LedgerSnapshot::new(),
            discovery: OnceLock::new(),
        })
    }

    /// Read `ledger` of `role` (`gateway`: spend, `orchestrator`: charges) from now on.
    pub(crate) fn attach(&self, role: &str, ledger: Arc<dyn weir_payments::Ledger>) {
        let totals = if role == "gateway" {
            Totals::Spent
        } else {
            Totals::Charged
        };
        self.snapshot.attach(ledger, totals);
    }

    /// Answer `current-price` from the gateway's discovery.
    pub(crate) fn use_discovery(&self, discovery: Arc<Discovery>) {
        let _ = self.discovery.set(discovery);
    }

    /// Read the ledgers now, then every `every`.
    pub(crate) async fn start(
        &self,
        every: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.snapshot.has_ledgers() {
            return None;
        }
        if let Err(e) = self.snapshot.refresh().await {
            tracing::warn!(error = %e, "first ledger snapshot failed; retrying on schedule");
        }
        Some(self.snapshot.clone().spawn_refresh(every))
    }

    /// The current view, or why there is none.
    fn view(&self) -> Result<Arc<weir_payments::SnapshotView>, GuestError> {
        if !self.snapshot.has_ledgers() {
            return Err(GuestError::Unsupported(
                "payments: this node has no payment ledger".to_owned(),
            ));
        }
        let view = self.snapshot.view();
        match view.taken() {
            Some(_) => Ok(view),
            None => Err(GuestError::Internal(
                "payments: the ledgers have not been read yet".to_owned(),
            )),
        }
    }
}

impl PaymentsSource for PolicyPayments {
    fn balance(&self, sender: &str, capability: &str) -> Result<i64, GuestError> {
        let held = self.view()?.balance(sender, capability).unwrap_or(0);
        Ok(i64::try_from(held).unwrap_or(i64::MAX))
    }

    fn spent(&self, counterparty: &str, capability: &str, model: &str) -> Result<u64, GuestError> {
        Ok(self.view()?.total(counterparty, capability, model))
    }

    fn current_price(
        &self,
        counterparty: &str,
        capability: &str,
        model: &str,
    ) -> Result<Price, GuestError> {
        let Some(discovery) = self.discovery.get() else {
            return Err(GuestError::Unsupported(
                "payments: current prices come from a gateway's discovery; this node has no gateway".to_owned(),
            ));
        };
        let known = discovery.known();
        let offer = known
            .get(&normalize(counterparty))
            .and_then(|k| k.info.as_ref())
            .and_then(|info| {
                info.models
                    .iter()
                    .find(|m| m.capability == capability && m.model_id == model)
            });
        match offer {
            Some(m) => Ok(Price {
                price_per_unit: m.price.price_per_unit,
                pixels_per_unit: m.price.pixels_per_unit,
                currency: m.price.currency.clone(),
            }),
            None => Err(GuestError::InvalidRequest(format!(
                "payments: orchestrator {counterparty:?} advertises no price for {capability}/{model}"
            ))),
        }
    }
}
