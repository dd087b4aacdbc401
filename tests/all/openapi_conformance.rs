//! Conformance of the gateway's own `/openapi.json`: Schemathesis (PyPI, installed by
//! `make tools` into `.tools/py/bin/schemathesis`) generates requests from the document a real
//! node serves and checks every answer against it: no server error but the documented 503s,
//! status codes, content types, headers and bodies as documented, bad input refused, valid
//! input accepted, and the bearer token enforced.
//!
//! The node's orchestrator serves only `/upscale` (the real ONNX model), so the other AI
//! operations answer their documented 503; the jobs API has the `upscale-2x` model.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{artifact, client, Weir};

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
/// pipeline). A schema-valid request may still be refused with 415 when a generated file's
/// bytes are not an image or audio file (no schema can say "decodes as PNG"), and a submit
/// with 400 when its input URL is refused. The submit's URLs are narrowed, so it runs in
/// positive mode only (a negated URL could name any host).
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "415", "429", "503"]

[[operations]]
include-name = "POST /api/v1/generate"
generation.mode = "positive"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "409", "415", "429", "503"]
"#;

#[test]
fn the_served_openapi_document_is_what_the_server_does() {
    let Some(st) = schemathesis() else {
        return;
    };
    let node = node();
    let mut doc: Value = client()
        .get(format!("{}/openapi.json", node.url))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("GET /openapi.json");
    assert!(narrow_urls(&mut doc) >= 2, "the submit's URL fields");
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("openapi.json");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&schema, serde_json::to_vec(&doc).expect("json")).expect("write schema");
    std::fs::write(&config, CONFIG).expect("write config");
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&schema)
        .args(["--url", &node.url])
        .args(["--checks", "all", "--max-examples", "15", "--workers", "1"])
        .args(["--seed", "20261202", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the document and the server disagree:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Tested: 14"),
        "every operation ran:\n{report}"
    );
}
