//! The gateway's services, as the composition root (`server`) builds and wires them: the
//! dispatcher every feature sends work through, and one service per feature.

use std::sync::Arc;

use crate::config::GatewayConfig;
use crate::dispatch::Dispatcher;

/// The gateway's parts.
pub(crate) struct Services {
    /// The gateway's settings.
    pub(crate) config: Arc<GatewayConfig>,
    /// The shared path every call to an orchestrator takes.
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// The AI API.
    pub(crate) ai: Arc<crate::ai::Ai>,
    /// The jobs API and its workers.
    pub(crate) jobs: Arc<crate::jobs::Jobs>,
    /// Live video.
    pub(crate) live: Arc<crate::live::Live>,
    /// Live AI streams.
    pub(crate) ai_streams: Arc<crate::ai_streams::AiStreams>,
    /// BYOC batch jobs.
    pub(crate) byoc: Arc<crate::byoc::Byoc>,
    /// The object store every feature puts its media in.
    pub(crate) storage: weir_storage::Storage,
}
