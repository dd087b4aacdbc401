//! The orchestrator role: it advertises what it serves at `GET /info` (capabilities, models
//! warm or cold, prices quoted by the pricing component, capacity and load), and runs AI jobs
//! at the same paths as the AI API (`POST /upscale`, ...).
//!
//! Each job: read and validate the body; verify the signed `Weir-Payment` header and credit
//! it once per payment id; quote the price with the pricing component (refusing when it is
//! above what the payment agreed to); take a capacity slot (atomically, `503 insufficient
//! capacity` when full); reserve the job's cost from the sender's balance (`402` when short);
//! run the model; settle on success or release on failure (also when the client goes away).
//! The answer carries the remaining balance (`Weir-Balance`) and the charge (`Weir-Charge`).
//!
//! Live transcoding (`POST /transcode`, [`transcode`]) follows the same payment steps per
//! MPEG-TS segment, billed per output pixel.

pub mod config;
pub mod runners;
mod server;
pub mod transcode;

pub use config::{ModelEntry, OrchestratorConfig, RunnerSpec};
pub use server::{Orchestrator, OrchestratorError};
pub use transcode::{GuestMedia, TranscodeConfig};
