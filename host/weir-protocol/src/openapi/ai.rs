//! The AI API (`POST /{capability}`), built from the same field readers that validate
//! requests ([`AiRequest::schema`]), so documentation and enforcement cannot drift apart.
//! Errors: Livepeer's `HTTPError` `{"detail": {"msg"}}` and, for invalid fields (422, or 400
//! for a body that cannot be read), `HTTPValidationError` `{"detail": [{loc, msg, type}]}`.

use serde_json::{json, Map, Value};

use super::Part;
use crate::ai::{AiRequest, FieldSpec};
use crate::capability::Capability;

/// The JSON Schema of one request field as the validation reads it.
pub fn field_schema(f: &FieldSpec) -> Value {
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

/// The AI API's schemas: responses, media, chat messages, errors.
fn schemas() -> Value {
    let media = json!({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string"}, "seed": {"type": "integer"}, "nsfw": {"type": "boolean"}}});
    json!({
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
            "HTTPError": super::http_error(),
            "HTTPValidationError": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "array", "items": {"type": "object", "required": ["loc", "msg", "type"], "properties": {"loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"}, "type": {"type": "string"}}}}}},
    })
}

/// The request body of `capability`: JSON or a multipart form, with its fields' schemas.
fn request_body(capability: Capability) -> Value {
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
    json!({"required": true, "content": {media: body}})
}

/// `POST /{capability}`.
fn operation(capability: Capability) -> Value {
    let error = |d: &str| super::json_response(d, "HTTPError");
    let mut ok =
        json!({"application/json": {"schema": super::schema_ref(response_ref(capability))}});
    if capability == Capability::Llm {
        ok["text/event-stream"] = json!({"schema": {"type": "string", "description": "Server-sent events when `stream` is true"}});
    }
    json!({"post": {
        "operationId": capability.id().replace('-', "_"),
        "summary": format!("Run {}", capability.id()),
        "tags": ["ai"],
        "security": super::client_security(),
        "requestBody": request_body(capability),
        "responses": {
            "200": {"description": "Successful Response", "content": ok},
            "400": error("Bad Request: a body that cannot be read"),
            "401": error("Unauthorized"),
            "413": error("Payload Too Large"),
            "415": error("Unsupported Media Type: a body of another type, or an upload that is not a supported file"),
            "422": super::json_response("Validation Error: every invalid field, named", "HTTPValidationError"),
            "500": error("Internal Server Error"),
            "503": error("Service Unavailable: no orchestrator could serve the request (the cause is in the message)"),
        }
    }})
}

/// The AI API: one path per capability, and its schemas.
pub(super) fn part() -> Part {
    let paths = Capability::ALL
        .into_iter()
        .map(|c| (format!("/{}", c.id()), operation(c)))
        .collect();
    let schemas = schemas().as_object().cloned().unwrap_or_default();
    Part { paths, schemas }
}
