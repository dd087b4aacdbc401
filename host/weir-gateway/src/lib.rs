//! The gateway role: the Livepeer-compatible AI API in front of many orchestrators.
//!
//! A request is read and validated ([`weir_protocol::body`]); candidates are the
//! orchestrators whose last `/info` offers the capability and model at or below the max
//! price; the router component orders them (warm models first); each attempt reserves the
//! job's cost in the gateway ledger and sends a signed payment for what the balance lacks.
//! Transport errors, 5xx and "insufficient capacity" move on to the next orchestrator within
//! a retry budget (failing ones are suspended for a while); a changed price is picked up and
//! retried once. Results are put in the gateway's one object store (`storage`: local disk or
//! S3) and their URLs rewritten to its own.
//!
//! Live video ([`live`]): RTMP and HTTP-pushed segments are transcoded on orchestrators the
//! same way (chosen, paid per output pixel, retried) and served as HLS.
//!
//! Bring-your-own-compute: batch jobs (`POST /process/request/{route}`) go to orchestrators
//! offering the capability like AI requests, paid per second; live AI streams
//! (`POST /process/stream/start`, `POST /live/video-to-video/{stream}/start`) run on one
//! orchestrator at a time over trickle channels, paid ahead per interval, moved when it fails.
//!
//! Layout: `dispatch` is the one shared path (select → pay → send → accept/settle → retry)
//! behind the small `Call` trait. Each feature (`ai`, `live`, `byoc`, `jobs`, `ai_streams`) is a
//! service that owns its state, describes its kind of call and owns its routes; features never
//! import each other (what one offers another is a trait in `seams`). `server` is the
//! composition root: it builds the [`services`](crate::services) and wires them, `http` merges
//! their routes, and feature settings live in `config`.

mod ai;
mod ai_streams;
mod byoc;
pub mod config;
mod cors;
pub mod discovery;
mod dispatch;
mod http;
pub mod jobs;
pub mod live;
pub mod payments;
mod record;
mod seams;
mod server;
mod services;
mod storage;

/// The OpenAPI document the gateway serves.
pub mod openapi {
    pub use weir_protocol::openapi::document;
}

pub use config::{parse_price, GatewayConfig, StreamsConfig};
pub use dispatch::ORCHESTRATOR_HEADER;
pub use jobs::JobsConfig;
pub use live::LiveConfig;
pub use server::{Gateway, GatewayError};
