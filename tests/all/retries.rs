//! A full orchestrator is waited for, with jittered backoff, instead of being hammered until
//! the attempt budget is gone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::ai::{
    gateway, http_orchestrator, runner_server, wait_discovered, RunnerState, CLIENT_TOKEN,
};
use crate::support::*;

/// `clients` concurrent `/text-to-image` calls through `gw`; their statuses.
fn concurrent_calls(gw: &Weir, clients: usize) -> Vec<(u16, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let r = client()
                        .post(format!("{}/text-to-image", gw.url))
                        .bearer_auth(CLIENT_TOKEN)
                        .json(&json!({"prompt": "x", "width": 64, "height": 64}))
                        .send()
                        .expect("send");
                    let status = r.status().as_u16();
                    (status, r.text().unwrap_or_default())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

#[test]
fn clients_queue_for_a_full_orchestrator_instead_of_failing() {
    let state = Arc::new(RunnerState::default());
    // Each job holds the only slot for 300 ms: six clients need about 1.8 s one after another,
    // far beyond five back-to-back attempts, well within the busy wait.
    state.delay_ms.store(300, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    let o = http_orchestrator(&runner.url, 1, 60);
    let gw = gateway(&[&o.url], "busy_wait_secs = 60\nretry_budget_secs = 120");
    wait_discovered(&gw, 1);
    let results = concurrent_calls(&gw, 6);
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "some calls failed: {failed:?}");
    assert_eq!(state.served.load(Ordering::Relaxed), 6);
    // The orchestrator was full at times: those answers were waited out, not failures.
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_gateway_attempts_total") && l.contains("outcome=\"busy\"")),
        "no busy attempt recorded:\n{metrics}"
    );
}

#[test]
fn a_request_gives_up_on_a_full_orchestrator_after_the_busy_wait() {
    let state = Arc::new(RunnerState::default());
    state.delay_ms.store(3000, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    let o = http_orchestrator(&runner.url, 1, 60);
    let gw = gateway(&[&o.url], "busy_wait_secs = 0");
    wait_discovered(&gw, 1);
    let results = concurrent_calls(&gw, 2);
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert!(
        refused[0].1.contains("insufficient capacity"),
        "{refused:?}"
    );
    assert!(
        refused[0].1.contains("still full after waiting"),
        "{refused:?}"
    );
}

#[test]
fn an_orchestrator_discovery_last_saw_full_is_still_asked_and_waited_for() {
    let state = Arc::new(RunnerState::default());
    state.delay_ms.store(4000, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    let o = http_orchestrator(&runner.url, 1, 60);
    let gw = gateway(&[&o.url], "busy_wait_secs = 60\nretry_budget_secs = 120");
    wait_discovered(&gw, 1);
    std::thread::scope(|s| {
        let first = s.spawn(|| concurrent_calls(&gw, 1));
        // Discovery refreshes every second: it sees the only slot taken.
        let seen_full = eventually(Duration::from_secs(3), || {
            let v: serde_json::Value = client()
                .get(format!("{}/gateway/orchestrators", gw.url))
                .bearer_auth(CLIENT_TOKEN)
                .send()
                .ok()?
                .json()
                .ok()?;
            (v["orchestrators"][0]["info"]["models"][0]["in_flight"] == 1).then_some(())
        });
        assert!(seen_full.is_some(), "discovery never saw the slot taken");
        // A request now is not refused on that snapshot: it is sent, told busy, and waits
        // for the slot.
        let second = concurrent_calls(&gw, 1);
        assert_eq!(second[0].0, 200, "{second:?}");
        assert_eq!(first.join().expect("thread")[0].0, 200);
    });
    assert_eq!(state.served.load(Ordering::Relaxed), 2);
}
