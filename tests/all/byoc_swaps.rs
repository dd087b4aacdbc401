//! `max_swaps_per_minute`: a live AI stream moves to another orchestrator when its own dies,
//! but only that many times a minute; past the limit it stops, saying why, although an
//! orchestrator is still free.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{wait_discovered, CLIENT_TOKEN};
use crate::failover::gateway_with;
use crate::support::*;

/// An orchestrator serving the `live-scale` pipeline component as capability `live-scale`;
/// `extra` is added to its `[orchestrator.byoc]` section.
pub(crate) fn pipeline_orchestrator(extra: &str) -> Weir {
    let config = format!(
        "[orchestrator.transcode]\ncapacity = 4\n[orchestrator.byoc]\nsecret = \"swap-test-secret\"\nhealth_interval_secs = 1\n{extra}\n\
         [[orchestrator.byoc.pipelines]]\nname = \"live-scale\"\ncomponent = \"live-scale\"\nprice_per_unit = 3\n"
    );
    Weir::start_with("orchestrator", &config, &[], |dir| {
        place_default(dir, "live-scale");
    })
}

/// Start a `live-scale` stream through `gw` with `params`: its id and RTMP URL.
pub(crate) fn start_stream(gw: &Weir, params: Value) -> (String, String) {
    let job = json!({"id": "", "request": "{}", "parameters": "", "capability": "live-scale", "timeout_seconds": 30});
    let r = client()
        .post(format!("{}/process/stream/start", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header(
            "Livepeer",
            base64::engine::general_purpose::STANDARD.encode(job.to_string()),
        )
        .json(&json!({ "params": params }))
        .send()
        .expect("start");
    let status = r.status().as_u16();
    let started: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{started}");
    let id = started["stream_id"].as_str().expect("id").to_owned();
    let rtmp = started["rtmp_url"].as_str().expect("rtmp").to_owned();
    (id, rtmp)
}

pub(crate) fn stream_status(gw: &Weir, id: &str) -> Value {
    client()
        .get(format!("{}/process/stream/{id}/status", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("status")
        .json()
        .expect("json")
}

/// Wait (at most 90 s) until `ok` holds for the stream's status; that status.
pub(crate) fn wait_status(gw: &Weir, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), || {
        let s = stream_status(gw, id);
        ok(&s).then_some(s)
    })
    .unwrap_or_else(|| panic!("{what}: {}", stream_status(gw, id)))
}

#[test]
fn a_stream_that_moved_max_swaps_per_minute_times_stops_at_the_next_failure() {
    let mut orchestrators = [
        pipeline_orchestrator(""),
        pipeline_orchestrator(""),
        pipeline_orchestrator(""),
    ];
    let urls: Vec<String> = orchestrators.iter().map(|o| o.url.clone()).collect();
    let gw = gateway_with(
        &[&urls[0], &urls[1], &urls[2]],
        "suspend_secs = 60",
        "[gateway.streams]\nmax_swaps_per_minute = 1\n",
    );
    wait_discovered(&gw, 3);
    let (id, rtmp) = start_stream(&gw, json!({"height": 180}));
    let mut ffmpeg = ffmpeg_publish(&rtmp, 60, true).spawn().expect("ffmpeg");

    // The first failure moves it (swap 1 of 1).
    let first = wait_status(&gw, &id, "no output", |s| {
        s["segments_out"].as_u64() >= Some(1)
    });
    let serving = |s: &Value| {
        let url = s["orchestrator"].as_str().unwrap_or_default();
        urls.iter()
            .position(|u| u == url)
            .expect("a known orchestrator")
    };
    let a = serving(&first);
    orchestrators[a].kill();
    let moved = wait_status(&gw, &id, "the stream did not move", |s| {
        s["orchestrator"].as_str().is_some_and(|u| u != urls[a])
            && s["segments_out"].as_u64() > first["segments_out"].as_u64()
    });
    assert_eq!(moved["swaps"], 1, "{moved}");
    assert_eq!(moved["state"], "running", "{moved}");

    // The second failure within the minute stops it, though one orchestrator is left.
    let b = serving(&moved);
    orchestrators[b].kill();
    let stopped = wait_status(&gw, &id, "the stream never stopped", |s| {
        s["state"] != "running"
    });
    let reason = stopped["stop_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("moved 1 times within a minute"),
        "{stopped}"
    );
    assert_eq!(stopped["swaps"], 1, "{stopped}");
    let c = 3 - a - b;
    assert_ne!(stopped["orchestrator"], urls[c].as_str(), "{stopped}");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}
