//! Two gateways behind a load balancer share one PostgreSQL ledger (`[gateway] ledger_url`).
//!
//! The gateway ledger holds what the gateways hold with each orchestrator, per account; the
//! clients of a gateway hold no balance (they present tokens), and the orchestrator's own
//! ledger holds what each sender (both gateways sign with the same wallet, so they are one
//! sender) holds there. A BYOC batch job pays its whole `timeout_seconds` up front and is
//! charged the seconds it took, so the rest stays as balance with the orchestrator: the
//! balance a job through one gateway leaves is seen and spent through the other, and jobs
//! through both at once spend it exactly once. The orchestrator's reported balance
//! (`Livepeer-Balance`), its charges and the shared tables are checked against each other.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{gateway, wait_discovered, TestServer, CLIENT_TOKEN};
use crate::support::*;

const SECRET: &str = "shared-ledger-test-secret";
/// Base units per second of the worker's capability.
const PRICE: u64 = 5;
/// The gateways' tables in the shared database (`weir_ledger_{role}`).
const SCHEMA: &str = "weir_ledger_gateway";

/// A database of its own on the local PostgreSQL server, dropped with the guard.
struct SharedDb {
    admin: String,
    name: String,
    url: String,
}

impl SharedDb {
    /// `None` (said on stderr) when no server answers, except under `CI=true`.
    fn create() -> Option<SharedDb> {
        let admin = std::env::var("WEIR_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("weir_shared_ledger_{:016x}", rand::random::<u64>());
        if let Err(e) = run_sql(&admin, &format!("CREATE DATABASE {name}")) {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "PostgreSQL at $WEIR_TEST_POSTGRES must be running under CI: {e}"
            );
            eprintln!("SKIPPED: no PostgreSQL at $WEIR_TEST_POSTGRES ({e})");
            return None;
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(SharedDb { admin, name, url })
    }

    /// One integer from `sql` on the shared database.
    fn scalar(&self, sql: &str) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                .await
                .expect("connect");
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Credits the gateways paid (each one a top-up), and their sum.
    fn credits(&self) -> (i64, i64) {
        (
            self.scalar(&format!(
                "SELECT COUNT(*) FROM {SCHEMA}.entries WHERE kind = 'credit'"
            )),
            self.scalar(&format!(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM {SCHEMA}.entries WHERE kind = 'credit'"
            )),
        )
    }

    /// What the gateways hold with the orchestrator on `account`.
    fn balance(&self, account: &str) -> i64 {
        self.scalar(&format!(
            "SELECT COALESCE(MAX(balance), 0) FROM {SCHEMA}.balances WHERE capability = '{account}'"
        ))
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = run_sql(&self.admin, &sql);
    }
}

fn run_sql(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
        sqlx::query(sql).execute(&mut conn).await.map(|_| ())
    })
}

/// A BYOC worker answering `/echo` at once (and its health checks).
fn worker() -> TestServer {
    TestServer::start(
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            ),
    )
}

/// An orchestrator with the worker registered as capability `echo` at [`PRICE`] per second.
fn orchestrator(worker: &TestServer) -> Weir {
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\n"),
        &[],
    );
    let body = json!({"name": "echo", "url": worker.url, "capacity": 64, "price_per_unit": PRICE, "price_scaling": 1, "currency": "WEI"});
    let r = client()
        .post(format!("{}/capability/register", o.url))
        .header("Authorization", SECRET)
        .json(&body)
        .send()
        .expect("register");
    assert_eq!(r.status().as_u16(), 200);
    o
}

/// A batch job through `gw` paying `timeout` seconds up front: (status, reported balance).
fn job(gw: &Weir, timeout: u64) -> (u16, Option<u64>) {
    let header = json!({"id": "", "request": "{}", "parameters": "", "capability": "echo", "timeout_seconds": timeout});
    let r = client()
        .post(format!("{}/process/request/echo", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header(
            "Livepeer",
            base64::engine::general_purpose::STANDARD.encode(header.to_string()),
        )
        .body("ping")
        .send()
        .expect("job");
    let status = r.status().as_u16();
    let balance = r
        .headers()
        .get("livepeer-balance")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = r.text().unwrap_or_default();
    assert!(status != 200 || body == "ping", "{status} {body}");
    (status, balance)
}

/// `amount` summed over `role`'s `/admin/ledger` rows whose model is `model`, and their jobs.
fn ledger_sum(node: &Weir, role: &str, model: &str) -> (u64, u64) {
    let v: Value = node.ledger();
    v[role].as_array().map_or((0, 0), |rows| {
        rows.iter()
            .filter(|r| r["model"] == model)
            .fold((0, 0), |(amount, jobs), r| {
                (
                    amount + r["amount"].as_u64().unwrap_or(0),
                    jobs + r["jobs"].as_u64().unwrap_or(0),
                )
            })
    })
}

#[test]
fn two_gateways_share_one_postgres_ledger_and_never_spend_a_balance_twice() {
    let Some(db) = SharedDb::create() else {
        return;
    };
    let worker = worker();
    let o = orchestrator(&worker);
    let shared = format!("ledger_url = \"{}\"\n", db.url);
    let (a, b) = (gateway(&[&o.url], &shared), gateway(&[&o.url], &shared));
    wait_discovered(&a, 1);
    wait_discovered(&b, 1);
    let account = "echo/byoc";

    // Through A: 10 s paid up front, 1 s charged; 45 stays as balance.
    assert_eq!(job(&a, 10), (200, Some(45)));
    assert_eq!(db.balance(account), 45);
    assert_eq!(db.credits(), (1, 50));
    // Through B: a job holding 9 s (45) is paid from that balance, with no new payment. Had
    // B paid it itself, the orchestrator would now hold 85.
    assert_eq!(job(&b, 9), (200, Some(40)), "B did not spend A's balance");
    assert_eq!(db.credits(), (1, 50), "B paid for what the balance covered");
    assert_eq!(db.balance(account), 40);

    // 20 jobs of one second (5 each) at once, 10 through each gateway, against a balance of
    // exactly 40: all succeed, exactly 8 are paid from the balance and 12 pay their own 5.
    let start = std::sync::Arc::new(std::sync::Barrier::new(20));
    let results: Vec<(u16, Option<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (gw, start) = (if i % 2 == 0 { &a } else { &b }, start.clone());
                s.spawn(move || {
                    start.wait();
                    job(gw, 1)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(
        db.credits(),
        (13, 110),
        "the balance was not spent exactly once"
    );
    assert_eq!(db.balance(account), 0);

    // Both sides agree: the orchestrator holds nothing more for the sender, charged what the
    // gateways paid, and neither gateway had to correct its ledger or dispute an answer.
    assert_eq!(job(&a, 1), (200, Some(0)));
    assert_eq!(ledger_sum(&o, "orchestrator", "byoc"), (115, 23));
    let spent = (
        ledger_sum(&a, "gateway", "byoc"),
        ledger_sum(&b, "gateway", "byoc"),
    );
    assert_eq!(spent.0, spent.1, "both gateways read one ledger");
    assert_eq!(spent.0, (115, 23));
    for gw in [&a, &b] {
        assert_eq!(ledger_sum(gw, "gateway", "(balance correction)"), (0, 0));
        let disputes = metric(&gw.metrics(), "weir_gateway_balance_disputes_total").unwrap_or(0.0);
        assert_eq!(disputes, 0.0);
    }
}
