//! {{name}}: a pipeline (world `weir:host/pipeline`, export `weir:host/pipeline-handler`).
//!
//! Batch jobs: with the manifest's `model` set (`capability/model-id`, granted in
//! `[permissions] models`), each job's inputs go through that model of the node and its outputs
//! are the answer; without it the inputs come back as they are. Live streams: every segment is
//! published as it came; a control message `{"pause": true}` holds segments back until
//! `{"pause": false}`.

use std::cell::Cell;

use weir_sdk::pipeline::{Error, Guest, Job, JobOutput, Param, ParamValue, Segment, StreamInfo};

/// `capability/model-id` as its two parts, `None` unless both are there.
pub fn model_of(setting: &str) -> Option<(&str, &str)> {
    setting
        .split_once('/')
        .filter(|(c, m)| !c.is_empty() && !m.is_empty())
}

/// Whether a control message asks to pause (`Some(true)`), resume (`Some(false)`) or neither.
pub fn pause_of(message: &str) -> Option<bool> {
    let compact: String = message.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("\"pause\":true") {
        Some(true)
    } else if compact.contains("\"pause\":false") {
        Some(false)
    } else {
        None
    }
}

thread_local! {
    // One instance serves one stream, so its state is plain instance state.
    static PAUSED: Cell<bool> = const { Cell::new(false) };
}

// Natively (in `cargo test`) nothing exports it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Pipeline;

impl Guest for Pipeline {
    fn run(job: Job) -> Result<JobOutput, Error> {
        let Some(setting) = weir_sdk::config::get("model") else {
            let count = job.inputs.len() as i64;
            return Ok(JobOutput {
                blobs: job.inputs,
                params: vec![Param {
                    name: "inputs".into(),
                    value: ParamValue::Integer(count),
                }],
            });
        };
        let (capability, model) = model_of(&setting).ok_or_else(|| {
            Error::Config(format!("model `{setting}` must be `capability/model-id`"))
        })?;
        let inputs: Vec<_> = job.inputs.iter().collect();
        let out = weir_sdk::models::invoke(capability, model, &job.request.params, &inputs)?;
        Ok(JobOutput {
            blobs: out.blobs,
            params: out.params,
        })
    }

    fn on_start(info: StreamInfo) -> Result<(), Error> {
        PAUSED.with(|p| p.set(false));
        weir_sdk::logging::info(&format!("stream {} started", info.id));
        Ok(())
    }

    fn on_segment(segment: Segment) -> Result<Vec<Segment>, Error> {
        if PAUSED.with(|p| p.get()) {
            return Ok(Vec::new());
        }
        Ok(vec![segment])
    }

    fn on_control(message: String) -> Result<(), Error> {
        if let Some(pause) = pause_of(&message) {
            PAUSED.with(|p| p.set(pause));
        }
        Ok(())
    }

    fn on_stop() {}
}

// Exported only in the component: `cargo test` builds natively, without the exports.
#[cfg(target_arch = "wasm32")]
weir_sdk::pipeline::export_pipeline!(Pipeline);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_control_messages_are_read() {
        assert_eq!(
            model_of("upscale/upscalerjs/default-model"),
            Some(("upscale", "upscalerjs/default-model"))
        );
        assert_eq!(model_of("upscale"), None);
        assert_eq!(pause_of(r#"{"pause": true}"#), Some(true));
        assert_eq!(pause_of(r#"{"pause":false}"#), Some(false));
        assert_eq!(pause_of(r#"{"keep":"alive"}"#), None);
    }
}
