//! Bring-your-own-compute end to end: live AI streams through a WASM pipeline (RTMP in with
//! `ffmpeg`, HLS out checked with `ffprobe`), batch jobs forwarded to a registered worker,
//! streamed (server-sent events) batch answers, balance exhaustion, and an orchestrator killed
//! mid-stream.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{gateway, wait_discovered, TestServer, CLIENT_TOKEN};
use crate::support::*;

const SECRET: &str = "orchestrator-secret-for-tests";

/// An orchestrator serving the `live-scale` pipeline component as capability `live-scale`.
fn pipeline_orchestrator(extra: &str) -> Weir {
    let config = format!(
        "[orchestrator.transcode]\ncapacity = 4\n[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\n{extra}\n[[orchestrator.byoc.pipelines]]\nname = \"live-scale\"\ncomponent = \"live-scale\"\nprice_per_unit = 3\n"
    );
    Weir::start_with("orchestrator", &config, &[], |dir| {
        place_default(dir, "live-scale");
    })
}

fn job_header(capability: &str, timeout: u64) -> String {
    let job = json!({"id": "", "request": "{}", "parameters": "", "capability": capability, "timeout_seconds": timeout});
    base64::engine::general_purpose::STANDARD.encode(job.to_string())
}

pub(crate) fn start_stream(gw: &Weir, capability: &str, params: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}/process/stream/start", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Livepeer", job_header(capability, 30))
        .json(&json!({ "params": params }))
        .send()
        .expect("start");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
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

/// Publish a 640x360 test pattern to `url` for `seconds`, in real time, in the background.
pub(crate) fn publish(url: &str, seconds: u32) -> std::process::Child {
    ffmpeg_publish(url, seconds, true).spawn().expect("ffmpeg")
}

/// The URIs of the segments listed in the HLS output of stream `id`.
pub(crate) fn listed(gw: &Weir, id: &str) -> Vec<String> {
    let r = client()
        .get(format!("{}/stream/{id}/source.m3u8", gw.url))
        .send()
        .expect("playlist");
    if !r.status().is_success() {
        return Vec::new();
    }
    r.text()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Height of the video in segment `uri` of stream `id`, read with `ffprobe`.
fn segment_height(gw: &Weir, id: &str, uri: &str) -> u64 {
    let url = if uri.starts_with("http") {
        uri.to_owned()
    } else {
        format!("{}/stream/{id}/{uri}", gw.url)
    };
    let v = ffprobe_json(
        &url,
        &["-select_streams", "v:0", "-show_entries", "stream=height"],
    );
    v["streams"][0]["height"].as_u64().expect("a video height")
}

#[test]
fn a_live_stream_runs_through_a_wasm_pipeline_and_plays_as_hls() {
    let o = pipeline_orchestrator("");
    let info = o.info();
    let offered = info["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["capability"] == "live-scale")
        .cloned()
        .expect("the pipeline is advertised");
    assert_eq!(offered["runner"], "wasm");
    assert_eq!(offered["price"]["price_per_unit"], 3);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);

    // Unknown capability and bad params are refused clearly.
    let (status, body) = start_stream(&gw, "no-such-thing", json!({}));
    assert_eq!(status, 503, "{body}");
    let (status, body) = start_stream(&gw, "live-scale", json!({"height": 5000}));
    assert!(status == 422 || status == 400, "{status} {body}");

    let (status, urls) = start_stream(&gw, "live-scale", json!({"height": 180}));
    assert_eq!(status, 200, "{urls}");
    let id = urls["stream_id"].as_str().expect("stream id").to_owned();
    let rtmp = urls["rtmp_url"].as_str().expect("rtmp url").to_owned();
    assert!(urls["hls_url"]
        .as_str()
        .is_some_and(|u| u.ends_with(".m3u8")));
    let mut ffmpeg = publish(&rtmp, 14);

    let first = eventually(Duration::from_secs(60), || {
        let l = listed(&gw, &id);
        (l.len() >= 2).then_some(l)
    })
    .expect("the pipeline's output was never listed as HLS");
    assert_eq!(
        segment_height(&gw, &id, &first[0]),
        180,
        "the pipeline scales to 180p"
    );

    // New params go over the control channel and change the following segments.
    let r = client()
        .post(urls["update_url"].as_str().expect("update url"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&json!({"height": 144}))
        .send()
        .expect("update");
    assert_eq!(r.status().as_u16(), 200);
    let later = eventually(Duration::from_secs(40), || {
        let l = listed(&gw, &id);
        l.last()
            .filter(|u| segment_height(&gw, &id, u) == 144)
            .cloned()
    });
    assert!(later.is_some(), "the update never reached the pipeline");

    let status = stream_status(&gw, &id);
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["segments_out"].as_u64() > Some(1), "{status}");
    assert!(status["paid"].as_u64() > Some(0), "{status}");

    let r = client()
        .post(urls["stop_url"].as_str().expect("stop url"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("stop");
    assert_eq!(r.status().as_u16(), 200);
    let stopped: Value = r.json().expect("json");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    // The orchestrator charged the sender for the stream's time.
    let charged = eventually(Duration::from_secs(10), || {
        let l = o.ledger();
        l["orchestrator"]
            .as_array()?
            .iter()
            .find(|r| r["capability"] == "live-scale/byoc")
            .and_then(|r| r["amount"].as_u64())
            .filter(|a| *a > 0)
    });
    assert!(
        charged.is_some(),
        "no stream time was charged: {}",
        o.ledger()
    );
}

#[test]
fn a_stream_whose_balance_runs_out_is_stopped() {
    let o = pipeline_orchestrator("debit_interval_secs = 1\nmin_balance_secs = 1\n");
    // The gateway pays 2 s ahead and never tops up.
    let gw = gateway(
        &[&o.url],
        "[gateway.streams]\npay_ahead_secs = 2\npayment_interval_secs = 3600\n",
    );
    wait_discovered(&gw, 1);
    let (status, urls) = start_stream(&gw, "live-scale", json!({}));
    assert_eq!(status, 200, "{urls}");
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    let mut ffmpeg = publish(urls["rtmp_url"].as_str().expect("rtmp"), 20);
    let stopped = eventually(Duration::from_secs(40), || {
        let s = stream_status(&gw, &id);
        (s["state"] == "stopped").then_some(s)
    })
    .expect("the stream was never stopped");
    assert!(
        stopped["stop_reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient balance")),
        "{stopped}"
    );
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    // The orchestrator released the stream: its capacity is free again.
    let free = eventually(Duration::from_secs(10), || {
        let info = o.info();
        info["models"]
            .as_array()?
            .iter()
            .find(|m| m["capability"] == "live-scale")
            .filter(|m| m["in_flight"] == 0)
            .map(drop)
    });
    assert!(
        free.is_some(),
        "the stream's capacity slot leaked: {}",
        o.info()
    );
}

#[test]
fn a_stream_moves_when_its_orchestrator_is_killed() {
    let mut orchestrators = [pipeline_orchestrator(""), pipeline_orchestrator("")];
    let urls: Vec<String> = orchestrators.iter().map(|o| o.url.clone()).collect();
    let gw = gateway(&[&urls[0], &urls[1]], "");
    wait_discovered(&gw, 2);
    let (status, started) = start_stream(&gw, "live-scale", json!({"height": 180}));
    assert_eq!(status, 200, "{started}");
    let id = started["stream_id"].as_str().expect("id").to_owned();
    let mut ffmpeg = publish(started["rtmp_url"].as_str().expect("rtmp"), 24);
    let before = eventually(Duration::from_secs(60), || {
        let s = stream_status(&gw, &id);
        (s["segments_out"].as_u64() >= Some(1)).then_some(s)
    })
    .expect("no output before the kill");
    let serving = before["orchestrator"]
        .as_str()
        .expect("orchestrator")
        .to_owned();
    let dead = urls.iter().position(|u| *u == serving).expect("known");
    orchestrators[dead].kill();
    let moved = eventually(Duration::from_secs(60), || {
        let s = stream_status(&gw, &id);
        (s["orchestrator"].as_str() == Some(urls[1 - dead].as_str())
            && s["segments_out"].as_u64() > before["segments_out"].as_u64())
        .then_some(s)
    });
    assert!(
        moved.is_some(),
        "the stream did not move: {}",
        stream_status(&gw, &id)
    );
    let s = stream_status(&gw, &id);
    assert_eq!(s["state"], "running", "{s}");
    assert!(s["swaps"].as_u64() >= Some(1), "{s}");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}

#[test]
fn batch_jobs_reach_a_registered_worker_and_registration_is_guarded() {
    // A worker that upper-cases what it is sent, and answers health checks.
    let worker = TestServer::start(
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
            )
            .route(
                "/shout",
                axum::routing::post(|body: String| async move { body.to_uppercase() }),
            ),
    );
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\n"),
        &[],
    );
    let register = |secret: &str, body: &Value| {
        client()
            .post(format!("{}/capability/register", o.url))
            .header("Authorization", secret)
            .json(body)
            .send()
            .expect("register")
    };
    let body = json!({"name": "shout", "url": worker.url, "capacity": 2, "price_per_unit": 5, "price_scaling": 1, "currency": "WEI"});
    assert_eq!(register("wrong", &body).status().as_u16(), 401);
    let bad = json!({"name": "Bad Name", "url": worker.url, "capacity": 1});
    assert_eq!(register(SECRET, &bad).status().as_u16(), 400);
    assert_eq!(register(SECRET, &body).status().as_u16(), 200);

    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let r = client()
        .post(format!("{}/process/request/shout", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Livepeer", job_header("shout", 10))
        .body("hello worker")
        .send()
        .expect("job");
    assert_eq!(r.status().as_u16(), 200);
    let balance = r
        .headers()
        .get("livepeer-balance")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // 10 s were paid up front at 5/s; the job took one second.
    assert_eq!(balance, Some(45));
    assert_eq!(r.text().expect("text"), "HELLO WORKER");

    // A missing or broken job header, and an unknown capability.
    let r = client()
        .post(format!("{}/process/request/shout", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .body("x")
        .send()
        .expect("job");
    assert_eq!(r.status().as_u16(), 400);
    let r = client()
        .post(format!("{}/process/request/shout", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Livepeer", job_header("nobody-offers-this", 10))
        .body("x")
        .send()
        .expect("job");
    assert_eq!(r.status().as_u16(), 503);

    // A worker that goes away is taken out of /info.
    drop(worker);
    let gone = eventually(Duration::from_secs(15), || {
        let info = o.info();
        (!info["models"]
            .as_array()?
            .iter()
            .any(|m| m["capability"] == "shout"))
        .then_some(())
    });
    assert!(gone.is_some(), "a dead worker is still advertised");
    let r = client()
        .post(format!("{}/capability/unregister", o.url))
        .header("Authorization", SECRET)
        .body("shout")
        .send()
        .expect("unregister");
    assert_eq!(r.status().as_u16(), 200);
}

/// A worker whose `/events` route answers server-sent events: `one` at once, `two` once the
/// test releases (bumps `release` past its value when the request came), then the end.
fn events_worker(release: &tokio::sync::watch::Sender<u32>) -> TestServer {
    use axum::response::IntoResponse as _;
    let release = release.clone();
    let events = move || {
        let mut released = release.subscribe();
        async move {
            let at_start = *released.borrow_and_update();
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let mut released = released.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>("data: one\n\n".to_owned()), 1)),
                        1 => {
                            let _ = released.wait_for(|v| *v > at_start).await;
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
    TestServer::start(
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
            )
            .route("/events", axum::routing::post(events)),
    )
}

/// Read `response` on a thread, handing over what arrives as it arrives.
pub(crate) fn chunks(
    mut response: reqwest::blocking::Response,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read as _;
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
    rx
}

/// Wait for text containing `needle` (or the end of the stream, which is `None`).
fn read_until(rx: &std::sync::mpsc::Receiver<String>, seen: &mut String, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(text) => seen.push_str(&text),
            Err(_) => return false,
        }
    }
    true
}

#[test]
fn streamed_batch_answers_pass_through_as_they_come_and_are_debited_while_they_run() {
    let (release, _) = tokio::sync::watch::channel(0u32);
    let worker = events_worker(&release);
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 1\ndebit_interval_secs = 1\n"),
        &[],
    );
    let r = client()
        .post(format!("{}/capability/register", o.url))
        .header("Authorization", SECRET)
        .json(&json!({"name": "events", "url": worker.url, "capacity": 1, "price_per_unit": 5, "price_scaling": 1, "currency": "WEI"}))
        .send()
        .expect("register");
    assert_eq!(r.status().as_u16(), 200);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let job = |timeout: u64| {
        client()
            .post(format!("{}/process/request/events", gw.url))
            .bearer_auth(CLIENT_TOKEN)
            .header("Livepeer", job_header("events", timeout))
            .body("{}")
            .send()
            .expect("job")
    };
    let charged = || {
        o.ledger()["orchestrator"]
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r["capability"] == "events/byoc")
                    .and_then(|r| r["amount"].as_u64())
            })
            .unwrap_or(0)
    };

    // The first event reaches the client while the worker still holds the second back.
    let r = job(30);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let rx = chunks(r);
    let mut seen = String::new();
    assert!(
        read_until(&rx, &mut seen, "data: one"),
        "the first event was held back: {seen:?}"
    );
    // While it runs, the orchestrator debits the stream's time every second (5 per second).
    let debited = eventually(Duration::from_secs(30), || (charged() >= 15).then_some(()));
    assert!(debited.is_some(), "no periodic debits: {}", o.ledger());
    release.send_modify(|v| *v += 1);
    assert!(
        read_until(&rx, &mut seen, "data: two"),
        "the second event never came: {seen:?}"
    );
    while rx.recv_timeout(Duration::from_secs(30)).is_ok() {}
    assert!(!seen.contains("error"), "{seen:?}");
    // Never more than the 30 s paid up front.
    assert!(charged() <= 150, "{}", o.ledger());

    // A worker that never finishes is cut at the job's deadline, with an error event, and its
    // capacity slot is free again.
    let rx = chunks(job(2));
    let mut seen = String::new();
    assert!(read_until(&rx, &mut seen, "data: one"), "{seen:?}");
    assert!(
        read_until(&rx, &mut seen, "event: error"),
        "no error at the deadline: {seen:?}"
    );
    assert!(seen.contains("timeout_seconds"), "{seen:?}");
    let rx = chunks(job(30));
    let mut seen = String::new();
    assert!(
        read_until(&rx, &mut seen, "data: one"),
        "the capacity slot was not freed: {seen:?}"
    );
    release.send_modify(|v| *v += 1);
    assert!(read_until(&rx, &mut seen, "data: two"), "{seen:?}");
}

/// `ffprobe` a file: the first video stream's size and average frame rate.
fn probe_video(path: &std::path::Path) -> (u64, u64, String) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,avg_frame_rate",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let s = &v["streams"][0];
    (
        s["width"].as_u64().unwrap_or(0),
        s["height"].as_u64().unwrap_or(0),
        s["avg_frame_rate"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn the_javascript_pipeline_changes_the_frame_rate_in_the_real_host() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "pipeline-fps-js",
        &artifact("examples/pipeline-fps-js.wasm"),
        &built_manifest("examples/pipeline-fps-js.toml"),
    );
    let fps = registry.load("pipeline-fps-js").expect("loads");
    let transcoder = weir_media::transcode::Transcoder::new(Default::default()).expect("x264");
    assert!(registry.runtime().provide_media(std::sync::Arc::new(
        weir_orchestrator::GuestMedia::new(std::sync::Arc::new(transcoder))
    )));
    let clips = tempfile::tempdir().expect("tempdir");
    let clip = clips.path().join("in.ts");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            "2",
        ])
        .args(["-c:v", "libx264", "-g", "30", "-f", "mpegts", "-y"])
        .arg(&clip)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let segment = || weir_runtime::media::Segment {
        seq: 1,
        duration_ms: 2000,
        content_type: "video/mp2t".into(),
        data: std::fs::read(&clip).expect("clip").into(),
    };
    let info = weir_runtime::StreamInfo {
        id: "s".into(),
        capability: "fps".into(),
        params: vec![weir_runtime::Param {
            name: "fps".into(),
            value: weir_runtime::ParamValue::Integer(10),
        }],
    };
    let mut stream = fps.start_stream(info).expect("start");
    let check = |stream: &mut weir_runtime::PipelineStream, want: &str| {
        let out = stream.on_segment(segment()).expect("segment");
        assert_eq!(out.len(), 1);
        let path = clips
            .path()
            .join(format!("out-{}.ts", want.replace('/', "-")));
        std::fs::write(&path, &*out[0].data).expect("write");
        let (w, h, rate) = probe_video(&path);
        assert_eq!((w, h), (640, 360));
        assert_eq!(rate, want);
    };
    check(&mut stream, "10/1");
    stream.on_control(r#"{"keep":"alive"}"#).expect("keepalive");
    stream.on_control(r#"{"fps": 5}"#).expect("control");
    check(&mut stream, "5/1");
    assert!(stream.on_control(r#"{"fps": 500}"#).is_err());
    assert!(stream.on_control("not json").is_err());
    check(&mut stream, "5/1");
    stream.stop().expect("stop");
}

/// A pytrickle worker (`examples/byoc-worker-py`) registered with `orchestrator`; killed on drop.
struct PyWorker(std::process::Child);

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pytrickle_worker(python: &str, orchestrator: &str) -> PyWorker {
    use std::io::BufRead as _;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/byoc-worker-py/worker.py");
    let mut child = Command::new(python)
        .arg(script)
        .args([
            "--port",
            "0",
            "--orchestrator",
            orchestrator,
            "--secret",
            SECRET,
        ])
        .args([
            "--name",
            "pytrickle-invert",
            "--price",
            "1",
            "--capacity",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the pytrickle worker");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert!(
        line.starts_with("worker ready"),
        "the worker did not start: {line:?}"
    );
    PyWorker(child)
}

/// Wire compatibility with an unmodified Livepeer worker library: a `pytrickle` worker
/// registers itself, serves a batch job and a live stream over Weir's trickle channels.
#[test]
#[ignore = "needs the pytrickle venv (PyTorch); run by `make test-interop`"]
fn a_pytrickle_worker_registers_and_serves_a_stream() {
    let python = std::env::var("WEIR_PYTRICKLE_PYTHON")
        .expect("WEIR_PYTRICKLE_PYTHON: the python of examples/byoc-worker-py/setup.sh");
    let o = Weir::start(
        "orchestrator",
        &format!("[orchestrator.byoc]\nsecret = \"{SECRET}\"\nhealth_interval_secs = 2\n"),
        &[],
    );
    let _worker = pytrickle_worker(&python, &o.url);
    assert!(
        o.info()["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["capability"] == "pytrickle-invert")),
        "the worker did not register: {}",
        o.info()
    );
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);

    // Batch: the worker's own route.
    let r = client()
        .post(format!("{}/process/request/uppercase", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Livepeer", job_header("pytrickle-invert", 10))
        .json(&json!({"text": "hi"}))
        .send()
        .expect("batch");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().expect("json");
    assert_eq!(body["text"], "HI", "{body}");

    // A stream: RTMP in, through the worker's trickle subscriber and publisher, HLS out.
    let (status, urls) = start_stream(
        &gw,
        "pytrickle-invert",
        json!({"width": 320, "height": 240}),
    );
    assert_eq!(status, 200, "{urls}");
    let id = urls["stream_id"].as_str().expect("id").to_owned();
    let mut ffmpeg = publish(urls["rtmp_url"].as_str().expect("rtmp"), 20);
    let segments = eventually(Duration::from_secs(90), || {
        let l = listed(&gw, &id);
        (l.len() >= 2).then_some(l)
    })
    .expect("the worker's output never reached HLS");
    assert_eq!(segment_height(&gw, &id, &segments[0]), 240);
    let r = client()
        .post(urls["update_url"].as_str().expect("update"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&json!({"effect": "flip"}))
        .send()
        .expect("update");
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .post(urls["stop_url"].as_str().expect("stop"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("stop");
    assert_eq!(r.status().as_u16(), 200);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}
