//! The real `weir node` binary: health, readiness, metrics, the admin API, hot install/remove,
//! bad uploads, and swaps while calls run over HTTP.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn route_body() -> serde_json::Value {
    json!({
        "request": {"id": "r1", "capability": "text-to-image", "model": "sdxl"},
        "candidates": [
            {"id": "a", "price": {"price_per_unit": 10, "pixels_per_unit": 1, "currency": "WEI"}, "latency_ms": 100},
            {"id": "b", "price": {"price_per_unit": 5, "pixels_per_unit": 1, "currency": "WEI"}, "latency_ms": 50}
        ]
    })
}

fn quote_body() -> serde_json::Value {
    json!({"request": {"id": "q1", "capability": "text-to-image", "model": "sdxl"}, "context": {"in_flight": 8, "capacity": 10}})
}

#[test]
fn a_node_serves_health_readiness_metrics_and_its_default_components() {
    let node = Node::start();
    let http = node.client();
    let health: serde_json::Value = http
        .get(format!("{}/healthz", node.url))
        .send()
        .expect("healthz")
        .json()
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"], 2);
    assert_eq!(
        http.get(format!("{}/readyz", node.url))
            .send()
            .expect("readyz")
            .status(),
        200
    );

    let (status, body) = node.call("default-router", &route_body());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ranking"], json!([1, 0]));
    let (status, body) = node.call("default-pricing", &quote_body());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["price"]["price_per_unit"], 4768371);

    let metrics = node.metrics();
    assert_eq!(
        metric(
            &metrics,
            "weir_component_loaded{component=\"default-router\",world=\"router\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "weir_component_calls_total{component=\"default-router\",function=\"select\",outcome=\"ok\"}"),
        Some(1.0)
    );
    assert!(metrics.contains(
        "weir_component_call_seconds_bucket{component=\"default-pricing\",function=\"quote\""
    ));
    assert_eq!(
        metric(
            &metrics,
            "weir_component_loads_total{component=\"default-pricing\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn the_admin_api_needs_the_token() {
    let node = Node::start();
    let http = node.client();
    let resp = http
        .get(format!("{}/admin/components", node.url))
        .send()
        .expect("list");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    let resp = http
        .get(format!("{}/admin/components", node.url))
        .bearer_auth("wrong-token")
        .send()
        .expect("list");
    assert_eq!(resp.status(), 401);
    let list = node.admin_list();
    assert_eq!(
        names(&list, "components"),
        vec!["default-pricing", "default-router"]
    );
    assert!(list["components"][0]["exports"]
        .as_array()
        .expect("exports")
        .contains(&json!("weir:host/quoting@0.1.0")));
}

/// `PUT` a component and wait up to two minutes for its load: the loaded component or the
/// load's error.
fn upload(node: &Node, name: &str, manifest: &str, wasm: Vec<u8>) -> (u16, serde_json::Value) {
    let (status, _, body) = put(node, name, manifest, wasm, "?wait=120");
    (status, body)
}

/// `PUT /admin/components/{name}{query}`: status, `Location`, body.
fn put(
    node: &Node,
    name: &str,
    manifest: &str,
    wasm: Vec<u8>,
    query: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", manifest.to_owned())
        .part(
            "wasm",
            reqwest::blocking::multipart::Part::bytes(wasm).file_name("c.wasm"),
        );
    let resp = node
        .client()
        .put(format!("{}/admin/components/{name}{query}", node.url))
        .bearer_auth(&node.token)
        .multipart(form)
        .send()
        .expect("upload");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, location, resp.json().expect("json"))
}

/// `DELETE /admin/components/{name}`: the status.
fn delete(node: &Node, name: &str) -> u16 {
    node.client()
        .delete(format!("{}/admin/components/{name}", node.url))
        .bearer_auth(&node.token)
        .send()
        .expect("delete")
        .status()
        .as_u16()
}

/// `GET {node}{path}` with the admin token: status and body.
fn admin_get(node: &Node, path: &str) -> (u16, serde_json::Value) {
    let resp = node
        .client()
        .get(format!("{}{path}", node.url))
        .bearer_auth(&node.token)
        .send()
        .expect("get");
    (resp.status().as_u16(), resp.json().expect("json"))
}

/// Poll an install until it ends; every state seen on the way, and the last answer.
fn follow_install(node: &Node, name: &str) -> (Vec<String>, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (status, body) = admin_get(node, &format!("/admin/components/{name}/install"));
        assert_eq!(status, 200, "{body}");
        let state = body["state"].as_str().expect("state").to_owned();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "loaded" || state == "failed" {
            return (seen, body);
        }
        assert!(Instant::now() < deadline, "the install never ended: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_upload_compiles_in_the_background_and_shows_its_progress() {
    let node = Node::start();
    // A JavaScript component: megabytes of code that take seconds to compile.
    let wasm = std::fs::read(artifact("examples/pricing-surge-js.wasm")).expect("read");
    let manifest = built_manifest("examples/pricing-surge-js.toml");
    let started = Instant::now();
    let (status, location, body) = put(&node, "pricing-surge-js", &manifest, wasm.clone(), "");
    let answered = started.elapsed();
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        location.as_deref(),
        Some("/admin/components/pricing-surge-js/install")
    );
    assert_eq!(body["bytes"], json!(wasm.len()));
    assert_eq!(body["replaces"], json!(false));
    assert!(
        ["queued", "writing", "compiling"].contains(&body["state"].as_str().expect("state")),
        "{body}"
    );
    // While it compiles: listed as installing, a second upload or a delete of the name is
    // refused with the reason, and the rest of the node answers.
    let list = node.admin_list();
    assert_eq!(list["installing"][0]["name"], "pricing-surge-js", "{list}");
    let (status, _, refused) = put(&node, "pricing-surge-js", &manifest, wasm.clone(), "");
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .expect("message")
            .contains("is still"),
        "{refused}"
    );
    assert_eq!(delete(&node, "pricing-surge-js"), 409);
    assert_eq!(node.call("default-router", &route_body()).0, 200);

    let (seen, done) = follow_install(&node, "pricing-surge-js");
    assert_eq!(done["state"], "loaded", "{done}");
    assert!(seen.contains(&"compiling".to_owned()), "{seen:?}");
    assert_eq!(done["progress"], json!(1.0));
    assert!(done["elapsed_ms"].as_u64().expect("elapsed") > 0);
    assert_eq!(done["component"]["world"], "pricing", "{done}");
    let took = Duration::from_millis(done["elapsed_ms"].as_u64().expect("elapsed"));
    assert!(
        answered < took,
        "the PUT answered in {answered:?}, before the {took:?} install ended"
    );
    assert_eq!(node.call("pricing-surge-js", &quote_body()).0, 200);
    // The node measured that compilation: the next one of its size has an estimate.
    assert!(done["expected_compile_ms"].as_u64().is_some(), "{done}");
    assert_eq!(node.admin_list()["installing"], json!([]));

    // A reinstall that fails in the background (the manifest asks for an export the code
    // lacks) reports the load's error; the running version keeps serving.
    let wrong_world = manifest.replace("world = \"pricing\"", "world = \"router\"");
    assert_ne!(wrong_world, manifest);
    let (status, _, body) = put(&node, "pricing-surge-js", &wrong_world, wasm, "");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["replaces"], json!(true));
    let (_, failed) = follow_install(&node, "pricing-surge-js");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .expect("message")
            .contains("does not export the `router` world"),
        "{failed}"
    );
    assert_eq!(node.call("pricing-surge-js", &quote_body()).0, 200);

    // What can never load is refused at once, before anything is queued.
    let (status, _, body) = put(
        &node,
        "junk",
        &manifest_for("junk", "router"),
        b"not wasm".to_vec(),
        "",
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin_get(&node, "/admin/components/junk/install");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = put(
        &node,
        "x",
        &manifest_for("x", "router"),
        Vec::new(),
        "?wait=601",
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn components_are_installed_checked_and_removed_over_http() {
    let node = Node::start();
    // A Python router installed at run time.
    let wasm = std::fs::read(artifact("examples/router-region-py.wasm")).expect("read");
    let manifest = built_manifest("examples/router-region-py.toml");
    let (status, body) = upload(&node, "router-region-py", &manifest, wasm);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["world"], "router");
    let (status, body) = node.call("router-region-py", &route_body());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ranking"], json!([1, 0]));
    // The camelCase names a JavaScript guest sees are taken too.
    let camel = serde_json::to_string(&route_body())
        .expect("json")
        .replace("price_per_unit", "pricePerUnit")
        .replace("pixels_per_unit", "pixelsPerUnit")
        .replace("latency_ms", "latencyMs");
    let camel: serde_json::Value = serde_json::from_str(&camel).expect("json");
    let (status, body) = node.call("router-region-py", &camel);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ranking"], json!([1, 0]));
    let (status, body) = node.call(
        "default-pricing",
        &json!({"request": {"capability": "text-to-image", "model": "sdxl"}, "context": {"inFlight": 8, "capacity": 10}}),
    );
    assert_eq!(status, 200, "{body}");

    // Bad uploads: not a component, wrong world, ungranted import, name mismatch, missing part.
    let (status, body) = upload(
        &node,
        "junk",
        &manifest_for("junk", "router"),
        b"not wasm".to_vec(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("not a WebAssembly binary"));
    let pricing = std::fs::read(artifact("components/default-pricing.wasm")).expect("read");
    let (status, body) = upload(
        &node,
        "wrong",
        &manifest_for("wrong", "router"),
        pricing.clone(),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("belongs to the `pricing` world"));
    let greedy = std::fs::read(artifact("test-programs/greedy-router.wasm")).expect("read");
    let (status, body) = upload(&node, "greedy", &manifest_for("greedy", "router"), greedy);
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("does not grant"));
    let (status, body) = upload(
        &node,
        "other",
        &manifest_for("mismatch", "pricing"),
        pricing,
    );
    assert_eq!(status, 400, "{body}");
    let form =
        reqwest::blocking::multipart::Form::new().text("manifest", manifest_for("x", "router"));
    let resp = node
        .client()
        .put(format!("{}/admin/components/x", node.url))
        .bearer_auth(&node.token)
        .multipart(form)
        .send()
        .expect("upload");
    assert_eq!(resp.status(), 400);

    // The node kept serving through all of it; the failures are listed.
    assert_eq!(node.call("default-router", &route_body()).0, 200);
    let list = node.admin_list();
    let failed = names(&list, "failed");
    // Bytes that are not a component were refused before any load was tried.
    assert!(
        failed.contains(&"greedy") && !failed.contains(&"junk"),
        "{list}"
    );

    // Remove: gone from the API and from disk.
    assert_eq!(delete(&node, "router-region-py"), 204);
    assert_eq!(node.call("router-region-py", &route_body()).0, 404);
    assert!(!node.components().join("router-region-py.toml").exists());
}

fn manifest_for(name: &str, world: &str) -> String {
    manifest(name, world, "")
}

#[test]
fn a_call_that_misbehaves_maps_to_a_clear_http_error() {
    let node = Node::start();
    let wasm = std::fs::read(artifact("test-programs/misbehaving-router.wasm")).expect("read");
    let m = manifest(
        "misbehaving",
        "router",
        "[limits]\ntimeout_ms = 1000\nmemory_mib = 16",
    );
    assert_eq!(upload(&node, "misbehaving", &m, wasm).0, 201);
    let body = |mode: &str| json!({"request": {"id": format!("mode:{mode}")}});
    let (status, resp) = node.call("misbehaving", &body("loop"));
    assert_eq!(status, 504, "{resp}");
    assert!(resp["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("deadline"));
    let (status, resp) = node.call("misbehaving", &body("trap"));
    assert_eq!(status, 502, "{resp}");
    let (status, resp) = node.call("misbehaving", &body("error"));
    assert_eq!(status, 422, "{resp}");
    let (status, _) = node.call("misbehaving", &body("ok"));
    assert_eq!(status, 200);
    let (status, resp) = node.call("default-pricing", &json!({"request": {}}));
    assert_eq!(status, 400, "{resp}");
    let resp = node
        .client()
        .post(format!("{}/admin/components/default-router/call", node.url))
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
}

#[test]
fn a_pricing_swap_dropped_into_the_directory_is_served_while_calls_run() {
    let node = Node::start();
    let dir = node.components();
    let base = built_manifest("components/default-pricing.toml");
    let line = "\"price.text-to-image\" = \"4768371/1000000\"";
    let next = base.replace(line, "\"price.text-to-image\" = \"777/1000000\"");
    let tmp = dir.join(".swap");
    std::fs::write(&tmp, next).expect("write");
    let price = |i: usize| {
        let (status, body) = node.call("default-pricing", &quote_body());
        assert_eq!(status, 200, "call {i} failed during the swap: {body}");
        body["price"]["price_per_unit"].as_u64()
    };
    for i in 0..20 {
        assert_eq!(price(i), Some(4768371), "call {i} before the swap");
    }
    // Calls keep running while the new version loads; each is served by the old version or
    // the new one, and once the new one answers, the old one never does again. The test
    // waits for the new price (the reload is the event), not for a fixed time.
    std::fs::rename(&tmp, dir.join("default-pricing.toml")).expect("rename");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut before, mut after) = (0, 0);
    let mut i = 20;
    while after < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new version never answered ({before} calls on the old one after the swap)"
        );
        match price(i) {
            Some(4768371) if after == 0 => before += 1,
            Some(777) => after += 1,
            other => panic!("call {i}: unexpected price {other:?} after {after} new answers"),
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let metrics = node.metrics();
    assert_eq!(
        metric(
            &metrics,
            "weir_component_reloads_total{component=\"default-pricing\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn weir_component_install_uploads_and_follows_until_it_serves() {
    let node = Node::start();
    let weir = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .env_remove("WEIR_ADMIN_TOKEN")
            .env_remove("WEIR_NODE_URL")
            .output()
            .expect("run weir")
    };
    let install = |path: &str, token: &str| {
        weir(&[
            "component",
            "install",
            path,
            "--node",
            &node.url,
            "--token",
            token,
        ])
    };
    let manifest = artifact("examples/router-region-py.toml");
    let manifest = manifest.to_str().expect("utf8");
    let out = install(manifest, &node.token);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("installed router-region-py: world router"),
        "{stdout}"
    );
    assert!(stderr.contains("uploading router-region-py"), "{stderr}");
    assert!(
        stderr.contains("compiling"),
        "the progress is shown: {stderr}"
    );
    assert_eq!(node.call("router-region-py", &route_body()).0, 200);

    // A wrong token, and a manifest whose wasm was never built: clear failures.
    let out = install(manifest, "wrong-token");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let lone = dir.path().join("router-region-py.toml");
    std::fs::copy(manifest, &lone).expect("copy");
    let out = install(dir.path().to_str().expect("utf8"), &node.token);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build it first"), "{stderr}");
}
