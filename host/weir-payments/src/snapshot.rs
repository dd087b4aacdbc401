//! Balances and totals of the node's ledgers, copied into memory and kept current, so that
//! components (routers, pricing, pipelines) can read them on every call without a database
//! read.
//!
//! A [`LedgerSnapshot`] reads every attached ledger ([`Ledger::balances`] and
//! [`Ledger::totals`]) on [`refresh`](LedgerSnapshot::refresh) — periodically with
//! [`spawn_refresh`](LedgerSnapshot::spawn_refresh) — and swaps in a new immutable
//! [`SnapshotView`]; readers take the current view without locking. Reading the ledgers rather
//! than following this process's writes keeps the view right when several nodes share one
//! PostgreSQL ledger. A gateway ledger's parties are orchestrators (URLs) and an orchestrator
//! ledger's are senders (keys), so a combined node's two ledgers share one view.
//!
//! Reading the totals scans the ledger's entries, so the periodic refresh runs only while the
//! view is being read: after a quiet period the first readers see the last view taken, and the
//! next tick brings it up to date.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::ledger::{Ledger, LedgerError, Totals};

/// Amounts by party, then by key.
type ByParty = HashMap<String, HashMap<String, u64>>;

/// One immutable copy of the ledgers' balances and totals.
#[derive(Debug, Default)]
pub struct SnapshotView {
    /// Balances: party → account (`capability/model`) and capability (summed over its models).
    balances: ByParty,
    /// Totals (spent with, or earned from, a party): party → capability → model, with `""`
    /// for the sum over every model.
    totals: HashMap<String, ByParty>,
    /// When it was read; `None` before the first refresh.
    taken: Option<SystemTime>,
}

/// The capability of a ledger account (`capability/model`, or a bare capability).
fn capability_of(account: &str) -> &str {
    account.split_once('/').map_or(account, |(c, _)| c)
}

impl SnapshotView {
    /// What `party` holds for `key`: an account (`capability/model`) exactly, or a capability
    /// summed over its models; `None` when nothing was ever credited.
    pub fn balance(&self, party: &str, key: &str) -> Option<u64> {
        self.balances.get(party)?.get(key).copied()
    }

    /// What was spent with (gateway) or earned from (orchestrator) `party` for `capability`
    /// and `model` (`""`: every model); 0 when nothing.
    pub fn total(&self, party: &str, capability: &str, model: &str) -> u64 {
        self.totals
            .get(party)
            .and_then(|c| c.get(capability_of(capability)))
            .and_then(|m| m.get(model))
            .copied()
            .unwrap_or(0)
    }

    /// When the ledgers were read; `None` before the first refresh.
    pub fn taken(&self) -> Option<SystemTime> {
        self.taken
    }
}

/// The node's ledgers as components read them: a view swapped in whole on every refresh.
#[derive(Default)]
pub struct LedgerSnapshot {
    ledgers: Mutex<Vec<(Arc<dyn Ledger>, Totals)>>,
    current: ArcSwap<SnapshotView>,
    /// Whether the view was read since the last refresh.
    read: AtomicBool,
}

impl LedgerSnapshot {
    /// A snapshot of no ledger yet.
    pub fn new() -> Arc<LedgerSnapshot> {
        Arc::new(LedgerSnapshot::default())
    }

    /// Include `ledger` from the next refresh on; its totals are `totals` (spend on a
    /// gateway's, charges on an orchestrator's).
    pub fn attach(&self, ledger: Arc<dyn Ledger>, totals: Totals) {
        self.ledgers.lock().push((ledger, totals));
    }

    /// Whether any ledger is attached.
    pub fn has_ledgers(&self) -> bool {
        !self.ledgers.lock().is_empty()
    }

    /// The current view (cheap: no lock, no copy).
    pub fn view(&self) -> Arc<SnapshotView> {
        self.read.store(true, Ordering::Relaxed);
        self.current.load_full()
    }

    /// Read every attached ledger and swap in the new view; the old one stays on failure.
    pub async fn refresh(&self) -> Result<(), LedgerError> {
        let ledgers = self.ledgers.lock().clone();
        let mut view = SnapshotView {
            taken: Some(SystemTime::now()),
            ..SnapshotView::default()
        };
        for (ledger, which) in ledgers {
            for row in ledger.balances().await? {
                let accounts = view.balances.entry(row.party).or_default();
                let capability = capability_of(&row.account).to_owned();
                if capability != row.account {
                    *accounts.entry(capability).or_default() += row.amount;
                }
                *accounts.entry(row.account).or_default() += row.amount;
            }
            for row in ledger.totals(which).await? {
                let models = view
                    .totals
                    .entry(row.party)
                    .or_default()
                    .entry(capability_of(&row.capability).to_owned())
                    .or_default();
                *models.entry(String::new()).or_default() += row.amount;
                *models.entry(row.model).or_default() += row.amount;
            }
        }
        self.current.store(Arc::new(view));
        Ok(())
    }

    /// Refresh every `every`, when the view was read since the last refresh, until the task
    /// is aborted; a failed refresh is logged and the last good view kept. Reading the totals
    /// grows with the ledger (about 0.2 s per 100,000 entries on SQLite), so the ledgers are
    /// never busy with it more than a tenth of the time: after a refresh that took `t`, the
    /// next waits at least `10 t`.
    pub fn spawn_refresh(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                if !self.read.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let started = Instant::now();
                let result = self.refresh().await;
                let took = started.elapsed();
                wait = every.max(took * 10);
                match result {
                    Ok(()) => tracing::trace!(
                        took_ms = took.as_millis() as u64,
                        "ledger snapshot refreshed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger snapshot not refreshed; components keep the last one")
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refresh_copies_balances_and_totals_of_every_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name: &str| {
            let path = dir.path().join(name);
            async move {
                let url = format!("sqlite://{}", path.display());
                crate::open_ledger(&url, &crate::LedgerOptions::default())
                    .await
                    .expect("open")
            }
        };
        let (orch, gw) = (open("o.db").await, open("g.db").await);
        let snapshot = LedgerSnapshot::new();
        assert!(!snapshot.has_ledgers());
        assert!(snapshot.view().taken().is_none());
        snapshot.attach(orch.clone(), Totals::Charged);
        snapshot.attach(gw.clone(), Totals::Spent);
        // Orchestrator side: a sender's credit, one job charged 30 of a 40 reservation.
        orch.credit("c1", "sender", "upscale/m1", 100)
            .await
            .expect("credit");
        orch.credit("c2", "sender", "upscale/m2", 5)
            .await
            .expect("credit");
        orch.reserve("j1", "sender", "upscale/m1", "m1", 1, 40)
            .await
            .expect("reserve");
        orch.settle_charged("j1", 30, None).await.expect("settle");
        // Gateway side: 25 spent with an orchestrator.
        gw.reserve_with_topup("p1", "g1", "http://o", "upscale/m1", "m1", 1, 25)
            .await
            .expect("reserve");
        gw.settle_charged("g1", 25, Some(("g1-spend", "upscale")))
            .await
            .expect("settle");
        let before = snapshot.view();
        assert_eq!(before.balance("sender", "upscale"), None, "not read yet");
        snapshot.refresh().await.expect("refresh");
        let view = snapshot.view();
        assert!(view.taken().is_some());
        assert_eq!(view.balance("sender", "upscale/m1"), Some(70));
        assert_eq!(view.balance("sender", "upscale"), Some(75));
        assert_eq!(view.balance("sender", "llm"), None);
        assert_eq!(view.total("sender", "upscale", "m1"), 30);
        assert_eq!(view.total("sender", "upscale", ""), 30);
        assert_eq!(view.total("sender", "upscale", "m2"), 0);
        assert_eq!(view.total("http://o", "upscale", ""), 25);
        assert_eq!(view.total("http://o", "upscale/m1", "m1"), 25);
        assert_eq!(view.balance("http://o", "upscale/m1"), Some(0));
        // The view already taken stays as it was: readers never see half a refresh.
        assert_eq!(before.balance("sender", "upscale"), None);
    }
}
