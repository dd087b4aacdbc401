//! What every orchestrator handler shares: the error constructor, and the request body
//! extractor ([`AiBody`], from `weir-protocol`, which the gateway's handlers share).

use weir_protocol::AiHttpError;

/// An error answer with `status` and `msg`, in the AI error shape.
pub(crate) fn err(status: u16, msg: impl Into<String>) -> AiHttpError {
    AiHttpError::new(status, msg)
}

pub(crate) use weir_protocol::AiBody;
