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
            s.insert(
                "description".into(),
                json!(format!("Accepted types: {}", f.media_types.join(", "))),
            );
        }
        "messages" => {
            s.insert("type".into(), json!("array"));
            s.insert("minItems".into(), json!(1));
            s.insert(
                "items".into(),
                json!({"$ref": "#/components/schemas/ChatMessage"}),
            );
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

fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
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
        let media = if capability.is_multipart() {
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
                "requestBody": {"required": true, "content": {media: {"schema": {
                    "type": "object", "properties": properties, "required": required,
                }}}},
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
    let media = json!({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string"}, "seed": {"type": "integer"}, "nsfw": {"type": "boolean"}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weir AI API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Livepeer-compatible AI API served by the Weir gateway."},
        "paths": paths,
        "components": {
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
        }
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
}
