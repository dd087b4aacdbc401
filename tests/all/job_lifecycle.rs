//! How async jobs end when things go wrong, and what is cleaned up after: a job that exhausts
//! its runs (`failed` plus a signed `job.failed` webhook), the per-job deadline, the per-tenant
//! submit rate (429), and results deleted after their TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{json, Value};
use weir_jobs::webhook::{verify, WebhookSecret};

use crate::ai::{wait_discovered, TestServer, CLIENT_TOKEN, T2I_MODEL};
use crate::failover::{gateway_with, priced_orchestrator, scripted_runner, Script, OTHER_TOKEN};
use crate::jobs::{job_status, wait_final};
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `[gateway.jobs]` with model `t2i` (`model_keys` added to it) and `extra` jobs keys.
fn jobs_section(extra: &str, model_keys: &str) -> String {
    format!(
        "[gateway.jobs]\nallow_private_urls = true\nwebhook_secret = \"{SECRET}\"\nwebhook_retry_secs = [1, 1]\n{extra}\n\
         [[gateway.jobs.models]]\nid = \"t2i\"\ncapability = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\n{model_keys}\n"
    )
}

/// Validly signed webhook deliveries seen: `(webhook-id, type, jobId)`; badly signed ones are
/// refused and counted.
#[derive(Default)]
struct Deliveries {
    seen: Mutex<Vec<(String, String, String)>>,
    invalid: std::sync::atomic::AtomicUsize,
}

fn receiver(hooks: Arc<Deliveries>) -> TestServer {
    let secret: WebhookSecret = SECRET.parse().expect("secret");
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (hooks, secret) = (hooks.clone(), secret.clone());
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
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let id = h("webhook-id");
                let signed = h("webhook-signature");
                if verify(
                    &secret,
                    &id,
                    &h("webhook-timestamp"),
                    &signed,
                    &body,
                    now,
                    300,
                )
                .is_err()
                {
                    hooks
                        .invalid
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let field = |p: &str| {
                    v.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                hooks
                    .seen
                    .lock()
                    .push((id, field("/type"), field("/data/jobId")));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    TestServer::start(router)
}

/// `POST /api/v1/generate` as `token` with `headers`: status, headers, body.
fn submit(
    gw: &Weir,
    token: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut req = client()
        .post(format!("{}/api/v1/generate", gw.url))
        .bearer_auth(token)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().expect("submit");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().unwrap_or(Value::Null))
}

/// Submit a `t2i` job; its id.
fn submit_job(gw: &Weir, extra: Value) -> String {
    let mut body = json!({"model": "t2i", "prompt": "a fox"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, _, v) = submit(gw, CLIENT_TOKEN, &body, &[]);
    assert_eq!(status, 202, "{v}");
    v["jobId"].as_str().expect("jobId").to_owned()
}

#[test]
fn a_job_that_fails_every_run_ends_failed_and_its_job_failed_webhook_is_delivered() {
    let script = Script::failing();
    let runner = scripted_runner(script.clone());
    let o = priced_orchestrator(&runner.url, 1_000_000);
    let hooks = Arc::new(Deliveries::default());
    let hook_server = receiver(hooks.clone());
    let gw = gateway_with(&[&o.url], "", &jobs_section("", "max_attempts = 2"));
    wait_discovered(&gw, 1);

    let id = submit_job(
        &gw,
        json!({"webhookUrl": format!("{}/hook", hook_server.url)}),
    );
    let done = wait_final(&gw, &id, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(error.contains("CUDA out of memory"), "{done}");
    assert!(done["failedAt"].is_string(), "{done}");
    // Each run reached the runner: exactly the two runs allowed, no more.
    assert_eq!(script.hits(), 2);

    let delivered = eventually(Duration::from_secs(30), || {
        let seen = hooks.seen.lock().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .expect("no webhook was delivered");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].1, "job.failed");
    assert_eq!(delivered[0].2, id);
    assert_eq!(hooks.invalid.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The job shows the delivery it made.
    let shown = eventually(Duration::from_secs(10), || {
        let v = job_status(&gw, &id);
        (v["webhooks"][0]["state"] == "delivered").then_some(v)
    });
    assert!(shown.is_some(), "{}", job_status(&gw, &id));
    assert_eq!(script.hits(), 2, "a failed job ran again");
}

#[test]
fn a_job_past_its_deadline_fails_without_waiting_for_the_orchestrator() {
    let script = Script::holding();
    let runner = scripted_runner(script.clone());
    let o = priced_orchestrator(&runner.url, 1_000_000);
    let gw = gateway_with(
        &[&o.url],
        "",
        &jobs_section("", "timeout_secs = 2\nmax_attempts = 3"),
    );
    wait_discovered(&gw, 1);

    let started = Instant::now();
    let id = submit_job(&gw, json!({}));
    // The run reached the runner, which holds it far past the deadline.
    let reached = eventually(Duration::from_secs(30), || {
        (script.hits() == 1).then_some(())
    });
    assert!(reached.is_some(), "the job never reached the runner");
    let done = wait_final(&gw, &id, Duration::from_secs(30));
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(error.contains("ran past its 2 s deadline"), "{done}");
    // A deadline is final: no second run although two more were allowed.
    assert_eq!(done["attempts"], 1, "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the job waited for the runner instead of its deadline"
    );
    script.release();
    assert_eq!(job_status(&gw, &id)["status"], "failed");
    assert_eq!(script.hits(), 1);
}

#[test]
fn submits_over_the_tenant_rate_get_429_and_create_no_job() {
    // No orchestrator: accepted jobs stay queued or fail; only admission matters here.
    let gw = gateway_with(&[], "", &jobs_section("submit_rate = 2", ""));
    let body = json!({"model": "t2i", "prompt": "x"});
    let results: Vec<(u16, HeaderMap, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| submit(&gw, CLIENT_TOKEN, &body, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let accepted = results.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(accepted + limited.len(), 8, "{results:?}");
    assert!(
        !limited.is_empty(),
        "eight submits at once were all admitted"
    );
    assert!(accepted >= 2, "{results:?}");
    let (_, headers, v) = limited[0];
    assert_eq!(v["code"], "rate_limited", "{v}");
    assert_eq!(v["error"], "more than 2 submits per second", "{v}");
    assert_eq!(headers["retry-after"], "1");

    // A refused submit made no job: the tenant's list holds exactly the accepted ones.
    let list: Value = client()
        .get(format!("{}/api/v1/generate?limit=100", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("list")
        .json()
        .expect("json");
    assert_eq!(
        list["jobs"].as_array().map(Vec::len),
        Some(accepted),
        "{list}"
    );

    // The rate is per tenant: another token is admitted at once.
    let (status, _, v) = submit(&gw, OTHER_TOKEN, &body, &[]);
    assert_eq!(status, 202, "{v}");
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_result_past_its_ttl_is_deleted_and_its_link_stops_working() {
    let runner = scripted_runner(Arc::new(Script::default()));
    let o = priced_orchestrator(&runner.url, 1_000_000);
    let gw = gateway_with(&[&o.url], "", &jobs_section("result_ttl_secs = 3", ""));
    wait_discovered(&gw, 1);

    let (status, _, done) = submit(
        &gw,
        CLIENT_TOKEN,
        &json!({"model": "t2i", "prompt": "a fox"}),
        &[("Prefer", "wait=30")],
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["jobId"].as_str().expect("jobId").to_owned();
    let url = done["result"]["url"]
        .as_str()
        .expect("result url")
        .to_owned();
    let objects = gw.data.path().join("objects");
    let stored = files_under(&objects);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let fetched = client().get(&url).send().expect("result");
    assert_eq!(fetched.status(), 200, "the fresh result link must work");

    // The janitor deletes it after the TTL; the job says so and the link answers 404.
    let expired = eventually(Duration::from_secs(30), || {
        let v = job_status(&gw, &id);
        (v["resultExpired"] == true).then_some(v)
    });
    let v = expired.unwrap_or_else(|| panic!("never expired: {}", job_status(&gw, &id)));
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["result"].is_null(), "{v}");
    assert!(!stored[0].exists(), "the result file is still on disk");
    assert_eq!(files_under(&objects), Vec::<std::path::PathBuf>::new());
    let gone = client().get(&url).send().expect("expired result");
    assert_eq!(gone.status(), 404);
}
