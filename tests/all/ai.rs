//! The AI API end to end on loopback with real processes: `weir gateway` in front of
//! `weir orchestrator`s running the real ONNX upscaler, or forwarding to a runner test server
//! (in this process) that speaks Livepeer's AI runner API; failover, max price, price
//! hot-swap, payments, and bad input.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const CLIENT_TOKEN: &str = "client-token-0123456789abcdef";
pub(crate) const UPSCALE_MODEL: &str = "upscalerjs/default-model";
pub(crate) const T2I_MODEL: &str = "test/t2i";

/// The ONNX Runtime library the tests load: `ORT_DYLIB_PATH`, else the tools venv's.
pub(crate) fn onnxruntime() -> String {
    let configured = std::env::var("ORT_DYLIB_PATH")
        .ok()
        .filter(|p| !p.is_empty());
    configured.unwrap_or_else(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py");
        weir_models::onnx::find_onnxruntime(&venv)
            .expect("libonnxruntime not found: run `make tools` or set ORT_DYLIB_PATH")
            .display()
            .to_string()
    })
}

pub(crate) fn upscale_orchestrator(capacity: u32) -> Weir {
    let config = format!(
        "[[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"{UPSCALE_MODEL}\"\nrunner = \"onnx\"\nmodel_path = \"{}\"\nonnxruntime = \"{}\"\ncapacity = {capacity}\n",
        artifact("models/upscale-2x.onnx").display(),
        onnxruntime()
    );
    Weir::start("orchestrator", &config, &[])
}

pub(crate) fn http_orchestrator(runner: &str, capacity: u32, timeout_secs: u64) -> Weir {
    let config = format!(
        "[orchestrator]\nhealth_secs = 1\n[[orchestrator.models]]\npipeline = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\nrunner = \"http\"\nurl = \"{runner}\"\ncapacity = {capacity}\ntimeout_secs = {timeout_secs}\n"
    );
    Weir::start("orchestrator", &config, &[])
}

/// A gateway in front of `orchestrators`; `extra` is appended to its `[gateway]` section.
pub(crate) fn gateway(orchestrators: &[&str], extra: &str) -> Weir {
    let list = orchestrators
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let refresh = if extra.contains("refresh_secs") {
        ""
    } else {
        "refresh_secs = 1\n"
    };
    let config = format!(
        "[gateway]\norchestrators = [{list}]\nauth_tokens = [\"{CLIENT_TOKEN}\"]\nsuspend_secs = 60\n{refresh}{extra}\n"
    );
    Weir::start("gateway", &config, &[])
}

/// The upscale fixture as a form part named `file_name`, labelled `mime`.
pub(crate) fn fixture_part(file_name: &str, mime: &str) -> reqwest::blocking::multipart::Part {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    reqwest::blocking::multipart::Part::bytes(png)
        .file_name(file_name.to_owned())
        .mime_str(mime)
        .expect("mime")
}

/// An `/upscale` form: a prompt and the fixture as a PNG.
pub(crate) fn upscale_form() -> reqwest::blocking::multipart::Form {
    reqwest::blocking::multipart::Form::new()
        .text("prompt", "sharper")
        .part("image", fixture_part("fixture.png", "image/png"))
}

pub(crate) fn post_upscale(gw: &Weir) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/upscale", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .multipart(upscale_form())
        .send()
        .expect("upscale")
}

fn t2i(gw: &Weir, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/text-to-image", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .json(body)
        .send()
        .expect("text-to-image")
}

/// Width and height from a PNG's IHDR chunk.
pub(crate) fn png_size(data: &[u8]) -> (u32, u32) {
    assert_eq!(&data[1..4], b"PNG", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&data[16..20]), be(&data[20..24]))
}

fn detail(body: &Value) -> String {
    body["detail"]["msg"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Wait until the gateway's discovery has info from `n` orchestrators.
pub(crate) fn wait_discovered(gw: &Weir, n: usize) {
    let seen = eventually(Duration::from_secs(20), || {
        let v: Value = client()
            .get(format!("{}/gateway/orchestrators", gw.url))
            .bearer_auth(CLIENT_TOKEN)
            .send()
            .ok()?
            .json()
            .ok()?;
        let with_info = v["orchestrators"]
            .as_array()?
            .iter()
            .filter(|o| !o["info"].is_null())
            .count();
        (with_info >= n).then_some(())
    });
    assert!(seen.is_some(), "the gateway never saw {n} orchestrators");
}

fn sum_amounts(rows: &Value) -> u64 {
    rows.as_array()
        .map(|r| r.iter().filter_map(|x| x["amount"].as_u64()).sum())
        .unwrap_or(0)
}

/// A small HTTP server on a thread of its own; stopped on drop.
pub(crate) struct TestServer {
    pub(crate) url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) fn start(router: axum::Router) -> TestServer {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = rx.recv().expect("addr");
        TestServer {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the runner test server behaves.
#[derive(Default)]
pub(crate) struct RunnerState {
    pub(crate) delay_ms: AtomicU64,
    pub(crate) fail: std::sync::atomic::AtomicBool,
    pub(crate) served: AtomicUsize,
    /// `/text-to-image` requests received (counted before the delay is read).
    pub(crate) started: AtomicUsize,
    /// `/audio-to-text` requests received: each one's text fields and audio bytes.
    pub(crate) transcribed: parking_lot::Mutex<Vec<Heard>>,
}

/// One `/audio-to-text` request as the runner test server read it: its text fields and audio.
pub(crate) type Heard = (std::collections::BTreeMap<String, String>, Vec<u8>);

/// What the runner test server says every audio says.
pub(crate) const TRANSCRIPT: &str = "hello from the runner";

/// A runner speaking Livepeer's AI runner API for `/text-to-image`: it answers one image per
/// requested image (a real PNG as a data URL) with the request's seed.
pub(crate) fn runner_server(state: Arc<RunnerState>) -> TestServer {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let s = state.clone();
    let heard = state.clone();
    let router = axum::Router::new()
        .route("/health", get(|| async { Json(json!({"status": "OK"})) }))
        .route(
            "/audio-to-text",
            post(move |mut form: axum::extract::Multipart| {
                let heard = heard.clone();
                async move {
                    let mut fields = std::collections::BTreeMap::new();
                    let mut audio = Vec::new();
                    while let Ok(Some(part)) = form.next_field().await {
                        let name = part.name().unwrap_or_default().to_owned();
                        let data = part.bytes().await.expect("part");
                        if name == "audio" {
                            audio = data.to_vec();
                        } else {
                            fields.insert(name, String::from_utf8_lossy(&data).into_owned());
                        }
                    }
                    heard.transcribed.lock().push((fields, audio));
                    Json(json!({
                        "text": TRANSCRIPT,
                        "chunks": [{"timestamp": [0.0, 1.5], "text": TRANSCRIPT}]
                    }))
                }
            }),
        )
        .route(
            "/llm",
            post(|Json(body): Json<Value>| async move {
                // The runner answers whole; streaming is the gateway's job.
                assert_eq!(body["stream"], false);
                Json(json!({
                    "id": "c1", "model": body["model"], "created": 1,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
                }))
            }),
        )
        .route(
            "/text-to-image",
            post(move |Json(body): Json<Value>| {
                let s = s.clone();
                let url = url.clone();
                async move {
                    s.started.fetch_add(1, Ordering::SeqCst);
                    let delay = s.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    if s.fail.load(Ordering::Relaxed) {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"detail": {"msg": "CUDA out of memory"}})),
                        )
                            .into_response();
                    }
                    s.served.fetch_add(1, Ordering::Relaxed);
                    let n = body["num_images_per_prompt"].as_u64().unwrap_or(1);
                    let seed = body["seed"].as_u64().unwrap_or(7);
                    let images: Vec<Value> = (0..n)
                        .map(|_| json!({"url": url, "seed": seed, "nsfw": false}))
                        .collect();
                    Json(json!({ "images": images })).into_response()
                }
            }),
        );
    TestServer::start(router)
}

#[test]
fn upscale_runs_the_real_onnx_model_through_gateway_and_orchestrator() {
    let o1 = upscale_orchestrator(2);
    let o2 = upscale_orchestrator(2);
    let gw = gateway(&[&o1.url, &o2.url], "");
    wait_discovered(&gw, 2);

    // The orchestrator advertises the model warm, with the pricing component's price.
    let info = o1.info();
    let m = &info["models"][0];
    assert_eq!(m["capability"], "upscale");
    assert_eq!(m["model_id"], UPSCALE_MODEL);
    assert_eq!(m["warm"], true);
    assert_eq!(m["runner"], "onnx");
    assert_eq!(m["price"]["price_per_unit"], 4768371);
    assert_eq!(m["capacity"], 2);

    let response = post_upscale(&gw);
    assert_eq!(response.status(), 200);
    let charge: u64 = response.headers()["weir-charge"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    // 128x128 input pixels at 4768371 per 1e6 pixels, rounded up.
    assert_eq!(charge, (128u64 * 128 * 4_768_371).div_ceil(1_000_000));
    let body: Value = response.json().expect("json");
    let url = body["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/results/", gw.url)), "{url}");
    let image = client().get(url).send().expect("result");
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    let bytes = image.bytes().expect("bytes");
    assert_eq!(png_size(&bytes), (256, 256));

    // Without a token, or with a wrong one: 401 in the Livepeer error shape.
    let anonymous = client()
        .post(format!("{}/text-to-image", gw.url))
        .json(&json!({"prompt": "x"}))
        .send()
        .expect("send");
    assert_eq!(anonymous.status(), 401);
    assert!(detail(&anonymous.json().expect("json")).contains("missing bearer token"));
    let wrong = client()
        .post(format!("{}/text-to-image", gw.url))
        .bearer_auth("not-the-token")
        .json(&json!({"prompt": "x"}))
        .send()
        .expect("send");
    assert_eq!(wrong.status(), 401);

    // Both sides' ledgers agree on the charge.
    let gl = gw.ledger();
    assert_eq!(sum_amounts(&gl["gateway"]), charge);
    assert_eq!(
        sum_amounts(&o1.ledger()["orchestrator"]) + sum_amounts(&o2.ledger()["orchestrator"]),
        charge
    );

    // The OpenAPI document is served and describes the same rules.
    let doc: Value = client()
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .expect("openapi")
        .json()
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/upscale"]["post"].is_object());

    // A max price below every offer: 503 naming the max price and the cheapest offer.
    let cheap = gateway(
        &[&o1.url, &o2.url],
        "[gateway.max_price]\nupscale = \"1/1000000\"",
    );
    wait_discovered(&cheap, 2);
    let refused = post_upscale(&cheap);
    assert_eq!(refused.status(), 503);
    let msg = detail(&refused.json().expect("json"));
    assert!(
        msg.contains("max price 1/1000000") && msg.contains("4768371/1000000"),
        "{msg}"
    );
}

#[test]
fn orchestrators_listed_by_a_webhook_are_discovered_and_used() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let o = http_orchestrator(&runner.url, 2, 30);
    let listed = Arc::new(parking_lot::Mutex::new(
        json!([{"address": o.url, "score": 1.0}]),
    ));
    let l = listed.clone();
    let hook = TestServer::start(axum::Router::new().route(
        "/orchestrators",
        get(move || {
            let l = l.clone();
            async move { Json(l.lock().clone()) }
        }),
    ));
    let gw = gateway(
        &[],
        &format!(
            "orch_webhook_url = \"{}/orchestrators\"\nwebhook_secs = 1",
            hook.url
        ),
    );
    wait_discovered(&gw, 1);
    let r = t2i(&gw, &json!({"prompt": "x"}));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["weir-orchestrator"], o.url.as_str());
    assert_eq!(state.served.load(Ordering::Relaxed), 1);

    // Dropped from the list: no longer offered once the webhook answer is refreshed.
    *listed.lock() = json!([]);
    let gone = eventually(Duration::from_secs(10), || {
        let r = t2i(&gw, &json!({"prompt": "x"}));
        (r.status() == 503).then_some(())
    });
    assert!(gone.is_some(), "the orchestrator was never dropped");
}

#[test]
fn llm_answers_whole_or_as_server_sent_events() {
    let runner = runner_server(Arc::new(RunnerState::default()));
    let config = format!(
        "[[orchestrator.models]]\npipeline = \"llm\"\nmodel_id = \"test/llm\"\nrunner = \"http\"\nurl = \"{}\"\n",
        runner.url
    );
    let o = Weir::start("orchestrator", &config, &[]);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let ask = |stream: bool| {
        client()
            .post(format!("{}/llm", gw.url))
            .bearer_auth(CLIENT_TOKEN)
            .json(&json!({"messages": [{"role": "user", "content": "hi"}], "model": "test/llm", "max_tokens": 8, "stream": stream}))
            .send()
            .expect("send")
    };
    let whole = ask(false);
    assert_eq!(whole.status(), 200);
    let v: Value = whole.json().expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello there");

    let streamed = ask(true);
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let text = streamed.text().expect("text");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let first: Value = serde_json::from_str(events[0]).expect("event json");
    assert_eq!(first["choices"][0]["delta"]["content"], "Hello there");
    let last: Value = serde_json::from_str(events[events.len() - 2]).expect("event json");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 5);
}

#[test]
fn a_wasm_pipeline_serves_a_capability() {
    let config = "[[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"echo\"\nrunner = \"wasm\"\ncomponent = \"echo-pipeline\"\n";
    let o = Weir::start_with("orchestrator", config, &[], |dir| {
        place(
            dir,
            "echo-pipeline",
            &artifact("test-programs/echo-pipeline.wasm"),
            &manifest("echo-pipeline", "pipeline", ""),
        );
    });
    assert_eq!(o.info()["models"][0]["runner"], "wasm");
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let form = reqwest::blocking::multipart::Form::new()
        .text("prompt", "same again")
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png.clone())
                .file_name("fixture.png")
                .mime_str("image/png")
                .expect("mime"),
        );
    let r = client()
        .post(format!("{}/image-to-image", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .multipart(form)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().expect("json");
    let url = body["images"][0]["url"].as_str().expect("url");
    let out = client()
        .get(url)
        .send()
        .expect("get")
        .bytes()
        .expect("bytes");
    // The echo pipeline hands its input back: the stored result is the uploaded image.
    assert_eq!(out.as_ref(), png.as_slice());
}

/// A runner answering `/image-to-video` as Livepeer's AI runner does, with `frames: [[Media]]`:
/// 12 PNG frames of a moving test pattern (128x96, made with the `ffmpeg` CLI) as data URLs.
fn video_runner_server(dir: &Path) -> TestServer {
    let pattern = dir.join("f%02d.png");
    let made = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=128x96:rate=8"])
        .args(["-frames:v", "12", "-start_number", "0"])
        .arg(&pattern)
        .status()
        .expect("run ffmpeg");
    assert!(made.success(), "ffmpeg could not make the frames");
    let frames: Vec<Value> = (0..12)
        .map(|i| {
            let png = std::fs::read(dir.join(format!("f{i:02}.png"))).expect("frame");
            let data = base64::engine::general_purpose::STANDARD.encode(png);
            json!({"url": format!("data:image/png;base64,{data}"), "seed": 42, "nsfw": false})
        })
        .collect();
    let answer = json!({ "frames": [frames] });
    let router = axum::Router::new()
        .route("/health", get(|| async { Json(json!({"status": "OK"})) }))
        .route(
            "/image-to-video",
            // Reads the whole upload before answering, as a runner does: answering before the
            // body is read can reset the connection while the orchestrator still sends it.
            post(move |_upload: axum::body::Bytes| {
                let answer = answer.clone();
                async move { Json(answer) }
            }),
        );
    TestServer::start(router)
}

#[test]
fn image_to_video_answers_one_mp4_encoded_from_the_runners_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = video_runner_server(dir.path());
    let config = format!(
        "[[orchestrator.models]]\npipeline = \"image-to-video\"\nmodel_id = \"test/i2v\"\nrunner = \"http\"\nurl = \"{}\"\n",
        runner.url
    );
    let o = Weir::start("orchestrator", &config, &[]);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let form = reqwest::blocking::multipart::Form::new()
        .text("fps", "8")
        .part("image", fixture_part("fixture.png", "image/png"));
    let r = client()
        .post(format!("{}/image-to-video", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .multipart(form)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().expect("json");
    // Livepeer's shape: ONE entry in `images[]`, the video.
    let images = body["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "{body}");
    assert_eq!(images[0]["seed"], 42);
    assert_eq!(images[0]["nsfw"], false);
    let url = images[0]["url"].as_str().expect("url");
    let video = client()
        .get(url)
        .send()
        .expect("get")
        .bytes()
        .expect("bytes");
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, &video).expect("write");
    let probe = ffprobe_json(
        &path.to_string_lossy(),
        &[
            "-count_frames",
            "-show_format",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ],
    );
    let stream = &probe["streams"][0];
    assert_eq!(stream["codec_name"], "h264", "{probe}");
    assert_eq!(stream["nb_read_frames"], "12", "{probe}");
    assert_eq!(
        (&stream["width"], &stream["height"]),
        (&json!(128), &json!(96))
    );
    let format = probe["format"]["format_name"].as_str().unwrap_or_default();
    assert!(format.contains("mp4"), "{probe}");
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("duration");
    assert!(
        (duration - 1.5).abs() < 0.05,
        "12 frames at 8 fps: {duration} s"
    );
}

/// 4 clients × 6 sequential `/text-to-image` requests through `gw_url`: (status, the
/// `weir-orchestrator` that served it) of each, client by client in order.
fn t2i_load(gw_url: String) -> std::thread::JoinHandle<Vec<(u16, Option<String>)>> {
    std::thread::spawn(move || {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let gw_url = gw_url.clone();
                    s.spawn(move || {
                        (0..6)
                            .map(|i| {
                                let r = client()
                                    .post(format!("{gw_url}/text-to-image"))
                                    .bearer_auth(CLIENT_TOKEN)
                                    .json(&json!({"prompt": format!("a cat {i}"), "model_id": T2I_MODEL}))
                                    .send()
                                    .expect("send");
                                let by = r
                                    .headers()
                                    .get("weir-orchestrator")
                                    .map(|v| v.to_str().unwrap_or("").to_owned());
                                (r.status().as_u16(), by)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        })
    })
}

#[test]
fn text_to_image_fails_over_when_an_orchestrator_dies_mid_load() {
    // Each orchestrator has its own runner, which holds every request for 1 s, so a request
    // in flight on either orchestrator is seen at its runner.
    let states = [
        Arc::new(RunnerState::default()),
        Arc::new(RunnerState::default()),
    ];
    for s in &states {
        s.delay_ms.store(1000, Ordering::SeqCst);
    }
    let runners: Vec<TestServer> = states.iter().map(|s| runner_server(s.clone())).collect();
    let mut orchestrators = [
        http_orchestrator(&runners[0].url, 8, 30),
        http_orchestrator(&runners[1].url, 8, 30),
    ];
    let urls = [orchestrators[0].url.clone(), orchestrators[1].url.clone()];
    // (`gateway` suspends failing orchestrators for 60 s, far longer than this test.)
    let gw = gateway(&[&urls[0], &urls[1]], "retry_budget_secs = 20");
    wait_discovered(&gw, 2);

    let load = t2i_load(gw.url.clone());
    // The first orchestrator a request reaches dies while that request is running there.
    let victim = eventually(Duration::from_secs(60), || {
        states
            .iter()
            .position(|s| s.started.load(Ordering::SeqCst) > 0)
    })
    .expect("no request ever reached a runner");
    orchestrators[victim].kill();
    let (dead, survivor) = (&urls[victim], &urls[1 - victim]);
    let answers = load.join().expect("load");

    // Every request succeeded, the ones cut off by the kill on the survivor.
    assert_eq!(answers.len(), 24);
    for (status, by) in &answers {
        assert_eq!(
            *status, 200,
            "every request must succeed through failover: {answers:?}"
        );
        assert!(
            by.as_deref() == Some(survivor) || by.as_deref() == Some(dead),
            "{answers:?}"
        );
    }
    // Each client's last request started well after the kill: the survivor served it.
    for client in answers.chunks(6) {
        assert_eq!(
            client[5].1.as_deref(),
            Some(survivor.as_str()),
            "{answers:?}"
        );
    }
    // The request in flight on the dead one failed there (and was retried elsewhere).
    let failed = metric(
        &gw.metrics(),
        &format!("weir_gateway_attempts_total{{orchestrator=\"{dead}\",outcome=\"failed\"}}"),
    );
    assert!(
        failed.unwrap_or(0.0) >= 1.0,
        "the attempt in flight on the dead orchestrator was not counted as failed: {failed:?}"
    );
    // And the dead one is left out of selection now.
    let view: Value = client()
        .get(format!("{}/gateway/orchestrators", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("view")
        .json()
        .expect("json");
    let shown = view["orchestrators"]
        .as_array()
        .expect("list")
        .iter()
        .find(|o| o["url"] == dead.as_str())
        .expect("the dead orchestrator is still known");
    assert!(
        shown["suspended_because"].is_string(),
        "not suspended: {shown}"
    );
    assert!(
        states[1 - victim].served.load(Ordering::SeqCst) > 0,
        "the survivor's runner served nothing"
    );
}

#[test]
fn concurrent_jobs_charge_exactly_what_both_ledgers_record() {
    let state = Arc::new(RunnerState::default());
    state.delay_ms.store(20, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    // Capacity 2 each: with 6 clients some attempts hit "insufficient capacity" and move on.
    let o1 = http_orchestrator(&runner.url, 2, 30);
    let o2 = http_orchestrator(&runner.url, 2, 30);
    let gw = gateway(&[&o1.url, &o2.url], "max_attempts = 10");
    wait_discovered(&gw, 2);
    let gw_url = gw.url.clone();
    let results: Vec<(u16, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let gw_url = gw_url.clone();
                s.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let r = client()
                                .post(format!("{gw_url}/text-to-image"))
                                .bearer_auth(CLIENT_TOKEN)
                                .json(&json!({"prompt": "x", "width": 256 + 8 * t, "height": 64 * (1 + i % 3), "num_images_per_prompt": 1 + i % 2}))
                                .send()
                                .expect("send");
                            let charge = r
                                .headers()
                                .get("weir-charge")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            (r.status().as_u16(), charge)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok: Vec<u64> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, c)| *c)
        .collect();
    let others: Vec<u16> = results
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != 200)
        .collect();
    // Every refusal is "no capacity anywhere" after the retry budget, never a lost payment.
    assert!(others.iter().all(|s| *s == 503), "{others:?}");
    assert!(ok.len() >= 20, "too few served: {}", ok.len());
    let total: u64 = ok.iter().sum();
    assert_eq!(sum_amounts(&gw.ledger()["gateway"]), total);
    assert_eq!(
        sum_amounts(&o1.ledger()["orchestrator"]) + sum_amounts(&o2.ledger()["orchestrator"]),
        total
    );
    assert_eq!(state.served.load(Ordering::Relaxed), ok.len());
    // Nothing is left held: every capacity slot came back.
    for o in [&o1, &o2] {
        assert_eq!(o.info()["models"][0]["in_flight"], 0);
    }
}

#[test]
fn a_hot_swapped_price_shows_in_info_and_in_the_ledger() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state);
    let o = http_orchestrator(&runner.url, 4, 30);
    // The gateway refreshes rarely, so it meets the new price through a refused payment.
    let gw = gateway(&[&o.url], "refresh_secs = 3600");
    wait_discovered(&gw, 1);
    let body = json!({"prompt": "x", "width": 512, "height": 512});
    let first = t2i(&gw, &body);
    assert_eq!(first.status(), 200);
    let c1: u64 = first.headers()["weir-charge"]
        .to_str()
        .expect("a")
        .parse()
        .expect("n");
    assert_eq!(c1, (512u64 * 512 * 4_768_371).div_ceil(1_000_000));

    // Swap the pricing component's configuration: text-to-image now costs 3x.
    let manifest = built_manifest("components/default-pricing.toml").replace(
        "\"price.text-to-image\" = \"4768371/1000000\"",
        "\"price.text-to-image\" = \"14305113/1000000\"",
    );
    assert!(manifest.contains("14305113"));
    std::fs::write(o.components().join("default-pricing.toml"), manifest).expect("write");
    let seen = eventually(Duration::from_secs(10), || {
        (o.info()["models"][0]["price"]["price_per_unit"] == 14305113).then_some(())
    });
    assert!(seen.is_some(), "the new price never showed in /info");

    let second = t2i(&gw, &body);
    assert_eq!(second.status(), 200);
    let c2: u64 = second.headers()["weir-charge"]
        .to_str()
        .expect("a")
        .parse()
        .expect("n");
    assert_eq!(c2, (512u64 * 512 * 14_305_113).div_ceil(1_000_000));
    assert_eq!(sum_amounts(&gw.ledger()["gateway"]), c1 + c2);
    assert_eq!(sum_amounts(&o.ledger()["orchestrator"]), c1 + c2);
    assert_eq!(
        metric(
            &gw.metrics(),
            &format!(
                "weir_gateway_attempts_total{{orchestrator=\"{}\",outcome=\"repriced\"}}",
                o.url
            )
        ),
        Some(1.0)
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_nothing_is_charged() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let o1 = http_orchestrator(&runner.url, 2, 1);
    let o2 = http_orchestrator(&runner.url, 2, 1);
    let gw = gateway(&[&o1.url, &o2.url], "max_upload_mib = 1");
    wait_discovered(&gw, 2);
    let http = client();
    let post = |path: &str| {
        http.post(format!("{}/{path}", gw.url))
            .bearer_auth(CLIENT_TOKEN)
    };

    let r = post("text-to-image")
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    assert!(detail(&r.json().expect("json")).contains("not valid JSON"));

    let r = t2i(&gw, &json!({"width": "wide", "height": 4096}));
    assert_eq!(r.status(), 422);
    let v: Value = r.json().expect("json");
    let fields: Vec<&str> = v["detail"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["loc"][1].as_str())
        .collect();
    assert_eq!(fields, ["prompt", "width", "height"]);

    let r = post("text-to-image")
        .header("content-type", "text/plain")
        .body("prompt=x")
        .send()
        .expect("send");
    assert_eq!(r.status(), 415);

    let big = vec![0u8; 2 << 20];
    let form = reqwest::blocking::multipart::Form::new()
        .text("prompt", "x")
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(big)
                .file_name("big.png")
                .mime_str("image/png")
                .expect("mime"),
        );
    let r = post("upscale").multipart(form).send().expect("send");
    assert_eq!(r.status(), 413);

    let form = reqwest::blocking::multipart::Form::new()
        .text("prompt", "x")
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(b"GIF89a\x01\x00\x01\x00".to_vec())
                .file_name("x.gif")
                .mime_str("image/gif")
                .expect("mime"),
        );
    let r = post("upscale").multipart(form).send().expect("send");
    assert_eq!(r.status(), 415);
    assert!(detail(&r.json().expect("json")).contains("image/gif"));

    // A model nobody serves, and a capability nobody serves.
    let r = t2i(
        &gw,
        &json!({"prompt": "x", "model_id": "nobody/serves-this"}),
    );
    assert_eq!(r.status(), 503);
    let msg = detail(&r.json().expect("json"));
    assert!(
        msg.contains("nobody/serves-this") && msg.contains(T2I_MODEL),
        "{msg}"
    );
    let r = post_upscale(&gw);
    assert_eq!(r.status(), 503);
    assert!(detail(&r.json().expect("json")).contains("no orchestrator offers upscale"));

    // The runner fails on every orchestrator: 503 with each cause, nothing charged.
    state.fail.store(true, Ordering::Relaxed);
    let r = t2i(&gw, &json!({"prompt": "x"}));
    assert_eq!(r.status(), 503);
    let msg = detail(&r.json().expect("json"));
    assert!(msg.contains("CUDA out of memory"), "{msg}");
    state.fail.store(false, Ordering::Relaxed);

    // The runner times out (the orchestrators allow 1 s): no charge either.
    let gw2 = gateway(&[&o1.url, &o2.url], "");
    wait_discovered(&gw2, 2);
    state.delay_ms.store(2500, Ordering::Relaxed);
    let r = t2i(&gw2, &json!({"prompt": "x"}));
    assert_eq!(r.status(), 503);
    let msg = detail(&r.json().expect("json"));
    assert!(msg.contains("did not answer within"), "{msg}");
    state.delay_ms.store(0, Ordering::Relaxed);

    for g in [&gw, &gw2] {
        assert_eq!(sum_amounts(&g.ledger()["gateway"]), 0);
    }
    for o in [&o1, &o2] {
        assert_eq!(sum_amounts(&o.ledger()["orchestrator"]), 0);
        let info = o.info();
        assert_eq!(info["models"][0]["in_flight"], 0, "a capacity slot leaked");
    }

    // No orchestrator reachable at all.
    let lonely = gateway(&["127.0.0.1:9"], "");
    let r = t2i(&lonely, &json!({"prompt": "x"}));
    assert_eq!(r.status(), 503);
    assert!(detail(&r.json().expect("json")).contains("no orchestrator offers text-to-image"));
}

#[test]
fn orchestrators_refuse_jobs_without_a_valid_payment() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let o = http_orchestrator(&runner.url, 2, 30);
    let post = |payment: Option<String>| {
        let mut r = client()
            .post(format!("{}/text-to-image", o.url))
            .json(&json!({"prompt": "x", "width": 64, "height": 64}));
        if let Some(p) = payment {
            r = r.header("weir-payment", p);
        }
        r.send().expect("send")
    };
    let r = post(None);
    assert_eq!(r.status(), 402);
    assert!(detail(&r.json().expect("json")).contains("payment required"));

    // The test gateways' wallet: the only sender test orchestrators trust.
    let wallet = test_wallet();
    let price = weir_payments::UnitPrice {
        price_per_unit: 4768371,
        pixels_per_unit: 1_000_000,
    };
    let account = format!("text-to-image/{T2I_MODEL}");
    let cost = (64u64 * 64 * 4_768_371).div_ceil(1_000_000);
    // Paying one unit short: 402 with the balance held without the payment (taken back), the
    // payment and the cost.
    let r = post(Some(wallet.pay("p1", &account, cost - 1, price)));
    assert_eq!(r.status(), 402);
    let msg = detail(&r.json().expect("json"));
    assert!(
        msg.contains("holds 0 for")
            && msg.contains(&format!("this payment of {} is not applied", cost - 1))
            && msg.contains(&format!("costs {cost}")),
        "{msg}"
    );
    // Agreeing to a lower price than quoted: 402 naming the price.
    let low = weir_payments::UnitPrice {
        price_per_unit: 1,
        pixels_per_unit: 1_000_000,
    };
    let r = post(Some(wallet.pay("p2", &account, cost, low)));
    assert_eq!(r.status(), 402);
    assert!(detail(&r.json().expect("json")).contains("price changed"));
    // A payment signed by another key in this sender's name: 401.
    let other = weir_payments::credit::Wallet::generate();
    let header = wallet.pay("p3", &account, cost, price);
    let forged_sig = other.pay("p3", &account, cost, price);
    let forged = format!(
        "{}.{}",
        header.split_once('.').expect("form").0,
        forged_sig.split_once('.').expect("form").1
    );
    assert_eq!(post(Some(forged)).status(), 401);
    // Exact payment: served, charged once, balance 0.
    let r = post(Some(wallet.pay("p4", &account, cost, price)));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["weir-charge"], cost.to_string().as_str());
    assert_eq!(r.headers()["weir-balance"], "0");
    // The same payment id again adds nothing: the balance is spent.
    let r = post(Some(wallet.pay("p4", &account, cost, price)));
    assert_eq!(r.status(), 402);
    assert_eq!(state.served.load(Ordering::Relaxed), 1);
    assert_eq!(sum_amounts(&o.ledger()["orchestrator"]), cost);
}

#[test]
fn a_lying_orchestrator_is_never_paid_more_than_agreed() {
    // An orchestrator that serves results but reports a huge charge and an empty balance.
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let info = Arc::new(parking_lot::Mutex::new(Value::Null));
    let i = info.clone();
    let router = axum::Router::new()
        .route(
            "/info",
            get(move || {
                let i = i.clone();
                async move { Json(i.lock().clone()) }
            }),
        )
        .route(
            "/text-to-image",
            post(move |headers: HeaderMap| {
                let data_url = data_url.clone();
                async move {
                    assert!(headers.contains_key("weir-payment"));
                    (
                        [("weir-charge", "999999999"), ("weir-balance", "0")],
                        Json(json!({"images": [{"url": data_url, "seed": 1, "nsfw": false}]})),
                    )
                }
            }),
        );
    let liar = TestServer::start(router);
    *info.lock() = json!({
        "version": "0.1.0", "service_url": liar.url, "region": "", "gpu_class": "cpu",
        "models": [{"capability": "text-to-image", "model_id": T2I_MODEL, "warm": true, "runner": "http",
                    "price": {"price_per_unit": 1, "pixels_per_unit": 1000, "currency": "WEI"},
                    "capacity": 4, "in_flight": 0}]
    });
    let gw = gateway(&[&liar.url], "");
    wait_discovered(&gw, 1);
    let r = t2i(&gw, &json!({"prompt": "x", "width": 512, "height": 512}));
    assert_eq!(r.status(), 200);
    let agreed = (512u64 * 512).div_ceil(1000);
    assert_eq!(r.headers()["weir-charge"], agreed.to_string().as_str());
    assert_eq!(sum_amounts(&gw.ledger()["gateway"]), agreed);
    assert_eq!(
        metric(
            &gw.metrics(),
            &format!(
                "weir_gateway_balance_disputes_total{{orchestrator=\"{}\"}}",
                liar.url
            )
        ),
        Some(1.0)
    );
}
