//! The contract's `job-request` built from a validated AI API request, so routers and pricing
//! components see the same parameters, output size and units on the gateway and the
//! orchestrator.

use serde_json::Value;
use weir_protocol::ai::{AiRequest, MediaFacts, IMAGE_TO_VIDEO_FRAMES};

use crate::bindings::types::{JobRequest, OutputSize, Param, ParamValue};

impl OutputSize {
    /// No visual output (text, audio, or work described only by its units).
    pub const NONE: OutputSize = OutputSize {
        width: 0,
        height: 0,
        frames: 0,
        count: 1,
    };

    /// `count` outputs of `frames` frames of `width` × `height` (1 frame: a still image).
    pub fn new(width: u32, height: u32, frames: u32, count: u32) -> OutputSize {
        OutputSize {
            width,
            height,
            frames,
            count,
        }
    }
}

impl JobRequest {
    /// A request for `units` of `capability`/`model` sized `output`, paid by `sender` (empty
    /// when not known), with no id and no params (see [`JobRequest::with`]).
    pub fn priced(
        capability: &str,
        model: &str,
        output: OutputSize,
        units: u64,
        sender: &str,
    ) -> JobRequest {
        JobRequest {
            id: String::new(),
            capability: capability.to_owned(),
            model: model.to_owned(),
            params: Vec::new(),
            output,
            units,
            sender: sender.to_owned(),
        }
    }

    /// This request with id `id` and text params `params`.
    pub fn with(mut self, id: &str, params: &[(&str, &str)]) -> JobRequest {
        id.clone_into(&mut self.id);
        self.params = params
            .iter()
            .map(|(name, value)| Param {
                name: (*name).to_owned(),
                value: ParamValue::Text((*value).to_owned()),
            })
            .collect();
        self
    }
}

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
        AiRequest::TextToImage(r) => OutputSize::new(r.width, r.height, 1, r.num_images_per_prompt),
        AiRequest::ImageToImage(r) => OutputSize::new(iw, ih, 1, r.num_images_per_prompt),
        AiRequest::ImageToVideo(r) => {
            OutputSize::new(r.width, r.height, IMAGE_TO_VIDEO_FRAMES as u32, 1)
        }
        AiRequest::Upscale(_) | AiRequest::SegmentAnything2(_) => OutputSize::new(iw, ih, 1, 1),
        _ => OutputSize::NONE,
    };
    let capability = request.capability().id();
    JobRequest {
        id: id.to_owned(),
        params,
        ..JobRequest::priced(capability, request.model_id(), output, units, sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_request_carries_its_size_units_and_text_params() {
        let request = JobRequest::priced(
            "transcode",
            "h264",
            OutputSize::new(1280, 720, 60, 2),
            9,
            "gw",
        )
        .with("s/1", &[("stream", "s")]);
        assert_eq!(
            (
                request.id.as_str(),
                request.capability.as_str(),
                request.model.as_str()
            ),
            ("s/1", "transcode", "h264")
        );
        assert_eq!(
            (
                request.output.width,
                request.output.frames,
                request.output.count
            ),
            (1280, 60, 2)
        );
        assert_eq!((request.units, request.sender.as_str()), (9, "gw"));
        assert_eq!(request.params.len(), 1);
        assert_eq!(request.params[0].name, "stream");
        assert!(matches!(&request.params[0].value, ParamValue::Text(s) if s == "s"));
        let none = OutputSize::NONE;
        assert_eq!(
            (none.width, none.height, none.frames, none.count),
            (0, 0, 0, 1)
        );
    }
}
