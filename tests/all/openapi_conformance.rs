//! Conformance of a node's own `/openapi.json` documents: Schemathesis (PyPI, installed by
//! `make tools` into `.tools/py/bin/schemathesis`) generates requests from the documents a real
//! node serves and checks every answer against them: no server error but the documented 503s,
//! status codes, content types, headers and bodies as documented, bad input refused, valid
//! input accepted, and the bearer tokens enforced.
//!
//! Three runs over one combined node: the gateway's whole document (AI, jobs, live push and
//! playback, results, BYOC, AI streams, the node's routes) with a client token, so the admin
//! API answers its documented 401; the admin API's reading and calling operations with the
//! admin token (installing and deleting are left out: generated components would replace the
//! node's); and the orchestrator listener's document (`/info`, trickle). The node's
//! orchestrator serves only `/upscale` (the real ONNX model), so the other AI operations answer
//! their documented 503; the jobs API has the `upscale-2x` model; no stream or trickle channel
//! exists, so their generated ids get documented 404s.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{artifact, client, ready_field, Weir, ADMIN_TOKEN};

const TOKEN: &str = "conformance-client-token";

/// The Schemathesis CLI: `$WEIR_SCHEMATHESIS`, or the one `make tools` installs. `None` (the
/// test is skipped, saying why) when it is missing outside CI; under `CI=true` a missing tool
/// fails the test.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("WEIR_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py/bin/schemathesis")
        });
    if path.is_file() {
        return Some(path);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{} is missing: run `make tools` (CI must run the conformance test)",
        path.display()
    );
    eprintln!(
        "skipped: {} is missing (run `make tools` to install Schemathesis)",
        path.display()
    );
    None
}

/// A node with a client token, the real upscale model and the jobs API.
fn node() -> Weir {
    let model = artifact("models/upscale-2x.onnx");
    let config = format!(
        "[gateway]\nauth_tokens = [\"{TOKEN}\"]\n\n\
         [orchestrator]\ngpu_class = \"cpu\"\n\n\
         [[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"upscalerjs/default-model\"\n\
         runner = \"onnx\"\nmodel_path = {:?}\ncapacity = 2\n\n\
         [gateway.jobs]\ninput_timeout_secs = 2\nwebhook_timeout_secs = 2\nwebhook_retry_secs = []\n\n\
         [[gateway.jobs.models]]\nid = \"upscale-2x\"\ncapability = \"upscale\"\n\
         model_id = \"upscalerjs/default-model\"\n",
        model.display().to_string()
    );
    Weir::start("node", &config, &[])
}

/// The names of the properties that hold URLs the gateway reaches out to.
const URL_FIELDS: [&str; 3] = ["imageUrl", "audioUrl", "webhookUrl"];

/// Narrows every URL property to a closed port on loopback, which the gateway refuses to fetch
/// or call (not a public address): generated requests must not reach the internet. Returns how
/// many it narrowed.
fn narrow_urls(v: &mut Value) -> usize {
    let mut n = 0;
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if URL_FIELDS.contains(&key.as_str()) && child.get("type").is_some() {
                    *child = json!({"type": "string", "pattern": "^http://127\\.0\\.0\\.1:9/[a-z]{1,8}$"});
                    n += 1;
                } else {
                    n += narrow_urls(child);
                }
            }
        }
        Value::Array(items) => n += items.iter_mut().map(narrow_urls).sum::<usize>(),
        _ => {}
    }
    n
}

/// Schemathesis settings. 503 is the one documented server error (no orchestrator offers the
/// pipeline). A schema-valid request may still be refused where no schema can say what the
/// server checks: 415 when a generated file's bytes are not an image or audio file ("decodes
/// as PNG"), 400 for a `Livepeer` header that is not base64 JSON or a submit's refused input
/// URL, 415 or 422 for a pushed segment that is not MPEG-TS or MP4; an admin `call` whose
/// request a component refuses (422) or whose WIT values are malformed (400), and a `reload` of
/// a name with no files (422). The submit's URLs are narrowed, so it runs in positive mode
/// only (a negated URL could name any host).
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "415", "429", "503"]

[[operations]]
include-name = "POST /api/v1/generate"
generation.mode = "positive"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "409", "415", "429", "503"]

[[operations]]
include-path-regex = "^/live/\\{stream\\}/\\{file\\}$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409", "415", "422", "503"]

[[operations]]
include-path-regex = "^/(process/|live/video-to-video/\\{stream\\}/start)"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "501", "503"]

[[operations]]
include-path-regex = "^/admin/components/\\{name\\}/(call|reload)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "422", "502", "504"]
"#;

/// How many operations `doc` documents.
fn operations(doc: &Value) -> usize {
    doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, item)| item.as_object().into_iter().flatten())
        .filter(|(m, _)| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
        .count()
}

/// One Schemathesis run of `doc` against `url`, with `args` added; asserts that it passed and
/// tested `expect` operations.
fn run(st: &Path, label: &str, doc: &Value, url: &str, args: &[&str], expect: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("openapi.json");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&schema, serde_json::to_vec(doc).expect("json")).expect("write schema");
    std::fs::write(&config, CONFIG).expect("write config");
    let out = Command::new(st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&schema)
        .args(["--url", url])
        .args(["--checks", "all", "--max-examples", "10", "--workers", "1"])
        .args(["--seed", "20261202", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(args)
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{label}: schemathesis found the document and the server disagree:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("Tested: {expect}")),
        "{label}: every operation ran ({expect}):\n{report}"
    );
}

/// What earlier runs found, kept as plain regressions: a PNG pushed as a live segment was
/// taken (FFmpeg reads it as a one-frame video) and answered 200; a worker registration without
/// credentials answered 403 (registration off) where a missing secret is a 401.
fn what_schemathesis_found(node: &Weir) {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let r = client()
        .post(format!("{}/live/conformance/0.ts", node.url))
        .bearer_auth(TOKEN)
        .body(png)
        .send()
        .expect("push");
    assert_eq!(r.status().as_u16(), 415);
    let service = ready_field(&node.ready, "orchestrator").expect("the orchestrator's URL");
    let r = client()
        .post(format!("{service}/capability/register"))
        .json(&json!({"name": "x", "url": "http://127.0.0.1:9", "capacity": 1}))
        .send()
        .expect("register");
    assert_eq!(r.status().as_u16(), 401);
}

/// `GET {url}/openapi.json`.
fn document(url: &str) -> Value {
    client()
        .get(format!("{url}/openapi.json"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("GET /openapi.json")
}

#[test]
fn the_served_openapi_documents_are_what_the_server_does() {
    let Some(st) = schemathesis() else {
        return;
    };
    let node = node();
    what_schemathesis_found(&node);
    let mut doc = document(&node.url);
    assert!(narrow_urls(&mut doc) >= 2, "the submit's URL fields");
    let client_auth = format!("Authorization: Bearer {TOKEN}");
    let all = operations(&doc);
    assert!(
        all >= 40,
        "every public API is documented ({all} operations)"
    );
    run(&st, "gateway", &doc, &node.url, &["-H", &client_auth], all);

    let admin_auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let mut admin = doc.clone();
    if let Some(paths) = admin["paths"].as_object_mut() {
        paths.retain(|p, _| p.starts_with("/admin"));
    }
    // Installing and deleting are left out of this run (generated components would replace
    // the node's), not undeclared.
    let reading = operations(&admin) - 2;
    let args = [
        "-H",
        &admin_auth,
        "--exclude-method",
        "PUT",
        "--exclude-method",
        "DELETE",
    ];
    run(&st, "admin", &admin, &node.url, &args, reading);

    let service = ready_field(&node.ready, "orchestrator").expect("the orchestrator's URL");
    let orch = document(&service);
    assert!(
        orch["paths"].get("/ai/trickle/{ch}/{seq}").is_some(),
        "{orch}"
    );
    assert!(
        orch["paths"].get("/upscale").is_none(),
        "the gateway's API is not served there"
    );
    run(&st, "orchestrator", &orch, &service, &[], operations(&orch));
}
