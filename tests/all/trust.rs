//! Orchestrators accept credits only from the gateways they trust: a credit signed by a
//! freshly generated key buys nothing, not even a stream's status.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ai::{runner_server, RunnerState, T2I_MODEL};
use crate::support::*;
use weir_payments::credit::Wallet;
use weir_payments::UnitPrice;

const T2I_PRICE: UnitPrice = UnitPrice {
    price_per_unit: 4768371,
    pixels_per_unit: 1_000_000,
};

fn t2i_orchestrator(runner: &str, trust: &str) -> Weir {
    let config = format!(
        "[orchestrator]\n{trust}\n[[orchestrator.models]]\npipeline = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\nrunner = \"http\"\nurl = \"{runner}\"\n"
    );
    Weir::start("orchestrator", &config, &[])
}

/// `POST /text-to-image` of a 64x64 image paid by `wallet` with `amount`; (status, detail).
fn t2i(o: &Weir, wallet: &Wallet, id: &str, amount: u64) -> (u16, String) {
    let account = format!("text-to-image/{T2I_MODEL}");
    let r = client()
        .post(format!("{}/text-to-image", o.url))
        .header("weir-payment", wallet.pay(id, &account, amount, T2I_PRICE))
        .json(&json!({"prompt": "x", "width": 64, "height": 64}))
        .send()
        .expect("send");
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    (status, body.to_string())
}

fn t2i_cost() -> u64 {
    weir_payments::cost(64 * 64, T2I_PRICE).expect("cost")
}

#[test]
fn a_stranger_s_credit_buys_nothing_and_the_trusted_gateway_s_does() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let o = t2i_orchestrator(&runner.url, "");
    let stranger = Wallet::generate();
    let (status, detail) = t2i(&o, &stranger, "s1", 1_000_000_000_000);
    assert_eq!(status, 402, "{detail}");
    assert!(
        detail.contains(&format!(
            "sender {} is not trusted by this orchestrator",
            stranger.sender()
        )),
        "{detail}"
    );
    assert_eq!(state.served.load(Ordering::Relaxed), 0);
    assert_eq!(
        o.ledger()["orchestrator"],
        json!([]),
        "nothing was credited"
    );
    let (status, detail) = t2i(&o, &test_wallet(), "g1", t2i_cost());
    assert_eq!(status, 200, "{detail}");
    assert_eq!(state.served.load(Ordering::Relaxed), 1);
}

#[test]
fn no_trusted_senders_refuses_every_credit_and_open_mode_takes_any() {
    let state = Arc::new(RunnerState::default());
    let runner = runner_server(state.clone());
    let closed = t2i_orchestrator(&runner.url, "trusted_senders = []");
    let (status, detail) = t2i(&closed, &test_wallet(), "c1", t2i_cost());
    assert_eq!(status, 402, "{detail}");
    assert!(detail.contains("is not trusted"), "{detail}");
    let open = t2i_orchestrator(&runner.url, "accept_any_sender = true");
    let (status, detail) = t2i(&open, &Wallet::generate(), "o1", t2i_cost());
    assert_eq!(status, 200, "{detail}");
    assert_eq!(state.served.load(Ordering::Relaxed), 1);
}

/// An orchestrator serving the `live-scale` pipeline component as a BYOC stream capability.
fn pipeline_orchestrator() -> Weir {
    let config = "[orchestrator.transcode]\ncapacity = 4\n[orchestrator.byoc]\nsecret = \"trust-test-secret\"\n[[orchestrator.byoc.pipelines]]\nname = \"live-scale\"\ncomponent = \"live-scale\"\nprice_per_unit = 3\n";
    Weir::start_with("orchestrator", config, &[], |dir| {
        place_default(dir, "live-scale");
    })
}

fn stream_price(o: &Weir) -> UnitPrice {
    let info = o.info();
    let m = info["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["capability"] == "live-scale")
        .cloned()
        .expect("live-scale offered");
    UnitPrice {
        price_per_unit: m["price"]["price_per_unit"].as_u64().expect("ppu"),
        pixels_per_unit: m["price"]["pixels_per_unit"].as_u64().expect("units"),
    }
}

fn start_stream(o: &Weir, wallet: &Wallet, id: &str, amount: u64) -> (u16, String) {
    let job = json!({"id": id, "request": "{}", "parameters": "", "capability": "live-scale", "timeout_seconds": 30});
    let pay = wallet.pay(id, "live-scale/byoc", amount, stream_price(o));
    let r = client()
        .post(format!("{}/ai/stream/start", o.url))
        .header(
            "Livepeer",
            base64::engine::general_purpose::STANDARD.encode(job.to_string()),
        )
        .header("weir-payment", pay)
        .json(&json!({"params": {}, "stream_id": id}))
        .send()
        .expect("start");
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

fn stream_status(o: &Weir, id: &str, wallet: Option<&Wallet>) -> (u16, String) {
    let mut r = client().get(format!("{}/ai/stream/{id}/status", o.url));
    if let Some(w) = wallet {
        r = r.header(
            "weir-payment",
            w.pay("status", "live-scale/byoc", 0, stream_price(o)),
        );
    }
    let r = r.send().expect("status");
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

#[test]
fn streams_start_and_show_their_status_only_for_trusted_senders() {
    let o = pipeline_orchestrator();
    let stranger = Wallet::generate();
    let (status, body) = start_stream(&o, &stranger, "s-stranger", 1_000_000_000);
    assert_eq!(status, 402, "{body}");
    assert!(
        body.contains("is not trusted by this orchestrator"),
        "{body}"
    );
    assert!(
        !body.contains("trickle"),
        "no channels for strangers: {body}"
    );

    let (status, body) = start_stream(&o, &test_wallet(), "s-ok", 1_000_000_000);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stream_status(&o, "s-ok", None).0, 402);
    let (status, body) = stream_status(&o, "s-ok", Some(&stranger));
    assert_eq!(status, 402, "{body}");
    let (status, body) = stream_status(&o, "s-ok", Some(&test_wallet()));
    assert_eq!(status, 200, "{body}");
}
