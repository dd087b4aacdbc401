//! Async generation jobs: `/api/v1/generate`.
//!
//! A submit is validated against the model's schema, its inputs fetched (SSRF-safe) or taken
//! from the upload and stored, and the job queued durably ([`weir_jobs::store`]); the client
//! gets `202` with the job id at once. Workers in every gateway sharing the database claim
//! jobs under a lease, run them through the same selection, payment and retry path as the
//! synchronous AI API, store the result, and record the outcome exactly once; the outcome's
//! webhook is written in the same transaction and sent, signed, by the delivery loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use weir_jobs::catalog::{Catalog, FieldError, Kind, ModelSpec, Validated};
use weir_jobs::egress::{EgressClient, EgressPolicy};
use weir_jobs::store::{
    self, now_ms, Cancel, Completion, DeliveryNext, Inserted, Job, JobState, JobStore, Lease,
    Millis, NewDelivery, NewJob, StoreError,
};
use weir_jobs::webhook::{Outcome, RetrySchedule, WebhookSecret, WebhookSender};
use weir_protocol::multipart;
use weir_storage::Storage;

use crate::server::{message_of, Gateway};

/// The guidance prompt an upscale job sends when its submit gave none.
const UPSCALE_PROMPT: &str = "high quality, sharp details";

/// Settings of the jobs API (`[gateway.jobs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// `sqlite://PATH` (default `<data-dir>/jobs.db`) or `postgres://…` to share jobs between
    /// gateways.
    pub database: Option<String>,
    /// Where inputs and results are kept (default: local disk under `<data-dir>/objects`).
    pub storage: Option<weir_storage::StorageConfig>,
    /// The models clients may submit.
    pub models: Vec<ModelSpec>,
    /// Jobs this gateway runs at once.
    pub workers: u32,
    /// A worker's hold on a job; renewed a third of the way through.
    pub lease_secs: u64,
    /// Jobs one tenant may have running at once (across gateways).
    pub tenant_concurrency: u32,
    /// Submits one tenant may make per second on this gateway (0: no limit).
    pub submit_rate: u32,
    /// How long results are kept.
    pub result_ttl_secs: u64,
    /// How long a result URL stays valid.
    pub url_expiry_secs: u64,
    /// Let input URLs and webhooks reach loopback and private networks (tests, labs).
    pub allow_private_urls: bool,
    /// Cap on one input file, in MiB.
    pub max_input_mib: usize,
    /// Deadline of fetching one input.
    pub input_timeout_secs: u64,
    /// `whsec_…` webhook signing secret (default: generated into `<data-dir>/webhook-secret`).
    pub webhook_secret: Option<String>,
    /// Deadline of one webhook delivery.
    pub webhook_timeout_secs: u64,
    /// Delays between webhook attempts, in seconds (default: the Standard Webhooks schedule).
    pub webhook_retry_secs: Option<Vec<u64>>,
    /// Most seconds `Prefer: wait=N` holds a submit.
    pub max_wait_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            database: None,
            storage: None,
            models: Vec::new(),
            workers: 4,
            lease_secs: 30,
            tenant_concurrency: 16,
            submit_rate: 0,
            result_ttl_secs: 24 * 3600,
            url_expiry_secs: 3600,
            allow_private_urls: false,
            max_input_mib: 32,
            input_timeout_secs: 30,
            webhook_secret: None,
            webhook_timeout_secs: 15,
            webhook_retry_secs: None,
            max_wait_secs: 60,
        }
    }
}

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

/// The jobs engine of one gateway.
pub(crate) struct Jobs {
    store: Arc<dyn JobStore>,
    catalog: Catalog,
    pub(crate) storage: Storage,
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
    /// Open the store and storage of `config`; `data_dir` holds the defaults.
    pub(crate) async fn open(
        config: &JobsConfig,
        data_dir: &std::path::Path,
        public_url: &str,
        metrics: &prometheus::Registry,
    ) -> Result<Jobs, JobsError> {
        let catalog = Catalog::new(&config.models).map_err(JobsError::Config)?;
        let database = config
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("jobs.db").display()));
        let store = store::open(&database).await?;
        let secret = match &config.webhook_secret {
            Some(s) => s
                .parse::<WebhookSecret>()
                .map_err(|e| JobsError::Config(format!("webhook_secret: {e}")))?,
            None => secret_file(&data_dir.join("webhook-secret"))?,
        };
        let storage_config =
            config
                .storage
                .clone()
                .unwrap_or_else(|| weir_storage::StorageConfig::Local {
                    dir: data_dir.join("objects"),
                });
        // Local links are signed with a key derived from the webhook secret: stable across
        // restarts and shared by gateways configured alike.
        let link_key = Sha256::digest(format!("weir-object-links:{}", secret.as_str()));
        let storage = Storage::open(&storage_config, public_url, &link_key).await?;
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
        let schedule = match &config.webhook_retry_secs {
            Some(delays) => RetrySchedule {
                delays: delays.iter().map(|s| Duration::from_secs(*s)).collect(),
                ..RetrySchedule::default()
            },
            None => RetrySchedule::default(),
        };
        let worker = format!("gw-{}-{:08x}", std::process::id(), rand::random::<u32>());
        tracing::info!(backend = store.backend(), storage = storage.backend(), %worker, models = catalog.ids().count(), "jobs engine ready");
        Ok(Jobs {
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
        })
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

impl Gateway {
    fn jobs(&self) -> Option<&Arc<Jobs>> {
        self.inner.jobs.as_ref()
    }

    /// Start the workers, the webhook loop and the janitor.
    pub(crate) fn spawn_jobs(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(jobs) = self.jobs().cloned() else {
            return Vec::new();
        };
        if jobs.catalog.ids().next().is_none() {
            tracing::info!("no job models configured: the jobs API refuses submits");
        }
        let mut tasks = Vec::new();
        for n in 0..jobs.config.workers.max(1) {
            let g = self.clone();
            tasks.push(tokio::spawn(async move { g.work(n).await }));
        }
        let g = self.clone();
        tasks.push(tokio::spawn(async move { g.deliver_webhooks().await }));
        let g = self.clone();
        tasks.push(tokio::spawn(async move { g.janitor().await }));
        tasks
    }

    async fn work(&self, n: u32) {
        let Some(jobs) = self.jobs().cloned() else {
            return;
        };
        let poll = Duration::from_millis(250 + u64::from(n) * 20);
        loop {
            let claimed = jobs
                .store
                .claim(
                    &jobs.worker,
                    now_ms(),
                    jobs.lease(),
                    jobs.config.tenant_concurrency.max(1),
                )
                .await;
            match claimed {
                Ok(Some(job)) => self.run_job(&jobs, job).await,
                Ok(None) => {
                    tokio::select! {
                        () = jobs.wake.notified() => {}
                        () = tokio::time::sleep(poll) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming a job failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Run one claimed job to an outcome (or give it up when the lease is lost).
    async fn run_job(&self, jobs: &Arc<Jobs>, job: Job) {
        let wait = (now_ms() - job.created_at).max(0) as f64 / 1000.0;
        jobs.metrics
            .wait
            .with_label_values(&[&job.model])
            .observe(wait);
        if job.attempts > job.max_attempts {
            let why = format!(
                "gave up after {} runs (the gateway running it stopped each time)",
                job.max_attempts
            );
            self.finish_failed(jobs, &job, &why).await;
            return;
        }
        if job.cancel_requested != 0 {
            self.finish_canceled(jobs, &job).await;
            return;
        }
        tracing::info!(job = %job.id, model = %job.model, attempt = job.attempts, "job started");
        let cancel = Arc::new(Notify::new());
        jobs.running.lock().insert(job.id.clone(), cancel.clone());
        let started = Instant::now();
        let timeout = Duration::from_millis(u64::try_from(job.timeout_ms).unwrap_or(600_000));
        // What the next heartbeat reports: 10 once dispatched, 90 once the answer is in.
        let progress = std::sync::atomic::AtomicU8::new(10);
        let mut run = Box::pin(tokio::time::timeout(
            timeout,
            self.execute(jobs, &job, &progress),
        ));
        let beat = jobs.lease() / 3;
        let outcome = loop {
            tokio::select! {
                r = &mut run => break Some(r.unwrap_or_else(|_| Err(RunError::Permanent(format!("the job ran past its {} s deadline", timeout.as_secs()))))),
                () = cancel.notified() => break None,
                () = tokio::time::sleep(beat) => {
                    let done = progress.load(std::sync::atomic::Ordering::Relaxed);
                    match jobs.store.heartbeat(&job.id, &jobs.worker, now_ms(), jobs.lease(), done).await {
                        Ok(Lease::Held { cancel: false }) => {}
                        Ok(Lease::Held { cancel: true }) => break None,
                        Ok(Lease::Lost) => {
                            tracing::warn!(job = %job.id, "lease lost to another worker; stopping this run");
                            jobs.running.lock().remove(&job.id);
                            return;
                        }
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                    }
                }
            }
        };
        // Dropping the run (cancel) drops the request to the orchestrator, which stops the
        // work and frees its slot; the attempt's payment is taken back.
        drop(run);
        jobs.running.lock().remove(&job.id);
        jobs.metrics
            .run
            .with_label_values(&[&job.model])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            None => self.finish_canceled(jobs, &job).await,
            Some(Ok(done)) => {
                let payload = self
                    .event_payload(jobs, &job, JobState::Completed, Some(&done), None)
                    .await;
                let webhook = self.delivery(&job, "job.completed", payload);
                match jobs
                    .store
                    .complete(&job.id, &jobs.worker, now_ms(), done, webhook)
                    .await
                {
                    Ok(true) => {
                        jobs.metrics
                            .outcomes
                            .with_label_values(&[&job.model, "completed"])
                            .inc();
                        tracing::info!(job = %job.id, ms = started.elapsed().as_millis() as u64, "job completed");
                    }
                    Ok(false) => {
                        tracing::warn!(job = %job.id, "job finished after its lease was lost; result dropped")
                    }
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %e, "recording a completion failed; the job will run again")
                    }
                }
                jobs.wake.notify_waiters();
            }
            Some(Err(RunError::Transient(why))) if job.attempts < job.max_attempts => {
                let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
                let retry_at = now_ms()
                    + i64::try_from(store::backoff(attempts).as_millis()).unwrap_or(60_000);
                jobs.metrics
                    .outcomes
                    .with_label_values(&[&job.model, "retried"])
                    .inc();
                tracing::warn!(job = %job.id, error = %why, attempt = job.attempts, "job run failed; retrying later");
                if let Err(e) = jobs
                    .store
                    .fail(&job.id, &jobs.worker, now_ms(), &why, Some(retry_at), None)
                    .await
                {
                    tracing::error!(job = %job.id, error = %e, "recording a retry failed");
                }
            }
            Some(Err(RunError::Transient(why) | RunError::Permanent(why))) => {
                self.finish_failed(jobs, &job, &why).await;
            }
        }
    }

    async fn finish_failed(&self, jobs: &Arc<Jobs>, job: &Job, why: &str) {
        let payload = self
            .event_payload(jobs, job, JobState::Failed, None, Some(why))
            .await;
        let webhook = self.delivery(job, "job.failed", payload);
        jobs.metrics
            .outcomes
            .with_label_values(&[&job.model, "failed"])
            .inc();
        tracing::warn!(job = %job.id, error = %why, "job failed");
        if let Err(e) = jobs
            .store
            .fail(&job.id, &jobs.worker, now_ms(), why, None, webhook)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording a failure failed");
        }
        jobs.wake.notify_waiters();
    }

    async fn finish_canceled(&self, jobs: &Arc<Jobs>, job: &Job) {
        let payload = self
            .event_payload(jobs, job, JobState::Canceled, None, None)
            .await;
        let webhook = self.delivery(job, "job.canceled", payload);
        jobs.metrics
            .outcomes
            .with_label_values(&[&job.model, "canceled"])
            .inc();
        tracing::info!(job = %job.id, "job canceled while running; its work was stopped");
        if let Err(e) = jobs
            .store
            .finish_canceled(&job.id, &jobs.worker, now_ms(), webhook)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording a cancel failed");
        }
        jobs.wake.notify_waiters();
    }

    fn delivery(&self, job: &Job, event: &str, payload: Value) -> Option<NewDelivery> {
        job.webhook_url.as_ref().map(|url| NewDelivery {
            id: format!("msg_{:032x}", rand::random::<u128>()),
            event: event.to_owned(),
            url: url.clone(),
            payload: payload.to_string(),
        })
    }

    /// The webhook body of an event: `{type, timestamp, data}` with `data` the job's status.
    async fn event_payload(
        &self,
        jobs: &Jobs,
        job: &Job,
        state: JobState,
        done: Option<&Completion>,
        error: Option<&str>,
    ) -> Value {
        let now = now_ms();
        let mut j = job.clone();
        j.state = state.as_str().to_owned();
        j.finished_at = Some(now);
        j.error = error.map(str::to_owned);
        if let Some(d) = done {
            j.result = Some(d.result.to_string());
            j.charge = i64::try_from(d.charge).ok();
            j.gpu_ms = i64::try_from(d.gpu_ms).ok();
            j.output_units = i64::try_from(d.output_units).ok();
            j.expires_at = Some(d.expires_at);
        }
        let data = status_body(jobs, &j, None).await;
        json!({
            "type": format!("job.{}", state.as_str()),
            "timestamp": rfc3339(now),
            "data": data,
        })
    }

    /// One run: build the AI request from the stored parameters and inputs, dispatch it like a
    /// synchronous request (selection, payment, retries), store the output.
    async fn execute(
        &self,
        jobs: &Jobs,
        job: &Job,
        progress: &std::sync::atomic::AtomicU8,
    ) -> Result<Completion, RunError> {
        let Some((spec, kind)) = jobs.catalog.get(&job.model) else {
            return Err(RunError::Permanent(format!(
                "model `{}` is no longer configured",
                job.model
            )));
        };
        let params = job
            .params()
            .map_err(|e| RunError::Permanent(e.to_string()))?;
        let (content_type, body) = self.ai_request(jobs, spec, kind, &params).await?;
        let capability =
            weir_protocol::Capability::from_id(kind.capability()).ok_or_else(|| {
                RunError::Permanent(format!("capability `{}` unknown", kind.capability()))
            })?;
        let started = Instant::now();
        let served = self
            .dispatch(capability, &content_type, body)
            .await
            .map_err(|e| {
                let msg = message_of(&e);
                if e.status >= 500 || e.status == 429 || e.status == 408 {
                    RunError::Transient(msg)
                } else {
                    RunError::Permanent(msg)
                }
            })?;
        let gpu_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        progress.store(90, std::sync::atomic::Ordering::Relaxed);
        let result = self.job_result(jobs, kind, &served.body).await?;
        let ttl =
            i64::try_from(jobs.config.result_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(Completion {
            result,
            charge: served.charge,
            gpu_ms,
            output_units: served.units,
            orchestrator: served.orchestrator,
            expires_at: now_ms().saturating_add(ttl),
        })
    }

    async fn ai_request(
        &self,
        jobs: &Jobs,
        spec: &ModelSpec,
        kind: Kind,
        params: &Value,
    ) -> Result<(String, Bytes), RunError> {
        let p = |k: &str| params.get(k).cloned().unwrap_or(Value::Null);
        let text = |k: &str| {
            params
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let model_id = spec.model_id.clone();
        if kind == Kind::TextToImage {
            let mut body = json!({
                "prompt": p("prompt"),
                "negative_prompt": text("negativePrompt"),
                "width": p("width"),
                "height": p("height"),
                "num_inference_steps": p("steps"),
                "guidance_scale": p("guidanceScale"),
            });
            if let Some(seed) = params.get("seed").filter(|s| !s.is_null()) {
                body["seed"] = seed.clone();
            }
            if let Some(m) = model_id {
                body["model_id"] = Value::String(m);
            }
            return Ok(("application/json".to_owned(), Bytes::from(body.to_string())));
        }
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(m) = &model_id {
            fields.push(("model_id", m.clone()));
        }
        match kind {
            Kind::ImageToImage => {
                fields.push(("prompt", text("prompt")));
                fields.push(("negative_prompt", text("negativePrompt")));
                fields.push(("strength", p("strength").to_string()));
                fields.push(("num_inference_steps", p("steps").to_string()));
            }
            Kind::ImageToVideo => {
                for (k, wire) in [("width", "width"), ("height", "height"), ("fps", "fps")] {
                    fields.push((wire, p(k).to_string()));
                }
            }
            Kind::Upscale => {
                // Livepeer's upscale takes a guidance prompt; the job schema makes it optional.
                let prompt = text("prompt");
                let prompt = if prompt.trim().is_empty() {
                    UPSCALE_PROMPT.to_owned()
                } else {
                    prompt
                };
                fields.push(("prompt", prompt));
            }
            _ => {}
        }
        if let Some(seed) = params.get("seed").and_then(Value::as_u64) {
            fields.push(("seed", seed.to_string()));
        }
        let mut parts: Vec<multipart::Part> = fields
            .into_iter()
            .map(|(name, value)| multipart::Part {
                headers: vec![(
                    "content-disposition".to_owned(),
                    format!("form-data; name=\"{name}\""),
                )],
                data: Bytes::from(value),
            })
            .collect();
        let inputs = params
            .get("inputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (part, key) in inputs {
            let key = key.as_str().unwrap_or_default();
            let object = jobs
                .storage
                .get(key)
                .await
                .map_err(|e| RunError::Transient(format!("reading input `{part}`: {e}")))?
                .ok_or_else(|| {
                    RunError::Permanent(format!("input `{part}` is gone from storage"))
                })?;
            parts.push(multipart::Part {
                headers: vec![
                    (
                        "content-disposition".to_owned(),
                        format!("form-data; name=\"{part}\"; filename=\"{part}\""),
                    ),
                    ("content-type".to_owned(), object.content_type.clone()),
                ],
                data: object.data,
            });
        }
        let boundary = multipart::boundary();
        Ok((
            format!("multipart/form-data; boundary={boundary}"),
            multipart::write(&boundary, &parts),
        ))
    }

    /// The job's result: the output stored under `results/…` with its facts.
    async fn job_result(&self, jobs: &Jobs, kind: Kind, body: &Value) -> Result<Value, RunError> {
        let shape =
            |what: &str| RunError::Transient(format!("the orchestrator's answer has no {what}"));
        let (content_type, data) = if kind == Kind::AudioToText {
            let text = body.get("text").ok_or_else(|| shape("text"))?;
            let data = serde_json::to_vec(
                &json!({"text": text, "chunks": body.get("chunks").cloned().unwrap_or(json!([]))}),
            )
            .map_err(|e| RunError::Permanent(e.to_string()))?;
            ("application/json".to_owned(), Bytes::from(data))
        } else {
            let url = body
                .pointer("/images/0/url")
                .and_then(Value::as_str)
                .ok_or_else(|| shape("image"))?;
            let name = url.rsplit('/').next().unwrap_or_default();
            let (ct, data) =
                self.inner.store.get(name).await.ok_or_else(|| {
                    RunError::Transient(format!("stored output `{name}` is missing"))
                })?;
            (ct.to_owned(), Bytes::from(data))
        };
        let ext = content_type
            .rsplit('/')
            .next()
            .unwrap_or("bin")
            .replace("jpeg", "jpg");
        let key = format!("results/job-outputs/{:032x}.{ext}", rand::random::<u128>());
        jobs.storage
            .put(&key, &content_type, data.clone())
            .await
            .map_err(|e| RunError::Transient(format!("storing the result: {e}")))?;
        let mut result = json!({
            "key": key,
            "contentType": content_type,
            "fileSizeBytes": data.len(),
        });
        if let Ok(size) = imagesize::blob_size(&data) {
            result["width"] = json!(size.width);
            result["height"] = json!(size.height);
        }
        if content_type.starts_with("video/") {
            let probed = data.clone();
            let info =
                tokio::task::spawn_blocking(move || weir_media::transcode::probe(&probed)).await;
            if let Ok(Ok(info)) = info {
                if let Some(v) = &info.video {
                    result["width"] = json!(v.width);
                    result["height"] = json!(v.height);
                }
                result["durationMs"] = json!(info.duration_ms);
            }
        }
        if kind == Kind::AudioToText {
            result["text"] = body.get("text").cloned().unwrap_or(Value::Null);
        }
        Ok(result)
    }

    async fn deliver_webhooks(&self) {
        let Some(jobs) = self.jobs().cloned() else {
            return;
        };
        let lease = Duration::from_secs(jobs.config.webhook_timeout_secs.max(1) * 2 + 5);
        loop {
            let due = match jobs.store.due_deliveries(now_ms(), lease, 16).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "reading due webhooks failed");
                    Vec::new()
                }
            };
            if due.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let sends = due.into_iter().map(|d| {
                let jobs = jobs.clone();
                async move {
                    let attempt = u32::try_from(d.attempts).unwrap_or(0) + 1;
                    let started = Instant::now();
                    let outcome = jobs.webhooks.send(&d.url, &jobs.secret, &d.id, d.payload.as_bytes()).await;
                    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                    let at = now_ms();
                    let (status, error, next) = match &outcome {
                        Outcome::Delivered { status } => (Some(*status), None, DeliveryNext::Delivered),
                        Outcome::Disabled { status } => (Some(*status), Some("endpoint answered 410 Gone: disabled".to_owned()), DeliveryNext::Disabled),
                        Outcome::Failed { status, error, retry_after } => {
                            let next = match jobs.schedule.next_delay(attempt, *retry_after) {
                                Some(d) => DeliveryNext::RetryAt(at + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
                                None => DeliveryNext::Failed,
                            };
                            (*status, Some(error.clone()), next)
                        }
                    };
                    let label = match next {
                        DeliveryNext::Delivered => "delivered",
                        DeliveryNext::RetryAt(_) => "retry",
                        DeliveryNext::Failed => "failed",
                        DeliveryNext::Disabled => "disabled",
                    };
                    jobs.metrics.webhooks.with_label_values(&[label]).inc();
                    if next != DeliveryNext::Delivered {
                        tracing::warn!(webhook = %d.id, job = %d.job_id, attempt, ?status, error = error.as_deref().unwrap_or(""), outcome = label, "webhook not delivered");
                    }
                    if let Err(e) = jobs.store.record_attempt(&d.id, attempt, at, status, error.as_deref(), took, next).await {
                        tracing::error!(webhook = %d.id, error = %e, "recording a webhook attempt failed");
                    }
                }
            });
            futures_util::future::join_all(sends).await;
        }
    }

    /// Reclaim jobs of crashed gateways, delete expired results, refresh the queue gauges.
    async fn janitor(&self) {
        let Some(jobs) = self.jobs().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            match jobs.store.reclaim_expired(now_ms()).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(
                        jobs = ids.len(),
                        "requeued jobs whose worker stopped renewing its lease"
                    );
                    jobs.wake.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reclaiming jobs failed"),
            }
            if let Ok(expired) = jobs.store.expired_results(now_ms(), 100).await {
                for job in expired {
                    let keys = result_keys(&job);
                    let mut ok = true;
                    for key in keys {
                        if let Err(e) = jobs.storage.delete(&key).await {
                            tracing::warn!(job = %job.id, %key, error = %e, "deleting an expired object failed");
                            ok = false;
                        }
                    }
                    if ok {
                        let _ = jobs.store.clear_result(&job.id).await;
                    }
                }
            }
            if let Ok(counts) = jobs.store.counts().await {
                for (state, n) in counts {
                    jobs.metrics
                        .queue
                        .with_label_values(&[state.as_str()])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

/// The objects a job owns: its result and its stored inputs.
fn result_keys(job: &Job) -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(Some(r)) = job.result() {
        if let Some(k) = r.get("key").and_then(Value::as_str) {
            keys.push(k.to_owned());
        }
    }
    if let Ok(p) = job.params() {
        if let Some(inputs) = p.get("inputs").and_then(Value::as_object) {
            keys.extend(inputs.values().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    keys
}

/// Why a run did not complete.
enum RunError {
    /// Worth another run later (no orchestrator free, a 5xx, a timeout).
    Transient(String),
    /// Running it again would fail the same way.
    Permanent(String),
}

/// A job as the API shows it. `position` is computed for queued jobs when `None`.
async fn status_body(jobs: &Jobs, job: &Job, position: Option<u64>) -> Value {
    let state = job.state().unwrap_or(JobState::Failed);
    let mut v = json!({
        "jobId": job.id,
        "model": job.model,
        "status": api_status(state),
        "createdAt": rfc3339(job.created_at),
        "attempts": job.attempts,
    });
    match state {
        JobState::Queued => {
            let pos = match position {
                Some(p) => Some(p),
                None => jobs.store.queue_position(job).await.ok(),
            };
            v["position"] = json!(pos);
        }
        JobState::Running => {
            v["progress"] = json!(job.progress);
            v["startedAt"] = json!(job.started_at.map(rfc3339));
            v["cancelRequested"] = json!(job.cancel_requested != 0);
        }
        JobState::Completed => {
            if let Ok(Some(mut r)) = job.result() {
                if let Some(key) = r.get("key").and_then(Value::as_str).map(str::to_owned) {
                    let ttl = Duration::from_secs(jobs.config.url_expiry_secs.max(1));
                    match jobs.storage.signed_url(&key, ttl).await {
                        Ok((url, expires)) => {
                            r["url"] = json!(url);
                            r["urlExpiresAt"] =
                                json!(rfc3339(i64::try_from(expires).unwrap_or(0) * 1000));
                        }
                        Err(e) => {
                            tracing::warn!(job = %job.id, error = %e, "signing a result URL failed")
                        }
                    }
                }
                if let Some(o) = r.as_object_mut() {
                    o.remove("key");
                }
                v["result"] = r;
            } else {
                v["result"] = Value::Null;
                v["resultExpired"] = json!(true);
            }
            v["processingTimeMs"] = json!(job.gpu_ms);
            v["completedAt"] = json!(job.finished_at.map(rfc3339));
            v["startedAt"] = json!(job.started_at.map(rfc3339));
            v["expiresAt"] = json!(job.expires_at.map(rfc3339));
            v["billing"] = json!({
                "charge": job.charge,
                "gpuMs": job.gpu_ms,
                "outputUnits": job.output_units,
                "orchestrator": job.orchestrator,
            });
        }
        JobState::Failed => {
            v["error"] = json!(job.error);
            v["failedAt"] = json!(job.finished_at.map(rfc3339));
        }
        JobState::Canceled => {
            v["canceledAt"] = json!(job.finished_at.map(rfc3339));
        }
    }
    v
}

async fn with_webhooks(jobs: &Jobs, job: &Job, mut body: Value) -> Value {
    if job.webhook_url.is_some() {
        if let Ok(d) = jobs.store.deliveries(&job.id).await {
            body["webhooks"] = json!(d);
        }
    }
    body
}

fn location(g: &Gateway, id: &str) -> String {
    format!(
        "{}/api/v1/generate/{id}",
        g.inner.config.public_url.trim_end_matches('/')
    )
}

fn disabled() -> Response {
    problem(
        404,
        "jobs_disabled",
        "the jobs API is not enabled on this gateway",
    )
}

/// Seconds asked for with `Prefer: wait=N`.
fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("wait=")
                .and_then(|n| n.trim().parse().ok())
        })
}

/// `POST /api/v1/generate`.
pub(crate) async fn submit(State(g): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    let tenant = tenant_of(&headers);
    if !jobs.admit(&tenant) {
        let mut r = problem(
            429,
            "rate_limited",
            format!("more than {} submits per second", jobs.config.submit_rate),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let max_file = jobs.egress.policy().max_bytes;
    let submission = match read_submission(&headers, &body, max_file) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let upload_parts: Vec<&str> = submission
        .uploads
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    let validated = match jobs.catalog.validate(&submission.fields, &upload_parts) {
        Ok(v) => v,
        Err(errors) => return invalid(errors),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
        Some(_) => {
            return problem(
                400,
                "bad_idempotency_key",
                "Idempotency-Key must be 1–255 visible ASCII characters",
            )
        }
    };
    let hash = request_hash(&validated, &submission.uploads);
    if let Some(k) = &key {
        // A replay answers at once, before fetching anything (the store decides for good).
        match jobs.store.by_idempotency_key(&tenant, k).await {
            Ok(Some(existing)) if existing.idem_hash.as_deref() == Some(hash.as_str()) => {
                return accepted(&g, &jobs, &existing, true).await;
            }
            Ok(Some(existing)) => {
                return problem(
                    409,
                    "idempotency_conflict",
                    format!(
                        "Idempotency-Key `{k}` was already used with a different request (job {})",
                        existing.id
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => return store_failure(e),
        }
    }
    let id = format!("job_{:032x}", rand::random::<u128>());
    // Inputs are fetched (or taken from the upload) now, so a job never depends on a URL
    // that may change or vanish before it runs.
    let mut inputs = Map::new();
    for (param, part, url) in validated.inputs() {
        let (content_type, data) = match url {
            Some(url) => match jobs.egress.fetch(&url).await {
                Ok(f) => (f.content_type.unwrap_or_default(), f.data),
                Err(e) => {
                    return problem(
                        e.http_status(),
                        "input_unavailable",
                        format!("{param}: {e}"),
                    )
                }
            },
            None => match submission.uploads.iter().find(|(n, _, _)| n == part) {
                Some((_, ct, data)) => (ct.clone(), data.clone()),
                None => continue,
            },
        };
        let Some(content_type) = sniff(part, &content_type, &data) else {
            return problem(
                415,
                "unsupported_input",
                format!("{param}: not a supported {part} file"),
            );
        };
        let key = format!("inputs/{id}/{part}");
        if let Err(e) = jobs.storage.put(&key, &content_type, data).await {
            tracing::error!(error = %e, "storing an input failed");
            return problem(
                503,
                "storage_unavailable",
                format!("storing the input failed: {e}"),
            );
        }
        inputs.insert(part.to_owned(), Value::String(key));
    }
    let mut params = validated.params.clone();
    if !inputs.is_empty() {
        params.insert("inputs".to_owned(), Value::Object(inputs));
    }
    let new = NewJob {
        id,
        tenant,
        model: validated.spec.id.clone(),
        params: Value::Object(params),
        webhook_url: validated.webhook_url.clone(),
        priority: validated.spec.priority,
        max_attempts: validated.spec.max_attempts,
        timeout: Duration::from_secs(validated.spec.timeout_secs),
        idempotency: key.map(|k| (k, hash)),
    };
    let job = match jobs.store.insert(new, now_ms()).await {
        Ok(Inserted::New(j)) => {
            tracing::info!(job = %j.id, model = %j.model, tenant = %j.tenant, "job queued");
            jobs.wake.notify_one();
            j
        }
        Ok(Inserted::Existing(j)) => return accepted(&g, &jobs, &j, true).await,
        Err(StoreError::IdempotencyConflict { key, job_id }) => {
            return problem(409, "idempotency_conflict", format!("Idempotency-Key `{key}` was already used with a different request (job {job_id})"));
        }
        Err(e) => return store_failure(e),
    };
    if let Some(wait) = prefer_wait(&headers) {
        let deadline = Instant::now() + Duration::from_secs(wait.min(jobs.config.max_wait_secs));
        while Instant::now() < deadline {
            tokio::select! {
                () = jobs.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            match jobs.store.get(None, &job.id).await {
                Ok(Some(j)) if j.state().is_ok_and(JobState::is_final) => {
                    let body = with_webhooks(&jobs, &j, status_body(&jobs, &j, None).await).await;
                    let mut r = (StatusCode::OK, Json(body)).into_response();
                    r.headers_mut()
                        .insert("preference-applied", HeaderValue::from_static("wait"));
                    return r;
                }
                Ok(_) => {}
                Err(e) => return store_failure(e),
            }
        }
    }
    accepted(&g, &jobs, &job, false).await
}

/// `202` with the job's id, status and `Location`.
async fn accepted(g: &Gateway, jobs: &Jobs, job: &Job, replay: bool) -> Response {
    let state = job.state().unwrap_or(JobState::Queued);
    let mut body = json!({
        "jobId": job.id,
        "model": job.model,
        "status": api_status(state),
    });
    if replay {
        body = status_body(jobs, job, None).await;
    }
    let mut r = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location(g, &job.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if replay {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// `GET /api/v1/generate/{jobId}`.
pub(crate) async fn status(
    State(g): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    match jobs.store.get(Some(&tenant_of(&headers)), &id).await {
        Ok(Some(job)) => {
            let body = with_webhooks(&jobs, &job, status_body(&jobs, &job, None).await).await;
            Json(body).into_response()
        }
        Ok(None) => problem(404, "not_found", format!("no job `{id}`")),
        Err(e) => store_failure(e),
    }
}

/// `POST /api/v1/generate/{jobId}/cancel`.
pub(crate) async fn cancel(
    State(g): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    let tenant = tenant_of(&headers);
    let job = match jobs.store.get(Some(&tenant), &id).await {
        Ok(Some(j)) => j,
        Ok(None) => return problem(404, "not_found", format!("no job `{id}`")),
        Err(e) => return store_failure(e),
    };
    let payload = g
        .event_payload(&jobs, &job, JobState::Canceled, None, None)
        .await;
    let webhook = g.delivery(&job, "job.canceled", payload);
    match jobs.store.cancel(&tenant, &id, now_ms(), webhook).await {
        Ok(Cancel::Canceled(j)) => {
            jobs.metrics
                .outcomes
                .with_label_values(&[&j.model, "canceled"])
                .inc();
            tracing::info!(job = %id, "queued job canceled");
            jobs.wake.notify_waiters();
            Json(status_body(&jobs, &j, None).await).into_response()
        }
        Ok(Cancel::Requested(j)) => {
            if let Some(n) = jobs.running.lock().get(&id) {
                n.notify_one();
            }
            tracing::info!(job = %id, "cancel requested for a running job");
            (
                StatusCode::ACCEPTED,
                Json(status_body(&jobs, &j, None).await),
            )
                .into_response()
        }
        Ok(Cancel::AlreadyFinal(j)) => problem(
            409,
            "already_final",
            format!(
                "job `{id}` already ended ({})",
                api_status(j.state().unwrap_or(JobState::Failed))
            ),
        ),
        Ok(Cancel::NotFound) => problem(404, "not_found", format!("no job `{id}`")),
        Err(e) => store_failure(e),
    }
}

/// Query of the job list.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /api/v1/generate`: the tenant's jobs, newest first.
pub(crate) async fn list(
    State(g): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem(400, "bad_query", e.body_text()),
    };
    let state = match q.status.as_deref() {
        None => None,
        Some("processing") => Some(JobState::Running),
        Some(s) => match s.parse::<JobState>() {
            Ok(st) if st != JobState::Running => Some(st),
            _ => {
                return problem(
                    400,
                    "bad_status",
                    format!(
                        "unknown status `{s}` (queued, processing, completed, failed, canceled)"
                    ),
                )
            }
        },
    };
    let before = match q.cursor.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => {
            return problem(
                400,
                "bad_cursor",
                "cursor must be a value returned as nextCursor",
            )
        }
    };
    let limit = match q.limit.as_deref().map(|l| l.trim().parse::<u32>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return problem(400, "bad_limit", "limit must be an integer from 1 to 100"),
    };
    match jobs
        .store
        .list(&tenant_of(&headers), state, before, limit)
        .await
    {
        Ok(page) => {
            let next = (page.len() == limit as usize)
                .then(|| page.last().map(|j| j.seq.to_string()))
                .flatten();
            let mut items = Vec::with_capacity(page.len());
            for j in &page {
                items.push(status_body(&jobs, j, None).await);
            }
            Json(json!({"jobs": items, "nextCursor": next})).into_response()
        }
        Err(e) => store_failure(e),
    }
}

/// `GET /api/v1/generate/{jobId}/events`: the job's status as server-sent events until it ends.
pub(crate) async fn events(
    State(g): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    let tenant = tenant_of(&headers);
    match jobs.store.get(Some(&tenant), &id).await {
        Ok(Some(_)) => {}
        Ok(None) => return problem(404, "not_found", format!("no job `{id}`")),
        Err(e) => return store_failure(e),
    }
    let stream = futures_util::stream::unfold(
        (jobs, tenant, id, String::new(), false, Instant::now()),
        |(jobs, tenant, id, last, done, mut idle)| async move {
            if done {
                return None;
            }
            loop {
                let job = match jobs.store.get(Some(&tenant), &id).await {
                    Ok(Some(j)) => j,
                    _ => return None,
                };
                let body = status_body(&jobs, &job, None).await;
                let fingerprint = format!("{}:{}:{}", job.state, job.progress, body["position"]);
                let is_final = job.state().is_ok_and(JobState::is_final);
                if fingerprint != last {
                    let event = format!("event: status\ndata: {body}\n\n");
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (jobs, tenant, id, fingerprint, is_final, Instant::now()),
                    ));
                }
                if idle.elapsed() >= Duration::from_secs(15) {
                    idle = Instant::now();
                    return Some((
                        Ok(": keep-alive\n\n".to_owned()),
                        (jobs, tenant, id, last, false, idle),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Query of a signed object link.
#[derive(Debug, Deserialize)]
pub(crate) struct LinkQuery {
    expires: Option<u64>,
    sig: Option<String>,
}

/// `GET /objects/{*key}`: a local-disk object behind a signed, expiring link.
pub(crate) async fn object(
    State(g): State<Gateway>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let Some(jobs) = g.jobs().cloned() else {
        return disabled();
    };
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return problem(
            403,
            "unsigned",
            "this link needs its expires and sig parameters",
        );
    };
    if let Err(e) = jobs.storage.verify_link(&key, expires, &sig) {
        return problem(403, "denied", e.to_string());
    }
    match jobs.storage.get(&key).await {
        Ok(Some(o)) => ([(header::CONTENT_TYPE, o.content_type)], o.data).into_response(),
        Ok(None) => problem(404, "not_found", "the object expired or never existed"),
        Err(e) => problem(503, "storage_unavailable", e.to_string()),
    }
}

/// The OpenAPI schema of one model field; `None` for an input in a form, which
/// [`submit_variant`] describes as a file part instead.
fn field_openapi(f: &weir_jobs::catalog::Field, form: bool) -> Option<Value> {
    use weir_jobs::catalog::FieldType;
    Some(match f.ty {
        // A required text must hold something other than white space.
        FieldType::Text { max } if f.required => {
            json!({"type": "string", "minLength": 1, "maxLength": max,
                   "pattern": weir_protocol::openapi::NOT_BLANK})
        }
        FieldType::Text { max } => json!({"type": "string", "maxLength": max}),
        FieldType::Int { min, max, default } => {
            json!({"type": "integer", "minimum": min, "maximum": max, "default": default})
        }
        FieldType::Number { min, max, default } => {
            json!({"type": "number", "minimum": min, "maximum": max, "default": default})
        }
        FieldType::Input { .. } if form => return None,
        FieldType::Input { part } => json!({
            "type": "string", "format": "uri", "maxLength": 2048, "pattern": "^https?://",
            "description": format!("http(s) URL fetched by the gateway; or upload the file as multipart part `{part}`")
        }),
    })
}

/// The accepted media types of an upload in form part `part` (what `sniff` recognises).
fn part_media_types(part: &str) -> &'static str {
    if part == "audio" {
        "audio/wav, audio/mpeg, audio/flac, audio/ogg"
    } else {
        "image/png, image/jpeg, image/gif, image/webp"
    }
}

/// One model's submit body, as JSON (inputs are URLs) or as a form (inputs are file parts),
/// with the form's `encoding` (the accepted types of each file part).
fn submit_variant(
    id: &str,
    kind: weir_jobs::catalog::Kind,
    form: bool,
) -> (Value, Map<String, Value>) {
    use weir_jobs::catalog::FieldType;
    let mut props = Map::new();
    props.insert("model".to_owned(), json!({"const": id}));
    props.insert(
        "webhookUrl".to_owned(),
        json!({"type": "string", "pattern": "^https?://",
               "description": "An http(s) URL where the final state is POSTed (Standard Webhooks)"}),
    );
    let mut required = vec![json!("model")];
    let mut encoding = Map::new();
    for f in kind.fields() {
        let name = match (f.ty, field_openapi(f, form)) {
            (_, Some(schema)) => {
                props.insert(f.name.to_owned(), schema);
                f.name
            }
            (FieldType::Input { part }, None) => {
                props.insert(
                    part.to_owned(),
                    json!({"type": "string", "format": "binary", "minLength": 1}),
                );
                encoding.insert(
                    part.to_owned(),
                    json!({"contentType": part_media_types(part)}),
                );
                part
            }
            (_, None) => continue,
        };
        if f.required {
            required.push(json!(name));
        }
    }
    let variant = json!({
        "title": id, "type": "object", "properties": props,
        "required": required, "additionalProperties": false,
    });
    (variant, encoding)
}

/// The submit request body: one variant per configured model, discriminated by `model`.
fn submit_body(catalog: &Catalog) -> Value {
    let mut json_variants = Vec::new();
    let mut form_variants = Vec::new();
    let mut encoding = Map::new();
    for id in catalog.ids() {
        let Some((_, kind)) = catalog.get(id) else {
            continue;
        };
        json_variants.push(submit_variant(id, kind, false).0);
        let (variant, parts) = submit_variant(id, kind, true);
        form_variants.push(variant);
        encoding.extend(parts);
    }
    // With no job models configured there is nothing to discriminate: an empty `oneOf`
    // would accept no body at all.
    let one_of = |variants: Vec<Value>| match variants.as_slice() {
        [] => {
            json!({"type": "object", "description": "No job models are configured on this gateway"})
        }
        [only] => only.clone(),
        _ => json!({"oneOf": variants, "discriminator": {"propertyName": "model"}}),
    };
    json!({"required": true, "content": {
        "application/json": {"schema": one_of(json_variants)},
        "multipart/form-data": {"schema": one_of(form_variants), "encoding": encoding}
    }})
}

/// The schemas of a job's status, of one page of the list, of one server-sent event and of
/// the jobs API's errors.
fn job_schemas() -> (Value, Value, Value, Value) {
    let status = json!({
        "type": "object",
        "required": ["jobId", "model", "status"],
        "properties": {
            "jobId": {"type": "string"}, "model": {"type": "string"},
            "status": {"enum": ["queued", "processing", "completed", "failed", "canceled"]},
            "position": {"type": "integer"}, "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "startedAt": {"type": "string"}, "processingTimeMs": {"type": "integer"},
            "result": {"type": "object", "properties": {
                "url": {"type": "string"}, "urlExpiresAt": {"type": "string"}, "contentType": {"type": "string"},
                "fileSizeBytes": {"type": "integer"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                "durationMs": {"type": "integer"}}},
            "error": {"type": "string"}, "failedAt": {"type": "string"}, "canceledAt": {"type": "string"},
            "webhooks": {"type": "array"}
        }
    });
    let list = json!({"type": "object", "required": ["jobs", "nextCursor"], "properties": {
        "jobs": {"type": "array", "items": status},
        "nextCursor": {"type": ["string", "null"], "pattern": "^-?[0-9]{1,19}$"}}});
    // One server-sent event: `event: status`, its data the job's status as JSON.
    let event = json!({"type": "object", "required": ["data"], "properties": {
        "event": {"const": "status"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": status}}});
    let error = json!({"$ref": "#/components/schemas/JobError"});
    (status, list, event, error)
}

/// The jobs API in OpenAPI 3.1, built from the same schemas that validate submits: one request
/// variant per configured model, discriminated by `model`.
pub(crate) fn openapi_paths(catalog: &Catalog) -> Map<String, Value> {
    let (status, list, event, error) = job_schemas();
    let err_response =
        |d: &str| json!({"description": d, "content": {"application/json": {"schema": error}}});
    let ok =
        |d: &str| json!({"description": d, "content": {"application/json": {"schema": status}}});
    let unauthorized = err_response("Missing or unknown bearer token");
    let unavailable = err_response("The job store or the result storage is unavailable");
    let mut paths = Map::new();
    paths.insert("/api/v1/generate".to_owned(), json!({
        "post": {
            "summary": "Submit an async generation job",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "Idempotency-Key", "in": "header",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}},
                {"name": "Prefer", "in": "header", "schema": {"type": "string", "example": "wait=10"}}
            ],
            "requestBody": submit_body(catalog),
            "responses": {
                "202": ok("Queued (or an idempotent replay); Location names the job"),
                "200": ok("Finished within Prefer: wait"),
                "400": err_response("A malformed body or header, or an input URL that is refused"),
                "401": unauthorized,
                "409": err_response("Idempotency-Key reused with another body"),
                "413": err_response("An upload is too large"),
                "415": err_response("An input is not a supported image or audio file"),
                "422": err_response("Unknown model or invalid parameters, or an input URL that answered an error"),
                "429": err_response("Submit rate exceeded"),
                "502": err_response("An input URL could not be fetched"),
                "503": unavailable,
                "504": err_response("Fetching an input URL timed out")
            }
        },
        "get": {
            "summary": "List the caller's jobs, newest first",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "status", "in": "query",
                 "schema": {"type": "string", "enum": ["queued", "processing", "completed", "failed", "canceled"]}},
                {"name": "cursor", "in": "query", "description": "A nextCursor from the previous page",
                 "schema": {"type": "string", "pattern": "^-?[0-9]{1,18}$"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}
            ],
            "responses": {"200": {"description": "One page of jobs", "content": {"application/json": {"schema": list}}},
                          "400": err_response("A bad status, cursor or limit"),
                          "401": unauthorized, "503": unavailable}
        }
    }));
    let job_id = json!([{"name": "jobId", "in": "path", "required": true,
                         "description": "The job's id, as returned by the submit",
                         "schema": {"type": "string"}}]);
    paths.insert(
        "/api/v1/generate/{jobId}".to_owned(),
        json!({
            "parameters": job_id,
            "get": {"summary": "A job's status", "security": [{"bearer": []}],
                    "responses": {"200": ok("The job"), "404": err_response("No such job"),
                                  "401": unauthorized, "503": unavailable}}
        }),
    );
    paths.insert("/api/v1/generate/{jobId}/cancel".to_owned(), json!({
        "parameters": job_id,
        "post": {"summary": "Cancel a job", "security": [{"bearer": []}],
                 "responses": {"200": ok("Canceled"), "202": ok("Running: its work is being stopped"),
                               "409": err_response("Already ended"), "404": err_response("No such job"),
                               "401": unauthorized, "503": unavailable}}
    }));
    paths.insert("/api/v1/generate/{jobId}/events".to_owned(), json!({
        "parameters": job_id,
        "get": {"summary": "The job's status as server-sent events until it ends", "security": [{"bearer": []}],
                "responses": {"200": {"description": "Status events until the job ends",
                                      "content": {"text/event-stream": {"schema": event}}},
                              "404": err_response("No such job"), "401": unauthorized,
                              "503": unavailable}}
    }));
    paths
}
