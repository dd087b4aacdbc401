//! Components read the node's ledgers through `weir:host/payments`: balances and totals from
//! a snapshot the node refreshes, prices from the gateway's discovery.

use std::time::Duration;

use serde_json::Value;

use crate::component_storage::{get_bytes, image_to_image, node_with};
use crate::support::*;

/// The text object the echo pipeline answered to `prompt` (a payments query, a frames test).
pub(crate) fn answer(node: &Weir, prompt: &str) -> String {
    let (status, body, _) = image_to_image(node, "echo", prompt);
    assert_eq!(status, 200, "{prompt}: {body}");
    let url = body["images"][0]["url"].as_str().expect("url");
    let (status, text) = get_bytes(url);
    assert_eq!(status, 200);
    String::from_utf8(text).expect("utf-8")
}

/// What the node's orchestrator ledger says it charged for `image-to-image`, all senders.
fn charged(node: &Weir) -> u64 {
    node.ledger()["orchestrator"]
        .as_array()
        .expect("orchestrator rows")
        .iter()
        .filter(|r| {
            r["capability"]
                .as_str()
                .is_some_and(|c| c.starts_with("image-to-image"))
        })
        .map(|r| r["amount"].as_u64().expect("amount"))
        .sum()
}

#[test]
fn a_pipeline_sees_what_its_node_earned_from_the_sender_once_the_snapshot_catches_up() {
    let node = node_with("[runtime]\npayments_refresh_ms = 100\n");
    let (status, body, _) = image_to_image(&node, "echo", "paid work");
    assert_eq!(status, 200, "{body}");
    assert!(charged(&node) > 0, "the echo model is paid for");
    // Each query is itself a paid job, charged after it answered: the view it reports is the
    // ledger as of some refresh before it ran. With no other traffic it catches up with
    // everything charged before the query.
    let mut last = String::new();
    let caught_up = eventually(Duration::from_secs(20), || {
        let before = charged(&node);
        last = answer(&node, "ledger");
        let earned: u64 = last.split("earned=").nth(1)?.trim().parse().ok()?;
        std::thread::sleep(Duration::from_millis(200));
        (earned == before).then_some(())
    });
    assert!(caught_up.is_some(), "last answer {last:?}");
    let balance: i64 = last
        .strip_prefix("balance=")
        .and_then(|r| r.split(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert!(balance >= 0, "{last}");
}

#[test]
fn a_pipeline_reads_the_price_the_gateway_discovered() {
    let node = node_with("");
    let orchestrators: Value = client()
        .get(format!("{}/gateway/orchestrators", node.url))
        .send()
        .expect("orchestrators")
        .json()
        .expect("json");
    let o = &orchestrators["orchestrators"][0];
    let url = o["url"].as_str().expect("url");
    let echo = o["info"]["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["model_id"] == "echo")
        .expect("the echo model");
    let p = &echo["price"];
    let expected = format!(
        "price={}/{} {}",
        p["price_per_unit"],
        p["pixels_per_unit"],
        p["currency"].as_str().expect("currency")
    );
    assert_eq!(answer(&node, &format!("price:{url}")), expected);
    // An orchestrator discovery never saw has no price: the pipeline's error says so.
    let (status, body, _) = image_to_image(&node, "echo", "price:http://127.0.0.1:9");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("advertises no price"), "{body}");
}
