//! Failover on a 5xx: the gateway tries the orchestrator the router put first, counts its
//! failure, takes the payment back and serves the request from the next one. Also the shared
//! fixtures of the fault tests: a scripted runner, orchestrators with a chosen price, a gateway
//! with chosen settings.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{wait_discovered, TestServer, CLIENT_TOKEN, T2I_MODEL};
use crate::support::*;

/// The shipped price of `text-to-image` in the default pricing component.
pub(crate) const SHIPPED_T2I_PPU: u64 = 4_768_371;

/// How a [`scripted_runner`] answers, and what it saw.
#[derive(Default)]
pub(crate) struct Script {
    /// Answer `500` ("CUDA out of memory") instead of an image.
    pub(crate) fail: AtomicBool,
    /// Hold each call until [`Script::release`] (or 60 s).
    pub(crate) hold: AtomicBool,
    /// Calls received (counted on arrival, before holding or failing).
    pub(crate) hits: AtomicUsize,
    wake: tokio::sync::Notify,
}

impl Script {
    /// A script that fails every call.
    pub(crate) fn failing() -> Arc<Script> {
        let s = Arc::new(Script::default());
        s.fail.store(true, Ordering::SeqCst);
        s
    }

    /// A script that holds every call until released.
    pub(crate) fn holding() -> Arc<Script> {
        let s = Arc::new(Script::default());
        s.hold.store(true, Ordering::SeqCst);
        s
    }

    /// Calls received so far.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Let held calls (and later ones) answer.
    pub(crate) fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    async fn wait_released(&self) {
        let wait = async {
            while self.hold.load(Ordering::SeqCst) {
                let mut notified = std::pin::pin!(self.wake.notified());
                notified.as_mut().enable();
                if !self.hold.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
    }
}

/// A runner speaking Livepeer's AI runner API for `/text-to-image` as `script` says: one real
/// PNG as a data URL, or a 500.
pub(crate) fn scripted_runner(script: Arc<Script>) -> TestServer {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let router = axum::Router::new()
        .route("/health", get(|| async { Json(json!({"status": "OK"})) }))
        .route(
            "/text-to-image",
            post(move |Json(_body): Json<Value>| {
                let s = script.clone();
                let url = url.clone();
                async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    s.wait_released().await;
                    if s.fail.load(Ordering::SeqCst) {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"detail": {"msg": "CUDA out of memory"}})),
                        )
                            .into_response();
                    }
                    Json(json!({"images": [{"url": url, "seed": 7, "nsfw": false}]}))
                        .into_response()
                }
            }),
        );
    TestServer::start(router)
}

/// The orchestrator config serving [`T2I_MODEL`] through the runner at `runner`.
pub(crate) fn t2i_config(runner: &str, capacity: u32) -> String {
    format!(
        "[orchestrator]\nhealth_secs = 1\n[[orchestrator.models]]\npipeline = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\nrunner = \"http\"\nurl = \"{runner}\"\ncapacity = {capacity}\ntimeout_secs = 60\n"
    )
}

/// Put a default pricing manifest quoting `text-to-image` at `ppu` per million pixels into
/// `dir`.
pub(crate) fn price_t2i(dir: &std::path::Path, ppu: u64) {
    let base = built_manifest("components/default-pricing.toml");
    let line = format!("\"price.text-to-image\" = \"{SHIPPED_T2I_PPU}/1000000\"");
    assert!(base.contains(&line), "the default pricing manifest changed");
    let priced = base.replace(
        &line,
        &format!("\"price.text-to-image\" = \"{ppu}/1000000\""),
    );
    std::fs::write(dir.join("default-pricing.toml"), priced).expect("pricing manifest");
}

/// An orchestrator serving [`T2I_MODEL`] through `runner`, quoting `ppu` per million pixels.
pub(crate) fn priced_orchestrator(runner: &str, ppu: u64) -> Weir {
    Weir::start_with("orchestrator", &t2i_config(runner, 4), &[], |dir| {
        price_t2i(dir, ppu)
    })
}

/// A gateway in front of `orchestrators` with `keys` in its `[gateway]` section (refreshing
/// every second unless `keys` says otherwise) and `tail` (more sections) after it.
pub(crate) fn gateway_with(orchestrators: &[&str], keys: &str, tail: &str) -> Weir {
    let list = orchestrators
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let refresh = if keys.contains("refresh_secs") {
        ""
    } else {
        "refresh_secs = 1\n"
    };
    let config = format!(
        "[gateway]\norchestrators = [{list}]\nauth_tokens = [\"{CLIENT_TOKEN}\", \"{OTHER_TOKEN}\"]\n{refresh}{keys}\n{tail}\n"
    );
    Weir::start("gateway", &config, &[])
}

/// A second client token (another tenant).
pub(crate) const OTHER_TOKEN: &str = "other-client-token-0123456789ab";

/// `POST /text-to-image` (64x64) through `gw`: status, `weir-orchestrator`, body.
pub(crate) fn t2i_call(gw: &Weir) -> (u16, String, Value) {
    let r = client()
        .post(format!("{}/text-to-image", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .json(&json!({"prompt": "x", "model_id": T2I_MODEL, "width": 64, "height": 64}))
        .send()
        .expect("text-to-image");
    let status = r.status().as_u16();
    let by = r
        .headers()
        .get("weir-orchestrator")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, by, r.json().unwrap_or(Value::Null))
}

/// The gateway's view of orchestrator `url` (`GET /gateway/orchestrators`).
pub(crate) fn view_of(gw: &Weir, url: &str) -> Value {
    let v: Value = client()
        .get(format!("{}/gateway/orchestrators", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("orchestrators")
        .json()
        .expect("json");
    v["orchestrators"]
        .as_array()
        .and_then(|l| l.iter().find(|o| o["url"] == url))
        .cloned()
        .unwrap_or_else(|| panic!("{url} is not known to the gateway: {v}"))
}

/// `weir_gateway_attempts_total` for `orchestrator` and `outcome` (0 when absent).
pub(crate) fn attempts(gw: &Weir, orchestrator: &str, outcome: &str) -> f64 {
    metric(
        &gw.metrics(),
        &format!(
            "weir_gateway_attempts_total{{orchestrator=\"{orchestrator}\",outcome=\"{outcome}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// Sum of `amount` over the ledger rows whose `party` is `party`.
pub(crate) fn paid_to(rows: &Value, party: &str) -> u64 {
    rows.as_array()
        .map(|r| {
            r.iter()
                .filter(|x| x["party"] == party)
                .filter_map(|x| x["amount"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_5xx_from_the_first_orchestrator_fails_over_to_the_next_and_is_counted() {
    let bad = Script::failing();
    let good = Arc::new(Script::default());
    let bad_runner = scripted_runner(bad.clone());
    let good_runner = scripted_runner(good.clone());
    // The failing orchestrator is the cheaper one: with nothing observed yet, the router puts
    // it first, so the request must meet its 500 before anything else.
    let cheap = priced_orchestrator(&bad_runner.url, 1_000_000);
    let dear = priced_orchestrator(&good_runner.url, SHIPPED_T2I_PPU);
    let gw = gateway_with(&[&cheap.url, &dear.url], "suspend_secs = 60", "");
    wait_discovered(&gw, 2);

    let (status, by, body) = t2i_call(&gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(by, dear.url, "served by the orchestrator that answered");
    assert!(body["images"][0]["url"].is_string(), "{body}");
    assert_eq!(bad.hits(), 1, "the failing orchestrator was tried once");
    assert_eq!(good.hits(), 1);

    // Counted: one failed attempt on the first, one good one on the second.
    assert_eq!(attempts(&gw, &cheap.url, "failed"), 1.0);
    assert_eq!(attempts(&gw, &cheap.url, "ok"), 0.0);
    assert_eq!(attempts(&gw, &dear.url, "ok"), 1.0);
    let view = view_of(&gw, &cheap.url);
    let account = format!("text-to-image/{T2I_MODEL}");
    assert_eq!(view["stats"][&account]["failed"], 1, "{view}");
    assert_eq!(view["stats"][&account]["ok"], 0, "{view}");
    let why = view["suspended_because"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("500") && why.contains("CUDA out of memory"),
        "{view}"
    );

    // The failed attempt cost nothing: no spend with it on either side, the charge is the
    // served one's.
    let charge = weir_payments::cost(
        64 * 64,
        weir_payments::UnitPrice {
            price_per_unit: SHIPPED_T2I_PPU,
            pixels_per_unit: 1_000_000,
        },
    )
    .expect("cost");
    let spent = gw.ledger();
    assert_eq!(paid_to(&spent["gateway"], &cheap.url), 0, "{spent}");
    assert_eq!(paid_to(&spent["gateway"], &dear.url), charge, "{spent}");
    assert_eq!(cheap.ledger()["orchestrator"], json!([]));
}
