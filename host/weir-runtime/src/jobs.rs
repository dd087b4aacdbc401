//! The contract's `job-request` built from a validated AI API request, so routers and pricing
//! components see the same parameters, output size and units on the gateway and the
//! orchestrator.

use serde_json::Value;
use weir_protocol::ai::{AiRequest, MediaFacts, IMAGE_TO_VIDEO_FRAMES};

use crate::bindings::types::{JobRequest, OutputSize, Param, ParamValue};

/// A `job-request` for `request`: its scalar fields become params (prompts and other text
/// included, file contents never), `units` are the billable units, `sender` who pays.
pub fn job_request(
    id: &str,
    request: &AiRequest,
    facts: MediaFacts,
    units: u64,
    sender: &str,
) -> JobRequest {
    let mut params = Vec::new();
    if let Ok(Value::Object(outer)) = serde_json::to_value(request) {
        if let Some(Value::Object(fields)) = outer.get("request") {
            for (name, value) in fields {
                let value = match value {
                    Value::Bool(b) => ParamValue::Flag(*b),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => ParamValue::Integer(i),
                        None => ParamValue::Number(n.as_f64().unwrap_or(0.0)),
                    },
                    Value::String(s) => ParamValue::Text(s.clone()),
                    _ => continue,
                };
                params.push(Param {
                    name: name.clone(),
                    value,
                });
            }
        }
    }
    let (iw, ih) = facts.image.unwrap_or((0, 0));
    let output = match request {
        AiRequest::TextToImage(r) => OutputSize {
            width: r.width,
            height: r.height,
            frames: 1,
            count: r.num_images_per_prompt,
        },
        AiRequest::ImageToImage(r) => OutputSize {
            width: iw,
            height: ih,
            frames: 1,
            count: r.num_images_per_prompt,
        },
        AiRequest::ImageToVideo(r) => OutputSize {
            width: r.width,
            height: r.height,
            frames: IMAGE_TO_VIDEO_FRAMES as u32,
            count: 1,
        },
        AiRequest::Upscale(_) | AiRequest::SegmentAnything2(_) => OutputSize {
            width: iw,
            height: ih,
            frames: 1,
            count: 1,
        },
        _ => OutputSize {
            width: 0,
            height: 0,
            frames: 0,
            count: 1,
        },
    };
    JobRequest {
        id: id.to_owned(),
        capability: request.capability().id().to_owned(),
        model: request.model_id().to_owned(),
        params,
        output,
        units,
        sender: sender.to_owned(),
    }
}
