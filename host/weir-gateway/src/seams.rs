//! What one feature offers another, as small traits. Features never import each other: a
//! feature that needs another's service names it here, the other implements it, and the
//! gateway's composition root (`server`) wires the two together.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use weir_protocol::body::ParsedRequest;
use weir_protocol::AiHttpError;

use crate::storage::StoredResult;

/// A boxed future borrowing its service.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An AI request served by an orchestrator.
pub(crate) struct Served {
    /// Who served it.
    pub orchestrator: String,
    /// The answer, media URLs rewritten to the gateway's own.
    pub body: serde_json::Value,
    /// The answer's media as stored in the object store, in the answer's order.
    pub results: Vec<StoredResult>,
    /// What the gateway paid.
    pub charge: u64,
    /// Output units (pixels, samples…) the request was priced by.
    pub units: u64,
    /// The client asked for server-sent events.
    pub stream: bool,
}

/// The AI API as other features (the jobs worker) run requests through it.
pub(crate) trait AiRequests: Send + Sync {
    /// Serve one validated AI request: dispatched, paid, its media stored.
    fn serve(&self, request: ParsedRequest) -> BoxFut<'_, Result<Served, AiHttpError>>;
}

/// Live video's HLS output, where live AI streams show what their orchestrator sends back.
pub(crate) trait StreamOutputs: Send + Sync {
    /// The HLS output of AI stream `id`, opened (or continued after the stream moved, with a
    /// discontinuity) for a new session; `None` when it cannot be served (logged).
    fn open(self: Arc<Self>, id: &str) -> Option<Arc<dyn StreamOutput>>;
    /// AI stream `id` ended: end its playlists.
    fn end(&self, id: &str);
}

/// The HLS output of one session of a live AI stream.
pub(crate) trait StreamOutput: Send + Sync {
    /// List one output segment (dropped once a later session took the stream over).
    fn list(&self, data: Bytes) -> BoxFut<'_, ()>;
}
