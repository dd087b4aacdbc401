//! Weir's wire types.
//!
//! - [`capability`]: the AI capabilities, their default models and the unit each one is billed in.
//! - [`ai`]: request bodies of the Livepeer-compatible AI API with Livepeer's field names and
//!   defaults, validated into typed requests; response bodies.
//! - [`error`]: error bodies in the shapes Livepeer clients parse (`{"detail":{"msg"}}` and
//!   `{"detail":[{loc,msg,type}]}`), with the real cause in the message.

pub mod ai;
pub mod capability;
pub mod error;

pub use capability::{Capability, UnitKind};
pub use error::{FieldError, ValidationErrors};
