//! Building the runner of each configured model, and the WASM-pipeline runner.

use std::sync::Arc;
use std::time::Duration;

use weir_models::http::{HttpRunner, HttpRunnerConfig};
use weir_models::{
    BoxFuture, Health, ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput,
};
use weir_protocol::ai::{ImageToTextResponse, MediaFacts};
use weir_runtime::media::Blob;
use weir_runtime::{GuestError, ParamValue, Registry, RuntimeError, WorldKind};

use crate::config::{ModelEntry, RunnerSpec};

/// Why a runner could not be built.
#[derive(Debug, thiserror::Error)]
#[error("model {model} ({capability}, runner {kind}): {reason}")]
pub struct BuildError {
    /// Capability.
    pub capability: String,
    /// Model.
    pub model: String,
    /// Runner kind.
    pub kind: &'static str,
    /// Why.
    pub reason: String,
}

/// Build the runner for `entry`.
pub fn build(
    entry: &ModelEntry,
    registry: &Arc<Registry>,
) -> Result<Arc<dyn ModelRunner>, BuildError> {
    let fail = |reason: String| BuildError {
        capability: entry.pipeline.clone(),
        model: entry.model_id.clone(),
        kind: entry.runner.kind(),
        reason,
    };
    match &entry.runner {
        RunnerSpec::Http { url, token } => {
            let runner = HttpRunner::new(HttpRunnerConfig {
                url: url.clone(),
                token: token.clone(),
                timeout: entry.timeout(),
                health_timeout: Duration::from_secs(5),
            })
            .map_err(|e| fail(e.to_string()))?;
            Ok(Arc::new(runner))
        }
        RunnerSpec::Onnx {
            model_path,
            onnxruntime,
            cuda,
            threads,
        } => build_onnx(model_path, onnxruntime.as_deref(), *cuda, *threads).map_err(fail),
        RunnerSpec::Wasm { component } => Ok(Arc::new(WasmPipelineRunner {
            registry: registry.clone(),
            component: component.clone(),
        })),
    }
}

#[cfg(feature = "onnx")]
fn build_onnx(
    model_path: &std::path::Path,
    onnxruntime: Option<&std::path::Path>,
    cuda: bool,
    threads: Option<usize>,
) -> Result<Arc<dyn ModelRunner>, String> {
    let mut config = weir_models::onnx::OnnxConfig::new(model_path);
    config.dylib_path = onnxruntime.map(ToOwned::to_owned);
    config.cuda = cuda;
    config.threads = threads;
    let runner = weir_models::onnx::OnnxUpscaler::load(config).map_err(|e| e.to_string())?;
    tracing::info!(model = %model_path.display(), provider = runner.provider().name(), "ONNX model loaded");
    Ok(Arc::new(runner))
}

#[cfg(not(feature = "onnx"))]
fn build_onnx(
    _model_path: &std::path::Path,
    _onnxruntime: Option<&std::path::Path>,
    _cuda: bool,
    _threads: Option<usize>,
) -> Result<Arc<dyn ModelRunner>, String> {
    Err("this build has no ONNX runner (built without the `onnx` feature)".to_owned())
}

/// Runs jobs through a `pipeline` component's `run` export: uploaded files become input blobs;
/// output blobs become media (image capabilities) and a `text` param becomes a caption.
pub struct WasmPipelineRunner {
    registry: Arc<Registry>,
    component: String,
}

fn guest_error(e: RuntimeError) -> RunnerError {
    match e {
        RuntimeError::Call {
            failure: weir_runtime::CallFailure::Guest(GuestError::InvalidRequest(m)),
            ..
        } => RunnerError::Rejected {
            status: 400,
            message: m,
        },
        RuntimeError::Call {
            failure: weir_runtime::CallFailure::Guest(GuestError::Unsupported(m)),
            ..
        } => RunnerError::Unsupported(m),
        RuntimeError::NotFound(name) => {
            RunnerError::Unavailable(format!("pipeline component `{name}` is not loaded"))
        }
        other => RunnerError::Failed {
            status: 500,
            message: other.to_string(),
        },
    }
}

impl ModelRunner for WasmPipelineRunner {
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>> {
        Box::pin(async move {
            let component = self
                .registry
                .get_world(&self.component, WorldKind::Pipeline)
                .map_err(guest_error)?;
            let capability = input.request.capability();
            let seed = 0;
            let job = weir_runtime::jobs::job_request(
                &format!("wasm-{:016x}", rand::random::<u64>()),
                &input.request,
                MediaFacts::default(),
                0,
                "",
            );
            let blobs = input
                .files
                .into_iter()
                .map(|f| Blob {
                    content_type: f.content_type,
                    data: Arc::from(f.data.as_ref()),
                })
                .collect();
            let (outputs, params) = tokio::task::spawn_blocking(move || component.run(job, blobs))
                .await
                .map_err(|e| RunnerError::Failed {
                    status: 500,
                    message: format!("pipeline task failed: {e}"),
                })?
                .map_err(guest_error)?;
            use weir_protocol::Capability as C;
            match capability {
                C::ImageToText => {
                    let text = params
                        .into_iter()
                        .find_map(|p| match (p.name.as_str(), p.value) {
                            ("text", ParamValue::Text(t)) => Some(t),
                            _ => None,
                        })
                        .ok_or_else(|| {
                            RunnerError::BadResponse(
                                "the pipeline returned no `text` param".to_owned(),
                            )
                        })?;
                    Ok(RunnerOutput::Caption(ImageToTextResponse { text }))
                }
                C::TextToImage
                | C::ImageToImage
                | C::Upscale
                | C::ImageToVideo
                | C::TextToSpeech => {
                    if outputs.is_empty() {
                        return Err(RunnerError::BadResponse(
                            "the pipeline returned no output objects".to_owned(),
                        ));
                    }
                    let media: Vec<OutputMedia> = outputs
                        .into_iter()
                        .map(|b| OutputMedia {
                            content_type: b.content_type,
                            data: b.data.to_vec(),
                            seed,
                            nsfw: false,
                        })
                        .collect();
                    if capability == C::TextToSpeech {
                        media
                            .into_iter()
                            .next()
                            .map(RunnerOutput::Speech)
                            .ok_or_else(|| RunnerError::BadResponse("no audio output".to_owned()))
                    } else {
                        Ok(RunnerOutput::Media(media))
                    }
                }
                other => Err(RunnerError::Unsupported(format!(
                    "{other} through a WASM pipeline (outputs are objects and params; use an \
                     image capability or image-to-text)"
                ))),
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            match self
                .registry
                .get_world(&self.component, WorldKind::Pipeline)
            {
                Ok(_) => Health::Ready,
                Err(e) => Health::Unhealthy(e.to_string()),
            }
        })
    }
}
