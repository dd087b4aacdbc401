//! Async generation jobs: `/api/v1/generate`.
//!
//! A submit is validated against the model's schema, its inputs fetched (SSRF-safe) or taken
//! from the upload and stored, and the job queued durably ([`weir_jobs::store`]); the client
//! gets `202` with the job id at once. Workers in every gateway sharing the database claim
//! jobs under a lease, run them through the same selection, payment and retry path as the
//! synchronous AI API, store the result, and record the outcome exactly once; the outcome's
//! webhook is written in the same transaction and sent, signed, by the delivery loop.

mod http;
mod openapi;
mod request;
mod worker;

pub(crate) use openapi::openapi_paths;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use weir_jobs::catalog::{Catalog, FieldError, Validated};
use weir_jobs::egress::{EgressClient, EgressPolicy};
use weir_jobs::store::{self, JobState, JobStore, Millis, StoreError};
use weir_jobs::webhook::{RetrySchedule, WebhookSecret, WebhookSender};
use weir_protocol::multipart;
use weir_storage::Storage;

use crate::config::GatewayConfig;
pub use crate::config::JobsConfig;
use crate::seams::AiRequests;

/// Why the jobs engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The job database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Object storage.
    #[error(transparent)]
    Storage(#[from] weir_storage::StorageError),
    /// A setting.
    #[error("jobs: {0}")]
    Config(String),
    /// Metrics could not be registered.
    #[error("jobs metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct JobMetrics {
    queue: IntGaugeVec,
    wait: HistogramVec,
    run: HistogramVec,
    outcomes: IntCounterVec,
    webhooks: IntCounterVec,
}

impl JobMetrics {
    fn new(registry: &prometheus::Registry) -> Result<JobMetrics, prometheus::Error> {
        let buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        let m = JobMetrics {
            queue: IntGaugeVec::new(
                Opts::new("weir_jobs", "Jobs in the store by state"),
                &["state"],
            )?,
            wait: HistogramVec::new(
                HistogramOpts::new("weir_jobs_wait_seconds", "Time from submit to start")
                    .buckets(buckets.clone()),
                &["model"],
            )?,
            run: HistogramVec::new(
                HistogramOpts::new("weir_jobs_run_seconds", "Time of one run").buckets(buckets),
                &["model"],
            )?,
            outcomes: IntCounterVec::new(
                Opts::new("weir_jobs_outcomes_total", "Runs by model and outcome"),
                &["model", "outcome"],
            )?,
            webhooks: IntCounterVec::new(
                Opts::new(
                    "weir_jobs_webhook_attempts_total",
                    "Webhook attempts by outcome",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.queue.clone()))?;
        registry.register(Box::new(m.wait.clone()))?;
        registry.register(Box::new(m.run.clone()))?;
        registry.register(Box::new(m.outcomes.clone()))?;
        registry.register(Box::new(m.webhooks.clone()))?;
        Ok(m)
    }
}

/// The jobs API and engine of one gateway: its store, storage, workers and routes.
pub(crate) struct Jobs {
    /// The AI API the workers run jobs through.
    ai: Arc<dyn AiRequests>,
    /// The gateway's public URL, for job locations.
    public_url: String,
    store: Arc<dyn JobStore>,
    catalog: Catalog,
    storage: Storage,
    egress: EgressClient,
    webhooks: WebhookSender,
    secret: WebhookSecret,
    schedule: RetrySchedule,
    config: JobsConfig,
    worker: String,
    wake: Notify,
    running: Mutex<HashMap<String, Arc<Notify>>>,
    rate: Mutex<HashMap<String, (Instant, u32)>>,
    metrics: JobMetrics,
}

impl Jobs {
    /// Open the job store of the gateway's `[gateway.jobs]` (its data directory holds the
    /// default); jobs keep their inputs in `storage` and run through `ai`, whose stored
    /// results are their outputs.
    pub(crate) async fn open(
        gateway: &GatewayConfig,
        ai: Arc<dyn AiRequests>,
        storage: Storage,
        metrics: &prometheus::Registry,
    ) -> Result<Arc<Jobs>, JobsError> {
        let (config, data_dir) = (&gateway.jobs, gateway.data_dir.as_path());
        let public_url = gateway.public_url.as_str();
        let catalog = Catalog::new(&config.models).map_err(JobsError::Config)?;
        let database = config
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("jobs.db").display()));
        let store = store::open(&database).await?;
        let secret = webhook_secret(config, data_dir)?;
        let (egress, hook_egress) = egress_clients(config)?;
        let schedule = match &config.webhook_retry_secs {
            Some(delays) => RetrySchedule {
                delays: delays.iter().map(|s| Duration::from_secs(*s)).collect(),
                ..RetrySchedule::default()
            },
            None => RetrySchedule::default(),
        };
        let worker = format!("gw-{}-{:08x}", std::process::id(), rand::random::<u32>());
        tracing::info!(backend = store.backend(), storage = storage.backend(), %worker, models = catalog.ids().count(), "jobs engine ready");
        Ok(Arc::new(Jobs {
            ai,
            public_url: public_url.to_owned(),
            store,
            catalog,
            storage,
            egress,
            webhooks: WebhookSender::new(hook_egress),
            secret,
            schedule,
            config: config.clone(),
            worker,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            metrics: JobMetrics::new(metrics)?,
        }))
    }

    /// The configured models.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.config.lease_secs.max(3))
    }

    /// Whether `tenant` may submit now (a one-second window per tenant).
    fn admit(&self, tenant: &str) -> bool {
        let limit = self.config.submit_rate;
        if limit == 0 {
            return true;
        }
        let mut rate = self.rate.lock();
        let now = Instant::now();
        let entry = rate.entry(tenant.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= limit
    }
}

/// The key the object store signs local links with: derived from the webhook secret, so it
/// is stable across restarts and shared by gateways configured alike.
pub(crate) fn object_link_key(gateway: &GatewayConfig) -> Result<Vec<u8>, JobsError> {
    let secret = webhook_secret(&gateway.jobs, &gateway.data_dir)?;
    Ok(Sha256::digest(format!("weir-object-links:{}", secret.as_str())).to_vec())
}

/// The webhook signing secret: the configured one, or the one kept in `data_dir`.
fn webhook_secret(
    config: &JobsConfig,
    data_dir: &std::path::Path,
) -> Result<WebhookSecret, JobsError> {
    match &config.webhook_secret {
        Some(s) => s
            .parse::<WebhookSecret>()
            .map_err(|e| JobsError::Config(format!("webhook_secret: {e}"))),
        None => secret_file(&data_dir.join("webhook-secret")),
    }
}

/// The SSRF-safe clients that fetch inputs and send webhooks.
fn egress_clients(config: &JobsConfig) -> Result<(EgressClient, EgressClient), JobsError> {
    let egress_policy = |timeout: u64, max_bytes: usize| EgressPolicy {
        allow_private: config.allow_private_urls,
        max_bytes,
        timeout: Duration::from_secs(timeout.max(1)),
        max_redirects: 3,
    };
    let egress = EgressClient::new(egress_policy(
        config.input_timeout_secs,
        config.max_input_mib.clamp(1, 1024) << 20,
    ))
    .map_err(|e| JobsError::Config(format!("egress: {e}")))?;
    let hook_egress = EgressClient::new(egress_policy(config.webhook_timeout_secs, 64 << 10))
        .map_err(|e| JobsError::Config(format!("webhook egress: {e}")))?;
    Ok((egress, hook_egress))
}

/// Read the webhook secret at `path`, creating it on first use.
fn secret_file(path: &std::path::Path) -> Result<WebhookSecret, JobsError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return text
            .trim()
            .parse()
            .map_err(|e| JobsError::Config(format!("{}: {e}", path.display())));
    }
    let secret = WebhookSecret::generate();
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, secret.as_str())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| JobsError::Config(format!("{}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated the webhook signing secret");
    Ok(secret)
}

/// The tenant a request speaks for: a digest of its bearer token (`anonymous` without one).
pub(crate) fn tenant_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| {
            let digest = Sha256::digest(t.trim().as_bytes());
            format!("t-{}", &hex::encode(digest)[..16])
        })
        .unwrap_or_else(|| "anonymous".to_owned())
}

fn rfc3339(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    weir_media::hls::rfc3339_millis(t)
}

fn api_status(state: JobState) -> &'static str {
    match state {
        JobState::Running => "processing",
        s => s.as_str(),
    }
}

fn invalid(errors: Vec<FieldError>) -> Response {
    let summary = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": summary, "code": "invalid_request", "details": errors})),
    )
        .into_response()
}

/// The jobs API's 401 (`{"error", "code": "unauthorized"}`), answered before any route.
pub(crate) fn unauthorized(msg: &str) -> Response {
    problem(401, "unauthorized", msg)
}

fn problem(status: u16, code: &str, msg: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": msg.into(), "code": code}))).into_response()
}

fn store_failure(e: StoreError) -> Response {
    tracing::error!(error = %e, "job store failed");
    problem(
        503,
        "store_unavailable",
        format!("the job store is unavailable: {e}"),
    )
}

/// A submit as read from JSON or a form: its fields and uploaded files by part name.
struct Submission {
    fields: Map<String, Value>,
    uploads: Vec<(String, String, Bytes)>,
}

fn boxed_problem(status: u16, code: &str, msg: impl Into<String>) -> Box<Response> {
    Box::new(problem(status, code, msg))
}

fn read_submission(
    headers: &HeaderMap,
    body: &Bytes,
    max_file: usize,
) -> Result<Submission, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        let boundary = multipart::boundary_of(content_type)
            .map_err(|e| boxed_problem(400, "bad_form", e.to_string()))?;
        let parts = multipart::parse(&boundary, body)
            .map_err(|e| boxed_problem(400, "bad_form", e.to_string()))?;
        let mut fields = Map::new();
        let mut uploads = Vec::new();
        for part in parts {
            let disposition = part.header("content-disposition").unwrap_or("").to_owned();
            let name = disposition_param(&disposition, "name")
                .ok_or_else(|| boxed_problem(400, "bad_form", "a form part has no name"))?;
            if disposition_param(&disposition, "filename").is_some() {
                if part.data.len() > max_file {
                    return Err(boxed_problem(
                        413,
                        "too_large",
                        format!("upload `{name}` is larger than {max_file} bytes"),
                    ));
                }
                let ct = part
                    .header("content-type")
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                uploads.push((name, ct, part.data));
            } else {
                let text = String::from_utf8(part.data.to_vec()).map_err(|_| {
                    boxed_problem(400, "bad_form", format!("form field `{name}` is not UTF-8"))
                })?;
                fields.insert(name, Value::String(text));
            }
        }
        Ok(Submission { fields, uploads })
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(Submission {
                fields,
                uploads: Vec::new(),
            }),
            Ok(_) => Err(boxed_problem(
                400,
                "bad_json",
                "the body must be a JSON object",
            )),
            Err(e) => Err(boxed_problem(400, "bad_json", format!("invalid JSON: {e}"))),
        }
    }
}

fn disposition_param(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// What the request is, for idempotency: the validated parameters, the webhook and the
/// digests of the uploads.
fn request_hash(v: &Validated, uploads: &[(String, String, Bytes)]) -> String {
    let mut h = Sha256::new();
    h.update(v.spec.id.as_bytes());
    h.update(Value::Object(v.params.clone()).to_string().as_bytes());
    h.update(v.webhook_url.as_deref().unwrap_or("").as_bytes());
    for (name, _, data) in uploads {
        h.update(name.as_bytes());
        h.update(Sha256::digest(data));
    }
    hex::encode(h.finalize())
}

/// Whether `data` looks like what an input part expects.
fn sniff(part: &str, declared: &str, data: &[u8]) -> Option<String> {
    let magic: &[(&[u8], &str)] = if part == "audio" {
        &[
            (b"RIFF", "audio/wav"),
            (b"ID3", "audio/mpeg"),
            (b"\xff\xfb", "audio/mpeg"),
            (b"fLaC", "audio/flac"),
            (b"OggS", "audio/ogg"),
        ]
    } else {
        &[
            (b"\x89PNG", "image/png"),
            (b"\xff\xd8\xff", "image/jpeg"),
            (b"GIF8", "image/gif"),
            (b"RIFF", "image/webp"),
        ]
    };
    magic
        .iter()
        .find(|(m, _)| data.starts_with(m))
        .map(|(_, t)| (*t).to_owned())
        .or_else(|| {
            declared
                .starts_with(&format!("{part}/"))
                .then(|| declared.to_owned())
        })
}
