//! The orchestrator's state, its construction, `GET /info`, the pricing component and the
//! routes of every feature.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use weir_models::capacity::Capacity;
use weir_models::Health;
use weir_payments::credit::Payment;
use weir_payments::{Ledger, LedgerError};
use weir_protocol::ai::MediaFacts;
use weir_protocol::info::{InfoModel, InfoPrice, OrchestratorInfo};
use weir_protocol::AiHttpError;
use weir_runtime::{Price, QuoteContext, Registry, Role, WorldKind};

use crate::ai::{self, Metrics, ModelSlot};
use crate::byoc::streams::{self, StreamTable};
use crate::byoc::{self, Capabilities};
use crate::config::OrchestratorConfig;
use crate::handler::err;
use crate::paid::{PaymentScheme, SignedCredits};
use crate::runners;
use crate::transcode::{self as live, TranscodeSlot};

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A model entry is wrong or its runner cannot be built.
    #[error("{0}")]
    Config(String),
    /// A runner could not be built.
    #[error(transparent)]
    Runner(#[from] runners::BuildError),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct Inner {
    config: OrchestratorConfig,
    /// How requests prove they are paid for.
    payments: Box<dyn PaymentScheme>,
    registry: Arc<Registry>,
    ledger: Arc<dyn Ledger>,
    models: Vec<ModelSlot>,
    transcode: Option<TranscodeSlot>,
    metrics: Metrics,
    byoc: Capabilities,
    trickle: weir_trickle::TrickleServer,
    streams: StreamTable,
    /// Random per process: keeps ids made from counters unique across restarts.
    boot_id: String,
}

/// A running orchestrator; cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

impl Orchestrator {
    /// Build the runners of every configured model; sender balances live in `ledger`.
    pub async fn new(
        config: OrchestratorConfig,
        registry: Arc<Registry>,
        ledger: Arc<dyn Ledger>,
        metrics: &prometheus::Registry,
    ) -> Result<Orchestrator, OrchestratorError> {
        let models = ai::build_models(&config, &registry)?;
        let payments = SignedCredits::new(
            &config.trusted_senders,
            config.accept_any_sender,
            config.max_payment_skew,
        )
        .map_err(OrchestratorError::Config)?;
        let transcode =
            TranscodeSlot::build(&config.transcode).map_err(OrchestratorError::Config)?;
        let released = ledger
            .release_stale(std::time::Duration::from_secs(0))
            .await?;
        if released > 0 {
            tracing::warn!(
                released,
                "released reservations of jobs cut off by a restart"
            );
        }
        let ai_metrics = Metrics::register(metrics)?;
        let byoc =
            Capabilities::new(config.byoc.clone(), &registry).map_err(OrchestratorError::Config)?;
        let trickle = weir_trickle::TrickleServer::new(config.trickle.clone(), metrics)?;
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                config,
                payments: Box::new(payments),
                registry,
                ledger,
                models,
                transcode,
                metrics: ai_metrics,
                byoc,
                trickle,
                streams: StreamTable::default(),
                boot_id: format!("{:08x}", rand::random::<u32>()),
            }),
        })
    }

    /// The ledger of sender balances.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.inner.ledger
    }

    pub(crate) fn byoc(&self) -> &Capabilities {
        &self.inner.byoc
    }

    /// The trickle server of this orchestrator's streams.
    pub fn trickle(&self) -> &weir_trickle::TrickleServer {
        &self.inner.trickle
    }

    pub(crate) fn streams(&self) -> &StreamTable {
        &self.inner.streams
    }

    pub(crate) fn service_url(&self) -> &str {
        &self.inner.config.service_url
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub(crate) fn boot_id(&self) -> &str {
        &self.inner.boot_id
    }

    pub(crate) fn transcode_slot(&self) -> Option<&TranscodeSlot> {
        self.inner.transcode.as_ref()
    }

    /// The transcoder as components see it (`transcode.ladder`), when transcoding is on.
    pub fn guest_media(&self) -> Option<Arc<dyn weir_runtime::MediaSource>> {
        self.inner.transcode.as_ref().map(|t| {
            Arc::new(live::GuestMedia::new(t.transcoder.clone()))
                as Arc<dyn weir_runtime::MediaSource>
        })
    }

    /// The configured models as components see them (`models.invoke`), run on the current
    /// async runtime.
    pub fn guest_models(&self) -> Arc<dyn weir_runtime::ModelSource> {
        let models = self
            .inner
            .models
            .iter()
            .map(|m| crate::guest_models::GuestModel {
                capability: m.capability,
                model_id: m.model_id.clone(),
                runner: (m.kind != "wasm").then(|| m.runner.clone()),
                capacity: m.capacity.clone(),
                timeout: m.timeout(),
            })
            .collect();
        Arc::new(crate::guest_models::GuestModels {
            models,
            handle: tokio::runtime::Handle::current(),
        })
    }

    /// The verified payment of a request, as the orchestrator's payment scheme sees it.
    pub(crate) fn payment(&self, headers: &HeaderMap) -> Result<Payment, AiHttpError> {
        self.inner.payments.verify(headers)
    }

    pub(crate) fn config(&self) -> &OrchestratorConfig {
        &self.inner.config
    }

    pub(crate) fn models(&self) -> &[ModelSlot] {
        &self.inner.models
    }

    pub(crate) fn ai_metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The HTTP routes: `GET /info`, `POST /transcode`, `POST /{capability}`, BYOC
    /// (`/capability/*`, `/process/request/*`, `/ai/stream/*`, `/live-video-to-video`) and the
    /// trickle channels (`/ai/trickle/*`, streamed, with their own limits).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/info", get(info))
            .route("/transcode", post(live::handle))
            .route("/capability/register", post(byoc::register))
            .route("/capability/unregister", post(byoc::unregister))
            .route("/process/request/{*route}", post(byoc::process_request))
            .route("/ai/stream/start", post(streams::start))
            .route("/ai/stream/update", post(streams::update))
            .route("/ai/stream/stop", post(streams::stop))
            .route("/ai/stream/payment", post(streams::top_up))
            .route("/ai/stream/{id}/status", get(streams::status))
            .route("/live-video-to-video", post(streams::live_video_to_video))
            .route("/{capability}", post(ai::job))
            .layer(DefaultBodyLimit::max(self.inner.config.max_body_bytes))
            .with_state(self.clone())
            .merge(self.inner.trickle.router())
    }

    /// BYOC worker health checks and the trickle channel sweeper.
    pub fn spawn_byoc_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            byoc::spawn_health_checks(self.clone()),
            self.inner.trickle.spawn_sweeper(),
        ]
    }

    /// Check every runner's health periodically, keeping the warm flags current.
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.config.health_interval);
            loop {
                tick.tick().await;
                for m in &this.inner.models {
                    let health = m.runner.health().await;
                    let warm = matches!(health, Health::Ready);
                    if m.warm.swap(warm, Ordering::Relaxed) != warm {
                        tracing::info!(capability = %m.capability, model = %m.model_id, ?health, "runner state changed");
                    }
                }
            }
        })
    }

    /// A failed quote refuses the request: 503 with the cause (the gateway moves on).
    pub(crate) fn pricing_error(&self, e: String) -> AiHttpError {
        err(
            503,
            format!("pricing component `{}`: {e}", self.inner.config.pricing),
        )
    }

    /// What the pricing component charges `sender` for `units` of `capability`/`model`.
    /// The component runs off the async workers; a trap, timeout or bad answer is an error.
    pub(crate) async fn quote_for(
        &self,
        capability: &str,
        model: &str,
        capacity: &Capacity,
        sender: &str,
        output: weir_runtime::OutputSize,
        units: u64,
    ) -> Result<Price, String> {
        let pricing = self
            .inner
            .registry
            .get_world(&self.inner.config.pricing, WorldKind::Pricing)
            .map_err(|e| e.to_string())?;
        let request = weir_runtime::JobRequest::priced(capability, model, output, units, sender);
        let context = QuoteContext {
            role: Role::Orchestrator,
            counterparty: sender.to_owned(),
            in_flight: capacity.in_flight(),
            capacity: capacity.limit(),
        };
        let price = pricing
            .quote_async(request, context)
            .await
            .map_err(|e| e.to_string())?;
        if price.pixels_per_unit == 0 {
            return Err("the pricing component quoted 0 pixels per unit".to_owned());
        }
        Ok(price)
    }

    /// What `/info` answers.
    pub async fn info(&self) -> OrchestratorInfo {
        let mut models = Vec::with_capacity(self.inner.models.len());
        for m in &self.inner.models {
            match self.quote_model(m, "", MediaFacts::default(), 0).await {
                Ok(price) => models.push(InfoModel {
                    capability: m.capability.id().to_owned(),
                    model_id: m.model_id.clone(),
                    warm: m.warm.load(Ordering::Relaxed),
                    runner: m.kind.to_owned(),
                    price: InfoPrice {
                        price_per_unit: price.price_per_unit,
                        pixels_per_unit: price.pixels_per_unit,
                        currency: price.currency,
                    },
                    capacity: m.capacity.limit(),
                    in_flight: m.capacity.in_flight(),
                }),
                Err(e) => {
                    tracing::warn!(capability = %m.capability, model = %m.model_id, error = %e, "not advertised: no price");
                }
            }
        }
        if let Some(t) = &self.inner.transcode {
            let output = weir_runtime::OutputSize::NONE;
            match self
                .quote_for(live::CAPABILITY, live::MODEL, &t.capacity, "", output, 0)
                .await
            {
                Ok(price) => models.push(InfoModel {
                    capability: live::CAPABILITY.to_owned(),
                    model_id: live::MODEL.to_owned(),
                    warm: true,
                    runner: t.kind.to_owned(),
                    price: InfoPrice {
                        price_per_unit: price.price_per_unit,
                        pixels_per_unit: price.pixels_per_unit,
                        currency: price.currency,
                    },
                    capacity: t.capacity.limit(),
                    in_flight: t.capacity.in_flight(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "transcoding not advertised: no price");
                }
            }
        }
        models.extend(self.inner.byoc.info());
        OrchestratorInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            service_url: self.inner.config.service_url.clone(),
            region: self.inner.config.region.clone(),
            gpu_class: self.inner.config.gpu_class.clone(),
            models,
        }
    }
}

async fn info(State(o): State<Orchestrator>) -> Json<OrchestratorInfo> {
    Json(o.info().await)
}
