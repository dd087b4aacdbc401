//! Weir's wire types.
//!
//! - [`capability`]: the AI capabilities, their default models and the unit each one is billed in.
//! - [`ai`]: request bodies of the Livepeer-compatible AI API with Livepeer's field names and
//!   defaults, validated into typed requests; response bodies.
//! - [`byoc`]: bring-your-own-compute: capability registration, the `Livepeer` job header,
//!   stream start answers and live video-to-video.
//! - [`auth`]: comparing presented secrets in constant time.
//! - [`body`]: reading JSON and multipart request bodies with limits, into validated requests
//!   and the media facts billing needs.
//! - [`openapi`]: the OpenAPI 3.1 documents of every public HTTP API, one module per API; the
//!   AI API's built from the validation code.
//! - [`ids`]: the one rule for ids clients choose (stream ids, stream keys).
//! - [`info`]: what an orchestrator advertises, and the job headers.
//! - [`error`]: error bodies in the shapes Livepeer clients parse (`{"detail":{"msg"}}` and
//!   `{"detail":[{loc,msg,type}]}`), with the real cause in the message.

pub mod ai;
pub mod auth;
pub mod body;
pub mod byoc;
pub mod capability;
pub mod error;
pub mod ids;
pub mod info;
pub mod multipart;
pub mod openapi;

pub use capability::{Capability, UnitKind};
#[cfg(feature = "axum")]
pub use error::AiBody;
pub use error::{AiErrorBody, AiHttpError, FieldError, ValidationErrors};
