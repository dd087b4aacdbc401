//! The gateway's state, selection, forwarding with retries, and HTTP handlers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use prometheus::{IntCounterVec, Opts};
use weir_payments::credit::{account, Wallet};
use weir_payments::{Ledger, LedgerError, UnitPrice};
use weir_protocol::ai::{AudioResponse, ImageResponse, LlmChoice, LlmResponse};
use weir_protocol::body::{parse_request, ParsedRequest};
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER, MODEL_HEADER, PAYMENT_HEADER};
use weir_protocol::{AiHttpError, Capability};
use weir_runtime::{Candidate, JobRequest, Price, Registry, WorldKind};

use crate::config::GatewayConfig;
use crate::discovery::Discovery;
use crate::payments::GatewayPayments;
use crate::storage::ResultStore;

/// Header naming the orchestrator that served a request.
pub const ORCHESTRATOR_HEADER: &str = "weir-orchestrator";
/// Cap on one orchestrator answer.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file (wallet, results directory) could not be used.
    #[error("{0}")]
    Io(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The jobs engine could not start.
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsError),
}

struct Metrics {
    requests: IntCounterVec,
    attempts: IntCounterVec,
    router_failures: IntCounterVec,
}

pub(crate) struct Inner {
    pub(crate) config: GatewayConfig,
    registry: Arc<Registry>,
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) payments: GatewayPayments,
    pub(crate) store: ResultStore,
    pub(crate) jobs: Option<Arc<crate::jobs::Jobs>>,
    pub(crate) client: reqwest::Client,
    metrics: Metrics,
    pub(crate) streams: crate::live::Streams,
    pub(crate) ai_streams: crate::ai_streams::AiStreams,
}

/// A running gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

/// A successful answer's body and its content type.
pub(crate) struct Answer {
    pub content_type: String,
    pub body: Bytes,
    /// The sender's balance the orchestrator reported.
    pub balance: Option<u64>,
}

/// An AI request served by an orchestrator.
pub(crate) struct Served {
    /// Who served it.
    pub orchestrator: String,
    /// The answer, media URLs rewritten to the gateway's own.
    pub body: serde_json::Value,
    /// What the gateway paid.
    pub charge: u64,
    /// Output units (pixels, samples…) the request was priced by.
    pub units: u64,
    /// The client asked for server-sent events.
    pub stream: bool,
}

/// One orchestrator to try, with the terms it advertised.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    pub url: String,
    pub model: String,
    pub price: UnitPrice,
    pub warm: bool,
}

pub(crate) fn err(status: u16, msg: impl Into<String>) -> AiHttpError {
    AiHttpError::new(status, msg)
}

pub(crate) enum Attempt<T = serde_json::Value> {
    Done {
        body: T,
        charge: u64,
    },
    /// Try the next orchestrator.
    Next(String),
    /// It is full: try the others, and it again later.
    Busy(String),
    /// Try the same orchestrator again at its new price.
    Repriced(UnitPrice),
    /// Answer the client with this.
    Fail(AiHttpError),
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
        let released = ledger.release_stale(Duration::ZERO).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "released reservations of requests cut off by a restart"
            );
        }
        let wallet = Wallet::load_or_create(wallet_path)
            .map_err(|e| GatewayError::Io(format!("wallet {}: {e}", wallet_path.display())))?;
        let store = ResultStore::open(&config.results_dir).map_err(|e| {
            GatewayError::Io(format!("results dir {}: {e}", config.results_dir.display()))
        })?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| GatewayError::Io(format!("HTTP client: {e}")))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "weir_gateway_requests_total",
                "AI API requests by capability and status",
            ),
            &["capability", "status"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "weir_gateway_attempts_total",
                "Orchestrator attempts by outcome",
            ),
            &["orchestrator", "outcome"],
        )?;
        let mismatches = IntCounterVec::new(
            Opts::new(
                "weir_gateway_balance_disputes_total",
                "Answers whose reported charge or balance disagreed with the ledger",
            ),
            &["orchestrator"],
        )?;
        let router_failures = IntCounterVec::new(
            Opts::new(
                "weir_gateway_router_failures_total",
                "Router component failures (the gateway fell back to price order)",
            ),
            &["component"],
        )?;
        for c in [&requests, &attempts, &mismatches, &router_failures] {
            metrics.register(Box::new(c.clone()))?;
        }
        let discovery = Arc::new(Discovery::new(
            &config.orchestrators,
            config.orch_webhook_url.clone(),
            config.webhook_interval,
            client.clone(),
        ));
        weir_media::profile::validate_ladder(&config.live.profiles)
            .map_err(|e| GatewayError::Io(format!("live ladder: {e}")))?;
        let streams = crate::live::Streams::new(config.live.clone(), metrics)?;
        let jobs =
            crate::jobs::Jobs::open(&config.jobs, &config.data_dir, &config.public_url, metrics)
                .await?;
        tracing::info!(sender = %wallet.sender(), "gateway wallet");
        Ok(Gateway {
            inner: Arc::new(Inner {
                payments: GatewayPayments::new(ledger, wallet, mismatches),
                config,
                registry,
                discovery,
                store,
                jobs: Some(Arc::new(jobs)),
                client,
                metrics: Metrics {
                    requests,
                    attempts,
                    router_failures,
                },
                streams,
                ai_streams: Default::default(),
            }),
        })
    }

    /// Orchestrator discovery.
    pub fn discovery(&self) -> &Arc<Discovery> {
        &self.inner.discovery
    }

    /// The gateway ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        self.inner.payments.ledger()
    }

    /// Refresh orchestrator info once now, then periodically.
    pub async fn start(&self) -> tokio::task::JoinHandle<()> {
        self.inner.discovery.refresh().await;
        let janitor = self.spawn_live_janitor();
        let refresh = self
            .inner
            .discovery
            .spawn_refresh(self.inner.config.refresh_interval);
        let jobs = self.spawn_jobs();
        tokio::spawn(async move {
            let _ = tokio::join!(janitor, refresh, futures_util::future::join_all(jobs));
        })
    }

    /// What RTMP publishes are handed to.
    pub fn rtmp_handler(&self) -> Arc<dyn weir_media::rtmp::PublishHandler> {
        Arc::new(self.clone())
    }

    /// The HTTP routes: the AI API, `/results/{name}`, `/openapi.json` and
    /// `/gateway/orchestrators`, with CORS as `cors_origins` says (see [`crate::cors`]).
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route(
                "/api/v1/generate",
                post(crate::jobs::submit).get(crate::jobs::list),
            )
            .route("/api/v1/generate/{job}", get(crate::jobs::status))
            .route("/api/v1/generate/{job}/cancel", post(crate::jobs::cancel))
            .route("/api/v1/generate/{job}/events", get(crate::jobs::events))
            .route("/{capability}", post(ai))
            .route("/gateway/orchestrators", get(orchestrators))
            .route(
                "/process/request/{*route}",
                post(crate::byoc::process_request),
            )
            .route("/process/stream/start", post(crate::ai_streams::start))
            .route(
                "/process/stream/{id}/update",
                post(crate::ai_streams::update),
            )
            .route(
                "/process/stream/{id}/status",
                get(crate::ai_streams::status),
            )
            .route("/process/stream/{id}/stop", post(crate::ai_streams::stop))
            .route("/process/stream/{id}/data", get(crate::ai_streams::data))
            .route(
                "/live/video-to-video/{stream}/start",
                post(crate::ai_streams::live_start),
            )
            .route(
                "/live/video-to-video/{id}/update",
                post(crate::ai_streams::update),
            )
            .route(
                "/live/video-to-video/{id}/status",
                get(crate::ai_streams::status),
            )
            .layer(DefaultBodyLimit::max(self.inner.config.max_body_bytes))
            .layer(middleware::from_fn_with_state(self.clone(), require_client));
        let push = Router::new()
            .route(
                "/live/{stream}/{file}",
                post(crate::live::push).put(crate::live::push),
            )
            .layer(DefaultBodyLimit::max(self.inner.config.live.max_push_bytes))
            .layer(middleware::from_fn_with_state(self.clone(), require_client));
        let public = Router::new()
            .route("/stream/{file}", get(crate::live::master))
            .route("/stream/{stream}/{file}", get(crate::live::media))
            .route(
                "/stream/{stream}/{rendition}/{file}",
                get(crate::live::segment),
            )
            .route("/recordings/{stream}/{file}", get(crate::live::recording))
            .route(
                "/recordings/{stream}/{rendition}/{file}",
                get(crate::live::recording),
            )
            .merge(push)
            .route("/results/{name}", get(result))
            .route("/objects/{*key}", get(crate::jobs::object))
            .route("/openapi.json", get(openapi))
            .merge(api)
            .with_state(self.clone());
        match crate::cors::layer(&self.inner.config.cors_origins) {
            Some(cors) => public
                .layer(cors)
                .layer(middleware::from_fn(crate::cors::preflight_no_content)),
            None => public,
        }
    }

    /// The orchestrators to try for `job`, best first: those offering `cap` with the model
    /// the client named (`named_model`), else `default_model`, else the most offered one; at or
    /// below the max price; ranked by the router component; suspended ones last.
    pub(crate) async fn choose(
        &self,
        cap: &str,
        named_model: Option<&str>,
        default_model: &str,
        job: JobRequest,
    ) -> Result<Vec<Choice>, AiHttpError> {
        let (model, fresh, mut suspended) = self.candidates(cap, named_model, default_model)?;
        let mut job = job;
        job.model = model.clone();
        let mut ordered = self.rank(&job, fresh).await?;
        // Suspended orchestrators are a last resort, cheapest first.
        suspended.sort_by(|a, b| unit(&a.price).cmp_rate(&unit(&b.price)).then(a.url.cmp(&b.url)));
        ordered.extend(suspended);
        Ok(ordered
            .into_iter()
            .map(|c| Choice {
                warm: c.warm_models.contains(&model),
                price: unit(&c.price),
                url: c.url,
                model: model.clone(),
            })
            .collect())
    }

    /// The model chosen for `cap` (see [`Gateway::choose`]) and the orchestrators offering it at
    /// or below the max price, as router candidates: (model, healthy ones, suspended ones).
    /// Discovery's lock is held only in here, never across the router call.
    fn candidates(
        &self,
        cap: &str,
        named_model: Option<&str>,
        default_model: &str,
    ) -> Result<(String, Vec<Candidate>, Vec<Candidate>), AiHttpError> {
        let known = self.inner.discovery.known();
        let now = Instant::now();
        let offers: Vec<(
            &String,
            &crate::discovery::Known,
            &weir_protocol::info::InfoModel,
        )> = known
            .iter()
            .filter_map(|(url, k)| k.info.as_ref().map(|i| (url, k, i)))
            .flat_map(|(url, k, info)| {
                info.models
                    .iter()
                    .filter(|m| m.capability == cap)
                    .map(move |m| (url, k, m))
            })
            .collect();
        if offers.is_empty() {
            let reachable = known.values().filter(|k| k.info.is_some()).count();
            return Err(err(
                503,
                format!(
                    "no orchestrator offers {cap} ({} known, {reachable} reachable)",
                    known.len()
                ),
            ));
        }
        let model = if let Some(model) = named_model {
            if !offers.iter().any(|(_, _, m)| m.model_id == model) {
                let mut offered: Vec<&str> =
                    offers.iter().map(|(_, _, m)| m.model_id.as_str()).collect();
                offered.sort_unstable();
                offered.dedup();
                return Err(err(
                    503,
                    format!(
                        "no orchestrator offers model `{model}` for {cap} (offered: {})",
                        offered.join(", ")
                    ),
                ));
            }
            model.to_owned()
        } else if offers.iter().any(|(_, _, m)| m.model_id == default_model) {
            default_model.to_owned()
        } else {
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for (_, _, m) in &offers {
                *counts.entry(m.model_id.as_str()).or_default() += 1;
            }
            counts
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                .map(|(m, _)| m.to_owned())
                .unwrap_or_default()
        };
        let max = self.inner.config.max_price(cap, &model);
        let mut cheapest: Option<UnitPrice> = None;
        let mut fresh = Vec::new();
        let mut suspended = Vec::new();
        for (url, k, m) in offers.iter().filter(|(_, _, m)| m.model_id == model) {
            let price = UnitPrice {
                price_per_unit: m.price.price_per_unit,
                pixels_per_unit: m.price.pixels_per_unit.max(1),
            };
            if cheapest.is_none_or(|c| price.cmp_rate(&c).is_lt()) {
                cheapest = Some(price);
            }
            if max.is_some_and(|max| price.exceeds(&max)) {
                continue;
            }
            let stats = k
                .stats
                .get(&account(cap, &model))
                .cloned()
                .unwrap_or_default();
            let candidate = Candidate {
                id: (*url).clone(),
                url: (*url).clone(),
                price: Price {
                    price_per_unit: price.price_per_unit,
                    pixels_per_unit: price.pixels_per_unit,
                    currency: m.price.currency.clone(),
                },
                latency_ms: stats.latency_ms.round() as u32,
                success_bp: stats.success_bp(),
                region: k
                    .info
                    .as_ref()
                    .map(|i| i.region.clone())
                    .unwrap_or_default(),
                gpu_class: k
                    .info
                    .as_ref()
                    .map(|i| i.gpu_class.clone())
                    .unwrap_or_default(),
                warm_models: if m.warm {
                    vec![model.clone()]
                } else {
                    Vec::new()
                },
                capacity: m.capacity,
                in_flight: m.in_flight,
            };
            if k.suspended(now) {
                suspended.push(candidate);
            } else {
                fresh.push(candidate);
            }
        }
        if fresh.is_empty() && suspended.is_empty() {
            let (Some(max), Some(c)) = (max, cheapest) else {
                return Err(err(503, format!("no orchestrator offers {cap}/{model}")));
            };
            return Err(err(
                503,
                format!(
                    "no orchestrator offers {cap}/{model} at or below the max price {}/{} (cheapest offer: {}/{})",
                    max.price_per_unit, max.pixels_per_unit, c.price_per_unit, c.pixels_per_unit
                ),
            ));
        }
        // Candidates are owned now: let refreshes and stats in before the router runs.
        Ok((model, fresh, suspended))
    }

    /// Order candidates with the router component; warm models first (stable). The router
    /// runs off the async workers. A router that answers with one of its contract's errors, or
    /// ranks no candidate, refuses the request (503 with its reason); one that traps, runs past
    /// its deadline, runs out of memory or answers garbage is overridden by price order.
    async fn rank(
        &self,
        job: &JobRequest,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, AiHttpError> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let router = &self.inner.config.router;
        let model = job.model.as_str();
        let ranked = match self.inner.registry.get_world(router, WorldKind::Router) {
            Ok(r) => r.select_async(job.clone(), candidates.clone()).await,
            Err(e) => Err(e),
        };
        let mut ordered: Vec<Candidate> = match ranked {
            Ok(ranking) if ranking.is_empty() => {
                return Err(err(
                    503,
                    format!(
                        "the router component `{router}` ranked none of the {} candidate orchestrators",
                        candidates.len()
                    ),
                ));
            }
            Ok(ranking) => ranking
                .into_iter()
                .filter_map(|i| candidates.get(i as usize).cloned())
                .collect(),
            Err(weir_runtime::RuntimeError::Call {
                failure: weir_runtime::CallFailure::Guest(refusal),
                ..
            }) => {
                let reason = weir_runtime::describe_guest_error(&refusal);
                tracing::info!(component = %router, reason = %reason, "router refused the request");
                return Err(err(
                    503,
                    format!("the router component `{router}` refused the request: {reason}"),
                ));
            }
            Err(e) => {
                tracing::error!(component = %router, error = %e, "router failed; falling back to price order");
                self.inner
                    .metrics
                    .router_failures
                    .with_label_values(&[router.as_str()])
                    .inc();
                let mut c = candidates;
                c.sort_by(|a, b| unit(&a.price).cmp_rate(&unit(&b.price)).then(a.url.cmp(&b.url)));
                c
            }
        };
        ordered.sort_by_key(|c| !c.warm_models.iter().any(|w| w == model));
        Ok(ordered)
    }

    async fn attempt(
        &self,
        choice: &Choice,
        parsed: &ParsedRequest,
        units: u64,
        content_type: &str,
        body: &Bytes,
        timeout: Duration,
    ) -> Attempt {
        let cap = parsed.request.capability().id();
        self.attempt_with(choice, cap, units, |pending| async move {
            self.attempt_paid(choice, parsed, content_type, body, timeout, &pending)
                .await
        })
        .await
    }

    /// Reserve the cost of `units` with `choice` and run `run` with the signed payment. If the
    /// future is dropped midway (the client went away), the reservation is released and the
    /// payment taken back; `run` itself settles or abandons.
    pub(crate) async fn attempt_with<T, F, Fut>(
        &self,
        choice: &Choice,
        cap: &str,
        units: u64,
        run: F,
    ) -> Attempt<T>
    where
        F: FnOnce(crate::payments::Pending) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let pending = match self
            .inner
            .payments
            .prepare(&choice.url, cap, &choice.model, units, choice.price)
            .await
        {
            Ok(p) => p,
            Err(e) => return Attempt::Fail(err(500, format!("gateway ledger: {e}"))),
        };
        let mut guard = Unsettled {
            inner: self.inner.clone(),
            pending: pending.clone(),
            armed: true,
        };
        let outcome = run(pending).await;
        guard.armed = false;
        outcome
    }

    async fn attempt_paid(
        &self,
        choice: &Choice,
        parsed: &ParsedRequest,
        content_type: &str,
        body: &Bytes,
        timeout: Duration,
        pending: &crate::payments::Pending,
    ) -> Attempt {
        let cap = parsed.request.capability().id();
        let request = self
            .inner
            .client
            .post(format!("{}/{cap}", choice.url))
            .header(header::CONTENT_TYPE, content_type)
            .header(MODEL_HEADER, &choice.model)
            .body(body.clone());
        self.exchange(
            choice,
            cap,
            pending,
            request,
            timeout,
            |answer| async move {
                // Store the media before paying: an answer that cannot be stored is not a result.
                let v = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .map_err(|e| format!("invalid JSON: {e}"))?;
                self.store_results(parsed.request.capability(), v).await
            },
        )
        .await
    }

    /// Send `request` to `choice` with the payment of `pending`, and settle or take the payment
    /// back depending on the answer: a 2xx whose body `accept` takes is settled at the charge
    /// the orchestrator reports (checked against the ledger); a 2xx it refuses, an error status
    /// or no answer at all is abandoned and classified (next orchestrator, retry later, new
    /// price).
    pub(crate) async fn exchange<T, F, Fut>(
        &self,
        choice: &Choice,
        cap: &str,
        pending: &crate::payments::Pending,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        accept: F,
    ) -> Attempt<T>
    where
        F: FnOnce(Answer) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        match self
            .send_paid(choice, cap, pending, request, timeout, started)
            .await
        {
            Ok(response) => {
                self.receive(choice, pending, response, started, accept)
                    .await
            }
            Err(attempt) => attempt,
        }
    }

    /// Send `request` with `pending`'s payment. A transport failure or a refusal comes back as
    /// the attempt to return, the payment already taken back and the orchestrator recorded.
    pub(crate) async fn send_paid<T>(
        &self,
        choice: &Choice,
        cap: &str,
        pending: &crate::payments::Pending,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        started: Instant,
    ) -> Result<reqwest::Response, Attempt<T>> {
        let inner = &self.inner;
        let acct = pending.account.as_str();
        let sent = request
            .header(PAYMENT_HEADER, pending.header.as_str())
            .timeout(timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                inner.payments.abandon(pending).await;
                return Err(self.unreachable(choice, acct, &e, timeout, started.elapsed()));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        inner.payments.abandon(pending).await;
        let message = error_message(read_capped(response).await.ok(), status);
        Err(self
            .refused(
                choice,
                cap,
                acct,
                status.as_u16(),
                message,
                started.elapsed(),
            )
            .await)
    }

    /// Read a successful answer, `accept` it, and settle `pending`: an answer that cannot be
    /// read or is not accepted moves on to the next orchestrator.
    pub(crate) async fn receive<T, F, Fut>(
        &self,
        choice: &Choice,
        pending: &crate::payments::Pending,
        response: reqwest::Response,
        started: Instant,
        accept: F,
    ) -> Attempt<T>
    where
        F: FnOnce(Answer) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let inner = &self.inner;
        let acct = pending.account.as_str();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        let (charge, balance) = (number(CHARGE_HEADER), number(BALANCE_HEADER));
        let content_type = header(header::CONTENT_TYPE.as_str()).unwrap_or_default();
        let body = read_capped(response).await;
        let accepted = match body {
            Ok(body) => {
                accept(Answer {
                    content_type,
                    body,
                    balance,
                })
                .await
            }
            Err(e) => Err(e),
        };
        match accepted {
            Ok(value) => {
                inner
                    .discovery
                    .record(&choice.url, acct, true, started.elapsed());
                match inner.payments.settle(pending, charge, balance).await {
                    Ok(s) => Attempt::Done {
                        body: value,
                        charge: s.charge,
                    },
                    Err(e) => Attempt::Fail(err(500, format!("gateway ledger: {e}"))),
                }
            }
            Err(e) => {
                inner.payments.abandon(pending).await;
                inner
                    .discovery
                    .record(&choice.url, acct, false, started.elapsed());
                inner
                    .discovery
                    .suspend(&choice.url, inner.config.suspend_for, &e);
                Attempt::Next(format!("unreadable answer: {e}"))
            }
        }
    }

    /// An orchestrator could not be reached or did not answer in time: record it, leave it out
    /// for a while, try the next.
    pub(crate) fn unreachable<T>(
        &self,
        choice: &Choice,
        acct: &str,
        e: &reqwest::Error,
        timeout: Duration,
        took: Duration,
    ) -> Attempt<T> {
        let inner = &self.inner;
        inner.discovery.record(&choice.url, acct, false, took);
        let why = if e.is_timeout() {
            format!("no answer within {timeout:?}")
        } else {
            format!("transport error: {e}")
        };
        inner
            .discovery
            .suspend(&choice.url, inner.config.suspend_for, &why);
        Attempt::Next(why)
    }

    /// An orchestrator answered `status` with `message` (the payment is already taken back):
    /// decide whether to retry it at a new price, later, or move on.
    pub(crate) async fn refused<T>(
        &self,
        choice: &Choice,
        cap: &str,
        acct: &str,
        status: u16,
        message: String,
        took: Duration,
    ) -> Attempt<T> {
        let inner = &self.inner;
        let why = format!("{status}: {message}");
        match status {
            402 => {
                // The price may have changed since the last refresh: look again.
                inner.discovery.refresh_one(&choice.url).await;
                let now_offered = inner.discovery.known().get(&choice.url).and_then(|k| {
                    k.info.as_ref().and_then(|i| {
                        i.models
                            .iter()
                            .find(|m| m.capability == cap && m.model_id == choice.model)
                            .map(|m| UnitPrice {
                                price_per_unit: m.price.price_per_unit,
                                pixels_per_unit: m.price.pixels_per_unit.max(1),
                            })
                    })
                });
                match now_offered {
                    Some(p) if p != choice.price => {
                        let max = inner.config.max_price(cap, &choice.model);
                        if max.is_some_and(|max| p.exceeds(&max)) {
                            Attempt::Next(format!(
                                "{why} (its new price {}/{} is above the max price)",
                                p.price_per_unit, p.pixels_per_unit
                            ))
                        } else {
                            Attempt::Repriced(p)
                        }
                    }
                    _ if message.contains("insufficient balance") => {
                        // Same price and our ledger thinks the balance covers it: the
                        // orchestrator lost a payment (a crash cut its request off). Lower our
                        // belief to what it holds, never raise it, and pay the difference once.
                        let held = message
                            .split("holds ")
                            .nth(1)
                            .and_then(|r| r.split_whitespace().next())
                            .and_then(|n| n.parse::<u64>().ok());
                        match held {
                            Some(held) => match inner
                                .payments
                                .ledger()
                                .write_down(&choice.url, acct, held)
                                .await
                            {
                                Ok(lost) => {
                                    tracing::warn!(orchestrator = %choice.url, account = %acct, held, lost, "orchestrator holds less than our ledger; balance written down");
                                    Attempt::Repriced(choice.price)
                                }
                                Err(e) => Attempt::Next(format!("{why} (ledger: {e})")),
                            },
                            None => Attempt::Next(why),
                        }
                    }
                    _ => {
                        // Same price, yet payment refused: do not pay more, do not trust it.
                        inner.discovery.suspend(
                            &choice.url,
                            inner.config.suspend_for,
                            &format!("refused a payment the ledger covers: {message}"),
                        );
                        Attempt::Next(why)
                    }
                }
            }
            // Full: try elsewhere without suspending (it is healthy, just busy).
            503 if message.contains("insufficient capacity") => Attempt::Busy(why),
            // Stale info (model gone): refresh and move on.
            404 => {
                inner.discovery.refresh_one(&choice.url).await;
                Attempt::Next(why)
            }
            400 | 413 | 415 | 422 => Attempt::Fail(AiHttpError {
                status,
                body: weir_protocol::error::AiErrorBody::Message(
                    weir_protocol::error::HttpErrorBody::new(format!(
                        "orchestrator {} refused the request: {message}",
                        choice.url
                    )),
                ),
            }),
            _ => {
                inner.discovery.record(&choice.url, acct, false, took);
                inner
                    .discovery
                    .suspend(&choice.url, inner.config.suspend_for, &why);
                Attempt::Next(why)
            }
        }
    }

    async fn handle(
        &self,
        capability: Capability,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, AiHttpError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let served = self.dispatch(capability, &content_type, body).await?;
        let mut response = if served.stream {
            sse(served.body)?
        } else {
            Json(served.body).into_response()
        };
        let h = response.headers_mut();
        h.insert(CHARGE_HEADER, HeaderValue::from(served.charge));
        if let Ok(v) = HeaderValue::from_str(&served.orchestrator) {
            h.insert(ORCHESTRATOR_HEADER, v);
        }
        Ok(response)
    }

    /// Serve one AI request: validate it, choose orchestrators, pay and retry until one answers;
    /// media in the answer are stored and their URLs rewritten to the gateway's own.
    pub(crate) async fn dispatch(
        &self,
        capability: Capability,
        content_type: &str,
        body: Bytes,
    ) -> Result<Served, AiHttpError> {
        let inner = &self.inner;
        let parsed = parse_request(
            capability,
            Some(content_type),
            body.clone(),
            inner.config.max_file_bytes,
        )
        .await?;
        let units = parsed
            .request
            .units(parsed.facts)
            .map_err(|e| err(400, e))?;
        let request_id = format!("req-{:016x}", rand::random::<u64>());

        // Orchestrators answer whole LLM responses; the gateway streams them as events.
        let stream = matches!(&parsed.request, weir_protocol::ai::AiRequest::Llm(l) if l.stream);
        let body = if stream {
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| err(400, e.to_string()))?;
            v["stream"] = serde_json::Value::Bool(false);
            Bytes::from(serde_json::to_vec(&v).map_err(|e| err(500, e.to_string()))?)
        } else {
            body
        };

        let job = weir_runtime::jobs::job_request(
            &request_id,
            &parsed.request,
            parsed.facts,
            units,
            &inner.payments.sender(),
        );
        let named = parsed.model_named.then(|| parsed.request.model_id());
        let queue: std::collections::VecDeque<Choice> = self
            .choose(capability.id(), named, capability.default_model(), job)
            .await?
            .into();
        let (choice, body, charge, tried) = self
            .with_retries(&request_id, queue, |choice| {
                let (parsed, body) = (&parsed, &body);
                async move {
                    let timeout = self.inner.config.attempt_timeout;
                    self.attempt(&choice, parsed, units, content_type, body, timeout)
                        .await
                }
            })
            .await?;
        tracing::info!(request = %request_id, %capability, model = %choice.model, orchestrator = %choice.url, units, charge, attempts = tried, warm = choice.warm, "request served");
        Ok(Served {
            orchestrator: choice.url,
            body,
            charge,
            units,
            stream,
        })
    }

    /// Try `queue` in order with `attempt` until one serves the job: failed orchestrators are
    /// skipped and repriced ones retried once at their new price, within `max_attempts` and
    /// the retry budget. Full ones ("insufficient capacity") are retried after the other
    /// candidates, with jittered exponential backoff once all are full, until `busy_wait`;
    /// those busy answers do not use up `max_attempts`. Returns the orchestrator, its answer,
    /// the charge and the number of attempts.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        request_id: &str,
        mut queue: std::collections::VecDeque<Choice>,
        mut attempt: F,
    ) -> Result<(Choice, T, u64, u32), AiHttpError>
    where
        F: FnMut(Choice) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.config.retry_budget;
        let busy_deadline = (started + inner.config.busy_wait).min(deadline);
        let mut failures: Vec<String> = Vec::new();
        let mut busy = crate::busy::BusyQueue::default();
        let (mut tried, mut counted) = (0u32, 0u32);
        let mut repriced = std::collections::BTreeSet::new();
        loop {
            let Some(choice) = queue.pop_front() else {
                // Every candidate left is full: wait a jittered moment, then ask them again.
                if busy.is_empty() || !busy.wait(busy_deadline).await {
                    break;
                }
                queue.extend(busy.drain());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if counted >= inner.config.max_attempts || left.is_zero() {
                failures.push(format!("retry budget spent ({tried} attempts)"));
                break;
            }
            tried += 1;
            let count = |outcome: &str| {
                inner
                    .metrics
                    .attempts
                    .with_label_values(&[choice.url.as_str(), outcome])
                    .inc();
            };
            match attempt(choice.clone()).await {
                Attempt::Done { body, charge } => {
                    count("ok");
                    return Ok((choice, body, charge, tried));
                }
                Attempt::Fail(e) => {
                    count("refused");
                    return Err(e);
                }
                Attempt::Next(why) => {
                    count("failed");
                    counted += 1;
                    tracing::warn!(request = %request_id, orchestrator = %choice.url, reason = %why, "attempt failed; trying the next orchestrator");
                    failures.push(format!("{}: {why}", choice.url));
                }
                Attempt::Busy(why) => {
                    count("busy");
                    tracing::debug!(request = %request_id, orchestrator = %choice.url, reason = %why, "orchestrator full; retrying after the others");
                    busy.push(&choice.url.clone(), choice, why);
                }
                Attempt::Repriced(price) => {
                    count("repriced");
                    counted += 1;
                    failures.push(format!("{}: price changed", choice.url));
                    if repriced.insert(choice.url.clone()) {
                        tracing::info!(orchestrator = %choice.url, ppu = price.price_per_unit, units_per = price.pixels_per_unit, "orchestrator changed its price; trying again at the new price");
                        queue.push_front(Choice { price, ..choice });
                    }
                }
            }
        }
        failures.extend(busy.reasons(inner.config.busy_wait));
        Err(err(
            503,
            format!(
                "no orchestrator could serve the request: {}",
                failures.join("; ")
            ),
        ))
    }

    /// Store every media object of an answer and rewrite its URL to the gateway's own.
    async fn store_results(
        &self,
        capability: Capability,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use weir_protocol::Capability as C;
        let shape = |e: serde_json::Error| format!("not a {capability} answer: {e}");
        match capability {
            C::TextToImage | C::ImageToImage | C::Upscale | C::ImageToVideo => {
                let mut r: ImageResponse = serde_json::from_value(body).map_err(shape)?;
                if r.images.is_empty() {
                    return Err("the answer holds no images".to_owned());
                }
                for m in &mut r.images {
                    m.url = self.store_one(&m.url).await?;
                }
                serde_json::to_value(r).map_err(|e| e.to_string())
            }
            C::TextToSpeech => {
                let mut r: AudioResponse = serde_json::from_value(body).map_err(shape)?;
                r.audio.url = self.store_one(&r.audio.url).await?;
                serde_json::to_value(r).map_err(|e| e.to_string())
            }
            _ => Ok(body),
        }
    }

    async fn store_one(&self, url: &str) -> Result<String, String> {
        let (content_type, data) = if let Some(rest) = url.strip_prefix("data:") {
            let (meta, payload) = rest.split_once(',').ok_or("data URL without a comma")?;
            let content_type = meta.trim_end_matches(";base64").to_owned();
            let data = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| format!("data URL: {e}"))?;
            (content_type, Bytes::from(data))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let response = self
                .inner
                .client
                .get(url)
                .timeout(self.inner.config.attempt_timeout)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("GET {url}: status {}", response.status()));
            }
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            (content_type, read_capped(response).await?)
        } else {
            return Err(format!(
                "unsupported result URL {:?}",
                url.chars().take(40).collect::<String>()
            ));
        };
        let name = self
            .inner
            .store
            .put(&content_type, &data)
            .await
            .map_err(|e| format!("storing a result: {e}"))?;
        Ok(format!(
            "{}/results/{name}",
            self.inner.config.public_url.trim_end_matches('/')
        ))
    }
}

/// Abandons an attempt's payment when dropped while armed.
struct Unsettled {
    inner: Arc<Inner>,
    pending: crate::payments::Pending,
    armed: bool,
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if self.armed {
            let inner = self.inner.clone();
            let pending = self.pending.clone();
            tokio::spawn(async move {
                tracing::info!(job = %pending.job_id, "request dropped mid-attempt; payment taken back");
                inner.payments.abandon(&pending).await;
            });
        }
    }
}

fn unit(p: &Price) -> UnitPrice {
    UnitPrice {
        price_per_unit: p.price_per_unit,
        pixels_per_unit: p.pixels_per_unit.max(1),
    }
}

/// The cause an orchestrator gave in its error body, else the status line.
pub(crate) fn error_message(body: Option<Bytes>, status: reqwest::StatusCode) -> String {
    body.and_then(|b| serde_json::from_slice::<weir_protocol::error::AiErrorBody>(&b).ok())
        .map(|b| match b {
            weir_protocol::error::AiErrorBody::Message(m) => m.detail.msg,
            weir_protocol::error::AiErrorBody::Validation(v) => v.to_string(),
        })
        .unwrap_or_else(|| status.to_string())
}

/// The message of an error answer.
pub(crate) fn message_of(e: &AiHttpError) -> String {
    match &e.body {
        weir_protocol::error::AiErrorBody::Message(m) => m.detail.msg.clone(),
        weir_protocol::error::AiErrorBody::Validation(v) => v.to_string(),
    }
}

pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A whole LLM answer as server-sent events: the content as one delta, then the finish
/// reason with usage, then `[DONE]`.
fn sse(body: serde_json::Value) -> Result<Response, AiHttpError> {
    let whole: LlmResponse = serde_json::from_value(body)
        .map_err(|e| err(502, format!("orchestrator sent an invalid LLM answer: {e}")))?;
    let mut events = String::new();
    let event =
        |r: &LlmResponse| format!("data: {}\n\n", serde_json::to_string(r).unwrap_or_default());
    for choice in &whole.choices {
        let piece = LlmResponse {
            choices: vec![LlmChoice {
                index: choice.index,
                message: None,
                delta: choice.message.clone(),
                finish_reason: None,
            }],
            usage: Default::default(),
            ..whole.clone()
        };
        events.push_str(&event(&piece));
    }
    let last = LlmResponse {
        choices: whole
            .choices
            .iter()
            .map(|c| LlmChoice {
                index: c.index,
                message: None,
                delta: None,
                finish_reason: c.finish_reason.clone().or_else(|| Some("stop".to_owned())),
            })
            .collect(),
        ..whole.clone()
    };
    events.push_str(&event(&last));
    events.push_str("data: [DONE]\n\n");
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(events),
    )
        .into_response())
}

async fn require_client(
    State(g): State<Gateway>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let config = &g.inner.config;
    if config.open {
        return next.run(req).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let jobs_api = req.uri().path().starts_with("/api/v1/");
    match token {
        Some(t)
            if config
                .auth_tokens
                .iter()
                .any(|k| weir_protocol::auth::constant_time_eq(k.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        // Each API refuses in its own error shape: the jobs API's `{"error", "code"}`, the
        // others' Livepeer `{"detail": {"msg"}}`.
        Some(_) if jobs_api => crate::jobs::unauthorized("invalid bearer token"),
        Some(_) => err(401, "invalid bearer token").into_response(),
        None if jobs_api => crate::jobs::unauthorized(MISSING_TOKEN),
        None => err(401, MISSING_TOKEN).into_response(),
    }
}

const MISSING_TOKEN: &str = "missing bearer token: send Authorization: Bearer <token>";

async fn ai(
    State(g): State<Gateway>,
    UrlPath(capability): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return AiHttpError::from(e).into_response(),
    };
    let Some(capability) = Capability::from_id(&capability) else {
        return err(404, format!("no such endpoint `/{capability}`")).into_response();
    };
    let response = match g.handle(capability, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%capability, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    g.inner
        .metrics
        .requests
        .with_label_values(&[capability.id(), response.status().as_str()])
        .inc();
    response
}

async fn result(State(g): State<Gateway>, UrlPath(name): UrlPath<String>) -> Response {
    match g.inner.store.get(&name).await {
        Some((content_type, data)) => {
            ([(header::CONTENT_TYPE, content_type)], data).into_response()
        }
        None => err(404, format!("no result `{name}`")).into_response(),
    }
}

async fn orchestrators(State(g): State<Gateway>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "orchestrators": g.inner.discovery.views() }))
}

/// `GET /openapi.json`: the gateway's APIs (AI, jobs, live, results, BYOC, AI streams) and the
/// node's health and admin routes it is served beside; an open gateway documents no client
/// token.
async fn openapi(State(g): State<Gateway>) -> Response {
    let mut doc = weir_protocol::openapi::gateway_document();
    if let (Some(jobs), Some(paths)) = (g.inner.jobs.as_ref(), doc["paths"].as_object_mut()) {
        paths.extend(crate::jobs::openapi_paths(jobs.catalog()));
    }
    if g.inner.config.open {
        weir_protocol::openapi::without_auth(&mut doc);
    }
    (StatusCode::OK, Json(doc)).into_response()
}
