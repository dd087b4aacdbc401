//! Restart recovery of the ledgers: a reservation held by a job that a SIGKILL cut off is
//! released when the process (orchestrator or gateway) starts again on the same data
//! directory, so the credit it held pays for the next job.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::ConnectOptions as _;
use weir_payments::UnitPrice;

use crate::ai::{wait_discovered, CLIENT_TOKEN, T2I_MODEL};
use crate::failover::{gateway_with, scripted_runner, t2i_config, Script, SHIPPED_T2I_PPU};
use crate::support::*;

const PRICE: UnitPrice = UnitPrice {
    price_per_unit: SHIPPED_T2I_PPU,
    pixels_per_unit: 1_000_000,
};

/// A connection to the SQLite ledger at `path` (its process may be running), with the runtime
/// to drive it.
fn open_ledger(path: &Path) -> (tokio::runtime::Runtime, sqlx::SqliteConnection) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conn = rt.block_on(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(10))
            .connect(),
    );
    (rt, conn.expect("open ledger"))
}

/// `(reserved entries, balance)` of the test wallet for the t2i account in the SQLite ledger
/// at `path` (read while its process runs).
fn ledger_state(path: &Path) -> (i64, i64) {
    let (rt, mut conn) = open_ledger(path);
    rt.block_on(async {
        let reserved: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM entries WHERE state = 'reserved'")
                .fetch_one(&mut conn)
                .await
                .expect("reserved");
        let balance: Option<i64> =
            sqlx::query_scalar("SELECT balance FROM balances WHERE sender = ? AND capability = ?")
                .bind(test_wallet().sender())
                .bind(format!("text-to-image/{T2I_MODEL}"))
                .fetch_optional(&mut conn)
                .await
                .expect("balance");
        (reserved, balance.unwrap_or(0))
    })
}

/// `POST /text-to-image` (64x64) straight to orchestrator `url`, paying `amount` as the test
/// gateway under payment `id`: (status, body).
fn paid_call(url: &str, id: &str, amount: u64) -> (u16, Value) {
    let account = format!("text-to-image/{T2I_MODEL}");
    let r = client()
        .post(format!("{url}/text-to-image"))
        .header(
            "weir-payment",
            test_wallet().pay(id, &account, amount, PRICE),
        )
        .json(&json!({"prompt": "x", "width": 64, "height": 64}))
        .send();
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().unwrap_or(Value::Null))
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

#[test]
fn an_orchestrator_reservation_cut_off_by_sigkill_is_released_on_restart() {
    let script = Script::holding();
    let runner = scripted_runner(script.clone());
    let config = t2i_config(&runner.url, 1);
    let o = Weir::start("orchestrator", &config, &[]);
    let ledger = o.data.path().join("orchestrator-ledger.db");
    let cost = weir_payments::cost(64 * 64, PRICE).expect("cost");

    // A job paid with exactly its cost is running: the credit is all reserved.
    let url = o.url.clone();
    let call = std::thread::spawn(move || paid_call(&url, "pay-1", cost));
    let running = eventually(Duration::from_secs(30), || {
        (script.hits() == 1).then_some(())
    });
    assert!(running.is_some(), "the job never reached the runner");
    assert_eq!(
        ledger_state(&ledger),
        (1, 0),
        "a reservation holds the whole credit"
    );

    // SIGKILL mid-job, then a restart on the same data directory.
    let data = o.crash();
    let (status, _) = call.join().expect("call");
    assert_eq!(status, 0, "the call cut off by the kill got an answer");
    let o = Weir::start_in("orchestrator", &config, &[], data, |_| {});
    assert_eq!(
        ledger_state(&ledger),
        (0, i64::try_from(cost).expect("cost")),
        "the restart gave the reservation back to the balance"
    );

    // The released credit pays for the next job: a payment of nothing more is enough.
    script.release();
    let (status, body) = paid_call(&o.url, "pay-2", 0);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ledger_state(&ledger),
        (0, 0),
        "the next job spent the released credit"
    );
    assert_eq!(script.hits(), 2);
}

#[test]
fn a_gateway_reservation_cut_off_by_sigkill_is_released_on_restart() {
    let script = Script::holding();
    let runner = scripted_runner(script.clone());
    let o = Weir::start("orchestrator", &t2i_config(&runner.url, 1), &[]);
    let gw = gateway_with(&[&o.url], "", "");
    wait_discovered(&gw, 1);
    let ledger = gw.data.path().join("gateway-ledger.db");
    let call_through = |url: String| {
        std::thread::spawn(move || {
            client()
                .post(format!("{url}/text-to-image"))
                .bearer_auth(CLIENT_TOKEN)
                .json(&json!({"prompt": "x", "model_id": T2I_MODEL, "width": 64, "height": 64}))
                .send()
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
    };

    // A request is at the orchestrator: the gateway holds a reservation for it.
    let call = call_through(gw.url.clone());
    let running = eventually(Duration::from_secs(30), || {
        (script.hits() == 1).then_some(())
    });
    assert!(running.is_some(), "the request never reached the runner");
    assert_eq!(ledger_state(&ledger).0, 1, "the gateway reserved nothing");

    // SIGKILL the gateway mid-request, restart it on the same data directory.
    let config = std::fs::read_to_string(gw.data.path().join("weir.toml")).expect("config");
    let data = gw.crash();
    assert!(
        call.join().expect("call").is_err(),
        "the cut-off request got an answer"
    );
    let gw = Weir::start_in("gateway", &config, &[], data, |_| {});
    assert_eq!(
        ledger_state(&ledger).0,
        0,
        "the restart left the reservation open"
    );

    // The restarted gateway serves the next request.
    script.release();
    wait_discovered(&gw, 1);
    let status = call_through(gw.url.clone()).join().expect("call");
    assert_eq!(status, Ok(200));
    assert_eq!(ledger_state(&ledger).0, 0);
}

/// The gateway's belief of what it holds with orchestrator `url` for the t2i account, in its
/// SQLite ledger at `path` (while it runs); set to `to` first when given.
fn gateway_balance(path: &Path, url: &str, to: Option<i64>) -> i64 {
    let (rt, mut conn) = open_ledger(path);
    let account = format!("text-to-image/{T2I_MODEL}");
    rt.block_on(async {
        if let Some(to) = to {
            sqlx::query("UPDATE balances SET balance = ? WHERE sender = ? AND capability = ?")
                .bind(to)
                .bind(url)
                .bind(&account)
                .execute(&mut conn)
                .await
                .expect("update");
        }
        sqlx::query_scalar("SELECT balance FROM balances WHERE sender = ? AND capability = ?")
            .bind(url)
            .bind(&account)
            .fetch_one(&mut conn)
            .await
            .expect("balance")
    })
}

#[test]
fn a_gateway_that_believes_an_orchestrator_holds_more_than_it_does_writes_it_down_and_pays_again() {
    let script = Arc::new(Script::default());
    let runner = scripted_runner(script.clone());
    let o = Weir::start("orchestrator", &t2i_config(&runner.url, 1), &[]);
    let gw = gateway_with(&[&o.url], "", "");
    wait_discovered(&gw, 1);
    let call = || {
        let r = client()
            .post(format!("{}/text-to-image", gw.url))
            .bearer_auth(CLIENT_TOKEN)
            .json(&json!({"prompt": "x", "model_id": T2I_MODEL, "width": 64, "height": 64}))
            .send()
            .expect("call");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (status, body) = call();
    assert_eq!(status, 200, "{body}");
    let cost = weir_payments::cost(64 * 64, PRICE).expect("cost");
    let orchestrator_ledger = o.data.path().join("orchestrator-ledger.db");
    assert_eq!(
        ledger_state(&orchestrator_ledger).1,
        0,
        "all paid was spent"
    );

    // The gateway now believes the orchestrator holds three quarters of a job that it does not
    // hold (a payment lost to a crash): it pays only the last quarter and is refused, learns
    // from the refusal what the orchestrator really holds, and pays the rest.
    let gateway_ledger = gw.data.path().join("gateway-ledger.db");
    assert_eq!(gateway_balance(&gateway_ledger, &o.url, None), 0);
    let believed = i64::try_from(cost * 3 / 4).expect("belief");
    gateway_balance(&gateway_ledger, &o.url, Some(believed));
    let (status, body) = call();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        script.hits(),
        2,
        "the refused attempt never reached the runner"
    );
    // Both ledgers agree again: nothing is held on either side.
    assert_eq!(ledger_state(&orchestrator_ledger), (0, 0));
    assert_eq!(gateway_balance(&gateway_ledger, &o.url, None), 0);
}
