//! Model runners behind one trait.
//!
//! A [`ModelRunner`] takes a validated [`weir_protocol::ai::AiRequest`] with its uploaded files
//! and returns typed outputs with media already decoded to bytes. Backends:
//! - [`http::HttpRunner`]: forwards to a container speaking Livepeer's AI runner API (same
//!   paths and fields), with a per-request timeout, a health check and error mapping that says
//!   whether trying another runner can help.
//! - [`onnx::OnnxUpscaler`] (feature `onnx`, on by default): 2x super-resolution for `/upscale`
//!   in process, on ONNX Runtime loaded at run time.
//!
//! WASM-pipeline runners implement the same trait. [`capacity`] bounds how many jobs
//! each runner takes at once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use weir_protocol::ai::{AiRequest, ImageToTextResponse, LlmResponse, MasksResponse, TextResponse};

pub mod capacity;
pub mod http;
#[cfg(feature = "onnx")]
pub mod onnx;

/// A boxed future, so runners can be used as `dyn ModelRunner`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An uploaded file handed to a runner: the bytes the request body was read into, shared
/// without a copy.
pub use weir_protocol::body::UploadedFile as InputFile;

/// One job for a runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerInput {
    /// The validated request.
    pub request: AiRequest,
    /// Its uploaded files.
    pub files: Vec<InputFile>,
    /// Who pays for it (the payment's sender; empty when unknown).
    pub sender: String,
    /// The billable units it was charged for (0 when unknown).
    pub units: u64,
}

/// A produced media object, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputMedia {
    /// MIME type.
    pub content_type: String,
    /// The bytes.
    pub data: Vec<u8>,
    /// The seed used.
    pub seed: u64,
    /// Flagged by the safety checker.
    pub nsfw: bool,
}

/// What a runner produced, by capability.
#[derive(Debug, Clone, PartialEq)]
pub enum RunnerOutput {
    /// Images (text-to-image, image-to-image, upscale) or video frames (image-to-video).
    Media(Vec<OutputMedia>),
    /// A transcript (audio-to-text).
    Transcript(TextResponse),
    /// A caption (image-to-text).
    Caption(ImageToTextResponse),
    /// Masks (segment-anything-2).
    Masks(MasksResponse),
    /// A whole LLM answer.
    Chat(LlmResponse),
    /// Speech audio (text-to-speech).
    Speech(OutputMedia),
}

/// A runner's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Ready,
    /// Up, but still loading its model.
    Loading,
    /// Not serving; the text says why.
    Unhealthy(String),
}

/// Why a runner did not produce an output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// It could not be reached.
    #[error("runner unavailable: {0}")]
    Unavailable(String),
    /// It did not answer in time.
    #[error("runner did not answer within {0:?}")]
    Timeout(Duration),
    /// It refused the request as invalid (4xx); another runner would refuse it too.
    #[error("runner rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// It failed while working (5xx).
    #[error("runner failed ({status}): {message}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// It answered something that is not a valid response.
    #[error("runner sent an invalid response: {0}")]
    BadResponse(String),
    /// This runner cannot do what was asked; the text names the missing piece.
    #[error("not supported by this runner: {0}")]
    Unsupported(String),
}

impl RunnerError {
    /// Whether trying the job on another runner or orchestrator may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            RunnerError::Unavailable(_)
                | RunnerError::Timeout(_)
                | RunnerError::Failed { .. }
                | RunnerError::BadResponse(_)
        )
    }
}

/// Something that runs models.
pub trait ModelRunner: Send + Sync {
    /// Run one job.
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>>;
    /// Check whether it can serve.
    fn health(&self) -> BoxFuture<'_, Health>;
}
