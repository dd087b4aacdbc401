//! The gateway: its parts (the dispatcher and the features' state), start-up, and where
//! RTMP publishes go.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus::{IntCounterVec, Opts};
use weir_media::ingest::{Decision, Publish, PublishHandler};
use weir_payments::credit::Wallet;
use weir_payments::{Ledger, LedgerError};
use weir_runtime::Registry;

use crate::config::GatewayConfig;
use crate::discovery::Discovery;
use crate::dispatch::Dispatcher;
use crate::payments::GatewayPayments;
use crate::services::Services;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file (the wallet) could not be used.
    #[error("{0}")]
    Io(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The jobs engine could not start.
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsError),
    /// The object store could not be opened.
    #[error("object storage: {0}")]
    Storage(#[from] weir_storage::StorageError),
}

/// A running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Services>,
}

impl Gateway {
    /// A gateway recording what it owes in `ledger`, signing payments with the key at
    /// `wallet_path` (created when absent).
    pub async fn new(
        config: GatewayConfig,
        registry: Arc<Registry>,
        ledger: Arc<dyn Ledger>,
        wallet_path: &Path,
        metrics: &prometheus::Registry,
    ) -> Result<Gateway, GatewayError> {
        let config = Arc::new(config);
        let dispatcher =
            Arc::new(open_dispatcher(&config, registry, ledger, wallet_path, metrics).await?);
        weir_media::profile::validate_ladder(&config.live.profiles)
            .map_err(|e| GatewayError::Io(format!("live ladder: {e}")))?;
        let link_key = crate::jobs::object_link_key(&config)?;
        let storage = crate::storage::open(&config, &link_key).await?;
        tracing::info!(storage = storage.backend(), "object store ready");
        let ai = crate::ai::Ai::new(config.clone(), dispatcher.clone(), storage.clone(), metrics)?;
        let jobs = crate::jobs::Jobs::open(&config, ai.clone(), storage.clone(), metrics).await?;
        let live =
            crate::live::Live::new(config.live.clone(), &config, dispatcher.clone(), metrics)?;
        let byoc = crate::byoc::Byoc::new(dispatcher.clone());
        // Live AI streams show their output through live video's HLS.
        let ai_streams =
            crate::ai_streams::AiStreams::new(config.clone(), dispatcher.clone(), live.clone());
        Ok(Gateway {
            inner: Arc::new(Services {
                config,
                dispatcher,
                ai,
                jobs,
                live,
                ai_streams,
                byoc,
                storage,
            }),
        })
    }

    /// Orchestrator discovery.
    pub fn discovery(&self) -> &Arc<Discovery> {
        self.inner.dispatcher.discovery()
    }

    /// The object store (local disk or S3) results, job media and components' objects go to;
    /// local objects are served at `{public_url}/objects/{key}` behind signed links.
    pub fn storage(&self) -> &weir_storage::Storage {
        &self.inner.storage
    }

    /// The gateway ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        self.inner.dispatcher.payments().ledger()
    }

    /// Refresh orchestrator info once now, then periodically.
    pub async fn start(&self) -> tokio::task::JoinHandle<()> {
        self.discovery().refresh().await;
        let janitor = self.inner.live.spawn_janitor();
        let refresh = self
            .discovery()
            .spawn_refresh(self.inner.config.refresh_interval);
        let jobs = self.inner.jobs.spawn();
        tokio::spawn(async move {
            let _ = tokio::join!(janitor, refresh, futures_util::future::join_all(jobs));
        })
    }

    /// What publishes (RTMP today) are handed to.
    pub fn rtmp_handler(&self) -> Arc<dyn PublishHandler> {
        Arc::new(self.clone())
    }

    /// The HTTP routes: the AI API, `/results/{name}`, `/openapi.json` and
    /// `/gateway/orchestrators`, with CORS as `cors_origins` says.
    pub fn router(&self) -> Router {
        crate::http::router(&self.inner)
    }
}

/// Publishes (RTMP, or any protocol behind [`weir_media::ingest`]): a stream key of a live AI
/// stream feeds that stream; any other key is a live video stream.
impl PublishHandler for Gateway {
    fn publish(&self, publish: Publish) -> Decision {
        let g = self.clone();
        Box::pin(async move {
            if let Some(tx) = g.inner.ai_streams.ai_ingest(&publish.key) {
                tracing::info!(peer = %publish.peer, "publish of a live AI stream accepted");
                return Ok(tx);
            }
            g.inner.live.publish_live(publish).await
        })
    }
}

/// The shared path every feature sends work through: discovery, the router component, payments
/// (the ledger, with reservations a restart cut off released, and the wallet), the HTTP client.
async fn open_dispatcher(
    config: &Arc<GatewayConfig>,
    registry: Arc<Registry>,
    ledger: Arc<dyn Ledger>,
    wallet_path: &Path,
    metrics: &prometheus::Registry,
) -> Result<Dispatcher, GatewayError> {
    let released = ledger.release_stale(Duration::ZERO).await?;
    if released > 0 {
        tracing::warn!(
            released,
            "released reservations of requests cut off by a restart"
        );
    }
    let wallet = Wallet::load_or_create(wallet_path)
        .map_err(|e| GatewayError::Io(format!("wallet {}: {e}", wallet_path.display())))?;
    tracing::info!(sender = %wallet.sender(), "gateway wallet");
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| GatewayError::Io(format!("HTTP client: {e}")))?;
    let mismatches = IntCounterVec::new(
        Opts::new(
            "weir_gateway_balance_disputes_total",
            "Answers whose reported charge or balance disagreed with the ledger",
        ),
        &["orchestrator"],
    )?;
    metrics.register(Box::new(mismatches.clone()))?;
    let discovery = Arc::new(Discovery::new(
        &config.orchestrators,
        config.orch_webhook_url.clone(),
        config.webhook_interval,
        client.clone(),
    ));
    Ok(Dispatcher::new(
        config.clone(),
        registry,
        discovery,
        GatewayPayments::new(ledger, Box::new(wallet), mismatches),
        client,
        metrics,
    )?)
}
