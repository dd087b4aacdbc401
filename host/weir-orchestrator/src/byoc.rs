//! Bring-your-own-compute on the orchestrator: capabilities registered at run time by external
//! workers (`POST /capability/register`) or configured as in-process WASM `pipeline`
//! components, priced per second, with capacity enforced atomically and workers health-checked.
//!
//! Batch jobs arrive at `POST /process/request/{route}` with the `Livepeer` job header and a
//! payment; they are forwarded to the worker's `{url}/{route}` (or run by the pipeline
//! component) and charged for the seconds they took, never more than the `timeout_seconds`
//! reserved up front. Live streams are in [`crate::streams`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use parking_lot::RwLock;
use serde::Deserialize;
use weir_models::capacity::{Capacity, Slot};
use weir_payments::{credit, UnitPrice};
use weir_protocol::byoc::{
    valid_capability_name, JobRequest, RegisterCapability, BYOC_MODEL, JOB_HEADER,
    LIVEPEER_BALANCE_HEADER,
};
use weir_protocol::info::{InfoModel, InfoPrice, BALANCE_HEADER, CHARGE_HEADER};
use weir_protocol::AiHttpError;
use weir_runtime::{Param, ParamValue, Registry, WorldKind};

use crate::server::{agreed_charge, err, Orchestrator};

/// A WASM `pipeline` component served as a BYOC capability (`[[orchestrator.pipelines]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEntry {
    /// Capability name clients ask for.
    pub name: String,
    /// Component name in the registry (world `pipeline`).
    pub component: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Concurrent jobs and streams.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Base units per `price_scaling` seconds.
    #[serde(default)]
    pub price_per_unit: u64,
    /// Seconds per `price_per_unit`.
    #[serde(default = "one")]
    pub price_scaling: u64,
    /// Currency label.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_capacity() -> u32 {
    4
}

fn one() -> u64 {
    1
}

fn default_currency() -> String {
    "WEI".to_owned()
}

/// Settings of BYOC on the orchestrator (`[orchestrator.byoc]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByocConfig {
    /// The secret workers present to register (`Authorization: <secret>`); registration is
    /// refused while none is set.
    pub secret: Option<String>,
    /// Pipelines served in-process.
    pub pipelines: Vec<PipelineEntry>,
    /// Period of worker health checks, in seconds.
    pub health_interval_secs: u64,
    /// Failed checks in a row that take a worker out.
    pub unhealthy_after: u32,
    /// Deadline of calls to a worker's stream endpoints, in seconds.
    pub worker_timeout_secs: u64,
    /// A stream's balance is debited this often, in seconds.
    pub debit_interval_secs: u64,
    /// A stream starts only with at least this many seconds of price in its balance.
    pub min_balance_secs: u64,
    /// Streams at once on this orchestrator.
    pub max_streams: usize,
    /// Largest segment a pipeline reads.
    pub max_segment_bytes: usize,
    /// Largest worker answer to a batch job.
    pub max_answer_bytes: usize,
    /// Capabilities that may be registered.
    pub max_capabilities: usize,
}

impl Default for ByocConfig {
    fn default() -> Self {
        ByocConfig {
            secret: None,
            pipelines: Vec::new(),
            health_interval_secs: 5,
            unhealthy_after: 2,
            worker_timeout_secs: 5,
            debit_interval_secs: 5,
            min_balance_secs: 60,
            max_streams: 100,
            max_segment_bytes: 32 << 20,
            max_answer_bytes: 64 << 20,
            max_capabilities: 256,
        }
    }
}

impl ByocConfig {
    pub(crate) fn health_interval(&self) -> Duration {
        Duration::from_secs(self.health_interval_secs.max(1))
    }

    pub(crate) fn worker_timeout(&self) -> Duration {
        Duration::from_secs(self.worker_timeout_secs.max(1))
    }

    pub(crate) fn debit_interval(&self) -> Duration {
        Duration::from_secs(self.debit_interval_secs.max(1))
    }
}

/// Who does a capability's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// An external worker over HTTP and trickle.
    Worker {
        /// Base URL, no trailing slash.
        url: String,
        /// Bearer token it expects.
        token: Option<String>,
    },
    /// A `pipeline` component run in-process.
    Pipeline {
        /// Component name.
        component: String,
    },
}

/// One capability this orchestrator offers.
pub(crate) struct Offered {
    pub(crate) name: String,
    pub(crate) backend: Backend,
    pub(crate) capacity: Arc<Capacity>,
    /// Base units per `price.pixels_per_unit` seconds.
    pub(crate) price: UnitPrice,
    pub(crate) currency: String,
    pub(crate) healthy: AtomicBool,
    failures: AtomicU32,
}

impl Offered {
    /// The price per millisecond of stream time, as a [`UnitPrice`] over milliseconds.
    pub(crate) fn price_per_ms(&self) -> UnitPrice {
        UnitPrice {
            price_per_unit: self.price.price_per_unit,
            pixels_per_unit: self.price.pixels_per_unit.saturating_mul(1000),
        }
    }

    /// The price as the pricing types carry it.
    pub(crate) fn quoted(&self) -> weir_runtime::Price {
        weir_runtime::Price {
            price_per_unit: self.price.price_per_unit,
            pixels_per_unit: self.price.pixels_per_unit,
            currency: self.currency.clone(),
        }
    }

    pub(crate) fn slot(&self) -> Result<Slot, AiHttpError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(err(
                503,
                format!(
                    "capability `{}`: its worker is failing health checks",
                    self.name
                ),
            ));
        }
        self.capacity.try_acquire().map_err(|full| {
            err(
                503,
                format!(
                    "insufficient capacity: `{}` runs {} of {}",
                    self.name, full.in_flight, full.limit
                ),
            )
        })
    }

    /// Record a worker failure seen outside health checks (a refused or dropped call).
    pub(crate) fn worker_failed(&self, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(capability = %self.name, why, "worker taken out until its health check passes");
        }
    }
}

/// The capabilities registered on an orchestrator.
pub(crate) struct Capabilities {
    config: ByocConfig,
    map: RwLock<HashMap<String, Arc<Offered>>>,
    pub(crate) client: reqwest::Client,
}

impl Capabilities {
    pub(crate) fn new(config: ByocConfig, registry: &Registry) -> Result<Capabilities, String> {
        let mut map = HashMap::new();
        for p in &config.pipelines {
            if !valid_capability_name(&p.name) {
                return Err(format!("pipeline `{}`: not a capability name", p.name));
            }
            if p.capacity == 0 || p.price_scaling == 0 {
                return Err(format!(
                    "pipeline `{}`: capacity and price_scaling must be at least 1",
                    p.name
                ));
            }
            if let Err(e) = registry.get_world(&p.component, WorldKind::Pipeline) {
                tracing::warn!(pipeline = %p.name, component = %p.component, error = %e, "pipeline component not loaded yet; jobs fail until it is");
            }
            let offered = Offered {
                name: p.name.clone(),
                backend: Backend::Pipeline {
                    component: p.component.clone(),
                },
                capacity: Capacity::new(p.capacity),
                price: UnitPrice {
                    price_per_unit: p.price_per_unit,
                    pixels_per_unit: p.price_scaling,
                },
                currency: p.currency.clone(),
                healthy: AtomicBool::new(true),
                failures: AtomicU32::new(0),
            };
            if map.insert(p.name.clone(), Arc::new(offered)).is_some() {
                return Err(format!("pipeline `{}` is configured twice", p.name));
            }
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Capabilities {
            config,
            map: RwLock::new(map),
            client,
        })
    }

    pub(crate) fn config(&self) -> &ByocConfig {
        &self.config
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Offered>, AiHttpError> {
        self.map.read().get(name).cloned().ok_or_else(|| {
            err(
                404,
                format!("capability `{name}` is not registered on this orchestrator"),
            )
        })
    }

    fn register(&self, r: RegisterCapability) -> Result<(), AiHttpError> {
        r.validate().map_err(|e| err(400, e))?;
        let mut map = self.map.write();
        if let Some(existing) = map.get(&r.name) {
            if matches!(existing.backend, Backend::Pipeline { .. }) {
                return Err(err(
                    409,
                    format!("`{}` is a pipeline configured on this orchestrator", r.name),
                ));
            }
        } else if map.len() >= self.config.max_capabilities {
            return Err(err(
                503,
                format!(
                    "{} capabilities are registered (max_capabilities)",
                    map.len()
                ),
            ));
        }
        // Re-registering keeps the slots in use when the capacity is unchanged.
        let capacity = match map.get(&r.name) {
            Some(e) if e.capacity.limit() == r.capacity => e.capacity.clone(),
            _ => Capacity::new(r.capacity),
        };
        let offered = Offered {
            name: r.name.clone(),
            backend: Backend::Worker {
                url: r.url.trim_end_matches('/').to_owned(),
                token: r.token.filter(|t| !t.is_empty()),
            },
            capacity,
            price: UnitPrice {
                price_per_unit: r.price_per_unit,
                pixels_per_unit: r.price_scaling,
            },
            currency: if r.currency.is_empty() {
                default_currency()
            } else {
                r.currency
            },
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
        };
        tracing::info!(capability = %r.name, description = %r.description, url = ?offered.backend, capacity = r.capacity, price = r.price_per_unit, scaling = r.price_scaling, "capability registered");
        map.insert(r.name, Arc::new(offered));
        Ok(())
    }

    fn unregister(&self, name: &str) -> Result<(), AiHttpError> {
        let mut map = self.map.write();
        match map.get(name).map(|o| &o.backend) {
            None => Err(err(404, format!("capability `{name}` is not registered"))),
            Some(Backend::Pipeline { .. }) => Err(err(
                409,
                format!("`{name}` is a pipeline configured on this orchestrator"),
            )),
            Some(Backend::Worker { .. }) => {
                map.remove(name);
                tracing::info!(capability = %name, "capability unregistered");
                Ok(())
            }
        }
    }

    /// What `/info` lists: healthy capabilities with their per-second price.
    pub(crate) fn info(&self) -> Vec<InfoModel> {
        let mut v: Vec<InfoModel> = self
            .map
            .read()
            .values()
            .filter(|o| o.healthy.load(Ordering::Acquire))
            .map(|o| InfoModel {
                capability: o.name.clone(),
                model_id: BYOC_MODEL.to_owned(),
                warm: true,
                runner: match o.backend {
                    Backend::Worker { .. } => "byoc".to_owned(),
                    Backend::Pipeline { .. } => "wasm".to_owned(),
                },
                price: InfoPrice {
                    price_per_unit: o.price.price_per_unit,
                    pixels_per_unit: o.price.pixels_per_unit,
                    currency: o.currency.clone(),
                },
                capacity: o.capacity.limit(),
                in_flight: o.capacity.in_flight(),
            })
            .collect();
        v.sort_by(|a, b| a.capability.cmp(&b.capability));
        v
    }

    /// Check every worker's health once: `GET {url}/health`, healthy on a 2xx unless its JSON
    /// `status` says `ERROR` or `LOADING`.
    async fn check_all(&self) {
        let workers: Vec<Arc<Offered>> = self
            .map
            .read()
            .values()
            .filter(|o| matches!(o.backend, Backend::Worker { .. }))
            .cloned()
            .collect();
        let timeout = self.config.worker_timeout();
        for o in workers {
            let Backend::Worker { url, token } = &o.backend else {
                continue;
            };
            let mut request = self.client.get(format!("{url}/health")).timeout(timeout);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let ok = match request.send().await {
                // pytrickle answers 200 with `{"status": "ERROR" | "LOADING" | …}`.
                Ok(r) if r.status().is_success() => {
                    let status =
                        r.json::<serde_json::Value>().await.ok().and_then(|v| {
                            v.get("status").and_then(|s| s.as_str()).map(str::to_owned)
                        });
                    !matches!(status.as_deref(), Some("ERROR" | "LOADING"))
                }
                _ => false,
            };
            if ok {
                o.failures.store(0, Ordering::Release);
                if !o.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(capability = %o.name, "worker healthy again; back in service");
                }
            } else {
                let failures = o.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.config.unhealthy_after {
                    o.worker_failed("health check failed");
                }
            }
        }
    }
}

/// Periodic worker health checks.
pub(crate) fn spawn_health_checks(o: Orchestrator) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(o.byoc().config().health_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            o.byoc().check_all().await;
        }
    })
}

/// No credentials is a 401 whether or not registration is on; a secret when registration is
/// off is a 403; a wrong one a 401.
fn check_secret(o: &Orchestrator, headers: &HeaderMap) -> Result<(), AiHttpError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(err(
            401,
            "missing the orchestrator secret: send Authorization: <secret>",
        ));
    }
    let Some(secret) = o.byoc().config().secret.as_deref() else {
        return Err(err(
            403,
            "capability registration is off: no orchestrator secret is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or(given);
    if weir_protocol::auth::constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(err(401, "wrong or missing orchestrator secret"))
    }
}

/// `POST /capability/register`.
pub(crate) async fn register(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = check_secret(&o, &headers).and_then(|()| {
        let r: RegisterCapability = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("not a capability registration: {e}")))?;
        o.byoc().register(r)
    });
    match result {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /capability/unregister`: the body is the capability name (or `{"name": …}`).
pub(crate) async fn unregister(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = check_secret(&o, &headers).and_then(|()| {
        let text = std::str::from_utf8(&body)
            .map_err(|_| err(400, "the body is not UTF-8"))?
            .trim();
        let name = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .ok_or_else(|| err(400, "no `name` in the body"))?,
            Ok(serde_json::Value::String(s)) => s,
            _ => text.to_owned(),
        };
        o.byoc().unregister(&name)
    });
    match result {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// What a batch job answered.
struct Done {
    status: u16,
    content_type: String,
    body: DoneBody,
}

/// What a batch job answers the gateway.
struct Reply {
    status: u16,
    content_type: String,
    body: axum::body::Body,
}

/// A batch answer: whole, or server-sent events still coming from the worker.
enum DoneBody {
    Whole(Bytes),
    Events(reqwest::Response),
}

impl DoneBody {
    /// The start of the answer, for error messages.
    fn excerpt(&self) -> String {
        match self {
            DoneBody::Whole(b) => String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned(),
            DoneBody::Events(_) => "(an event stream)".to_owned(),
        }
    }
}

/// What a debit of stream or job time did.
pub(crate) enum Debited {
    /// `cost` was charged; `balance` is left.
    Charged { cost: u64, balance: u64 },
    /// The balance (`balance`) was short of `needed`; nothing was charged.
    Short { balance: u64, needed: u64 },
    /// The ledger failed (logged); nothing was charged.
    Failed,
}

/// Charge `ms` of `offered`'s time to `sender`'s balance in `account`, as ledger entry `id`
/// (unique per debit). Live streams and streamed batch answers are paid this way, interval by
/// interval, from the balance their payments credited.
pub(crate) async fn debit_time(
    o: &Orchestrator,
    id: &str,
    sender: &str,
    account: &str,
    offered: &Offered,
    ms: u64,
) -> Debited {
    let cost = weir_payments::cost(ms, offered.price_per_ms()).unwrap_or(u64::MAX);
    let ledger = o.ledger();
    if cost == 0 {
        return match ledger.balance(sender, account).await {
            Ok(b) => Debited::Charged {
                cost: 0,
                balance: b.amount,
            },
            Err(e) => {
                tracing::error!(debit = %id, error = %e, "could not read a balance");
                Debited::Failed
            }
        };
    }
    match ledger
        .reserve(id, sender, account, BYOC_MODEL, ms, cost)
        .await
    {
        Ok(_) => match ledger.settle_charged(id, cost, None).await {
            Ok(balance) => Debited::Charged {
                cost,
                balance: balance.amount,
            },
            Err(e) => {
                tracing::error!(debit = %id, error = %e, "could not settle a debit");
                Debited::Failed
            }
        },
        Err(weir_payments::LedgerError::Insufficient {
            balance, needed, ..
        }) => Debited::Short { balance, needed },
        Err(e) => {
            tracing::error!(debit = %id, error = %e, "could not debit");
            Debited::Failed
        }
    }
}

/// `POST /process/request/{route}`: a batch job for a BYOC capability.
pub(crate) async fn process_request(
    State(o): State<Orchestrator>,
    UrlPath(route): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return AiHttpError::from(e).into_response(),
    };
    match run_request(&o, &route, &headers, body).await {
        Ok((done, balance, charge)) => {
            let status =
                axum::http::StatusCode::from_u16(done.status).unwrap_or(axum::http::StatusCode::OK);
            let mut r = (status, done.body).into_response();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&done.content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(CHARGE_HEADER, HeaderValue::from(charge));
            r
        }
        Err(e) => e.into_response(),
    }
}

fn valid_route(route: &str) -> bool {
    !route.is_empty()
        && route.len() <= 256
        && route.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        })
}

async fn run_request(
    o: &Orchestrator,
    route: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Reply, u64, u64), AiHttpError> {
    if !valid_route(route) {
        return Err(err(400, format!("route `{route}` is not a valid path")));
    }
    let job = JobRequest::from_headers(headers)?;
    let payment = o.payment(headers)?;
    let offered = o.byoc().get(&job.capability)?;
    let account = credit::account(&job.capability, BYOC_MODEL);
    if payment.account != account {
        return Err(err(
            402,
            format!(
                "the payment is for account `{}` but this job is `{account}`",
                payment.account
            ),
        ));
    }
    // The whole timeout is held; the job is charged for the seconds it took.
    let units = job.timeout_seconds;
    let held_cost = agreed_charge(&job.capability, &offered.quoted(), &payment, units)?;
    let slot = offered.slot()?;
    let job_id = format!("byoc-{:032x}", rand::random::<u128>());
    let held = o
        .reserve(&payment, &job_id, &account, BYOC_MODEL, units, held_cost)
        .await?;
    let started = Instant::now();
    let deadline = Duration::from_secs(job.timeout_seconds);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let result = match &offered.backend {
        Backend::Worker { url, token } => {
            forward(
                o,
                &offered,
                url,
                token.as_deref(),
                route,
                headers,
                &content_type,
                body,
                deadline,
            )
            .await
        }
        Backend::Pipeline { component } => {
            run_pipeline(o, component, &job, &content_type, body, deadline).await
        }
    };
    let done = match result {
        Ok(done) if (200..300).contains(&done.status) => done,
        Ok(done) => {
            let _ = held.release().await;
            return Err(err(
                if done.status >= 500 { 502 } else { done.status },
                format!(
                    "the worker answered {}: {}",
                    done.status,
                    done.body.excerpt()
                ),
            ));
        }
        Err(e) => {
            let _ = held.release().await;
            return Err(e);
        }
    };
    let secs = started.elapsed().as_millis().div_ceil(1000).max(1) as u64;
    let charge = weir_payments::cost(secs.min(units), offered.price)
        .unwrap_or(held_cost)
        .min(held_cost);
    let balance = held
        .settle(charge)
        .await
        .map_err(|e| err(500, format!("ledger: {e}")))?;
    let body = match done.body {
        DoneBody::Whole(b) => {
            tracing::info!(capability = %job.capability, route, job = %job_id, secs, charge, "BYOC job done");
            axum::body::Body::from(b)
        }
        DoneBody::Events(response) => {
            // The seconds so far are paid; the rest of the stream is debited from the balance
            // as it runs, and the capacity slot is held until it ends.
            tracing::info!(capability = %job.capability, route, job = %job_id, charge, "BYOC job streaming events");
            let debits = JobDebits {
                o: o.clone(),
                job_id,
                sender: payment.sender.clone(),
                account,
                offered: offered.clone(),
                started,
                charged_ms: secs.saturating_mul(1000),
                seq: 0,
                finished: false,
                charged: charge,
            };
            events_body(response, debits, slot, o.byoc().config().debit_interval())
        }
    };
    Ok((
        Reply {
            status: done.status,
            content_type: done.content_type,
            body,
        },
        balance,
        charge,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    o: &Orchestrator,
    offered: &Offered,
    url: &str,
    token: Option<&str>,
    route: &str,
    headers: &HeaderMap,
    content_type: &str,
    body: Bytes,
    deadline: Duration,
) -> Result<Done, AiHttpError> {
    let mut request = o
        .byoc()
        .client
        .post(format!("{url}/{route}"))
        .header(header::CONTENT_TYPE, content_type)
        .timeout(deadline)
        .body(body);
    if let Some(v) = headers.get(JOB_HEADER) {
        request = request.header(JOB_HEADER, v.clone());
    }
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(err(
                504,
                format!("the worker did not answer within {}s", deadline.as_secs()),
            ))
        }
        Err(e) => {
            offered.worker_failed(&e.to_string());
            return Err(err(503, format!("the worker is unreachable: {e}")));
        }
    };
    let status = response.status().as_u16();
    if status == 401 || status == 403 {
        offered.worker_failed("the worker refused the orchestrator's token");
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if (200..300).contains(&status) && content_type.starts_with("text/event-stream") {
        return Ok(Done {
            status,
            content_type,
            body: DoneBody::Events(response),
        });
    }
    let max = o.byoc().config().max_answer_bytes;
    let body = read_capped(response, max)
        .await
        .map_err(|e| err(502, format!("the worker's answer: {e}")))?;
    Ok(Done {
        status,
        content_type,
        body: DoneBody::Whole(body),
    })
}

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

async fn run_pipeline(
    o: &Orchestrator,
    component: &str,
    job: &JobRequest,
    content_type: &str,
    body: Bytes,
    deadline: Duration,
) -> Result<Done, AiHttpError> {
    let loaded = o
        .registry()
        .get_world(component, WorldKind::Pipeline)
        .map_err(|e| err(503, format!("pipeline component `{component}`: {e}")))?;
    let request = weir_runtime::JobRequest {
        id: job.id.clone(),
        capability: job.capability.clone(),
        model: BYOC_MODEL.to_owned(),
        params: vec![Param {
            name: "request".to_owned(),
            value: ParamValue::Text(job.request.clone()),
        }],
        output: weir_runtime::OutputSize {
            width: 0,
            height: 0,
            frames: 0,
            count: 1,
        },
        units: job.timeout_seconds,
        sender: String::new(),
    };
    let input = weir_runtime::media::Blob {
        content_type: content_type.to_owned(),
        data: body.to_vec().into(),
    };
    let work = tokio::task::spawn_blocking(move || loaded.run(request, vec![input]));
    let (blobs, params) = match tokio::time::timeout(deadline, work).await {
        Err(_) => {
            return Err(err(
                504,
                format!("the pipeline did not finish within {}s", deadline.as_secs()),
            ))
        }
        Ok(Err(e)) => return Err(err(500, format!("the pipeline crashed: {e}"))),
        Ok(Ok(Err(e))) => return Err(err(422, e.to_string())),
        Ok(Ok(Ok(out))) => out,
    };
    let params: serde_json::Map<String, serde_json::Value> = params
        .into_iter()
        .map(|p| {
            let v = match p.value {
                ParamValue::Integer(i) => serde_json::Value::from(i),
                ParamValue::Number(f) => serde_json::Value::from(f),
                ParamValue::Text(t) => serde_json::Value::from(t),
                ParamValue::Flag(b) => serde_json::Value::from(b),
            };
            (p.name, v)
        })
        .collect();
    let blobs: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "content_type": b.content_type,
                "data": base64::engine::general_purpose::STANDARD.encode(&b.data),
            })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"params": params, "blobs": blobs}))
        .map_err(|e| err(500, e.to_string()))?;
    Ok(Done {
        status: 200,
        content_type: "application/json".to_owned(),
        body: DoneBody::Whole(body.into()),
    })
}

/// The debits of a batch job whose answer is a stream of server-sent events: every interval
/// the time since the last debit is charged to the sender's balance.
struct JobDebits {
    o: Orchestrator,
    job_id: String,
    sender: String,
    account: String,
    offered: Arc<Offered>,
    started: Instant,
    /// Job time already charged.
    charged_ms: u64,
    seq: u64,
    /// Everything is charged.
    finished: bool,
    /// What the job has cost so far.
    charged: u64,
}

impl JobDebits {
    /// Charge the time since the last debit; `Err` says why the balance cannot pay it.
    async fn charge_to_now(&mut self) -> Result<(), String> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ms = now.saturating_sub(self.charged_ms);
        if ms == 0 {
            return Ok(());
        }
        self.seq += 1;
        let id = format!("{}-{}", self.job_id, self.seq);
        match debit_time(&self.o, &id, &self.sender, &self.account, &self.offered, ms).await {
            Debited::Charged { cost, .. } => {
                self.charged_ms = now;
                self.charged = self.charged.saturating_add(cost);
                Ok(())
            }
            Debited::Short { balance, needed } => Err(format!(
                "insufficient balance: sender {} holds {balance} for {}, {ms} ms cost {needed}",
                self.sender, self.account
            )),
            // A ledger failure is logged; the time is charged at the next debit.
            Debited::Failed => Ok(()),
        }
    }

    /// The final debit, once the answer has ended.
    async fn finish(&mut self, why: &str) {
        if self.finished {
            return;
        }
        if let Err(e) = self.charge_to_now().await {
            tracing::warn!(job = %self.job_id, error = %e, "the last part of a streamed answer went unpaid");
        }
        self.finished = true;
        tracing::info!(capability = %self.offered.name, job = %self.job_id, charge = self.charged, ms = self.charged_ms, why, "BYOC job done (events)");
    }
}

impl Drop for JobDebits {
    fn drop(&mut self) {
        // The client went away mid-stream: charge the time it used.
        if !self.finished {
            let mut rest = JobDebits {
                o: self.o.clone(),
                job_id: std::mem::take(&mut self.job_id),
                sender: std::mem::take(&mut self.sender),
                account: std::mem::take(&mut self.account),
                offered: self.offered.clone(),
                started: self.started,
                charged_ms: self.charged_ms,
                seq: self.seq,
                finished: false,
                charged: self.charged,
            };
            self.finished = true;
            tokio::spawn(async move { rest.finish("the client went away").await });
        }
    }
}

/// One server-sent event carrying an error, for an answer that has to end early.
fn error_event(message: &str) -> Bytes {
    let data = serde_json::json!({ "error": message });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The worker's event stream relayed as it arrives, debited every `interval`; a balance that
/// runs out ends it with an error event. `slot` is held until the stream ends.
fn events_body(
    response: reqwest::Response,
    debits: JobDebits,
    slot: Slot,
    interval: Duration,
) -> axum::body::Body {
    struct Relay {
        response: Option<reqwest::Response>,
        debits: JobDebits,
        next: tokio::time::Instant,
        interval: Duration,
        _slot: Slot,
    }
    let relay = Relay {
        response: Some(response),
        debits,
        next: tokio::time::Instant::now() + interval,
        interval,
        _slot: slot,
    };
    enum Step {
        Chunk(Result<Option<Bytes>, reqwest::Error>),
        Debit,
    }
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        loop {
            let step = {
                let response = r.response.as_mut()?;
                tokio::select! {
                    chunk = response.chunk() => Step::Chunk(chunk),
                    _ = tokio::time::sleep_until(r.next) => Step::Debit,
                }
            };
            match step {
                Step::Chunk(Ok(Some(bytes))) => return Some((Ok::<_, std::io::Error>(bytes), r)),
                Step::Chunk(Ok(None)) => {
                    r.response = None;
                    r.debits.finish("the worker ended the stream").await;
                    return None;
                }
                Step::Chunk(Err(e)) => {
                    r.response = None;
                    let why = if e.is_timeout() {
                        "the job's timeout_seconds ran out".to_owned()
                    } else {
                        format!("the worker's stream broke: {e}")
                    };
                    r.debits.finish(&why).await;
                    return Some((Ok(error_event(&why)), r));
                }
                Step::Debit => {
                    r.next += r.interval;
                    if let Err(why) = r.debits.charge_to_now().await {
                        r.response = None;
                        r.debits.finished = true;
                        tracing::warn!(job = %r.debits.job_id, error = %why, "streamed answer stopped");
                        return Some((Ok(error_event(&why)), r));
                    }
                }
            }
        }
    });
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_plain_paths() {
        assert!(valid_route("echo"));
        assert!(valid_route("v1/run.json"));
        for bad in ["", "../x", "a//b", "a/./b", "a b", "a?b"] {
            assert!(!valid_route(bad), "{bad}");
        }
    }

    #[test]
    fn the_config_section_has_defaults_and_refuses_typos() {
        let c: ByocConfig = toml::from_str("").expect("defaults");
        assert_eq!(c, ByocConfig::default());
        assert!(toml::from_str::<ByocConfig>("secrett = \"x\"").is_err());
        let c: ByocConfig = toml::from_str(
            "secret = \"s\"\n[[pipelines]]\nname = \"scale\"\ncomponent = \"live-scale\"\nprice_per_unit = 3",
        )
        .expect("valid");
        assert_eq!(c.pipelines[0].capacity, 4);
        assert_eq!(c.pipelines[0].price_scaling, 1);
    }
}
