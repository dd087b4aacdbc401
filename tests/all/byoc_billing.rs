//! BYOC billing as time runs: when the sender's balance can no longer pay the elapsed time, a
//! streamed batch answer ends with `event: error` naming the shortfall, and a live stream is
//! first warned on its events channel, then stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use base64::Engine as _;
use serde_json::{json, Value};
use weir_payments::UnitPrice;

use crate::ai::{wait_discovered, TestServer};
use crate::byoc::chunks;
use crate::byoc_swaps::{pipeline_orchestrator, start_stream, stream_status};
use crate::failover::gateway_with;
use crate::support::*;

const SECRET: &str = "orchestrator-secret-for-billing-tests";
/// 5 per second of job time.
const PRICE: UnitPrice = UnitPrice {
    price_per_unit: 5,
    pixels_per_unit: 1,
};

/// A worker whose `/events` answers `data: one` and then nothing until released, and whose
/// `/hold` answers `held` once released; `holds` counts `/hold` calls on arrival.
fn worker(release: &tokio::sync::watch::Sender<bool>, holds: Arc<AtomicUsize>) -> TestServer {
    let (r1, r2) = (release.clone(), release.clone());
    let events = move || {
        let released = r1.subscribe();
        async move {
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let mut released = released.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>("data: one\n\n".to_owned()), 1)),
                        1 => {
                            let _ = released.wait_for(|v| *v).await;
                            Some((Ok("data: two\n\n".to_owned()), 2))
                        }
                        _ => None,
                    }
                }
            });
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
    };
    let hold = move || {
        let mut released = r2.subscribe();
        let holds = holds.clone();
        async move {
            holds.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|v| *v).await;
            "held"
        }
    };
    TestServer::start(
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
            )
            .route("/events", axum::routing::post(events))
            .route("/hold", axum::routing::post(hold)),
    )
}

/// `POST {o}/process/request/{route}` paid by the test gateway's wallet with `amount` under
/// payment `id`, for a job of `timeout` seconds of capability `meter`.
fn paid_job(
    o: &str,
    route: &str,
    id: &str,
    amount: u64,
    timeout: u64,
) -> reqwest::blocking::Response {
    let job = json!({"id": id, "request": "{}", "parameters": "", "capability": "meter", "timeout_seconds": timeout});
    let header = base64::engine::general_purpose::STANDARD.encode(job.to_string());
    client()
        .post(format!("{o}/process/request/{route}"))
        .header("Livepeer", header)
        .header(
            "weir-payment",
            test_wallet().pay(id, "meter/byoc", amount, PRICE),
        )
        .body("{}")
        .send()
        .expect("job")
}

/// Releases the worker's held answers when dropped.
struct ReleaseOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Everything `rx` hands over until the answer ends (or 60 s pass).
fn read_to_end(rx: &std::sync::mpsc::Receiver<String>, seen: &mut String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(text) => seen.push_str(&text),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

#[test]
fn a_streamed_answer_ends_with_an_error_event_when_the_balance_cannot_pay() {
    let (release, _) = tokio::sync::watch::channel(false);
    let holds = Arc::new(AtomicUsize::new(0));
    let w = worker(&release, holds.clone());
    // Dropped before the worker, so a failing test never leaves its handlers waiting.
    let release = ReleaseOnDrop(release);
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\ndebit_interval_secs = 8\n"),
        &[],
    );
    let r = client()
        .post(format!("{}/capability/register", o.url))
        .header("Authorization", SECRET)
        .json(&json!({"name": "meter", "url": w.url, "capacity": 2, "price_per_unit": 5, "price_scaling": 1, "currency": "WEI"}))
        .send()
        .expect("register");
    assert_eq!(r.status().as_u16(), 200);

    // A 60 s job paid in full: its first second is charged, the rest goes back to the balance
    // it is debited from while it streams.
    let streaming = paid_job(&o.url, "events", "pay-a", 60 * 5, 60);
    assert_eq!(streaming.status().as_u16(), 200);
    let balance: u64 = streaming.headers()["livepeer-balance"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("balance");
    assert_eq!(balance, 59 * 5);
    let rx = chunks(streaming);

    // Another job of the same sender reserves that whole balance before the first debit
    // (8 s later), paying nothing more.
    let o_url = o.url.clone();
    let holder = std::thread::spawn(move || {
        let r = paid_job(&o_url, "hold", "pay-b", 0, balance / 5);
        (r.status().as_u16(), r.text().unwrap_or_default())
    });
    let held = eventually(Duration::from_secs(30), || {
        (holds.load(Ordering::SeqCst) == 1 || holder.is_finished()).then_some(())
    });
    assert!(held.is_some(), "the second job never reached the worker");
    if holds.load(Ordering::SeqCst) != 1 {
        panic!("the second job was refused: {:?}", holder.join());
    }

    // The next debit finds nothing to pay with: the answer ends with an error event.
    let mut seen = String::new();
    assert!(
        read_to_end(&rx, &mut seen),
        "the answer never ended: {seen:?}"
    );
    assert!(seen.starts_with("data: one\n\n"), "{seen:?}");
    assert!(seen.contains("event: error"), "{seen:?}");
    assert!(seen.contains("insufficient balance"), "{seen:?}");
    assert!(!seen.contains("data: two"), "{seen:?}");

    // The held job still finishes and pays from its own reservation.
    release.0.send_replace(true);
    let (status, text) = holder.join().expect("holder");
    assert_eq!((status, text.as_str()), (200, "held"));
}

#[test]
fn a_stream_short_of_balance_is_warned_on_its_events_before_it_is_stopped() {
    // Paid 2 s ahead (6) and never topped up; debited every 3 s (9): the first debit is short
    // and warns, the next one stops the stream.
    let o = pipeline_orchestrator("debit_interval_secs = 3\nmin_balance_secs = 1\n");
    let gw = gateway_with(
        &[&o.url],
        "",
        "[gateway.streams]\npay_ahead_secs = 2\npayment_interval_secs = 3600\n",
    );
    wait_discovered(&gw, 1);
    let (id, rtmp) = start_stream(&gw, json!({}));
    let mut ffmpeg = ffmpeg_publish(&rtmp, 40, true).spawn().expect("ffmpeg");
    let mut warned: Option<Value> = None;
    let stopped = eventually(Duration::from_secs(90), || {
        let s = stream_status(&gw, &id);
        if s["last_event"]["type"] == "warning" && warned.is_none() {
            warned = Some(s.clone());
        }
        (s["state"] != "running").then_some(s)
    });
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let stopped = stopped.unwrap_or_else(|| panic!("never stopped: {}", stream_status(&gw, &id)));
    let warned = warned.unwrap_or_else(|| panic!("no warning before the stop: {stopped}"));
    assert_eq!(warned["state"], "running", "{warned}");
    let message = warned["last_event"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("insufficient balance")
            && message.ends_with("the stream stops at the next debit unless topped up"),
        "{warned}"
    );
    let reason = stopped["stop_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("insufficient balance"), "{stopped}");
}
