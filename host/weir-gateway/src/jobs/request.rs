//! The Livepeer AI request a job runs as, built from its stored parameters and inputs: a JSON
//! body for text-to-image, a multipart form (fields, then the input files) for the others.

use axum::body::Bytes;
use serde_json::{json, Value};
use weir_jobs::catalog::{Kind, ModelSpec};
use weir_protocol::multipart;

use super::worker::RunError;
use super::Jobs;

/// The guidance prompt an upscale job sends when its submit gave none.
const UPSCALE_PROMPT: &str = "high quality, sharp details";

impl Jobs {
    /// The content type and body of the AI request that runs a job of model `spec` (of
    /// `kind`) with `params`.
    pub(super) async fn ai_request(
        &self,
        spec: &ModelSpec,
        kind: Kind,
        params: &Value,
    ) -> Result<(String, Bytes), RunError> {
        if kind == Kind::TextToImage {
            let body = text_to_image_body(spec, params);
            return Ok(("application/json".to_owned(), Bytes::from(body.to_string())));
        }
        let mut parts: Vec<multipart::Part> = form_fields(spec, kind, params)
            .into_iter()
            .map(|(name, value)| multipart::Part {
                headers: vec![(
                    "content-disposition".to_owned(),
                    format!("form-data; name=\"{name}\""),
                )],
                data: Bytes::from(value),
            })
            .collect();
        parts.extend(self.input_parts(params).await?);
        let boundary = multipart::boundary();
        Ok((
            format!("multipart/form-data; boundary={boundary}"),
            multipart::write(&boundary, &parts),
        ))
    }

    /// The job's stored inputs as file parts, named by their input part.
    async fn input_parts(&self, params: &Value) -> Result<Vec<multipart::Part>, RunError> {
        let inputs = params
            .get("inputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut parts = Vec::with_capacity(inputs.len());
        for (part, key) in inputs {
            let key = key.as_str().unwrap_or_default();
            let object = self
                .storage
                .get(key)
                .await
                .map_err(|e| RunError::Transient(format!("reading input `{part}`: {e}")))?
                .ok_or_else(|| {
                    RunError::Permanent(format!("input `{part}` is gone from storage"))
                })?;
            parts.push(multipart::Part {
                headers: vec![
                    (
                        "content-disposition".to_owned(),
                        format!("form-data; name=\"{part}\"; filename=\"{part}\""),
                    ),
                    ("content-type".to_owned(), object.content_type.clone()),
                ],
                data: object.data,
            });
        }
        Ok(parts)
    }
}

/// The value of parameter `key` (`null` when absent).
fn param(params: &Value, key: &str) -> Value {
    params.get(key).cloned().unwrap_or(Value::Null)
}

/// The text of parameter `key` (empty when absent).
fn text(params: &Value, key: &str) -> String {
    params
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The JSON body of a text-to-image request.
fn text_to_image_body(spec: &ModelSpec, params: &Value) -> Value {
    let mut body = json!({
        "prompt": param(params, "prompt"),
        "negative_prompt": text(params, "negativePrompt"),
        "width": param(params, "width"),
        "height": param(params, "height"),
        "num_inference_steps": param(params, "steps"),
        "guidance_scale": param(params, "guidanceScale"),
    });
    if let Some(seed) = params.get("seed").filter(|s| !s.is_null()) {
        body["seed"] = seed.clone();
    }
    if let Some(m) = &spec.model_id {
        body["model_id"] = Value::String(m.clone());
    }
    body
}

/// The text fields of a form request of `kind`, by wire name.
fn form_fields(spec: &ModelSpec, kind: Kind, params: &Value) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    if let Some(m) = &spec.model_id {
        fields.push(("model_id", m.clone()));
    }
    match kind {
        Kind::ImageToImage => {
            fields.push(("prompt", text(params, "prompt")));
            fields.push(("negative_prompt", text(params, "negativePrompt")));
            fields.push(("strength", param(params, "strength").to_string()));
            fields.push(("num_inference_steps", param(params, "steps").to_string()));
        }
        Kind::ImageToVideo => {
            for (k, wire) in [("width", "width"), ("height", "height"), ("fps", "fps")] {
                fields.push((wire, param(params, k).to_string()));
            }
        }
        Kind::Upscale => {
            // Livepeer's upscale takes a guidance prompt; the job schema makes it optional.
            let prompt = text(params, "prompt");
            let prompt = if prompt.trim().is_empty() {
                UPSCALE_PROMPT.to_owned()
            } else {
                prompt
            };
            fields.push(("prompt", prompt));
        }
        _ => {}
    }
    if let Some(seed) = params.get("seed").and_then(Value::as_u64) {
        fields.push(("seed", seed.to_string()));
    }
    fields
}
