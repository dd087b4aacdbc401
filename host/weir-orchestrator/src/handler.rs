//! What every orchestrator handler shares: the request body as an extractor whose refusal is
//! already in the AI error shape, and the error constructor.
//!
//! Nothing here is specific to the orchestrator; the gateway's handlers read bodies the same
//! way and could share [`AiBody`] once it moves to `weir-protocol`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use weir_protocol::AiHttpError;

/// An error answer with `status` and `msg`, in the AI error shape.
pub(crate) fn err(status: u16, msg: impl Into<String>) -> AiHttpError {
    AiHttpError::new(status, msg)
}

/// The whole request body; a body over the size limit (413) or cut off is refused in the AI
/// error shape instead of axum's plain-text rejection.
pub(crate) struct AiBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for AiBody {
    type Rejection = AiHttpError;

    async fn from_request(req: Request, state: &S) -> Result<AiBody, AiHttpError> {
        Bytes::from_request(req, state)
            .await
            .map(AiBody)
            .map_err(AiHttpError::from)
    }
}
