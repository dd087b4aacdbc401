//! The documents against the code: the AI API's limits are read from the document and the
//! validator is driven at and just past each of them; every API's routes are present once.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::*;
use crate::ai::{AiRequest, FilePart, FormInput};
use crate::capability::Capability;
use crate::error::ValidationErrors;

/// An uploaded file: form part name, media type, size.
type Upload = (String, String, u64);

/// The request body schema (and its media type) the document gives `capability`.
fn body_schema(doc: &Value, capability: Capability) -> (bool, Value) {
    let content = &doc["paths"][format!("/{}", capability.id())]["post"]["requestBody"]["content"];
    match content.get("multipart/form-data") {
        Some(form) => (true, form["schema"].clone()),
        None => (false, content["application/json"]["schema"].clone()),
    }
}

/// A concrete media type that `accepted` (one entry of a documented list) covers.
fn concrete(accepted: &str) -> String {
    match accepted.strip_suffix("/*") {
        Some(prefix) => format!("{prefix}/wav"),
        None => accepted.to_owned(),
    }
}

/// Runs the validator on `values` as the capability's body type: a JSON object, or a form
/// whose text fields are the values as text and whose files are `files` (name → type, size).
fn validate(
    capability: Capability,
    form: bool,
    values: &Map<String, Value>,
    files: &[Upload],
) -> Result<AiRequest, ValidationErrors> {
    if !form {
        return AiRequest::from_json(capability, &Value::Object(values.clone()));
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let input = FormInput {
        fields: values.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        files: files
            .iter()
            .map(|(name, ct, len)| {
                let part = FilePart {
                    filename: "f".into(),
                    content_type: ct.clone(),
                    len: *len,
                };
                (name.clone(), part)
            })
            .collect(),
        repeated: BTreeSet::new(),
    };
    AiRequest::from_form(capability, &input)
}

/// The smallest body the document calls valid: every required property, files of their
/// first documented type.
fn minimal(schema: &Value) -> (Map<String, Value>, Vec<Upload>) {
    let mut values = Map::new();
    let mut files = Vec::new();
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        let prop = &schema["properties"][name];
        match (prop["type"].as_str(), prop["format"].as_str()) {
            (Some("string"), Some("binary")) => {
                let types = prop["description"].as_str().unwrap_or_default();
                let first = types
                    .trim_start_matches("Accepted types: ")
                    .split(", ")
                    .next();
                files.push((name.to_owned(), concrete(first.unwrap_or_default()), 1));
            }
            (Some("array"), _) => {
                values.insert(name.into(), json!([{"role": "user", "content": "x"}]));
            }
            _ => {
                values.insert(name.into(), json!("x"));
            }
        }
    }
    (values, files)
}

/// The fields the validator flagged.
fn flagged(r: &Result<AiRequest, ValidationErrors>) -> Vec<String> {
    match r {
        Ok(_) => Vec::new(),
        Err(e) => e.detail.iter().map(|f| f.loc.join(".")).collect(),
    }
}

/// Values at (accepted) and just past (refused) every documented limit of property `p`.
fn probes(p: &Value) -> Vec<(Value, bool)> {
    let mut out = Vec::new();
    let step = p["multipleOf"].as_i64().unwrap_or(1);
    match p["type"].as_str() {
        Some("integer") => {
            if let Some(min) = p["minimum"].as_i64() {
                out.push((json!(min), true));
                out.push((json!(min - step.max(1)), false));
                if step > 1 {
                    out.push((json!(min + 1), false));
                }
            }
            if let Some(max) = p["maximum"].as_i64() {
                out.push((json!(max), true));
                // Past i64::MAX is still a number in JSON.
                out.push((json!(max as u64 + step as u64), false));
            }
        }
        Some("number") => {
            if let (Some(min), Some(max)) = (p["minimum"].as_f64(), p["maximum"].as_f64()) {
                out.extend([(json!(min), true), (json!(max), true)]);
                out.extend([(json!(min - 0.001), false), (json!(max + 0.001), false)]);
            }
        }
        Some("boolean") => out.extend([(json!(true), true), (json!("maybe"), false)]),
        Some("string") if p.get("enum").is_some() => {
            for v in p["enum"].as_array().into_iter().flatten() {
                out.push((v.clone(), true));
            }
            out.push((json!("none-of-them"), false));
        }
        // Texts with a pattern carry JSON or words, probed elsewhere; a required text's
        // pattern only asks for something besides white space.
        Some("string") if p.get("pattern").is_none() || p["pattern"] == NOT_BLANK => {
            if let Some(max) = p["maxLength"].as_u64() {
                out.push((json!("a".repeat(max as usize)), true));
                out.push((json!("a".repeat(max as usize + 1)), false));
            }
        }
        _ => {}
    }
    out
}

/// For every capability and every documented limit, the validator accepts the limit and
/// refuses just past it, naming the field; every required field is enforced; every
/// documented default is what the validator fills in.
#[test]
fn the_document_describes_what_validation_enforces() {
    let doc = document();
    let mut checked = 0;
    for capability in Capability::ALL {
        let (form, schema) = body_schema(&doc, capability);
        let (base, files) = minimal(&schema);
        let parsed = validate(capability, form, &base, &files);
        assert!(parsed.is_ok(), "{capability}: {:?}", flagged(&parsed));
        let request = serde_json::to_value(parsed.ok()).unwrap_or_default();
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (name, p) in &props {
            if let (Some(default), Some(got)) = (p.get("default"), request["request"].get(name)) {
                let same = default == got
                    || default.as_f64().is_some() && default.as_f64() == got.as_f64();
                assert!(
                    same,
                    "{capability}.{name}: documented default {default}, validator {got}"
                );
            }
            for (value, ok) in probes(p) {
                let mut body = base.clone();
                body.insert(name.clone(), value.clone());
                let r = validate(capability, form, &body, &files);
                let field = format!("body.{name}");
                match ok {
                    true => assert!(
                        r.is_ok(),
                        "{capability}.{name} = {value}: {:?}",
                        flagged(&r)
                    ),
                    false => assert_eq!(flagged(&r), [field], "{capability}.{name} = {value}"),
                }
                checked += 1;
            }
        }
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            let mut body = base.clone();
            body.remove(name);
            let fewer: Vec<_> = files.iter().filter(|f| f.0 != name).cloned().collect();
            let r = validate(capability, form, &body, &fewer);
            assert_eq!(
                flagged(&r),
                [format!("body.{name}")],
                "{capability}: {name} is required"
            );
        }
        // Files: an empty one, and one of an undocumented type, are refused.
        for (name, ct, _) in &files {
            let empty = [(name.clone(), ct.clone(), 0)];
            assert_eq!(
                flagged(&validate(capability, form, &base, &empty)),
                [format!("body.{name}")]
            );
            let other = [(name.clone(), "text/x-undocumented".to_owned(), 1)];
            assert_eq!(
                flagged(&validate(capability, form, &base, &other)),
                [format!("body.{name}")]
            );
        }
    }
    assert!(checked > 100, "only {checked} probes");
}

/// What the validation refuses, the document says: blank required texts, empty files,
/// seeds past `i64::MAX`, files of other types, words outside a closed set.
#[test]
fn the_document_states_what_validation_refuses() {
    let doc = document();
    let body = |path: &str, media: &str| {
        doc["paths"][path]["post"]["requestBody"]["content"][media].clone()
    };
    let t2i = body("/text-to-image", "application/json");
    let prompt = &t2i["schema"]["properties"]["prompt"];
    assert_eq!(prompt["minLength"], json!(1));
    assert_eq!(prompt["pattern"], json!(NOT_BLANK));
    assert_eq!(
        t2i["schema"]["properties"]["seed"]["maximum"],
        json!(i64::MAX)
    );
    let blank = AiRequest::from_json(Capability::TextToImage, &json!({"prompt": " \u{3000}"}));
    assert_eq!(flagged(&blank), ["body.prompt"]);
    let a2t = body("/audio-to-text", "multipart/form-data");
    assert_eq!(a2t["schema"]["properties"]["audio"]["minLength"], json!(1));
    let types = a2t["encoding"]["audio"]["contentType"]
        .as_str()
        .unwrap_or("");
    assert!(types.contains("audio/*"), "{types}");
    let sam = body("/segment-anything-2", "multipart/form-data");
    let pattern = sam["schema"]["properties"]["point_coords"]["pattern"]
        .as_str()
        .unwrap_or("");
    assert!(
        pattern.starts_with("^\\[") && pattern.ends_with("\\]$"),
        "{pattern}"
    );
    assert!(sam["schema"]["propertyNames"]["pattern"].is_string());
}

#[test]
fn an_open_gateway_documents_no_client_bearer_requirement_but_keeps_the_admin_token() {
    let mut doc = document();
    let op = &doc["paths"]["/upscale"]["post"];
    assert!(op["security"].is_array() && op["responses"]["401"].is_object());
    without_auth(&mut doc);
    for capability in Capability::ALL {
        let op = &doc["paths"][format!("/{}", capability.id())]["post"];
        assert!(op.get("security").is_none(), "{capability}");
        assert!(op["responses"].get("401").is_none(), "{capability}");
        assert!(op["responses"]["422"].is_object(), "{capability}");
    }
    let admin = &doc["paths"]["/admin/components"]["get"];
    assert_eq!(admin["security"], json!([{"adminBearer": []}]));
    assert!(admin["responses"]["401"].is_object());
}

/// Every `$ref` of `doc` names a component schema it holds.
fn refs_resolve(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let name = r.trim_start_matches("#/components/schemas/");
                assert!(doc["components"]["schemas"].get(name).is_some(), "{r}");
            }
            m.values().for_each(|x| refs_resolve(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| refs_resolve(doc, x)),
        _ => {}
    }
}

#[test]
fn each_role_documents_its_own_routes_and_every_error_shape() {
    let gateway = gateway_document();
    let orchestrator = orchestrator_document(true);
    let service = orchestrator_document(false);
    for doc in [&gateway, &orchestrator, &service] {
        refs_resolve(doc, doc);
    }
    let paths = |d: &Value| {
        d["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect::<Vec<_>>())
    };
    let gw = paths(&gateway).unwrap_or_default();
    for p in [
        "/upscale",
        "/live/{stream}/{file}",
        "/stream/{stream}/{rendition}/{file}",
        "/recordings/{stream}/{file}",
        "/results/{name}",
        "/objects/{key}",
        "/gateway/orchestrators",
        "/process/request/{route}",
        "/process/stream/start",
        "/process/stream/{id}/status",
        "/live/video-to-video/{stream}/start",
        "/admin/components/{name}/call",
        "/admin/ledger",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(gw.iter().any(|g| g == p), "the gateway documents {p}");
    }
    assert!(!gw
        .iter()
        .any(|p| p.starts_with("/ai/trickle") || p == "/info"));
    let orch = paths(&orchestrator).unwrap_or_default();
    assert!(
        orch.iter().any(|p| p == "/ai/trickle/{ch}/{seq}")
            && orch.iter().any(|p| p == "/admin/ledger")
            && orch.iter().any(|p| p == "/objects/{key}")
    );
    assert!(!orch
        .iter()
        .any(|p| p == "/upscale" || p.starts_with("/process")));
    let mut service = paths(&service).unwrap_or_default();
    service.sort();
    assert_eq!(
        service,
        [
            "/ai/trickle/{ch}",
            "/ai/trickle/{ch}/{seq}",
            "/capability/register",
            "/capability/unregister",
            "/healthz",
            "/info",
            "/objects/{key}"
        ]
    );
    let schemas = &gateway["components"]["schemas"];
    for shape in ["HTTPError", "HTTPValidationError", "JobError", "AdminError"] {
        assert!(schemas.get(shape).is_some(), "{shape}");
    }
    assert!(orchestrator["components"]["schemas"]
        .get("TrickleError")
        .is_some());
    let state = &schemas["StreamStatus"]["properties"]["state"]["enum"];
    assert_eq!(state, &json!(streams::STREAM_STATES));
}
