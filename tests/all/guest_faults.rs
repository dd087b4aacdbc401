//! Components on the request path never take a request or the server down: a real `weir node`
//! whose router or pricing component traps, loops, allocates without bound or answers garbage
//! answers every request over HTTP (price order for a failed router, a clear refusal for a
//! failed quote), and `/healthz` stays responsive while guests loop. A router's explicit
//! refusal (a guest error, or an empty ranking) is a 503 carrying its reason.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ai::onnxruntime;
use crate::support::*;

const UPSCALE_MODEL: &str = "upscalerjs/default-model";
/// Requests sent at once.
const CONCURRENT: usize = 8;
/// The deadline of a looping guest: long enough to overlap the `/healthz` probes.
const LOOP_TIMEOUT_MS: u64 = 2_000;
/// The deadline of the other misbehaving guests: a loaded machine never turns a trap or an
/// out-of-memory failure into a timeout.
const GENEROUS_TIMEOUT_MS: u64 = 10_000;
/// `/healthz` probes taken while guests loop, and the p99 latency they must stay under.
const PROBES: usize = 50;
const HEALTHZ_P99: Duration = Duration::from_millis(250);

/// A node serving `/upscale` (capacity `CONCURRENT`) whose router and/or pricing component is
/// a misbehaving test program configured by `router` / `pricing` (manifest TOML for
/// `[limits]` and `[config]`).
fn node(router: Option<&str>, pricing: Option<&str>) -> Weir {
    let mut policies = String::from("[policies]\n");
    if router.is_some() {
        policies.push_str("router = \"bad-router\"\n");
    }
    if pricing.is_some() {
        policies.push_str("pricing = \"bad-pricing\"\n");
    }
    let config = format!(
        "{policies}[gateway]\nopen = true\nrefresh_secs = 1\n[[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"{UPSCALE_MODEL}\"\nrunner = \"onnx\"\nmodel_path = \"{}\"\nonnxruntime = \"{}\"\ncapacity = {CONCURRENT}\n",
        artifact("models/upscale-2x.onnx").display(),
        onnxruntime()
    );
    Weir::start_with("node", &config, &[], |dir| {
        if let Some(extra) = router {
            let m = manifest("bad-router", "router", extra);
            place(
                dir,
                "bad-router",
                &artifact("test-programs/misbehaving-router.wasm"),
                &m,
            );
        }
        if let Some(extra) = pricing {
            let m = manifest("bad-pricing", "pricing", extra);
            let wasm = artifact("test-programs/misbehaving-pricing.wasm");
            place(dir, "bad-pricing", &wasm, &m);
        }
    })
}

/// Manifest TOML for a misbehaving component in `mode` with deadline `timeout_ms`.
fn misbehaving(mode: &str, timeout_ms: u64, extra_config: &str) -> String {
    format!(
        "[limits]\ntimeout_ms = {timeout_ms}\nmemory_mib = 16\npool_size = 2\n[config]\nmode = \"{mode}\"\n{extra_config}"
    )
}

/// Wait until the node's gateway sees its own orchestrator with the upscale model.
fn wait_offered(node: &Weir) {
    let seen = eventually(Duration::from_secs(30), || {
        let models = offered_models(node);
        models
            .iter()
            .any(|m| m["model_id"] == UPSCALE_MODEL)
            .then_some(())
    });
    assert!(seen.is_some(), "the gateway never saw the upscale model");
}

/// `POST /upscale` with the fixture; (status, body). A dropped connection fails the test.
fn upscale(url: &str) -> (u16, Value) {
    let form = crate::ai::upscale_form();
    let resp = client()
        .post(format!("{url}/upscale"))
        .multipart(form)
        .send()
        .unwrap_or_else(|e| panic!("/upscale got no HTTP answer: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn detail(body: &Value) -> String {
    body["detail"]["msg"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `CONCURRENT` `/upscale` requests at once, plus `/healthz` latencies probed meanwhile when
/// `probe`; every request's (status, body) and the probes' p99.
fn under_load(url: &str, probe: bool) -> (Vec<(u16, Value)>, Option<Duration>) {
    std::thread::scope(|s| {
        let requests: Vec<_> = (0..CONCURRENT).map(|_| s.spawn(|| upscale(url))).collect();
        let p99 = probe.then(|| healthz_p99(url));
        let answers = requests
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect();
        (answers, p99)
    })
}

/// The p99 latency of `PROBES` `/healthz` probes (after a short pause so that the guests are
/// running).
fn healthz_p99(url: &str) -> Duration {
    std::thread::sleep(Duration::from_millis(300));
    let client = client();
    let mut latencies: Vec<Duration> = (0..PROBES)
        .map(|_| {
            let started = Instant::now();
            let status = client
                .get(format!("{url}/healthz"))
                .send()
                .expect("/healthz answers")
                .status();
            assert!(status.is_success(), "/healthz: {status}");
            let took = started.elapsed();
            std::thread::sleep(Duration::from_millis(10));
            took
        })
        .collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "/healthz under load: p50 {:?}, p99 {p99:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    p99
}

#[test]
fn a_router_that_traps_loops_hoards_or_answers_garbage_falls_back_to_price_order() {
    for (mode, timeout_ms) in [
        ("trap", GENEROUS_TIMEOUT_MS),
        ("loop", LOOP_TIMEOUT_MS),
        ("alloc", GENEROUS_TIMEOUT_MS),
        ("garbage", GENEROUS_TIMEOUT_MS),
    ] {
        let n = node(Some(&misbehaving(mode, timeout_ms, "")), None);
        wait_offered(&n);
        let (answers, p99) = under_load(&n.url, mode == "loop");
        for (status, body) in &answers {
            assert_eq!(*status, 200, "router mode {mode}: {body}");
        }
        if let Some(p99) = p99 {
            assert!(
                p99 < HEALTHZ_P99,
                "/healthz p99 {p99:?} while the router loops"
            );
        }
        let failures = metric(
            &n.metrics(),
            "weir_gateway_router_failures_total{component=\"bad-router\"}",
        );
        assert!(
            failures.is_some_and(|f| f >= CONCURRENT as f64),
            "router mode {mode}: failures counted {failures:?}"
        );
    }
}

#[test]
fn a_router_refusal_is_a_503_with_its_reason() {
    let n = node(Some(&misbehaving("error", GENEROUS_TIMEOUT_MS, "")), None);
    wait_offered(&n);
    let (status, body) = upscale(&n.url);
    assert_eq!(status, 503, "{body}");
    let msg = detail(&body);
    assert!(msg.contains("bad-router"), "{msg}");
    assert!(msg.contains("invalid-request: asked to fail"), "{msg}");

    let n = node(Some(&misbehaving("empty", GENEROUS_TIMEOUT_MS, "")), None);
    wait_offered(&n);
    let (status, body) = upscale(&n.url);
    assert_eq!(status, 503, "{body}");
    let msg = detail(&body);
    assert!(msg.contains("ranked none of the 1 candidate"), "{msg}");
}

#[test]
fn a_pricing_component_that_traps_or_loops_refuses_jobs_with_a_clear_error() {
    for (mode, timeout_ms, why) in [
        ("trap", GENEROUS_TIMEOUT_MS, "trapped"),
        ("loop", LOOP_TIMEOUT_MS, "deadline"),
    ] {
        let pricing = misbehaving(mode, timeout_ms, "scope = \"jobs\"\n");
        let n = node(None, Some(&pricing));
        wait_offered(&n);
        let (answers, p99) = under_load(&n.url, mode == "loop");
        for (status, body) in &answers {
            assert_eq!(*status, 503, "pricing mode {mode}: {body}");
            let msg = detail(body);
            assert!(
                msg.contains("pricing component `bad-pricing`") && msg.contains(why),
                "pricing mode {mode}: {msg}"
            );
        }
        if let Some(p99) = p99 {
            assert!(
                p99 < HEALTHZ_P99,
                "/healthz p99 {p99:?} while pricing loops"
            );
        }
    }
}

#[test]
fn info_answers_when_the_pricing_component_traps() {
    let n = node(None, Some(&misbehaving("trap", GENEROUS_TIMEOUT_MS, "")));
    let orchestrator = ready_field(&n.ready, "orchestrator").expect("orchestrator url");
    let resp = client()
        .get(format!("{orchestrator}/info"))
        .send()
        .unwrap_or_else(|e| panic!("/info got no HTTP answer: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let info: Value = resp.json().expect("json");
    let models = info["models"].as_array().expect("models");
    assert!(
        models.iter().all(|m| m["model_id"] != UPSCALE_MODEL),
        "a model without a price is not advertised: {info}"
    );
    let health = client()
        .get(format!("{}/healthz", n.url))
        .send()
        .expect("/healthz");
    assert!(health.status().is_success());
}
