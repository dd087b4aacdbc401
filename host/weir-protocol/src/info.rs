//! What an orchestrator advertises at `GET /info`, and the headers gateway and orchestrator
//! exchange on each job.

use serde::{Deserialize, Serialize};

/// Header carrying a signed payment from the gateway (see `weir_payments::credit`).
pub const PAYMENT_HEADER: &str = "weir-payment";
/// Header naming the model the gateway chose for this job.
pub const MODEL_HEADER: &str = "weir-model";
/// Header with the sender's balance for the job's account after the job, in base units.
pub const BALANCE_HEADER: &str = "weir-balance";
/// Header with what the job was charged, in base units.
pub const CHARGE_HEADER: &str = "weir-charge";

/// A price as advertised: `price_per_unit` base units of `currency` per `pixels_per_unit` units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoPrice {
    /// Base units per `pixels_per_unit` units.
    pub price_per_unit: u64,
    /// Units of work per `price_per_unit` (at least 1).
    pub pixels_per_unit: u64,
    /// Currency label.
    pub currency: String,
}

/// One capability/model an orchestrator serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoModel {
    /// Capability id (`upscale`, `text-to-image`, ...).
    pub capability: String,
    /// Model id.
    pub model_id: String,
    /// Whether the model is loaded and answers without a cold start.
    pub warm: bool,
    /// Runner kind (`onnx`, `http`, `wasm`).
    pub runner: String,
    /// Price as quoted by the orchestrator's pricing component now.
    pub price: InfoPrice,
    /// Concurrent jobs accepted.
    pub capacity: u32,
    /// Jobs running now.
    pub in_flight: u32,
}

/// `GET /info` of an orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorInfo {
    /// Software version.
    pub version: String,
    /// The orchestrator's public service URL.
    pub service_url: String,
    /// Region label (may be empty).
    #[serde(default)]
    pub region: String,
    /// GPU class label (`cpu`, `h100`, ...).
    #[serde(default)]
    pub gpu_class: String,
    /// What it serves.
    pub models: Vec<InfoModel>,
}
