//! Building the runner of each configured model, and the WASM-pipeline runner.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_media::transcode::TranscodeError;
use weir_models::http::{HttpRunner, HttpRunnerConfig};
use weir_models::{
    BoxFuture, Health, ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput,
};
use weir_protocol::ai::{AiRequest, ImageToTextResponse, MediaFacts};
use weir_protocol::Capability;
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
    let runner = build_runner(entry, registry).map_err(fail)?;
    if Capability::from_id(&entry.pipeline) == Some(Capability::ImageToVideo) {
        return Ok(Arc::new(FramesToVideo { inner: runner }));
    }
    Ok(runner)
}

/// The runner `entry` names, as it answers.
fn build_runner(
    entry: &ModelEntry,
    registry: &Arc<Registry>,
) -> Result<Arc<dyn ModelRunner>, String> {
    match &entry.runner {
        RunnerSpec::Http { url, token } => {
            let runner = HttpRunner::new(HttpRunnerConfig {
                url: url.clone(),
                token: token.clone(),
                timeout: entry.timeout(),
                health_timeout: Duration::from_secs(5),
            })
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(runner))
        }
        RunnerSpec::Onnx {
            model_path,
            onnxruntime,
            cuda,
            threads,
        } => build_onnx(model_path, onnxruntime.as_deref(), *cuda, *threads),
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

/// What a pipeline's output objects and params are as the answer of `capability`.
fn output_of(
    capability: weir_protocol::Capability,
    outputs: Vec<Blob>,
    params: Vec<weir_runtime::Param>,
) -> Result<RunnerOutput, RunnerError> {
    let seed = 0;
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
                    RunnerError::BadResponse("the pipeline returned no `text` param".to_owned())
                })?;
            Ok(RunnerOutput::Caption(ImageToTextResponse { text }))
        }
        C::TextToImage | C::ImageToImage | C::Upscale | C::ImageToVideo | C::TextToSpeech => {
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
}

impl ModelRunner for WasmPipelineRunner {
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>> {
        Box::pin(async move {
            let component = self
                .registry
                .get_world(&self.component, WorldKind::Pipeline)
                .map_err(guest_error)?;
            let capability = input.request.capability();
            let job = weir_runtime::jobs::job_request(
                &format!("wasm-{:016x}", rand::random::<u64>()),
                &input.request,
                MediaFacts::default(),
                input.units,
                &input.sender,
            );
            let blobs = input
                .files
                .into_iter()
                .map(|f| Blob {
                    content_type: f.content_type,
                    data: Arc::from(f.data.as_ref()),
                })
                .collect();
            let (outputs, params) = component.run_async(job, blobs).await.map_err(guest_error)?;
            output_of(capability, outputs, params)
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

/// Image-to-video as Livepeer's gateway answers it: ONE video in `images[]`. Runners answer
/// frames (Livepeer's AI runner answers `frames: [[Media]]`); this wrapper encodes them into one
/// H.264 MP4 at the request's `fps` ([`weir_media::frames`], on a blocking thread). A runner that
/// already answers one `video/*` object is passed through.
pub struct FramesToVideo {
    inner: Arc<dyn ModelRunner>,
}

impl ModelRunner for FramesToVideo {
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>> {
        Box::pin(async move {
            let fps = match &input.request {
                AiRequest::ImageToVideo(r) => r.fps,
                _ => DEFAULT_FPS,
            };
            match self.inner.run(input).await? {
                RunnerOutput::Media(media) => frames_to_video(media, fps).await,
                other => Ok(other),
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        self.inner.health()
    }
}

/// Livepeer's default image-to-video frame rate.
const DEFAULT_FPS: u32 = 6;

/// One `video/*` object as it is; otherwise the frames encoded into one MP4 that carries the
/// first frame's seed and is flagged NSFW when any frame is.
async fn frames_to_video(media: Vec<OutputMedia>, fps: u32) -> Result<RunnerOutput, RunnerError> {
    if let [one] = media.as_slice() {
        if one.content_type.starts_with("video/") {
            return Ok(RunnerOutput::Media(media));
        }
    }
    let Some(first) = media.first() else {
        return Err(RunnerError::BadResponse(
            "image-to-video: the runner returned no frames".to_owned(),
        ));
    };
    let (seed, nsfw, count) = (first.seed, media.iter().any(|m| m.nsfw), media.len());
    let frames: Vec<Bytes> = media.into_iter().map(|m| Bytes::from(m.data)).collect();
    let started = std::time::Instant::now();
    let encoded =
        tokio::task::spawn_blocking(move || weir_media::frames::encode_frames_to_mp4(&frames, fps))
            .await
            .map_err(|e| RunnerError::Failed {
                status: 500,
                message: format!("image-to-video: the encoding task failed: {e}"),
            })?;
    let video = encoded.map_err(|e| encode_error(e, count))?;
    tracing::info!(
        frames = count,
        fps,
        bytes = video.len(),
        ms = started.elapsed().as_millis() as u64,
        "image-to-video frames encoded to MP4"
    );
    Ok(RunnerOutput::Media(vec![OutputMedia {
        content_type: "video/mp4".to_owned(),
        data: Vec::from(video),
        seed,
        nsfw,
    }]))
}

/// Frames the runner sent that cannot be encoded are its fault (502); a missing encoder here is
/// this orchestrator's (500).
fn encode_error(e: TranscodeError, frames: usize) -> RunnerError {
    let message =
        format!("image-to-video: encoding the runner's {frames} frame(s) into an MP4: {e}");
    match e {
        TranscodeError::InvalidInput(_) | TranscodeError::Options(_) => {
            RunnerError::BadResponse(message)
        }
        _ => RunnerError::Failed {
            status: 500,
            message,
        },
    }
}
