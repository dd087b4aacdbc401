//! The ledger's contract, run on both backends: SQLite in a temporary directory and a fresh
//! PostgreSQL database (`$WEIR_TEST_POSTGRES`, default the local server). Each test is
//! generated twice, `ledger::contract::sqlite::NAME` and `ledger::contract::postgres::NAME`.
//! Without a PostgreSQL server the PostgreSQL half says so and passes, except under
//! `CI=true`, where it fails.
//!
//! "Two processes" are two ledgers opened on the same store (two connection pools), as two
//! gateways behind a load balancer would hold.

use std::sync::Arc;
use std::time::Duration;

use super::{open, Ledger, LedgerError, LedgerOptions, Totals};

/// A fresh database on the local PostgreSQL server, dropped with the guard.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// `None` when no server answers and this is not CI.
    async fn create() -> Option<PgDatabase> {
        let admin = std::env::var("WEIR_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("weir_ledger_{:016x}", rand::random::<u64>());
        let mut conn = match <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
            Ok(c) => c,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: no PostgreSQL at $WEIR_TEST_POSTGRES ({e}); CI=true fails");
                return None;
            }
            Err(e) => panic!("PostgreSQL at $WEIR_TEST_POSTGRES must be running under CI: {e}"),
        };
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(PgDatabase { admin, name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A fresh runtime on a thread: Drop runs inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Where a test's ledger lives; [`Store::open`] opens it again (another process, or a restart).
enum Store {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Store {
    async fn sqlite() -> Option<Store> {
        Some(Store::Sqlite(tempfile::tempdir().expect("tempdir")))
    }

    async fn postgres() -> Option<Store> {
        PgDatabase::create().await.map(Store::Postgres)
    }

    async fn open(&self) -> Arc<dyn Ledger> {
        self.open_as("").await
    }

    /// Open as node `owner` (see [`LedgerOptions::owner`]).
    async fn open_as(&self, owner: &str) -> Arc<dyn Ledger> {
        let options = LedgerOptions {
            schema: "weir_ledger_test".to_owned(),
            connections: 8,
            owner: owner.to_owned(),
            ..LedgerOptions::default()
        };
        let url = match self {
            Store::Sqlite(dir) => format!("sqlite://{}", dir.path().join("ledger.db").display()),
            Store::Postgres(db) => db.url.clone(),
        };
        let ledger = open(&url, &options).await.expect("open");
        let expected = match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        };
        assert_eq!(ledger.backend(), expected);
        ledger
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` for each contract test `NAME(&Store)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = super::Store::sqlite().await.expect("sqlite");
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(store) = super::Store::postgres().await else {
                        return;
                    };
                    super::$name(&store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    writes_cut_off_at_any_point_leave_the_ledger_usable,
    a_balance_is_written_down_never_up,
    credits_apply_once_per_id,
    reservations_settle_or_release_and_never_overdraw,
    a_job_without_a_result_leaves_the_balance_as_it_was,
    concurrent_reservations_spend_each_credit_once,
    concurrent_top_ups_never_spend_a_balance_twice,
    a_reservation_racing_its_own_retry_holds_once,
    state_survives_reopening_and_stale_reservations_are_released,
    a_restart_releases_only_its_own_reservations,
    balances_list_every_party_and_account,
);

async fn balances_list_every_party_and_account(store: &Store) {
    let l = store.open().await;
    assert!(l.balances().await.expect("balances").is_empty());
    l.credit("c1", "alice", "upscale/m1", 100)
        .await
        .expect("credit");
    l.credit("c2", "alice", "upscale/m2", 5)
        .await
        .expect("credit");
    l.credit("c3", "bob", "upscale/m1", 7)
        .await
        .expect("credit");
    l.reserve("j1", "alice", "upscale/m1", "m1", 1, 40)
        .await
        .expect("reserve");
    let mut rows: Vec<(String, String, u64)> = l
        .balances()
        .await
        .expect("balances")
        .into_iter()
        .map(|r| (r.party, r.account, r.amount))
        .collect();
    rows.sort();
    let row = |p: &str, a: &str, n| (p.to_owned(), a.to_owned(), n);
    assert_eq!(
        rows,
        [
            row("alice", "upscale/m1", 60),
            row("alice", "upscale/m2", 5),
            row("bob", "upscale/m1", 7)
        ],
        "what is reserved is not held"
    );
}

/// A caller dropped at any point of a write (a client that went away, a cancelled job)
/// must leave every pooled connection usable.
async fn writes_cut_off_at_any_point_leave_the_ledger_usable(store: &Store) {
    let l = store.open().await;
    for i in 0..2000u64 {
        let cut = Duration::from_micros(i % 300);
        let _ = tokio::time::timeout(cut, l.credit(&format!("c{i}"), "a", "cap", 1)).await;
    }
    // Every connection of the pool must start a new write transaction.
    for i in 0..16u64 {
        l.credit(&format!("after{i}"), "a", "cap", 1)
            .await
            .expect("a write after cut-off writes");
    }
}

async fn a_balance_is_written_down_never_up(store: &Store) {
    let l = store.open().await;
    let (_, topup) = l
        .reserve_with_topup("c1", "j1", "o", "cap", "m", 1, 100)
        .await
        .expect("reserve");
    assert_eq!(topup, 100);
    l.release("j1").await.expect("release");
    assert_eq!(l.write_down("o", "cap", 500).await.expect("up"), 0);
    assert_eq!(l.write_down("o", "cap", 30).await.expect("down"), 70);
    let (_, topup) = l
        .reserve_with_topup("c2", "j2", "o", "cap", "m", 1, 100)
        .await
        .expect("reserve");
    assert_eq!(topup, 70, "the next payment makes up what was written off");
    let spent = l.totals(Totals::Spent).await.expect("totals");
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(
        (spent[0].model.as_str(), spent[0].amount),
        ("(balance correction)", 70)
    );
}

async fn credits_apply_once_per_id(store: &Store) {
    let l = store.open().await;
    let credit = |id: &'static str, amount| {
        let l = l.clone();
        async move { l.credit(id, "alice", "upscale", amount).await }
    };
    assert_eq!(credit("pay-1", 100).await.expect("credit").amount, 100);
    assert_eq!(credit("pay-1", 100).await.expect("retry").amount, 100);
    assert!(matches!(
        credit("pay-1", 999).await,
        Err(LedgerError::Conflict(_))
    ));
    assert_eq!(credit("pay-2", 50).await.expect("credit").amount, 150);
    assert_eq!(l.balance("alice", "llm").await.expect("balance").amount, 0);
    assert!(matches!(
        l.credit("big", "alice", "upscale", u64::MAX).await,
        Err(LedgerError::OutOfRange(_))
    ));
}

async fn reservations_settle_or_release_and_never_overdraw(store: &Store) {
    let l = store.open().await;
    let held = |l: &Arc<dyn Ledger>| {
        let l = l.clone();
        async move { l.balance("bob", "t2i").await.expect("b").amount }
    };
    l.credit("pay", "bob", "t2i", 100).await.expect("credit");
    l.reserve("job-1", "bob", "t2i", "sdxl", 10, 70)
        .await
        .expect("reserve");
    assert_eq!(held(&l).await, 30);
    let err = l
        .reserve("job-2", "bob", "t2i", "sdxl", 10, 40)
        .await
        .expect_err("short");
    assert!(
        matches!(
            err,
            LedgerError::Insufficient {
                balance: 30,
                needed: 40,
                ..
            }
        ),
        "{err}"
    );
    // A retried reserve of the same job is the same reservation; other content conflicts.
    l.reserve("job-1", "bob", "t2i", "sdxl", 10, 70)
        .await
        .expect("idempotent");
    assert!(matches!(
        l.reserve("job-1", "bob", "t2i", "sdxl", 10, 60).await,
        Err(LedgerError::Conflict(_))
    ));
    assert_eq!(held(&l).await, 30);
    l.release("job-1").await.expect("release");
    assert_eq!(held(&l).await, 100);
    assert!(matches!(
        l.settle_charged("job-1", 70, None).await,
        Err(LedgerError::NoReservation(_))
    ));
    l.reserve("job-3", "bob", "t2i", "sdxl", 10, 100)
        .await
        .expect("reserve");
    l.settle_charged("job-3", 100, None).await.expect("settle");
    assert!(matches!(
        l.release("job-3").await,
        Err(LedgerError::NoReservation(_))
    ));
    assert_eq!(held(&l).await, 0);
}

async fn a_job_without_a_result_leaves_the_balance_as_it_was(store: &Store) {
    let l = store.open().await;
    l.credit("old", "erin", "llm", 30).await.expect("credit");
    // Pay 70 more with the job, reserve 100; the job fails: both go back atomically.
    let (_, applied) = l
        .credit_and_reserve("p1", 70, "j1", "erin", "llm", "m", 1, 100)
        .await
        .expect("reserve");
    assert!(applied);
    assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 0);
    l.release_and_revoke("j1", Some("p1"))
        .await
        .expect("release");
    assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 30);
    // Short even with the payment: nothing is applied, and the refusal says what the sender
    // holds without it (what a gateway writes its belief down to before paying again).
    let err = l
        .credit_and_reserve("p2", 10, "j2", "erin", "llm", "m", 1, 100)
        .await
        .expect_err("short");
    assert!(
        matches!(
            err,
            LedgerError::Insufficient {
                balance: 30,
                needed: 100,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 30);
    // The gateway side pays only what the balance lacks.
    let (_, topup) = l
        .reserve_with_topup("p3", "j3", "erin", "llm", "m", 1, 100)
        .await
        .expect("reserve");
    assert_eq!(topup, 70);
    let after = l.settle_charged("j3", 90, None).await.expect("settle");
    assert_eq!(after.amount, 10);
    // A job charged less than it held counts at its charge.
    let charged = l.totals(Totals::Charged).await.expect("totals");
    assert_eq!(charged.iter().map(|r| r.amount).sum::<u64>(), 90);
}

/// 40 reservations of 100, spread over two processes, against a credit of exactly 1,000:
/// exactly 10 succeed and the balance ends at zero.
async fn concurrent_reservations_spend_each_credit_once(store: &Store) {
    let ledgers = [store.open().await, store.open().await];
    ledgers[0]
        .credit("pay", "carol", "llm", 1_000)
        .await
        .expect("credit");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let l = ledgers[i % 2].clone();
            tokio::spawn(async move {
                l.reserve(&format!("job-{i}"), "carol", "llm", "m", 1, 100)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(LedgerError::Insufficient { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 10);
    for l in &ledgers {
        assert_eq!(l.balance("carol", "llm").await.expect("b").amount, 0);
    }
}

/// Gateway side, two processes: 20 jobs of 100 at once against a balance of exactly 500.
/// Exactly 5 are paid from the balance, the other 15 pay their whole cost, and nothing is
/// left over or missing.
async fn concurrent_top_ups_never_spend_a_balance_twice(store: &Store) {
    let ledgers = [store.open().await, store.open().await];
    ledgers[0]
        .credit("prepaid", "orch", "llm/m", 500)
        .await
        .expect("credit");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let l = ledgers[i % 2].clone();
            tokio::spawn(async move {
                let job = format!("job-{i}");
                let (_, topup) = l
                    .reserve_with_topup(&format!("pay-{i}"), &job, "orch", "llm/m", "m", 1, 100)
                    .await?;
                l.settle_charged(&job, 100, Some((&format!("{job}-spend"), "llm")))
                    .await?;
                Ok::<u64, LedgerError>(topup)
            })
        })
        .collect();
    let mut topups = Vec::new();
    for t in tasks {
        topups.push(t.await.expect("join").expect("every job is paid"));
    }
    assert_eq!(topups.iter().filter(|t| **t == 0).count(), 5, "{topups:?}");
    assert_eq!(
        topups.iter().filter(|t| **t == 100).count(),
        15,
        "{topups:?}"
    );
    let spent = ledgers[1].totals(Totals::Spent).await.expect("totals");
    assert_eq!((spent[0].jobs, spent[0].amount), (20, 2_000));
    assert_eq!(
        ledgers[1].balance("orch", "llm/m").await.expect("b").amount,
        0
    );
}

/// The same reservation sent ten times at once (a retry racing its original) holds its
/// amount once.
async fn a_reservation_racing_its_own_retry_holds_once(store: &Store) {
    let ledgers = [store.open().await, store.open().await];
    ledgers[0]
        .credit("pay", "dan", "t2i", 1_000)
        .await
        .expect("credit");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let l = ledgers[i % 2].clone();
            tokio::spawn(async move { l.reserve("job", "dan", "t2i", "m", 1, 300).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("join").expect("the same reservation");
        assert_eq!((r.id.as_str(), r.amount), ("job", 300));
    }
    assert_eq!(
        ledgers[0].balance("dan", "t2i").await.expect("b").amount,
        700
    );
}

async fn state_survives_reopening_and_stale_reservations_are_released(store: &Store) {
    {
        let l = store.open().await;
        l.credit("pay", "dave", "upscale", 500)
            .await
            .expect("credit");
        l.reserve("job", "dave", "upscale", "x4", 1, 200)
            .await
            .expect("reserve");
        // Gateway side: two jobs with orch-a, one charged less than reserved.
        for (job, charge) in [("g-1", 42), ("g-2", 8)] {
            l.reserve_with_topup(
                &format!("{job}-pay"),
                job,
                "orch-a",
                "upscale/x4",
                "x4",
                65536,
                42,
            )
            .await
            .expect("reserve");
            l.settle_charged(job, charge, Some((&format!("{job}-spend"), "upscale")))
                .await
                .expect("settle");
        }
    }
    let l = store.open().await;
    assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 300);
    let spent = l.totals(Totals::Spent).await.expect("totals");
    assert_eq!((spent[0].jobs, spent[0].amount), (2, 50));
    // g-2 was charged 8 of the 42 it reserved: 34 came back to the balance.
    assert_eq!(
        l.balance("orch-a", "upscale/x4").await.expect("b").amount,
        34
    );
    assert_eq!(
        l.release_stale(Duration::from_secs(3600))
            .await
            .expect("young"),
        0
    );
    assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 1);
    assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 500);
    assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 0);
}

/// Two nodes share the store; one restarts while the other runs a job. The restart releases
/// what it left open, and the other node's job stays held and settles.
async fn a_restart_releases_only_its_own_reservations(store: &Store) {
    let a = store.open_as("node-a").await;
    let b = store.open_as("node-b").await;
    a.credit("pay", "eve", "llm", 300).await.expect("credit");
    a.reserve("job-a", "eve", "llm", "m", 1, 100)
        .await
        .expect("reserve a");
    b.reserve("job-b", "eve", "llm", "m", 1, 100)
        .await
        .expect("reserve b");
    drop(b);
    let b = store.open_as("node-b").await;
    assert_eq!(b.release_stale(Duration::ZERO).await.expect("stale"), 1);
    assert_eq!(b.balance("eve", "llm").await.expect("b").amount, 200);
    assert!(matches!(
        b.settle_charged("job-b", 100, None).await,
        Err(LedgerError::NoReservation(_))
    ));
    let after = a
        .settle_charged("job-a", 100, None)
        .await
        .expect("settle a");
    assert_eq!(after.amount, 200);
}
