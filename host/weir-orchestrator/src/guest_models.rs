//! The orchestrator's configured models as components see them (`weir:host/models.invoke`):
//! a pipeline hands blobs and params, the model's runner (in-process ONNX or a remote runner)
//! runs them as a request of its capability would be run, and the outputs come back as blobs
//! and params. Each invocation takes one of the model's capacity slots, like a paid job; it
//! is not charged (the component's own job is).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_models::capacity::Capacity;
use weir_models::{ModelRunner, OutputMedia, RunnerInput, RunnerOutput};
use weir_protocol::body::{ParsedRequest, UploadedFile};
use weir_protocol::Capability;
use weir_runtime::media::Blob;
use weir_runtime::{GuestError, ModelSource, Param, ParamValue};

/// One model a component may run.
pub(crate) struct GuestModel {
    pub(crate) capability: Capability,
    pub(crate) model_id: String,
    /// `None` for models served by a pipeline component (components do not call components).
    pub(crate) runner: Option<Arc<dyn ModelRunner>>,
    pub(crate) capacity: Arc<Capacity>,
    pub(crate) timeout: Duration,
}

/// The models of an orchestrator, run on the async runtime of `handle`.
pub(crate) struct GuestModels {
    pub(crate) models: Vec<GuestModel>,
    pub(crate) handle: tokio::runtime::Handle,
}

/// The form field a capability reads its input file from.
fn input_field(capability: Capability) -> &'static str {
    match capability {
        Capability::AudioToText => "audio",
        _ => "image",
    }
}

/// A param's value as a form field.
fn field_value(value: &ParamValue) -> String {
    match value {
        ParamValue::Text(t) => t.clone(),
        ParamValue::Integer(i) => i.to_string(),
        ParamValue::Number(n) => n.to_string(),
        ParamValue::Flag(f) => f.to_string(),
    }
}

/// The request `params` and `inputs` make for `model`, validated as a client's would be.
fn request(
    model: &GuestModel,
    params: &[Param],
    inputs: Vec<Blob>,
) -> Result<ParsedRequest, GuestError> {
    let mut fields: BTreeMap<String, String> = params
        .iter()
        .map(|p| (p.name.clone(), field_value(&p.value)))
        .collect();
    fields.insert("model_id".to_owned(), model.model_id.clone());
    let files = inputs
        .into_iter()
        .map(|b| UploadedFile {
            field: input_field(model.capability).to_owned(),
            filename: "input".to_owned(),
            content_type: b.content_type,
            data: bytes::Bytes::from_owner(b.data),
        })
        .collect();
    ParsedRequest::from_fields(model.capability, fields, files).map_err(|e| {
        GuestError::InvalidRequest(format!(
            "model {}/{}: {e}",
            model.capability.id(),
            model.model_id
        ))
    })
}

fn blob(m: OutputMedia) -> Blob {
    Blob {
        content_type: m.content_type,
        data: Arc::from(m.data),
    }
}

fn json_blob(value: &impl serde::Serialize) -> Blob {
    Blob {
        content_type: "application/json".to_owned(),
        data: Arc::from(serde_json::to_vec(value).unwrap_or_default()),
    }
}

fn text(text: String) -> Vec<Param> {
    vec![Param {
        name: "text".to_owned(),
        value: ParamValue::Text(text),
    }]
}

/// A runner's output as blobs and params: media as blobs, text as a `text` param, structured
/// answers (transcripts, masks, chat) also as one JSON blob.
fn outputs(out: RunnerOutput) -> (Vec<Blob>, Vec<Param>) {
    match out {
        RunnerOutput::Media(media) => (media.into_iter().map(blob).collect(), Vec::new()),
        RunnerOutput::Speech(m) => (vec![blob(m)], Vec::new()),
        RunnerOutput::Caption(c) => (Vec::new(), text(c.text)),
        RunnerOutput::Transcript(t) => (vec![json_blob(&t)], text(t.text)),
        RunnerOutput::Masks(m) => (vec![json_blob(&m)], Vec::new()),
        RunnerOutput::Chat(c) => (vec![json_blob(&c)], Vec::new()),
    }
}

impl ModelSource for GuestModels {
    fn invoke(
        &self,
        capability: &str,
        model_id: &str,
        params: &[Param],
        inputs: Vec<Blob>,
        deadline: Instant,
    ) -> Result<(Vec<Blob>, Vec<Param>), GuestError> {
        let what = format!("model {capability}/{model_id}");
        let model = self
            .models
            .iter()
            .find(|m| m.capability.id() == capability && m.model_id == model_id)
            .ok_or_else(|| {
                GuestError::InvalidRequest(format!("{what}: not served by this node"))
            })?;
        let runner = model.runner.clone().ok_or_else(|| {
            GuestError::Unsupported(format!(
                "{what} is a pipeline component; components cannot invoke components yet"
            ))
        })?;
        let input = request(model, params, inputs)?;
        let slot = model.capacity.try_acquire().map_err(|full| {
            GuestError::Internal(format!(
                "{what}: insufficient capacity ({} of {} jobs running)",
                full.in_flight, full.limit
            ))
        })?;
        let input = RunnerInput {
            request: input.request,
            files: input.files,
            sender: String::new(),
            units: 0,
        };
        let timeout = model.timeout;
        let label = what.clone();
        weir_runtime::blocking::run_until(&self.handle, &what, deadline, async move {
            let _slot = slot;
            match tokio::time::timeout(timeout, runner.run(input)).await {
                Ok(Ok(out)) => Ok(outputs(out)),
                Ok(Err(e)) => Err(GuestError::Internal(format!("{label}: {e}"))),
                Err(_) => Err(GuestError::Internal(format!(
                    "{label}: ran past its {} s timeout",
                    timeout.as_secs()
                ))),
            }
        })
    }
}
