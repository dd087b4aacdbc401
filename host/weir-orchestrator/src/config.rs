//! What an orchestrator serves: one entry per capability and model (like Livepeer's
//! `aiModels.json`), each naming the runner that does the work.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One capability/model this orchestrator serves (`[[orchestrator.models]]` in `weir.toml`).
/// Unknown keys are refused by the flattened [`RunnerSpec`], which sees every key not read here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelEntry {
    /// Capability id (`upscale`, `text-to-image`, ...), `pipeline` in Livepeer's file.
    pub pipeline: String,
    /// Model id clients name (`model_id`).
    pub model_id: String,
    /// Whether the model is loaded at start (health checks keep this current for HTTP runners).
    #[serde(default = "yes")]
    pub warm: bool,
    /// Concurrent jobs accepted for this model.
    #[serde(default = "one")]
    pub capacity: u32,
    /// Deadline of one job, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The runner.
    #[serde(flatten)]
    pub runner: RunnerSpec,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn default_timeout_secs() -> u64 {
    120
}

impl ModelEntry {
    /// The job deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// Which runner does the work.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "runner", rename_all = "lowercase", deny_unknown_fields)]
pub enum RunnerSpec {
    /// An ONNX model run in-process with ONNX Runtime.
    Onnx {
        /// The `.onnx` file.
        model_path: PathBuf,
        /// `libonnxruntime` to load (default: `ORT_DYLIB_PATH`).
        #[serde(default)]
        onnxruntime: Option<PathBuf>,
        /// Use the CUDA execution provider when a GPU and a CUDA build of ONNX Runtime exist.
        #[serde(default)]
        cuda: bool,
        /// Intra-op threads (default: ONNX Runtime's choice).
        #[serde(default)]
        threads: Option<usize>,
    },
    /// A runner container speaking Livepeer's AI runner API.
    Http {
        /// Its base URL.
        url: String,
        /// Bearer token it expects.
        #[serde(default)]
        token: Option<String>,
    },
    /// A `pipeline` WASM component from the registry.
    Wasm {
        /// Component name.
        component: String,
    },
}

impl RunnerSpec {
    /// The runner kind as advertised (`onnx`, `http`, `wasm`).
    pub fn kind(&self) -> &'static str {
        match self {
            RunnerSpec::Onnx { .. } => "onnx",
            RunnerSpec::Http { .. } => "http",
            RunnerSpec::Wasm { .. } => "wasm",
        }
    }
}

/// Settings of the orchestrator role.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestratorConfig {
    /// The URL gateways reach this orchestrator at (advertised in `/info`).
    pub service_url: String,
    /// The pricing component.
    pub pricing: String,
    /// Region label.
    pub region: String,
    /// GPU class label.
    pub gpu_class: String,
    /// What is served.
    pub models: Vec<ModelEntry>,
    /// Payments older or newer than this are refused.
    pub max_payment_skew: Duration,
    /// Public keys of the gateways whose credits are accepted (hex as the `Weir-Payment`
    /// header names senders, or base64). Empty and not `accept_any_sender`: every credit is
    /// refused.
    pub trusted_senders: Vec<String>,
    /// Accept credits from any sender: local development only, since a credit from a key
    /// anyone can generate is free work.
    pub accept_any_sender: bool,
    /// Cap on one uploaded file.
    pub max_file_bytes: usize,
    /// Cap on a whole request body.
    pub max_body_bytes: usize,
    /// Period of runner health checks.
    pub health_interval: Duration,
    /// Live transcoding.
    pub transcode: crate::transcode::TranscodeConfig,
    /// Bring-your-own-compute capabilities and streams.
    pub byoc: crate::byoc::ByocConfig,
    /// The trickle channels of streams.
    pub trickle: weir_trickle::TrickleConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        models: Vec<ModelEntry>,
    }

    #[test]
    fn entries_parse_like_ai_models_json() {
        let f: File = toml::from_str(
            r#"
            [[models]]
            pipeline = "upscale"
            model_id = "m"
            runner = "onnx"
            model_path = "x.onnx"
            capacity = 2

            [[models]]
            pipeline = "text-to-image"
            model_id = "sdxl"
            runner = "http"
            url = "http://127.0.0.1:8000"
            warm = false
            "#,
        )
        .expect("valid");
        assert_eq!(f.models[0].runner.kind(), "onnx");
        assert_eq!(f.models[0].capacity, 2);
        assert!(!f.models[1].warm);
        assert!(toml::from_str::<File>(
            "[[models]]\npipeline=\"upscale\"\nmodel_id=\"m\"\nrunner=\"gpu\"\n"
        )
        .is_err());
        let typo = toml::from_str::<File>(
            "[[models]]\npipeline=\"upscale\"\nmodel_id=\"m\"\nrunner=\"http\"\nurl=\"x\"\ncapacty=2\n",
        );
        assert!(typo.is_err(), "{typo:?}");
    }
}
