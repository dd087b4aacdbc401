//! The OpenAPI 3.1 document of the AI API, built from the same field readers that validate
//! requests ([`AiRequest::schema`]), so documentation and enforcement cannot drift apart.

use serde_json::{json, Map, Value};

use crate::ai::{AiRequest, FieldSpec};
use crate::capability::Capability;

fn field_schema(f: &FieldSpec) -> Value {
    let mut s = Map::new();
    match f.kind {
        "file" => {
            s.insert("type".into(), json!("string"));
            s.insert("format".into(), json!("binary"));
            // An empty file is refused.
            s.insert("minLength".into(), json!(1));
            s.insert(
                "description".into(),
                json!(format!("Accepted types: {}", f.media_types.join(", "))),
            );
            if let [only] = f.media_types.as_slice() {
                s.insert("contentMediaType".into(), json!(only));
            }
        }
        "messages" => {
            s.insert("type".into(), json!("array"));
            s.insert("minItems".into(), json!(1));
            s.insert(
                "items".into(),
                json!({"$ref": "#/components/schemas/ChatMessage"}),
            );
        }
        "string" if f.required => {
            // A required text must hold something other than white space.
            s.insert("type".into(), json!("string"));
            s.insert("minLength".into(), json!(1));
            s.insert("pattern".into(), json!(NOT_BLANK));
        }
        "string" => {
            s.insert("type".into(), json!("string"));
            if let Some(Value::Object(extra)) = text_constraints(&f.name) {
                s.extend(extra);
            }
        }
        kind => {
            s.insert("type".into(), json!(kind));
        }
    }
    if let Some(d) = &f.default {
        s.insert("default".into(), d.clone());
    }
    if let Some(v) = f.minimum {
        s.insert("minimum".into(), number(v));
    }
    if let Some(v) = f.maximum {
        s.insert("maximum".into(), number(v));
    }
    if let Some(v) = f.multiple_of {
        s.insert("multipleOf".into(), json!(v));
    }
    if let Some(v) = f.max_length {
        s.insert("maxLength".into(), json!(v));
    }
    Value::Object(s)
}

/// A `pattern` that a text matches when it holds something besides white space (what
/// `str::trim` removes: Unicode's White_Space): a required text must.
pub const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// A decimal number of the JSON texts below (a safe subset of what the server parses).
const NUM: &str = r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?";

/// Constraints on the text fields that carry JSON or a closed set of words: a JSON Schema
/// cannot say "parses as JSON", so these patterns describe a subset of what the server reads,
/// one whose every match it accepts.
fn text_constraints(name: &str) -> Option<Value> {
    let pair = format!(r"\[{NUM},{NUM}\]");
    let row = format!(r"\[({NUM}(,{NUM})*)?\]");
    let scalar = format!(r#"("[A-Za-z0-9 _-]{{0,32}}"|{NUM}|true|false|null)"#);
    let member = format!(r#""[a-z_]{{1,16}}":{scalar}"#);
    let pattern = match name {
        "return_timestamps" => return Some(json!({"enum": ["true", "false", "word"]})),
        "point_coords" => format!(r"^\[({pair}(,{pair})*)?\]$"),
        "point_labels" => r"^\[([01](,[01])*)?\]$".to_owned(),
        "box" => format!(r"^\[{NUM},{NUM},{NUM},{NUM}\]$"),
        "mask_input" => format!(r"^\[({row}(,{row})*)?\]$"),
        "metadata" => format!(r"^\{{({member}(,{member})*)?\}}$"),
        _ => return None,
    };
    Some(json!({"contentMediaType": "application/json", "pattern": pattern}))
}

fn number(v: f64) -> Value {
    // `i64::MAX as f64` rounds up past i64::MAX: say the integer the server really allows.
    if v >= i64::MAX as f64 {
        json!(i64::MAX)
    } else if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn response_ref(capability: Capability) -> &'static str {
    match capability {
        Capability::TextToImage
        | Capability::ImageToImage
        | Capability::ImageToVideo
        | Capability::Upscale => "ImageResponse",
        Capability::AudioToText => "TextResponse",
        Capability::SegmentAnything2 => "MasksResponse",
        Capability::ImageToText => "ImageToTextResponse",
        Capability::Llm => "LLMResponse",
        Capability::TextToSpeech => "AudioResponse",
    }
}

/// Drops every operation's bearer requirement and its 401 answer: what an open gateway (one
/// that asks clients for no token) serves, so that the document says what the server does.
pub fn without_auth(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in item.values_mut().filter_map(Value::as_object_mut) {
            if op.remove("security").is_some() {
                if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    r.remove("401");
                }
            }
        }
    }
}

/// The shared schemas: responses, media, chat messages, errors; and the bearer scheme.
fn components() -> Value {
    let media = json!({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string"}, "seed": {"type": "integer"}, "nsfw": {"type": "boolean"}}});
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Media": media,
            "ImageResponse": {"type": "object", "required": ["images"], "properties": {"images": {"type": "array", "items": {"$ref": "#/components/schemas/Media"}}}},
            "AudioResponse": {"type": "object", "required": ["audio"], "properties": {"audio": {"$ref": "#/components/schemas/Media"}}},
            "TextResponse": {"type": "object", "required": ["text", "chunks"], "properties": {"text": {"type": "string"}, "chunks": {"type": "array", "items": {"type": "object", "properties": {"text": {"type": "string"}, "timestamp": {"type": "array", "items": {}}}}}}},
            "ImageToTextResponse": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "MasksResponse": {"type": "object", "required": ["masks", "scores", "logits"], "properties": {"masks": {"type": "string"}, "scores": {"type": "string"}, "logits": {"type": "string"}}},
            "ChatMessage": {"type": "object", "required": ["role", "content"], "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}},
            "LLMResponse": {"type": "object", "required": ["id", "model", "created", "choices"], "properties": {
                "id": {"type": "string"}, "model": {"type": "string"}, "created": {"type": "integer"},
                "choices": {"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "message": {"$ref": "#/components/schemas/ChatMessage"}, "delta": {"$ref": "#/components/schemas/ChatMessage"}, "finish_reason": {"type": "string"}}}},
                "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}},
            "HTTPError": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "object", "required": ["msg"], "properties": {"msg": {"type": "string"}}}}},
            "HTTPValidationError": {"type": "object", "properties": {"detail": {"type": "array", "items": {"type": "object", "required": ["loc", "msg", "type"], "properties": {"loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"}, "type": {"type": "string"}}}}}},
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for capability in Capability::ALL {
        let fields = AiRequest::schema(capability);
        let properties: Map<String, Value> = fields
            .iter()
            .map(|f| (f.name.clone(), field_schema(f)))
            .collect();
        let required: Vec<&str> = fields
            .iter()
            .filter(|f| f.required)
            .map(|f| f.name.as_str())
            .collect();
        let mut body = json!({"schema": {
            "type": "object", "properties": properties, "required": required,
        }});
        let media = if capability.is_multipart() {
            // The accepted types of each file part (OpenAPI's `encoding`, comma-separated).
            let encoding: Map<String, Value> = fields
                .iter()
                .filter(|f| f.kind == "file" && !f.media_types.is_empty())
                .map(|f| {
                    (
                        f.name.clone(),
                        json!({"contentType": f.media_types.join(", ")}),
                    )
                })
                .collect();
            body["encoding"] = Value::Object(encoding);
            // A part's name travels in its Content-Disposition header: no control characters
            // or quotes.
            body["schema"]["propertyNames"] = json!({"pattern": "^[^\\u0000-\\u001f\\u007f\"]*$"});
            "multipart/form-data"
        } else {
            "application/json"
        };
        let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}});
        let mut ok = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", response_ref(capability))}}});
        if capability == Capability::Llm {
            ok["text/event-stream"] = json!({"schema": {"type": "string", "description": "Server-sent events when `stream` is true"}});
        }
        paths.insert(
            format!("/{}", capability.id()),
            json!({"post": {
                "operationId": capability.id().replace('-', "_"),
                "summary": format!("Run {}", capability.id()),
                "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {media: body}},
                "responses": {
                    "200": {"description": "Successful Response", "content": ok},
                    "400": error("Bad Request"),
                    "401": error("Unauthorized"),
                    "413": error("Payload Too Large"),
                    "415": error("Unsupported Media Type"),
                    "422": {"description": "Validation Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}},
                    "500": error("Internal Server Error"),
                    "503": error("Service Unavailable"),
                }
            }}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weir AI API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Livepeer-compatible AI API served by the Weir gateway."},
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_what_validation_enforces() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let t2i = &doc["paths"]["/text-to-image"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(t2i["required"], json!(["prompt"]));
        assert_eq!(t2i["properties"]["width"]["maximum"], json!(2048));
        assert_eq!(t2i["properties"]["width"]["multipleOf"], json!(8));
        assert_eq!(
            t2i["properties"]["num_inference_steps"]["default"],
            json!(50)
        );
        assert_eq!(
            t2i["properties"]["model_id"]["default"],
            json!("stabilityai/sdxl-turbo")
        );
        let up = &doc["paths"]["/upscale"]["post"]["requestBody"]["content"]["multipart/form-data"]
            ["schema"];
        assert_eq!(up["properties"]["image"]["format"], "binary");
        let mut req: Vec<&str> = up["required"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        req.sort_unstable();
        assert_eq!(req, ["image", "prompt"]);
        let llm =
            &doc["paths"]["/llm"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(llm["properties"]["max_tokens"]["default"], json!(256));
        assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(9));
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
        let a2t = body("/audio-to-text", "multipart/form-data");
        assert_eq!(a2t["schema"]["properties"]["audio"]["minLength"], json!(1));
        let types = a2t["encoding"]["audio"]["contentType"]
            .as_str()
            .unwrap_or("");
        assert!(types.contains("audio/*"), "{types}");
        assert_eq!(
            a2t["schema"]["properties"]["return_timestamps"]["enum"],
            json!(["true", "false", "word"])
        );
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
    fn an_open_gateway_documents_no_bearer_requirement() {
        let mut doc = document();
        let op = &doc["paths"]["/upscale"]["post"];
        assert!(op["security"].is_array() && op["responses"]["401"].is_object());
        without_auth(&mut doc);
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            assert!(item["post"].get("security").is_none(), "{path}");
            assert!(item["post"]["responses"].get("401").is_none(), "{path}");
            assert!(item["post"]["responses"]["422"].is_object(), "{path}");
        }
    }
}
