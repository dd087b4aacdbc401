//! Async generation jobs end to end: real gateways and orchestrators, the real upscale model,
//! a webhook receiver that checks signatures, cancel, idempotency, and crash safety on
//! PostgreSQL (two gateways take over from a killed one) and SQLite (a restart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{json, Value};
use weir_jobs::webhook::{verify, WebhookSecret};

use crate::ai::{
    gateway, http_orchestrator, png_size, runner_server, upscale_orchestrator, wait_discovered,
    RunnerState, TestServer, CLIENT_TOKEN, T2I_MODEL, TRANSCRIPT, UPSCALE_MODEL,
};
use crate::support::{artifact, client, eventually, Weir};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `[gateway.jobs]` with the test models; `extra` adds keys.
pub(crate) fn jobs_section(extra: &str) -> String {
    format!(
        "\n[gateway.jobs]\nallow_private_urls = true\nwebhook_secret = \"{SECRET}\"\nwebhook_retry_secs = [1, 1, 1]\n{extra}\n\
         [[gateway.jobs.models]]\nid = \"upscale-2x\"\ncapability = \"upscale\"\nmodel_id = \"{UPSCALE_MODEL}\"\n\
         [[gateway.jobs.models]]\nid = \"test-t2i\"\ncapability = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\nmax_attempts = 5\n"
    )
}

/// What the webhook receiver saw: `(webhook-id, event type, job id)` of each valid delivery.
#[derive(Default)]
struct Hooks {
    seen: Mutex<Vec<(String, String, String)>>,
    invalid: std::sync::atomic::AtomicUsize,
    /// Statuses to answer, in order; 204 once used up.
    script: Mutex<Vec<u16>>,
}

fn receiver(hooks: Arc<Hooks>) -> TestServer {
    let secret: WebhookSecret = SECRET.parse().expect("secret");
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let hooks = hooks.clone();
            let secret = secret.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs() as i64;
                let (id, ts, sig) = (
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                );
                if verify(&secret, &id, &ts, &sig, &body, now, 300).is_err() {
                    hooks.invalid.fetch_add(1, Ordering::Relaxed);
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                let status = {
                    let mut script = hooks.script.lock();
                    if script.is_empty() {
                        204
                    } else {
                        script.remove(0)
                    }
                };
                if status < 300 {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    hooks.seen.lock().push((
                        id,
                        v["type"].as_str().unwrap_or("").to_owned(),
                        v["data"]["jobId"].as_str().unwrap_or("").to_owned(),
                    ));
                }
                axum::http::StatusCode::from_u16(status).expect("status")
            }
        }),
    );
    TestServer::start(router)
}

/// A server handing out the upscale fixture (and an oversized file).
pub(crate) fn image_server() -> TestServer {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let router = axum::Router::new()
        .route(
            "/fixture.png",
            get(move || {
                let png = png.clone();
                async move { ([("content-type", "image/png")], png) }
            }),
        )
        .route(
            "/huge.png",
            get(|| async { ([("content-type", "image/png")], vec![0u8; 3 << 20]) }),
        );
    TestServer::start(router)
}

pub(crate) fn submit(gw: &Weir, body: &Value, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let mut req = client()
        .post(format!("{}/api/v1/generate", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().expect("submit");
    let status = r.status().as_u16();
    let mut h = HeaderMap::new();
    for (k, v) in r.headers() {
        h.insert(k.clone(), v.clone());
    }
    (status, h, r.json().unwrap_or(Value::Null))
}

pub(crate) fn job_status(gw: &Weir, id: &str) -> Value {
    client()
        .get(format!("{}/api/v1/generate/{id}", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("status")
        .json()
        .expect("json")
}

pub(crate) fn wait_final(gw: &Weir, id: &str, limit: Duration) -> Value {
    eventually(limit, || {
        let v = job_status(gw, id);
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "canceled")
        )
        .then_some(v)
    })
    .unwrap_or_else(|| panic!("job {id} did not end: {}", job_status(gw, id)))
}

fn cancel(gw: &Weir, id: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/api/v1/generate/{id}/cancel", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("cancel");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn an_upscale_job_completes_with_a_result_url_and_a_signed_webhook() {
    let orch = upscale_orchestrator(2);
    let images = image_server();
    let hooks = Arc::new(Hooks::default());
    let hook_server = receiver(hooks.clone());
    let gw = gateway(&[&orch.url], &jobs_section(""));
    wait_discovered(&gw, 1);

    let (status, headers, body) = submit(
        &gw,
        &json!({"model": "upscale-2x", "imageUrl": format!("{}/fixture.png", images.url),
                "webhookUrl": format!("{}/hook", hook_server.url)}),
        &[],
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["jobId"].as_str().expect("jobId").to_owned();
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location");
    assert!(location.ends_with(&format!("/api/v1/generate/{id}")));

    let done = wait_final(&gw, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["contentType"], "image/png");
    let fixture = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let (w, h) = png_size(&fixture);
    let (w, h) = (u64::from(w) * 2, u64::from(h) * 2);
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64()),
        (Some(w), Some(h))
    );
    assert!(done["processingTimeMs"].as_u64().is_some());
    assert!(
        done["billing"]["charge"].as_u64().is_some_and(|c| c > 0),
        "{done}"
    );

    // The URL serves the result without credentials; a tampered one does not.
    let url = result["url"].as_str().expect("url");
    let png = client().get(url).send().expect("result");
    assert_eq!(png.status().as_u16(), 200);
    let png = png.bytes().expect("bytes");
    assert_eq!(
        png.len() as u64,
        result["fileSizeBytes"].as_u64().expect("size")
    );
    assert_eq!(png_size(&png), (w as u32, h as u32));
    let tampered = url.replace("sig=", "sig=0");
    assert_eq!(
        client()
            .get(&tampered)
            .send()
            .expect("get")
            .status()
            .as_u16(),
        403
    );

    // The webhook arrived signed, once, and the job shows it delivered.
    let delivered = eventually(Duration::from_secs(20), || {
        let seen = hooks.seen.lock().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .expect("a webhook");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].1, "job.completed");
    assert_eq!(delivered[0].2, id);
    assert_eq!(hooks.invalid.load(Ordering::Relaxed), 0);
    let shown = eventually(Duration::from_secs(10), || {
        let v = job_status(&gw, &id);
        (v["webhooks"][0]["state"] == "delivered").then_some(v)
    })
    .expect("delivery recorded");
    assert_eq!(shown["webhooks"][0]["id"], delivered[0].0.as_str());

    // Uploads work too, and `Prefer: wait` answers short jobs in one round trip.
    let form = reqwest::blocking::multipart::Form::new()
        .text("model", "upscale-2x")
        .part("image", crate::ai::fixture_part("in.png", "image/png"));
    let r = client()
        .post(format!("{}/api/v1/generate", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Prefer", "wait=30")
        .multipart(form)
        .send()
        .expect("upload");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["status"], "completed", "{v}");

    // The list shows both, newest first, and pages with a cursor.
    let page: Value = client()
        .get(format!("{}/api/v1/generate?limit=1", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("list")
        .json()
        .expect("json");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
    let cursor = page["nextCursor"].as_str().expect("cursor");
    let rest: Value = client()
        .get(format!(
            "{}/api/v1/generate?limit=5&cursor={cursor}",
            gw.url
        ))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("list")
        .json()
        .expect("json");
    assert_eq!(rest["jobs"][0]["jobId"], id.as_str());
    // Another tenant sees none of it.
    let other = client()
        .get(format!("{}/api/v1/generate/{id}", gw.url))
        .bearer_auth("someone-else")
        .send()
        .expect("get");
    assert_eq!(other.status().as_u16(), 401);
}

/// A mono 16 kHz PCM WAV of `millis` of silence.
fn wav(millis: u32) -> Vec<u8> {
    let bytes = millis * 32;
    let mut wav = b"RIFF".to_vec();
    wav.extend_from_slice(&(36 + bytes).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&[1, 0, 1, 0]);
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes());
    wav.extend_from_slice(&[2, 0, 16, 0]);
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&bytes.to_le_bytes());
    wav.resize(wav.len() + bytes as usize, 0);
    wav
}

#[test]
fn an_audio_to_text_job_sends_the_audio_and_stores_the_transcript() {
    const STT_MODEL: &str = "test/stt";
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let orch = Weir::start(
        "orchestrator",
        &format!(
            "[orchestrator]\nhealth_secs = 1\n[[orchestrator.models]]\npipeline = \"audio-to-text\"\nmodel_id = \"{STT_MODEL}\"\nrunner = \"http\"\nurl = \"{}\"\ncapacity = 2\n",
            runner.url
        ),
        &[],
    );
    let speech = wav(1500);
    let served = speech.clone();
    let audio = TestServer::start(axum::Router::new().route(
        "/speech.wav",
        get(move || {
            let wav = served.clone();
            async move { ([("content-type", "audio/wav")], wav) }
        }),
    ));
    let gw = gateway(
        &[&orch.url],
        &format!(
            "{}[[gateway.jobs.models]]\nid = \"stt\"\ncapability = \"audio-to-text\"\nmodel_id = \"{STT_MODEL}\"\n",
            jobs_section("")
        ),
    );
    wait_discovered(&gw, 1);

    let (status, _, body) = submit(
        &gw,
        &json!({"model": "stt", "audioUrl": format!("{}/speech.wav", audio.url), "language": "fr"}),
        &[],
    );
    assert_eq!(status, 202, "{body}");
    let id = body["jobId"].as_str().expect("jobId").to_owned();
    let done = wait_final(&gw, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["text"], TRANSCRIPT, "{done}");
    assert_eq!(result["contentType"], "application/json");
    assert!(
        done["billing"]["charge"].as_u64().is_some_and(|c| c > 0),
        "{done}"
    );

    // The runner heard the job's audio, byte for byte, for the job's model.
    let heard = state.transcribed.lock().clone();
    assert_eq!(heard.len(), 1, "one run reached the runner");
    let (fields, bytes) = &heard[0];
    assert_eq!(fields.get("model_id").map(String::as_str), Some(STT_MODEL));
    let metadata: Value = serde_json::from_str(fields.get("metadata").expect("metadata"))
        .expect("metadata is a JSON object string");
    assert_eq!(
        metadata["language"], "fr",
        "the job's language reaches the runner"
    );
    assert!(
        *bytes == speech,
        "the audio changed on its way ({} bytes)",
        bytes.len()
    );

    // The stored transcript is served at the result's URL, text and chunks.
    let url = result["url"].as_str().expect("url");
    let stored = client().get(url).send().expect("result");
    assert_eq!(stored.status().as_u16(), 200);
    let stored = stored.bytes().expect("bytes");
    assert_eq!(
        stored.len() as u64,
        result["fileSizeBytes"].as_u64().expect("size")
    );
    let stored: Value = serde_json::from_slice(&stored).expect("a JSON transcript");
    assert_eq!(stored["text"], TRANSCRIPT);
    assert_eq!(stored["chunks"][0]["text"], TRANSCRIPT);
}

#[test]
fn bad_job_requests_get_clear_errors_and_idempotency_holds() {
    let runner = runner_server(Arc::new(RunnerState::default()));
    let orch = http_orchestrator(&runner.url, 4, 30);
    let images = image_server();
    let gw = gateway(&[&orch.url], &jobs_section("max_input_mib = 1"));
    wait_discovered(&gw, 1);

    let check = |body: Value, want: u16, needle: &str| {
        let (status, _, v) = submit(&gw, &body, &[]);
        assert_eq!(status, want, "{body} → {v}");
        assert!(
            v.to_string().contains(needle),
            "{body} → {v} lacks {needle:?}"
        );
    };
    check(json!({"model": "sdxl", "prompt": "x"}), 422, "test-t2i");
    check(json!({"prompt": "x"}), 422, "model");
    check(
        json!({"model": "test-t2i", "prompt": "x", "width": 4096}),
        422,
        "width",
    );
    check(
        json!({"model": "test-t2i", "prompt": "x", "colour": 1}),
        422,
        "colour",
    );
    check(json!({"model": "upscale-2x"}), 422, "imageUrl");
    check(
        json!({"model": "upscale-2x", "imageUrl": "file:///etc/passwd"}),
        422,
        "imageUrl",
    );
    check(
        json!({"model": "test-t2i", "prompt": "x", "webhookUrl": "nope"}),
        422,
        "webhookUrl",
    );
    check(
        json!({"model": "upscale-2x", "imageUrl": format!("{}/huge.png", images.url)}),
        400,
        "imageUrl",
    );
    check(
        json!({"model": "upscale-2x", "imageUrl": format!("{}/missing.png", images.url)}),
        422,
        "imageUrl",
    );
    let r = client()
        .post(format!("{}/api/v1/generate", gw.url))
        .json(&json!({"model": "test-t2i", "prompt": "x"}))
        .send()
        .expect("no auth");
    assert_eq!(r.status().as_u16(), 401);

    // Idempotency: the same key and body answer the same job; another body is a conflict.
    let body = json!({"model": "test-t2i", "prompt": "a red fox"});
    let (s1, _, a) = submit(&gw, &body, &[("Idempotency-Key", "order-17")]);
    let (s2, h2, b) = submit(&gw, &body, &[("Idempotency-Key", "order-17")]);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a["jobId"], b["jobId"]);
    assert!(h2.contains_key("idempotent-replayed"));
    let (s3, _, c) = submit(
        &gw,
        &json!({"model": "test-t2i", "prompt": "a blue fox"}),
        &[("Idempotency-Key", "order-17")],
    );
    assert_eq!(s3, 409, "{c}");
    let id = a["jobId"].as_str().expect("id");
    assert_eq!(
        wait_final(&gw, id, Duration::from_secs(30))["status"],
        "completed"
    );
    let (s, v) = cancel(&gw, id);
    assert_eq!(s, 409, "cancel of a finished job: {v}");
    let (s, _) = cancel(&gw, "job_0000");
    assert_eq!(s, 404);
}

/// A gateway whose private-network guard is on refuses loopback inputs.
#[test]
fn input_urls_on_private_networks_are_refused() {
    let runner = runner_server(Arc::new(RunnerState::default()));
    let orch = http_orchestrator(&runner.url, 1, 30);
    let images = image_server();
    let gw = gateway(
        &[&orch.url],
        &jobs_section("").replace("allow_private_urls = true", "allow_private_urls = false"),
    );
    for url in [
        format!("{}/fixture.png", images.url),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://localhost/x.png".to_owned(),
    ] {
        let (status, _, v) = submit(&gw, &json!({"model": "upscale-2x", "imageUrl": url}), &[]);
        assert_eq!(status, 400, "{url}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("imageUrl"),
            "{v}"
        );
    }
}

#[test]
fn cancel_ends_queued_jobs_at_once_and_stops_running_work() {
    let state = Arc::new(RunnerState::default());
    state.delay_ms.store(60_000, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    let orch = http_orchestrator(&runner.url, 1, 120);
    let hooks = Arc::new(Hooks::default());
    let hook_server = receiver(hooks.clone());
    let gw = gateway(&[&orch.url], &jobs_section("workers = 1"));
    wait_discovered(&gw, 1);
    let hook = format!("{}/hook", hook_server.url);

    let (_, _, running) = submit(
        &gw,
        &json!({"model": "test-t2i", "prompt": "slow", "webhookUrl": hook}),
        &[],
    );
    let running = running["jobId"].as_str().expect("id").to_owned();
    let started = eventually(Duration::from_secs(20), || {
        let v = job_status(&gw, &running);
        (v["status"] == "processing").then_some(v)
    });
    assert!(started.is_some(), "the first job never started");
    let busy = eventually(Duration::from_secs(10), || {
        (orch.info()["models"][0]["in_flight"] == 1).then_some(())
    });
    assert!(
        busy.is_some(),
        "the orchestrator never ran it: {}",
        orch.info()
    );

    let (_, _, queued) = submit(
        &gw,
        &json!({"model": "test-t2i", "prompt": "waiting", "webhookUrl": hook}),
        &[],
    );
    let queued = queued["jobId"].as_str().expect("id").to_owned();
    let v = job_status(&gw, &queued);
    assert_eq!(v["status"], "queued");
    assert_eq!(v["position"], 0);

    let (s, v) = cancel(&gw, &queued);
    assert_eq!((s, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let (s, v) = cancel(&gw, &running);
    assert_eq!(s, 202, "{v}");
    let v = wait_final(&gw, &running, Duration::from_secs(15));
    assert_eq!(v["status"], "canceled", "{v}");

    // The orchestrator's slot is free long before the runner's minute is up, and nothing was
    // charged.
    let freed = eventually(Duration::from_secs(10), || {
        (orch.info()["models"][0]["in_flight"] == 0).then_some(())
    });
    assert!(
        freed.is_some(),
        "the orchestrator kept the slot: {}",
        orch.info()
    );
    assert_eq!(state.served.load(Ordering::Relaxed), 0);
    let charged: u64 = orch.ledger()["orchestrator"]
        .as_array()
        .map_or(0, |r| r.iter().filter_map(|x| x["amount"].as_u64()).sum());
    assert_eq!(charged, 0, "{}", orch.ledger());

    // Both cancels were announced.
    let seen = eventually(Duration::from_secs(20), || {
        let seen = hooks.seen.lock().clone();
        (seen.len() >= 2).then_some(seen)
    })
    .expect("two webhooks");
    let events: BTreeSet<_> = seen
        .iter()
        .map(|(_, e, j)| (e.clone(), j.clone()))
        .collect();
    assert!(events.contains(&("job.canceled".to_owned(), queued.clone())));
    assert!(events.contains(&("job.canceled".to_owned(), running.clone())));

    // The freed capacity serves the next job.
    state.delay_ms.store(0, Ordering::Relaxed);
    let (_, _, next) = submit(&gw, &json!({"model": "test-t2i", "prompt": "quick"}), &[]);
    let next = next["jobId"].as_str().expect("id").to_owned();
    assert_eq!(
        wait_final(&gw, &next, Duration::from_secs(30))["status"],
        "completed"
    );
}

#[test]
fn webhooks_are_retried_until_delivered_and_410_disables_them() {
    let runner = runner_server(Arc::new(RunnerState::default()));
    let orch = http_orchestrator(&runner.url, 2, 30);
    let hooks = Arc::new(Hooks::default());
    *hooks.script.lock() = vec![500, 503];
    let hook_server = receiver(hooks.clone());
    let gw = gateway(&[&orch.url], &jobs_section(""));
    wait_discovered(&gw, 1);

    let (_, _, v) = submit(
        &gw,
        &json!({"model": "test-t2i", "prompt": "x", "webhookUrl": format!("{}/hook", hook_server.url)}),
        &[],
    );
    let id = v["jobId"].as_str().expect("id").to_owned();
    let shown = eventually(Duration::from_secs(30), || {
        let v = job_status(&gw, &id);
        (v["webhooks"][0]["state"] == "delivered").then_some(v)
    })
    .unwrap_or_else(|| panic!("never delivered: {}", job_status(&gw, &id)));
    let attempts = shown["webhooks"][0]["attempts"]
        .as_array()
        .expect("attempts");
    let statuses: Vec<_> = attempts.iter().map(|a| a["status"].as_u64()).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(204)]);
    // One webhook-id across the retries.
    assert_eq!(hooks.seen.lock().len(), 1);
    assert_eq!(
        hooks.seen.lock()[0].0,
        shown["webhooks"][0]["id"].as_str().expect("id")
    );

    *hooks.script.lock() = vec![410];
    let (_, _, v) = submit(
        &gw,
        &json!({"model": "test-t2i", "prompt": "y", "webhookUrl": format!("{}/hook", hook_server.url)}),
        &[],
    );
    let id = v["jobId"].as_str().expect("id").to_owned();
    let shown = eventually(Duration::from_secs(30), || {
        let v = job_status(&gw, &id);
        (v["webhooks"][0]["state"] == "disabled").then_some(v)
    })
    .unwrap_or_else(|| panic!("not disabled: {}", job_status(&gw, &id)));
    assert_eq!(
        shown["webhooks"][0]["attempts"].as_array().map(Vec::len),
        Some(1)
    );
}

/// A fresh database on the local PostgreSQL server for one test.
struct PgDb {
    name: String,
    admin: String,
    url: String,
}

impl PgDb {
    fn create() -> PgDb {
        let admin = std::env::var("WEIR_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("weir_jobs_{:016x}", rand::random::<u64>());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        PgDb { name, admin, url }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .expect("PostgreSQL at $WEIR_TEST_POSTGRES (default 127.0.0.1:5432) must be running");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    });
}

/// The ids of the jobs `gw` shows as `processing`.
fn processing(gw: &Weir) -> BTreeSet<String> {
    let page: Value = client()
        .get(format!(
            "{}/api/v1/generate?status=processing&limit=100",
            gw.url
        ))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("list")
        .json()
        .expect("json");
    page["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no job list: {page}"))
        .iter()
        .filter_map(|j| j["jobId"].as_str().map(str::to_owned))
        .collect()
}

/// Submit `n` jobs, kill the gateway while jobs are running on the orchestrator, let `restart`
/// bring up the survivors (given the killed gateway's config and data dir), and check that
/// every accepted job ends exactly once, and that the jobs cut off by the kill were reclaimed
/// and run again.
fn crash_and_recover(
    n: usize,
    jobs_extra: &str,
    restart: impl FnOnce(&str, tempfile::TempDir) -> Vec<Weir>,
) {
    let state = Arc::new(RunnerState::default());
    state.delay_ms.store(15, Ordering::Relaxed);
    let runner = runner_server(state.clone());
    let orch = http_orchestrator(&runner.url, 8, 30);
    let hooks = Arc::new(Hooks::default());
    let hook_server = receiver(hooks.clone());
    let extra = jobs_section(&format!(
        "workers = 6\nlease_secs = 3\ntenant_concurrency = 64\n{jobs_extra}"
    ));
    let first = gateway(&[&orch.url], &extra);
    wait_discovered(&first, 1);
    let hook = format!("{}/hook", hook_server.url);

    let mut accepted = BTreeSet::new();
    for i in 0..n {
        let (status, _, v) = submit(
            &first,
            &json!({"model": "test-t2i", "prompt": format!("job {i}"), "webhookUrl": hook}),
            &[],
        );
        assert_eq!(status, 202, "{v}");
        accepted.insert(v["jobId"].as_str().expect("id").to_owned());
    }
    // Kill it while jobs are running (some done, most not).
    let some_done = eventually(Duration::from_secs(60), || {
        (hooks.seen.lock().len() >= n / 10).then_some(())
    });
    assert!(some_done.is_some(), "no job finished before the crash");
    // Stall the runner and wait until a job's request reaches it stalled: that job is running
    // when the gateway dies (cut off, never completed by this gateway).
    state.delay_ms.store(60_000, Ordering::SeqCst);
    let before = state.started.load(Ordering::SeqCst);
    let stalled = eventually(Duration::from_secs(60), || {
        (state.started.load(Ordering::SeqCst) > before).then_some(())
    });
    assert!(
        stalled.is_some(),
        "no job reached the runner after it stalled"
    );
    let running = processing(&first);
    assert!(!running.is_empty(), "no job is processing at the kill");
    let config = std::fs::read_to_string(first.data.path().join("weir.toml")).expect("config");
    let data = first.crash();
    state.delay_ms.store(15, Ordering::SeqCst);
    let survivors = restart(&config, data);
    let gw = &survivors[0];
    wait_discovered(gw, 1);

    let all_done = eventually(Duration::from_secs(240), || {
        let finished: BTreeSet<String> = hooks
            .seen
            .lock()
            .iter()
            .map(|(_, _, j)| j.clone())
            .collect();
        (finished.len() >= n).then_some(())
    });
    let seen = hooks.seen.lock().clone();
    assert!(
        all_done.is_some(),
        "only {} of {n} jobs ended",
        seen.iter().map(|s| &s.2).collect::<BTreeSet<_>>().len()
    );

    // Every accepted job completed, with exactly one completion (one distinct webhook id;
    // repeats of the same id are retries of one delivery).
    let mut completions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (hook_id, event, job) in &seen {
        assert_eq!(event, "job.completed", "{job} ended as {event}");
        completions
            .entry(job.clone())
            .or_default()
            .insert(hook_id.clone());
    }
    assert_eq!(
        completions.keys().cloned().collect::<BTreeSet<_>>(),
        accepted
    );
    for (job, ids) in &completions {
        assert_eq!(ids.len(), 1, "job {job} completed {} times", ids.len());
    }
    // Billed once each: every job's status shows one charge; the orchestrator was paid for
    // each job at least once, and more only for runs cut off by the crash.
    let mut billed = 0u64;
    let mut reruns = 0u64;
    let mut reclaimed = BTreeSet::new();
    for id in &accepted {
        let v = job_status(gw, id);
        assert_eq!(v["status"], "completed", "{v}");
        billed += v["billing"]["charge"].as_u64().expect("charge");
        let attempts = v["attempts"].as_u64().expect("attempts");
        assert!(attempts >= 1, "{v}");
        reruns += attempts - 1;
        if attempts > 1 {
            reclaimed.insert(id.clone());
        }
    }
    // The job stalled at the runner was processing at the kill; it was reclaimed and run
    // again (as were any others cut off).
    assert!(reruns > 0, "no job was run again after the crash");
    assert!(
        reclaimed.iter().any(|id| running.contains(id)),
        "none of the jobs processing at the kill ({running:?}) was run again ({reclaimed:?})"
    );
    let paid: u64 = orch.ledger()["orchestrator"]
        .as_array()
        .map_or(0, |r| r.iter().filter_map(|x| x["amount"].as_u64()).sum());
    let per_job = billed / n as u64;
    assert!(paid >= billed, "paid {paid} < billed {billed}");
    assert!(
        paid - billed <= reruns * per_job,
        "paid {paid} for {billed} billed with only {reruns} reruns"
    );
    assert!(state.served.load(Ordering::Relaxed) >= n);
    drop(survivors);
}

#[test]
fn postgres_jobs_survive_a_killed_gateway_and_run_exactly_once_on_two_others() {
    let db = PgDb::create();
    crash_and_recover(
        500,
        &format!("database = \"{}\"", db.url),
        |config, _killed_data| {
            // Two new gateways (their own data dirs) on the same database and orchestrator.
            vec![
                Weir::start("gateway", config, &[]),
                Weir::start("gateway", config, &[]),
            ]
        },
    );
}

#[test]
fn sqlite_jobs_survive_a_killed_gateway_and_run_exactly_once_after_restart() {
    crash_and_recover(120, "", |config, data| {
        vec![Weir::start_in("gateway", config, &[], data, |_| {})]
    });
}
