//! Live AI streams when things go wrong: a pipeline whose every segment fails is replaced a
//! bounded number of times, then the stream fails (and stops being charged); a control message
//! the pipeline refuses reaches the client as the refusal; JSONL data reaches the client's
//! server-sent events before its trickle segment ends, and a worker closing its events channel
//! does not move the stream; a start the best orchestrator fails goes on to the next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{gateway, wait_discovered, TestServer, CLIENT_TOKEN};
use crate::support::*;

const SECRET: &str = "orchestrator-secret-for-faults";

/// An orchestrator serving the `echo-pipeline` test program as capability `echo`.
fn echo_orchestrator() -> Weir {
    let config = format!(
        "[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\ndebit_interval_secs = 1\n[[orchestrator.byoc.pipelines]]\nname = \"echo\"\ncomponent = \"echo-pipeline\"\nprice_per_unit = 3\n"
    );
    Weir::start_with("orchestrator", &config, &[], |dir| {
        place(
            dir,
            "echo-pipeline",
            &artifact("test-programs/echo-pipeline.wasm"),
            &manifest("echo-pipeline", "pipeline", ""),
        );
    })
}

fn job_header(capability: &str) -> String {
    let job = json!({"id": "", "request": "{}", "parameters": "", "capability": capability, "timeout_seconds": 30});
    base64::engine::general_purpose::STANDARD.encode(job.to_string())
}

fn start_stream(gw: &Weir, capability: &str, params: Value) -> Value {
    let r = client()
        .post(format!("{}/process/stream/start", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Livepeer", job_header(capability))
        .json(&json!({ "params": params }))
        .send()
        .expect("start");
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

fn stream_status(gw: &Weir, id: &str) -> Value {
    client()
        .get(format!("{}/process/stream/{id}/status", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("status")
        .json()
        .expect("json")
}

/// What the orchestrator charged in all, from its ledger.
fn charged(o: &Weir) -> u64 {
    o.ledger()["orchestrator"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["amount"].as_u64()).sum())
        .unwrap_or(0)
}

#[test]
fn a_pipeline_that_keeps_failing_is_replaced_then_the_stream_fails_and_is_no_longer_charged() {
    let o = echo_orchestrator();
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let urls = start_stream(&gw, "echo", json!({"fail": true}));
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    let mut ffmpeg = ffmpeg_publish(urls["rtmp_url"].as_str().expect("rtmp"), 90, true)
        .spawn()
        .expect("ffmpeg");
    let failed = eventually(Duration::from_secs(60), || {
        let s = stream_status(&gw, &id);
        (s["state"] != "running").then_some(s)
    });
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let failed = failed.expect("the failing stream kept running");
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("3 instance replacements") && error.contains("on-segment"),
        "{failed}"
    );
    // The reason came over the events channel, with the number of replacements.
    let last = &failed["last_event"];
    assert_eq!(last["type"], "stopped", "{failed}");
    assert_eq!(last["failed"], true, "{failed}");
    assert_eq!(last["restarts"], 3, "{failed}");
    // The orchestrator released the stream and stopped debiting it.
    let released = eventually(Duration::from_secs(15), || {
        o.info()["models"]
            .as_array()?
            .iter()
            .find(|m| m["capability"] == "echo")
            .filter(|m| m["in_flight"] == 0)
            .map(drop)
    });
    assert!(released.is_some(), "the slot leaked: {}", o.info());
    let before = charged(&o);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(charged(&o), before, "debits went on after the failure");
}

#[test]
fn a_refused_control_message_is_the_clients_answer_and_status_keeps_the_accepted_params() {
    let o = echo_orchestrator();
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let urls = start_stream(&gw, "echo", json!({"a": 1}));
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    let update = |params: Value| {
        let r = client()
            .post(format!("{}/process/stream/{id}/update", gw.url))
            .bearer_auth(CLIENT_TOKEN)
            .json(&params)
            .send()
            .expect("update");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (status, body) = update(json!({"reject": "this"}));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("rejected on purpose"), "{body}");
    assert_eq!(stream_status(&gw, &id)["params"], json!({"a": 1}));
    let (status, body) = update(json!({"b": 2}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(stream_status(&gw, &id)["params"], json!({"b": 2}));
}

/// A worker that, once a stream starts, closes its events channel, then writes one data
/// record in a trickle segment it keeps open.
fn data_worker() -> TestServer {
    let start = |body: axum::body::Bytes| async move {
        let Ok(start) = serde_json::from_slice::<Value>(&body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let events = start["events_url"].as_str().unwrap_or_default().to_owned();
        let data = start["data_url"].as_str().unwrap_or_default().to_owned();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let events = weir_trickle::Publisher::new(client.clone(), events);
            let _ = events.close().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut data = weir_trickle::Publisher::new(client, data);
            let Ok(mut segment) = data.begin().await else {
                return;
            };
            let _ = segment
                .send(bytes::Bytes::from_static(b"{\"record\":1}\n{\"rec"))
                .await;
            // Keep the segment open well past the test's bound.
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(segment);
        });
        axum::http::StatusCode::OK
    };
    TestServer::start(
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
            )
            .route("/stream/start", axum::routing::post(start))
            .route("/stream/stop", axum::routing::post(|| async { "{}" })),
    )
}

#[test]
fn data_records_reach_the_client_before_their_segment_ends_and_closed_events_do_not_move_the_stream(
) {
    let worker = data_worker();
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\n"),
        &[],
    );
    let registered = client()
        .post(format!("{}/capability/register", o.url))
        .header("Authorization", SECRET)
        .json(&json!({"name": "datagen", "url": worker.url, "capacity": 2, "price_per_unit": 1, "price_scaling": 1, "currency": "WEI"}))
        .send()
        .expect("register");
    assert_eq!(registered.status().as_u16(), 200);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let urls = start_stream(&gw, "datagen", json!({}));
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    let response = client()
        .get(format!("{}/process/stream/{id}/data", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .timeout(Duration::from_secs(120))
        .send()
        .expect("data");
    assert_eq!(response.status().as_u16(), 200);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut response = response;
        let mut buf = [0u8; 4096];
        while let Ok(n) = response.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    // The worker writes its record 3 s after the start and keeps its segment open for 120 s:
    // the record must come long before the segment ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("{\"record\":1}") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(text) => seen.push_str(&text),
            Err(_) => panic!("no data record within 30 s; saw {seen:?}"),
        }
    }
    assert!(
        !seen.contains("rec\""),
        "a partial line was relayed: {seen:?}"
    );
    // The worker closed its events channel at the start: the stream still runs where it was.
    let status = stream_status(&gw, &id);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["swaps"], 0, "{status}");
}

#[test]
fn a_stream_start_the_best_orchestrator_fails_starts_on_the_next_and_the_stream_tops_up_there() {
    let o = echo_orchestrator();
    // The best-ranked candidate: `o`'s offer at a price of 1, from a server whose every
    // stream start fails.
    let mut info = o.info();
    for m in info["models"].as_array_mut().expect("models") {
        m["price"]["price_per_unit"] = json!(1);
    }
    let starts = Arc::new(AtomicUsize::new(0));
    let seen = starts.clone();
    let broken = TestServer::start(
        axum::Router::new()
            .route(
                "/info",
                axum::routing::get(move || {
                    let info = info.clone();
                    async move { axum::Json(info) }
                }),
            )
            .route(
                "/ai/stream/start",
                axum::routing::post(move || {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({"detail": {"msg": "pipeline host crashed"}})),
                        )
                    }
                }),
            ),
    );
    let gw = gateway(
        &[&broken.url, &o.url],
        "[gateway.streams]\npayment_interval_secs = 1\n",
    );
    wait_discovered(&gw, 2);

    let urls = start_stream(&gw, "echo", json!({}));
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "the cheapest was tried first, once"
    );
    let status = stream_status(&gw, &id);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["orchestrator"], o.url.as_str(), "{status}");
    assert!(status["paid"].as_u64().is_some_and(|p| p > 0), "{status}");
    // The failed attempt counts as one, and left no payment behind with the broken server.
    let metrics = gw.metrics();
    let failed = format!(
        "weir_gateway_attempts_total{{orchestrator=\"{}\",outcome=\"failed\"}}",
        broken.url
    );
    assert_eq!(metric(&metrics, &failed), Some(1.0), "{metrics}");
    // Settled payments show as spend rows: one for the stream's orchestrator (charged nothing
    // yet), none for the broken server.
    let ledger = gw.ledger();
    let rows = ledger["gateway"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r.to_string().contains(&o.url)),
        "{ledger}"
    );
    assert!(
        !rows.iter().any(|r| r.to_string().contains(&broken.url)),
        "{ledger}"
    );

    // Each second the stream pays for the time it ran and tops its balance back up, through
    // the dispatcher with its orchestrator as the only candidate.
    let first_paid = status["paid"].as_u64().unwrap_or(0);
    let topped = eventually(Duration::from_secs(20), || {
        let s = stream_status(&gw, &id);
        (s["charged"].as_u64() > Some(0) && s["paid"].as_u64() > Some(first_paid)).then_some(s)
    });
    assert!(topped.is_some(), "no top-up: {}", stream_status(&gw, &id));
    let metrics = gw.metrics();
    let served = format!(
        "weir_gateway_attempts_total{{orchestrator=\"{}\",outcome=\"ok\"}}",
        o.url
    );
    assert!(metric(&metrics, &served) >= Some(2.0), "{metrics}");

    let stop = client()
        .post(format!("{}/process/stream/{id}/stop", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("stop");
    assert!(stop.status().is_success(), "{}", stop.status());
}
