//! The durable job queue: one [`JobStore`] trait, two backends ([`SqliteJobs`],
//! [`PostgresJobs`]) that share their SQL and differ only in dialect.
//!
//! A job moves `queued → running → completed | failed | canceled`; every move is one guarded
//! `UPDATE` (the `WHERE` names the state and, for a running job, the lease owner), so a job
//! ends exactly once however many gateways race on it. Workers claim the oldest queued job of
//! the highest priority (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers),
//! hold it with a lease they renew, and a job whose lease runs out goes back to the queue.
//! Webhook deliveries are written in the same transaction as the move that causes them (an
//! outbox), so none is lost to a crash between the two.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

mod sql;

pub use sql::{PostgresJobs, SqliteJobs, INSERT_JOB};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("job store ({backend}): {source}")]
    Database {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The cause.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("job store ({backend}) migrations: {source}")]
    Migrate {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
    /// The same idempotency key came with a different body.
    #[error("idempotency key `{key}` was already used with a different request (job {job_id})")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The job created with it.
        job_id: String,
    },
    /// A row held a value the code does not know (a newer schema, or a hand edit).
    #[error("job store holds an unreadable row: {0}")]
    Corrupt(String),
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    /// Done with a result.
    Completed,
    /// Ended without a result.
    Failed,
    /// Canceled by its tenant.
    Canceled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Canceled,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Canceled
        )
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (unguessable).
    pub id: String,
    /// Who submitted it.
    pub tenant: String,
    /// The configured model id.
    pub model: String,
    /// Validated parameters (JSON).
    pub params: serde_json::Value,
    /// Where its final state is sent.
    pub webhook_url: Option<String>,
    /// Higher runs first.
    pub priority: i64,
    /// Most runs (a lost lease counts as a run).
    pub max_attempts: u32,
    /// Deadline of one run.
    pub timeout: Duration,
    /// `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// A stored job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    /// Insertion order (the list cursor).
    pub seq: i64,
    /// Its id.
    pub id: String,
    /// Who submitted it.
    pub tenant: String,
    /// The configured model id.
    pub model: String,
    /// Parameters (JSON text).
    pub params: String,
    /// Where its final state is sent.
    pub webhook_url: Option<String>,
    /// Higher runs first.
    pub priority: i64,
    /// Its state (see [`Job::state`]).
    pub state: String,
    /// Runs started so far.
    pub attempts: i64,
    /// Most runs.
    pub max_attempts: i64,
    /// Deadline of one run.
    pub timeout_ms: i64,
    /// Not claimed before this time (backoff).
    pub run_after: Millis,
    /// The worker holding it.
    pub lease_owner: Option<String>,
    /// When that worker's lease runs out.
    pub lease_until: Option<Millis>,
    /// 0–100 while running.
    pub progress: i64,
    /// Its tenant asked to cancel it while it ran.
    pub cancel_requested: i64,
    /// When it was accepted.
    pub created_at: Millis,
    /// When a worker first started it.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// The result (JSON text) once completed.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// What its tenant is billed, in base units.
    pub charge: Option<i64>,
    /// Seconds of orchestrator work, in milliseconds.
    pub gpu_ms: Option<i64>,
    /// Output units (pixels, samples…) for billing.
    pub output_units: Option<i64>,
    /// The orchestrator that served it.
    pub orchestrator: Option<String>,
    /// When its result is deleted.
    pub expires_at: Option<Millis>,
    /// Its `Idempotency-Key`.
    pub idem_key: Option<String>,
    /// Hash of the request that came with the key.
    pub idem_hash: Option<String>,
}

impl Job {
    /// Its state.
    pub fn state(&self) -> Result<JobState, StoreError> {
        self.state.parse().map_err(StoreError::Corrupt)
    }

    /// Its parameters.
    pub fn params(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.params)
            .map_err(|e| StoreError::Corrupt(format!("job {} params: {e}", self.id)))
    }

    /// Its result, once completed.
    pub fn result(&self) -> Result<Option<serde_json::Value>, StoreError> {
        self.result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("job {} result: {e}", self.id)))
    }
}

/// What [`JobStore::insert`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new job was queued.
    New(Job),
    /// The idempotency key was seen with the same request: the original job.
    Existing(Job),
}

/// A webhook to send because of a state change, stored with it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The `webhook-id` (the same across retries).
    pub id: String,
    /// The event type (`job.completed`, …).
    pub event: String,
    /// The endpoint.
    pub url: String,
    /// The JSON body.
    pub payload: String,
}

/// How a job ended well.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The result (JSON).
    pub result: serde_json::Value,
    /// What the tenant is billed.
    pub charge: u64,
    /// Orchestrator time.
    pub gpu_ms: u64,
    /// Output units for billing.
    pub output_units: u64,
    /// Who served it.
    pub orchestrator: String,
    /// When the result is deleted.
    pub expires_at: Millis,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours; `cancel` when the tenant asked to stop.
    Held {
        /// Stop the work.
        cancel: bool,
    },
    /// Another worker took it (ours ran out): stop without recording anything.
    Lost,
}

/// What a cancel request did.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// It was queued and is now canceled.
    Canceled(Job),
    /// It is running; its worker will stop it.
    Requested(Job),
    /// It had already ended.
    AlreadyFinal(Job),
    /// No such job for this tenant.
    NotFound,
}

/// A webhook delivery with its attempts, as shown in a job.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// The `webhook-id`.
    pub id: String,
    /// The event type.
    pub event: String,
    /// `pending`, `delivered`, `failed` or `disabled`.
    pub state: String,
    /// Attempts made.
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// 1-based.
    pub attempt: i64,
    /// When (ms since the epoch).
    pub at: i64,
    /// The endpoint's status, if it answered.
    pub status: Option<i64>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// A delivery due to be sent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    /// Its job.
    pub job_id: String,
    /// The event type.
    pub event: String,
    /// The endpoint.
    pub url: String,
    /// The JSON body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// After a delivery attempt, what becomes of the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// 2xx: done.
    Delivered,
    /// Try again at this time.
    RetryAt(Millis),
    /// Attempts are used up.
    Failed,
    /// The endpoint answered 410.
    Disabled,
}

/// The durable queue. Every method is one transaction.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Queue a job; with an idempotency key already used by this tenant, the original job (same
    /// request hash) or [`StoreError::IdempotencyConflict`].
    async fn insert(&self, job: NewJob, now: Millis) -> Result<Inserted, StoreError>;
    /// One job; `tenant` limits the lookup to that tenant's jobs.
    async fn get(&self, tenant: Option<&str>, id: &str) -> Result<Option<Job>, StoreError>;
    /// The job a tenant created with an `Idempotency-Key`.
    async fn by_idempotency_key(&self, tenant: &str, key: &str) -> Result<Option<Job>, StoreError>;
    /// A tenant's jobs, newest first, before cursor `before` (a `seq`).
    async fn list(
        &self,
        tenant: &str,
        state: Option<JobState>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError>;
    /// How many queued jobs run before this one.
    async fn queue_position(&self, job: &Job) -> Result<u64, StoreError>;
    /// Claim the next runnable job for `worker` under a lease, skipping tenants that already
    /// run `tenant_limit` jobs.
    async fn claim(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
        tenant_limit: u32,
    ) -> Result<Option<Job>, StoreError>;
    /// Renew `worker`'s lease on job `id` and record its progress.
    async fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        lease: Duration,
        progress: u8,
    ) -> Result<Lease, StoreError>;
    /// Put jobs whose lease ran out back in the queue; returns their ids.
    async fn reclaim_expired(&self, now: Millis) -> Result<Vec<String>, StoreError>;
    /// Record a completion (`false`: the lease was lost and nothing was recorded).
    async fn complete(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        done: Completion,
        webhook: Option<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// Record a failed run: back to the queue at `retry_at`, else failed for good.
    async fn fail(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        error: &str,
        retry_at: Option<Millis>,
        webhook: Option<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// A tenant's cancel: queued jobs end at once, running ones are flagged for their worker.
    async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        now: Millis,
        webhook: Option<NewDelivery>,
    ) -> Result<Cancel, StoreError>;
    /// The worker stopped a job whose cancel was requested.
    async fn finish_canceled(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        webhook: Option<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// Jobs per state.
    async fn counts(&self) -> Result<BTreeMap<JobState, u64>, StoreError>;
    /// Completed jobs whose result expired by `now`; their results are cleared (the caller
    /// deletes the objects named in the returned results first).
    async fn expired_results(&self, now: Millis, limit: u32) -> Result<Vec<Job>, StoreError>;
    /// Forget the result of a job returned by [`JobStore::expired_results`].
    async fn clear_result(&self, id: &str) -> Result<(), StoreError>;
    /// Claim up to `limit` due deliveries for `lease`.
    async fn due_deliveries(
        &self,
        now: Millis,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Record one attempt of a delivery and what comes next.
    #[allow(clippy::too_many_arguments)]
    async fn record_attempt(
        &self,
        delivery: &str,
        attempt: u32,
        at: Millis,
        status: Option<u16>,
        error: Option<&str>,
        duration_ms: u64,
        next: DeliveryNext,
    ) -> Result<(), StoreError>;
    /// A job's deliveries with their attempts.
    async fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryView>, StoreError>;
}

/// How long a queued job waits before its next try after `attempts` failed runs: 1 s, 2 s,
/// 4 s … capped at 60 s, with up to 25 % added at random so retries spread out.
pub fn backoff(attempts: u32) -> Duration {
    let base = 1000u64 << attempts.saturating_sub(1).min(6);
    let base = base.min(60_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base + jitter)
}

/// Open a store from a URL: `sqlite://PATH` (or a bare path) or `postgres://…`.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn JobStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresJobs::connect(url, 16).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(std::sync::Arc::new(
            SqliteJobs::open(std::path::Path::new(path)).await?,
        ))
    }
}
