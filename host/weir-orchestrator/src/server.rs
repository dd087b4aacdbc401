//! The orchestrator's state and HTTP handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use weir_models::capacity::{Capacity, Slot};
use weir_models::{Health, ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput};
use weir_payments::credit::{self, Payment, PaymentError};
use weir_payments::trust::SenderTrust;
use weir_payments::{Ledger, LedgerError, UnitPrice};
use weir_protocol::ai::{AudioResponse, ImageResponse, Media, MediaFacts};
use weir_protocol::body::parse_request;
use weir_protocol::info::{
    InfoModel, InfoPrice, OrchestratorInfo, BALANCE_HEADER, CHARGE_HEADER, MODEL_HEADER,
    PAYMENT_HEADER,
};
use weir_protocol::{AiHttpError, Capability};
use weir_runtime::{Price, QuoteContext, Registry, Role, WorldKind};

use crate::byoc::{self, Capabilities};
use crate::config::OrchestratorConfig;
use crate::runners;
use crate::streams::{self, StreamTable};
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

struct ModelSlot {
    capability: Capability,
    model_id: String,
    kind: &'static str,
    runner: Arc<dyn ModelRunner>,
    capacity: Arc<Capacity>,
    warm: AtomicBool,
    timeout: std::time::Duration,
}

struct Metrics {
    jobs: IntCounterVec,
    seconds: HistogramVec,
}

struct Inner {
    config: OrchestratorConfig,
    /// Whose credits are accepted.
    senders: SenderTrust,
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

/// A reservation that is released unless settled, even when the request is dropped midway.
pub(crate) struct Held {
    ledger: Arc<dyn Ledger>,
    id: String,
    /// The payment applied with this job, taken back with it.
    credit: Option<String>,
    open: bool,
}

impl Held {
    pub(crate) async fn settle(mut self, charge: u64) -> Result<u64, LedgerError> {
        self.open = false;
        Ok(self
            .ledger
            .settle_charged(&self.id, charge, None)
            .await?
            .amount)
    }

    pub(crate) async fn release(mut self) -> Result<(), LedgerError> {
        self.open = false;
        self.ledger
            .release_and_revoke(&self.id, self.credit.as_deref())
            .await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.open {
            let ledger = self.ledger.clone();
            let id = std::mem::take(&mut self.id);
            let credit = self.credit.take();
            tokio::spawn(async move {
                if let Err(e) = ledger.release_and_revoke(&id, credit.as_deref()).await {
                    tracing::error!(job = %id, error = %e, "could not release a reservation");
                }
            });
        }
    }
}

pub(crate) fn err(status: u16, msg: impl Into<String>) -> AiHttpError {
    AiHttpError::new(status, msg)
}

/// The cost of `units` at the current `price`, refused (402) when the price is above the one
/// `payment` agreed to.
pub(crate) fn agreed_charge(
    what: &str,
    price: &Price,
    payment: &Payment,
    units: u64,
) -> Result<u64, AiHttpError> {
    let current = UnitPrice {
        price_per_unit: price.price_per_unit,
        pixels_per_unit: price.pixels_per_unit,
    };
    if current.exceeds(&payment.price()) {
        return Err(err(
            402,
            format!(
                "price changed: {what} now costs {}/{} {} per unit; the payment agreed to {}/{}",
                current.price_per_unit,
                current.pixels_per_unit,
                price.currency,
                payment.price_per_unit,
                payment.pixels_per_unit
            ),
        ));
    }
    weir_payments::cost(units, current).ok_or_else(|| {
        err(
            400,
            format!("{units} units at this price overflow the ledger"),
        )
    })
}

impl Orchestrator {
    /// Build the runners of every configured model; sender balances live in `ledger`.
    pub async fn new(
        config: OrchestratorConfig,
        registry: Arc<Registry>,
        ledger: Arc<dyn Ledger>,
        metrics: &prometheus::Registry,
    ) -> Result<Orchestrator, OrchestratorError> {
        let mut models = Vec::new();
        for entry in &config.models {
            let capability = Capability::from_id(&entry.pipeline).ok_or_else(|| {
                OrchestratorError::Config(format!(
                    "model {}: unknown pipeline `{}` (known: {})",
                    entry.model_id,
                    entry.pipeline,
                    Capability::ALL.map(|c| c.id()).join(", ")
                ))
            })?;
            if entry.capacity == 0 {
                return Err(OrchestratorError::Config(format!(
                    "model {}: capacity must be at least 1",
                    entry.model_id
                )));
            }
            if models
                .iter()
                .any(|m: &ModelSlot| m.capability == capability && m.model_id == entry.model_id)
            {
                return Err(OrchestratorError::Config(format!(
                    "model {} is configured twice for {capability}",
                    entry.model_id
                )));
            }
            let runner = runners::build(entry, &registry)?;
            models.push(ModelSlot {
                capability,
                model_id: entry.model_id.clone(),
                kind: entry.runner.kind(),
                runner,
                capacity: Capacity::new(entry.capacity),
                warm: AtomicBool::new(entry.warm),
                timeout: entry.timeout(),
            });
        }
        let senders = sender_trust(&config)?;
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
        let jobs = IntCounterVec::new(
            Opts::new("weir_orchestrator_jobs_total", "AI jobs by outcome"),
            &["capability", "model", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_orchestrator_job_seconds",
                "Time spent running AI jobs",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 18)?),
            &["capability"],
        )?;
        metrics.register(Box::new(jobs.clone()))?;
        metrics.register(Box::new(seconds.clone()))?;
        let byoc =
            Capabilities::new(config.byoc.clone(), &registry).map_err(OrchestratorError::Config)?;
        let trickle = weir_trickle::TrickleServer::new(config.trickle.clone(), metrics)?;
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                config,
                senders,
                registry,
                ledger,
                models,
                transcode,
                metrics: Metrics { jobs, seconds },
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

    /// The verified payment of a request, from a trusted sender.
    pub(crate) fn payment(&self, headers: &HeaderMap) -> Result<Payment, AiHttpError> {
        payment(
            headers,
            self.inner.config.max_payment_skew,
            &self.inner.senders,
        )
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
            .route("/{capability}", post(job))
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

    /// Apply `payment` and reserve `charge` for job `job_id` in one transaction; the returned
    /// guard releases both unless the job is settled.
    pub(crate) async fn reserve(
        &self,
        payment: &Payment,
        job_id: &str,
        account: &str,
        model: &str,
        units: u64,
        charge: u64,
    ) -> Result<Held, AiHttpError> {
        let ledger = &self.inner.ledger;
        let (_, applied) = ledger
            .credit_and_reserve(
                &payment.id,
                payment.amount,
                job_id,
                &payment.sender,
                account,
                model,
                units,
                charge,
            )
            .await
            .map_err(|e| match e {
                LedgerError::Conflict(id) => err(
                    402,
                    format!("payment id `{id}` was already used for another payment"),
                ),
                LedgerError::Insufficient { balance, needed, .. } => err(
                    402,
                    format!("insufficient balance: sender {} holds {balance} for {account}, the job costs {needed}", payment.sender),
                ),
                other => err(500, format!("ledger: {other}")),
            })?;
        Ok(Held {
            ledger: ledger.clone(),
            id: job_id.to_owned(),
            credit: applied.then(|| payment.id.clone()),
            open: true,
        })
    }

    async fn quote(
        &self,
        m: &ModelSlot,
        sender: &str,
        facts: MediaFacts,
        units: u64,
    ) -> Result<Price, String> {
        let output = weir_runtime::OutputSize {
            width: facts.image.map_or(0, |i| i.0),
            height: facts.image.map_or(0, |i| i.1),
            frames: 0,
            count: 1,
        };
        self.quote_for(
            m.capability.id(),
            &m.model_id,
            &m.capacity,
            sender,
            output,
            units,
        )
        .await
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
        let request = weir_runtime::JobRequest {
            id: String::new(),
            capability: capability.to_owned(),
            model: model.to_owned(),
            params: Vec::new(),
            output,
            units,
            sender: sender.to_owned(),
        };
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
            match self.quote(m, "", MediaFacts::default(), 0).await {
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
            let output = weir_runtime::OutputSize {
                width: 0,
                height: 0,
                frames: 0,
                count: 1,
            };
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

    fn slot(&self, capability: Capability, model: Option<&str>) -> Result<&ModelSlot, AiHttpError> {
        let mut offered = self
            .inner
            .models
            .iter()
            .filter(|m| m.capability == capability)
            .peekable();
        if offered.peek().is_none() {
            return Err(err(
                404,
                format!("this orchestrator does not serve {capability}"),
            ));
        }
        match model {
            None => offered.next().ok_or_else(|| {
                err(
                    404,
                    format!("this orchestrator does not serve {capability}"),
                )
            }),
            Some(model) => {
                let names: Vec<&str> = offered.clone().map(|m| m.model_id.as_str()).collect();
                offered.find(|m| m.model_id == model).ok_or_else(|| {
                    err(
                        404,
                        format!(
                            "model `{model}` is not served for {capability} here (served: {})",
                            names.join(", ")
                        ),
                    )
                })
            }
        }
    }

    async fn run_job(
        &self,
        capability: Capability,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(RunnerOutput, u64, u64), AiHttpError> {
        let inner = &self.inner;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let parsed =
            parse_request(capability, content_type, body, inner.config.max_file_bytes).await?;

        // The payment is checked now and applied together with the job's reservation; a job
        // that ends without a result takes both back, so both sides keep the same balance.
        let payment = self.payment(headers)?;
        let header_model = headers.get(MODEL_HEADER).and_then(|v| v.to_str().ok());
        let model = header_model.or(parsed.model_named.then(|| parsed.request.model_id()));
        let m = self.slot(capability, model)?;
        let account = credit::account(capability.id(), &m.model_id);
        if payment.account != account {
            return Err(err(
                402,
                format!(
                    "the payment is for account `{}` but this job is `{account}`",
                    payment.account
                ),
            ));
        }
        self.charge_and_run(m, &payment, &account, parsed).await
    }

    async fn charge_and_run(
        &self,
        m: &ModelSlot,
        payment: &Payment,
        account: &str,
        parsed: weir_protocol::body::ParsedRequest,
    ) -> Result<(RunnerOutput, u64, u64), AiHttpError> {
        let inner = &self.inner;
        let capability = m.capability;
        let units = parsed
            .request
            .units(parsed.facts)
            .map_err(|e| err(400, e))?;
        let price = self
            .quote(m, &payment.sender, parsed.facts, units)
            .await
            .map_err(|e| self.pricing_error(e))?;
        let charge = agreed_charge(
            &format!("{capability}/{}", m.model_id),
            &price,
            payment,
            units,
        )?;

        let slot: Slot = m.capacity.try_acquire().map_err(|full| {
            err(
                503,
                format!(
                    "insufficient capacity: {capability}/{} runs {} of {} jobs",
                    m.model_id, full.in_flight, full.limit
                ),
            )
        })?;

        let job_id = format!("job-{:032x}", rand::random::<u128>());
        let held = self
            .reserve(payment, &job_id, account, &m.model_id, units, charge)
            .await?;

        let input = RunnerInput {
            request: parsed.request,
            files: parsed.files,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(m.timeout, m.runner.run(input)).await {
            Ok(r) => r,
            Err(_) => Err(RunnerError::Timeout(m.timeout)),
        };
        drop(slot);
        inner
            .metrics
            .seconds
            .with_label_values(&[capability.id()])
            .observe(started.elapsed().as_secs_f64());
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                tracing::warn!(%capability, model = %m.model_id, job = %job_id, error = %e, "job failed; reservation released");
                inner
                    .metrics
                    .jobs
                    .with_label_values(&[capability.id(), &m.model_id, "failed"])
                    .inc();
                if let Err(le) = held.release().await {
                    tracing::error!(job = %job_id, error = %le, "could not release a reservation");
                }
                return Err(runner_error(e));
            }
        };
        let balance = held
            .settle(charge)
            .await
            .map_err(|e| err(500, format!("ledger: {e}")))?;
        inner
            .metrics
            .jobs
            .with_label_values(&[capability.id(), &m.model_id, "ok"])
            .inc();
        tracing::info!(%capability, model = %m.model_id, job = %job_id, units, charge, ms = started.elapsed().as_millis() as u64, "job done");
        Ok((output, balance, charge))
    }
}

/// The sender allow-list of `config`, logged: loudly when open, with a warning when empty.
fn sender_trust(config: &OrchestratorConfig) -> Result<SenderTrust, OrchestratorError> {
    let senders = SenderTrust::new(&config.trusted_senders, config.accept_any_sender)
        .map_err(|e| OrchestratorError::Config(e.to_string()))?;
    match &senders {
        SenderTrust::Open => tracing::warn!(
            "DEVELOPMENT ONLY: accept_any_sender is on, credits from ANY sender are accepted; \
             anyone who can reach this orchestrator gets free work"
        ),
        s if s.refuses_all() => tracing::warn!(
            "no trusted_senders configured: every payment will be refused (402); list the \
             gateways' public keys in [orchestrator] trusted_senders"
        ),
        SenderTrust::AllowList(keys) => {
            tracing::info!(
                senders = keys.len(),
                "payments accepted from trusted senders"
            )
        }
    }
    Ok(senders)
}

fn payment(
    headers: &HeaderMap,
    max_skew: std::time::Duration,
    senders: &SenderTrust,
) -> Result<Payment, AiHttpError> {
    let value = headers
        .get(PAYMENT_HEADER)
        .ok_or_else(|| err(402, "payment required: send a signed Weir-Payment header"))?
        .to_str()
        .map_err(|_| err(402, "the Weir-Payment header is not ASCII"))?;
    let payment = credit::verify(value, max_skew).map_err(|e| match e {
        PaymentError::BadSignature(_) => err(401, e.to_string()),
        other => err(402, other.to_string()),
    })?;
    senders
        .check(&payment.sender)
        .map_err(|e| err(402, e.to_string()))?;
    Ok(payment)
}

fn runner_error(e: RunnerError) -> AiHttpError {
    let status = match &e {
        RunnerError::Unavailable(_) => 503,
        RunnerError::Timeout(_) => 504,
        RunnerError::Rejected { status, .. } => *status,
        RunnerError::Failed { .. } => 500,
        RunnerError::BadResponse(_) => 502,
        RunnerError::Unsupported(_) => 501,
    };
    err(status, e.to_string())
}

fn data_url(media: &OutputMedia) -> String {
    format!(
        "data:{};base64,{}",
        media.content_type,
        base64::engine::general_purpose::STANDARD.encode(&media.data)
    )
}

fn body_of(output: RunnerOutput) -> serde_json::Value {
    let to_value = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    match output {
        RunnerOutput::Media(items) => to_value(serde_json::to_value(ImageResponse {
            images: items
                .iter()
                .map(|m| Media {
                    url: data_url(m),
                    seed: m.seed,
                    nsfw: m.nsfw,
                })
                .collect(),
        })),
        RunnerOutput::Speech(m) => to_value(serde_json::to_value(AudioResponse {
            audio: Media {
                url: data_url(&m),
                seed: m.seed,
                nsfw: m.nsfw,
            },
        })),
        RunnerOutput::Transcript(t) => to_value(serde_json::to_value(t)),
        RunnerOutput::Caption(c) => to_value(serde_json::to_value(c)),
        RunnerOutput::Masks(m) => to_value(serde_json::to_value(m)),
        RunnerOutput::Chat(c) => to_value(serde_json::to_value(c)),
    }
}

async fn info(State(o): State<Orchestrator>) -> Json<OrchestratorInfo> {
    Json(o.info().await)
}

async fn job(
    State(o): State<Orchestrator>,
    UrlPath(capability): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return AiHttpError::from(e).into_response(),
    };
    let Some(capability) = Capability::from_id(&capability) else {
        return err(404, format!("no such capability `{capability}`")).into_response();
    };
    match o.run_job(capability, &headers, body).await {
        Ok((output, balance, charge)) => {
            let mut response = Json(body_of(output)).into_response();
            let h = response.headers_mut();
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(CHARGE_HEADER, HeaderValue::from(charge));
            response
        }
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%capability, error = %e, "job refused");
            }
            e.into_response()
        }
    }
}
