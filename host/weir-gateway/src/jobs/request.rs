//! The AI request a job runs as, built typed from its stored parameters and inputs and
//! validated as a client's request would be: the text-to-image body's fields, or the form's
//! fields and input files for the others. The AI API writes it to the wire once.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use weir_jobs::catalog::{Kind, ModelSpec};
use weir_protocol::body::{ParsedRequest, UploadedFile};
use weir_protocol::Capability;

use super::worker::RunError;
use super::Jobs;

/// The guidance prompt an upscale job sends when its submit gave none.
const UPSCALE_PROMPT: &str = "high quality, sharp details";

impl Jobs {
    /// The AI request of `capability` that runs a job of model `spec` (of `kind`) with
    /// `params`.
    pub(super) async fn ai_request(
        &self,
        capability: Capability,
        spec: &ModelSpec,
        kind: Kind,
        params: &Value,
    ) -> Result<ParsedRequest, RunError> {
        let invalid = |e: weir_protocol::body::BodyError| {
            RunError::Permanent(format!("the job makes no valid /{capability} request: {e}"))
        };
        if kind == Kind::TextToImage {
            return ParsedRequest::from_json(capability, &text_to_image_body(spec, params))
                .map_err(invalid);
        }
        let fields = form_fields(spec, kind, params)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect::<BTreeMap<_, _>>();
        let files = self.input_files(params).await?;
        ParsedRequest::from_fields(capability, fields, files).map_err(invalid)
    }

    /// The job's stored inputs as uploaded files, named by their input part.
    async fn input_files(&self, params: &Value) -> Result<Vec<UploadedFile>, RunError> {
        let inputs = params
            .get("inputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut files = Vec::with_capacity(inputs.len());
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
            files.push(UploadedFile {
                filename: part.clone(),
                field: part,
                content_type: object.content_type,
                data: object.data,
            });
        }
        Ok(files)
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
        Kind::AudioToText => {
            // The runner's extra options travel in `metadata`, a JSON object string.
            let language = text(params, "language");
            if !language.trim().is_empty() {
                fields.push(("metadata", json!({ "language": language }).to_string()));
            }
        }
        _ => {}
    }
    if let Some(seed) = params.get("seed").and_then(Value::as_u64) {
        fields.push(("seed", seed.to_string()));
    }
    fields
}
