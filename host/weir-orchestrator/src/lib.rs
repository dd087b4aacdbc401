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
//! These payment steps are written once (the private `paid` module) and taken by every paid
//! handler; the payment itself is verified by the orchestrator's payment scheme (today signed
//! credits, the seam where Livepeer's off-chain payments would be a second scheme).
//!
//! Live transcoding (`POST /transcode`, [`transcode`]) follows the same payment steps per
//! MPEG-TS segment, billed per output pixel.
//!
//! Bring-your-own-compute ([`byoc`]): external workers register capabilities at run time and
//! `pipeline` components are configured as capabilities; batch jobs arrive at
//! `POST /process/request/{route}`, live streams at `POST /ai/stream/start` (and Livepeer's
//! `POST /live-video-to-video`), their media on authenticated trickle channels served here
//! under `/ai/trickle/`, their balances debited per second of stream time.

mod ai;
pub mod byoc;
pub mod config;
mod guest_models;
mod handler;
mod paid;
pub mod runners;
mod server;
pub mod transcode;

pub use byoc::{ByocConfig, PipelineEntry};
pub use config::{ModelEntry, OrchestratorConfig, RunnerSpec};
pub use server::{Orchestrator, OrchestratorError};
pub use transcode::{GuestMedia, TranscodeConfig};
