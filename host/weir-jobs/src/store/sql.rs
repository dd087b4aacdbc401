//! The two SQL backends ([`SqliteJobs`], [`PostgresJobs`]): how each connects and migrates,
//! and the one `JobStore` implementation they share (generated per dialect by `sql_store!`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    AttemptView, Cancel, Completion, Delivery, DeliveryNext, DeliveryView, Inserted, Job, JobState,
    JobStore, Lease, Millis, NewDelivery, NewJob, StoreError,
};
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The queue in an embedded SQLite database (WAL; a committed job survives a process crash).
#[derive(Debug, Clone)]
pub struct SqliteJobs {
    pool: sqlx::SqlitePool,
}

impl SqliteJobs {
    /// Open (creating) the database at `path` and migrate it.
    pub async fn open(path: &std::path::Path) -> Result<SqliteJobs, StoreError> {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let db = |source| StoreError::Database {
            backend: "sqlite",
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "sqlite",
                source,
            })?;
        Ok(SqliteJobs { pool })
    }

    /// The pool (for benchmarks that compare against raw inserts).
    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }
}

/// The queue in PostgreSQL, shared by many gateways.
#[derive(Debug, Clone)]
pub struct PostgresJobs {
    pool: sqlx::PgPool,
}

impl PostgresJobs {
    /// Connect with up to `connections` and migrate (an advisory lock keeps concurrent
    /// gateways from migrating twice).
    pub async fn connect(url: &str, connections: u32) -> Result<PostgresJobs, StoreError> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| StoreError::Database {
                backend: "postgres",
                source,
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "postgres",
                source,
            })?;
        Ok(PostgresJobs { pool })
    }

    /// The pool (for benchmarks that compare against raw inserts).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

const JOB_COLUMNS: &str =
    "seq, id, tenant, model, params, webhook_url, priority, state, attempts, \
    max_attempts, timeout_ms, run_after, lease_owner, lease_until, progress, cancel_requested, \
    created_at, started_at, finished_at, result, error, charge, gpu_ms, output_units, \
    orchestrator, expires_at, idem_key, idem_hash";

/// The one `INSERT` of a job (shared with the benchmark's raw-insert reference).
pub const INSERT_JOB: &str = "INSERT INTO jobs (id, tenant, model, params, webhook_url, priority, \
    state, max_attempts, timeout_ms, run_after, created_at, idem_key, idem_hash) \
    VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $9, $10, $11)";

const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries \
    (id, job_id, event, url, payload, state, attempts, next_at, created_at) \
    VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)";

/// Implements [`JobStore`] for a backend; `$lock` is appended to the claim's row selection.
macro_rules! sql_store {
    ($ty:ty, $db:ty, $backend:literal, $lock:literal) => {
        impl $ty {
            fn err(source: sqlx::Error) -> StoreError {
                StoreError::Database {
                    backend: $backend,
                    source,
                }
            }

            async fn job_in<'e, E>(exec: E, id: &str) -> Result<Option<Job>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                sqlx::query_as::<_, Job>(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(exec)
                    .await
                    .map_err(Self::err)
            }

            async fn outbox(
                tx: &mut sqlx::Transaction<'_, $db>,
                job_id: &str,
                now: Millis,
                webhook: Option<NewDelivery>,
            ) -> Result<(), StoreError> {
                if let Some(d) = webhook {
                    sqlx::query(INSERT_DELIVERY)
                        .bind(&d.id)
                        .bind(job_id)
                        .bind(&d.event)
                        .bind(&d.url)
                        .bind(&d.payload)
                        .bind(now)
                        .execute(&mut **tx)
                        .await
                        .map_err(Self::err)?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl JobStore for $ty {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn insert(&self, job: NewJob, now: Millis) -> Result<Inserted, StoreError> {
                let params = job.params.to_string();
                let (key, hash) = job.idempotency.clone().unzip();
                let inserted = sqlx::query_as::<_, Job>(&format!("{INSERT_JOB} RETURNING {JOB_COLUMNS}"))
                    .bind(&job.id)
                    .bind(&job.tenant)
                    .bind(&job.model)
                    .bind(&params)
                    .bind(&job.webhook_url)
                    .bind(job.priority)
                    .bind(i64::from(job.max_attempts))
                    .bind(ms(job.timeout))
                    .bind(now)
                    .bind(&key)
                    .bind(&hash)
                    .fetch_one(&self.pool)
                    .await;
                match inserted {
                    Ok(stored) => Ok(Inserted::New(stored)),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() && key.is_some() => {
                        let (key, hash) = job.idempotency.unwrap_or_default();
                        let existing = self
                            .by_idempotency_key(&job.tenant, &key)
                            .await?
                            .ok_or_else(|| {
                            StoreError::Corrupt(format!("idempotency key `{key}` without its job"))
                        })?;
                        if existing.idem_hash.as_deref() == Some(hash.as_str()) {
                            Ok(Inserted::Existing(existing))
                        } else {
                            Err(StoreError::IdempotencyConflict {
                                key,
                                job_id: existing.id,
                            })
                        }
                    }
                    Err(e) => Err(Self::err(e)),
                }
            }

            async fn by_idempotency_key(
                &self,
                tenant: &str,
                key: &str,
            ) -> Result<Option<Job>, StoreError> {
                sqlx::query_as::<_, Job>(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND idem_key = $2"
                ))
                .bind(tenant)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn get(&self, tenant: Option<&str>, id: &str) -> Result<Option<Job>, StoreError> {
                let job = Self::job_in(&self.pool, id).await?;
                Ok(job.filter(|j| tenant.is_none_or(|t| j.tenant == t)))
            }

            async fn list(
                &self,
                tenant: &str,
                state: Option<JobState>,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<Job>, StoreError> {
                sqlx::query_as::<_, Job>(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 \
                     AND ($2 IS NULL OR state = $2) AND seq < $3 ORDER BY seq DESC LIMIT $4"
                ))
                .bind(tenant)
                .bind(state.map(JobState::as_str))
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn queue_position(&self, job: &Job) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'queued' \
                     AND (priority > $1 OR (priority = $1 AND seq < $2))",
                )
                .bind(job.priority)
                .bind(job.seq)
                .fetch_one(&self.pool)
                .await
                .map_err(Self::err)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn claim(
                &self,
                worker: &str,
                now: Millis,
                lease: Duration,
                tenant_limit: u32,
            ) -> Result<Option<Job>, StoreError> {
                sqlx::query_as::<_, Job>(&format!(
                    "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, \
                     attempts = attempts + 1, started_at = COALESCE(started_at, $3), progress = 0 \
                     WHERE seq = (SELECT q.seq FROM jobs q WHERE q.state = 'queued' \
                       AND q.run_after <= $3 \
                       AND (SELECT COUNT(*) FROM jobs r WHERE r.tenant = q.tenant \
                            AND r.state = 'running') < $4 \
                       ORDER BY q.priority DESC, q.seq ASC LIMIT 1 {lock}) \
                     AND state = 'queued' RETURNING {JOB_COLUMNS}",
                    lock = $lock
                ))
                .bind(worker)
                .bind(now.saturating_add(ms(lease)))
                .bind(now)
                .bind(i64::from(tenant_limit))
                .fetch_optional(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn heartbeat(
                &self,
                id: &str,
                worker: &str,
                now: Millis,
                lease: Duration,
                progress: u8,
            ) -> Result<Lease, StoreError> {
                let row: Option<i64> = sqlx::query_scalar(
                    "UPDATE jobs SET lease_until = $1, progress = $2 \
                     WHERE id = $3 AND state = 'running' AND lease_owner = $4 \
                     RETURNING cancel_requested",
                )
                .bind(now.saturating_add(ms(lease)))
                .bind(i64::from(progress.min(100)))
                .bind(id)
                .bind(worker)
                .fetch_optional(&self.pool)
                .await
                .map_err(Self::err)?;
                Ok(match row {
                    Some(c) => Lease::Held { cancel: c != 0 },
                    None => Lease::Lost,
                })
            }

            async fn reclaim_expired(&self, now: Millis) -> Result<Vec<String>, StoreError> {
                sqlx::query_scalar(
                    "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, \
                     run_after = $1, progress = 0 \
                     WHERE state = 'running' AND lease_until < $1 RETURNING id",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn complete(
                &self,
                id: &str,
                worker: &str,
                now: Millis,
                done: Completion,
                webhook: Option<NewDelivery>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(Self::err)?;
                let moved = sqlx::query(
                    "UPDATE jobs SET state = 'completed', finished_at = $1, result = $2, \
                     charge = $3, gpu_ms = $4, output_units = $5, orchestrator = $6, \
                     expires_at = $7, progress = 100, lease_owner = NULL, lease_until = NULL \
                     WHERE id = $8 AND state = 'running' AND lease_owner = $9",
                )
                .bind(now)
                .bind(done.result.to_string())
                .bind(clamp_i64(done.charge))
                .bind(clamp_i64(done.gpu_ms))
                .bind(clamp_i64(done.output_units))
                .bind(&done.orchestrator)
                .bind(done.expires_at)
                .bind(id)
                .bind(worker)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if moved == 0 {
                    return Ok(false);
                }
                Self::outbox(&mut tx, id, now, webhook).await?;
                tx.commit().await.map_err(Self::err)?;
                Ok(true)
            }

            async fn fail(
                &self,
                id: &str,
                worker: &str,
                now: Millis,
                error: &str,
                retry_at: Option<Millis>,
                webhook: Option<NewDelivery>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(Self::err)?;
                let moved = match retry_at {
                    Some(at) => sqlx::query(
                        "UPDATE jobs SET state = 'queued', run_after = $1, error = $2, \
                         lease_owner = NULL, lease_until = NULL, progress = 0 \
                         WHERE id = $3 AND state = 'running' AND lease_owner = $4",
                    )
                    .bind(at),
                    None => sqlx::query(
                        "UPDATE jobs SET state = 'failed', finished_at = $1, error = $2, \
                         lease_owner = NULL, lease_until = NULL \
                         WHERE id = $3 AND state = 'running' AND lease_owner = $4",
                    )
                    .bind(now),
                }
                .bind(error)
                .bind(id)
                .bind(worker)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if moved == 0 {
                    return Ok(false);
                }
                if retry_at.is_none() {
                    Self::outbox(&mut tx, id, now, webhook).await?;
                }
                tx.commit().await.map_err(Self::err)?;
                Ok(true)
            }

            async fn cancel(
                &self,
                tenant: &str,
                id: &str,
                now: Millis,
                webhook: Option<NewDelivery>,
            ) -> Result<Cancel, StoreError> {
                let mut tx = self.pool.begin().await.map_err(Self::err)?;
                let canceled = sqlx::query(
                    "UPDATE jobs SET state = 'canceled', finished_at = $1 \
                     WHERE id = $2 AND tenant = $3 AND state = 'queued'",
                )
                .bind(now)
                .bind(id)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if canceled > 0 {
                    Self::outbox(&mut tx, id, now, webhook).await?;
                    let job = Self::job_in(&mut *tx, id).await?;
                    tx.commit().await.map_err(Self::err)?;
                    return Ok(job.map_or(Cancel::NotFound, Cancel::Canceled));
                }
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = 1 \
                     WHERE id = $1 AND tenant = $2 AND state = 'running'",
                )
                .bind(id)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?;
                let job = Self::job_in(&mut *tx, id)
                    .await?
                    .filter(|j| j.tenant == tenant);
                tx.commit().await.map_err(Self::err)?;
                Ok(match job {
                    None => Cancel::NotFound,
                    Some(j) if j.state == "running" => Cancel::Requested(j),
                    Some(j) => Cancel::AlreadyFinal(j),
                })
            }

            async fn finish_canceled(
                &self,
                id: &str,
                worker: &str,
                now: Millis,
                webhook: Option<NewDelivery>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(Self::err)?;
                let moved = sqlx::query(
                    "UPDATE jobs SET state = 'canceled', finished_at = $1, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $2 AND state = 'running' AND lease_owner = $3",
                )
                .bind(now)
                .bind(id)
                .bind(worker)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if moved == 0 {
                    return Ok(false);
                }
                Self::outbox(&mut tx, id, now, webhook).await?;
                tx.commit().await.map_err(Self::err)?;
                Ok(true)
            }

            async fn counts(&self) -> Result<BTreeMap<JobState, u64>, StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(Self::err)?;
                let mut out: BTreeMap<JobState, u64> =
                    JobState::ALL.into_iter().map(|s| (s, 0)).collect();
                for (state, n) in rows {
                    let state: JobState = state.parse().map_err(StoreError::Corrupt)?;
                    out.insert(state, u64::try_from(n).unwrap_or(0));
                }
                Ok(out)
            }

            async fn expired_results(
                &self,
                now: Millis,
                limit: u32,
            ) -> Result<Vec<Job>, StoreError> {
                sqlx::query_as::<_, Job>(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'completed' \
                     AND result IS NOT NULL AND expires_at < $1 LIMIT $2"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn clear_result(&self, id: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE jobs SET result = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(Self::err)?;
                Ok(())
            }

            async fn due_deliveries(
                &self,
                now: Millis,
                lease: Duration,
                limit: u32,
            ) -> Result<Vec<Delivery>, StoreError> {
                sqlx::query_as::<_, Delivery>(&format!(
                    "UPDATE webhook_deliveries SET lease_until = $1 \
                     WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                       AND next_at <= $2 AND (lease_until IS NULL OR lease_until < $2) \
                       ORDER BY next_at LIMIT $3 {lock}) \
                     RETURNING id, job_id, event, url, payload, attempts",
                    lock = $lock
                ))
                .bind(now.saturating_add(ms(lease)))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)
            }

            async fn record_attempt(
                &self,
                delivery: &str,
                attempt: u32,
                at: Millis,
                status: Option<u16>,
                error: Option<&str>,
                duration_ms: u64,
                next: DeliveryNext,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(Self::err)?;
                let conflict = if $backend == "postgres" {
                    "ON CONFLICT DO NOTHING"
                } else {
                    ""
                };
                let or_ignore = if $backend == "sqlite" { "OR IGNORE" } else { "" };
                sqlx::query(&format!(
                    "INSERT {or_ignore} INTO webhook_attempts \
                     (delivery_id, attempt, at, status, error, duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) {conflict}"
                ))
                .bind(delivery)
                .bind(i64::from(attempt))
                .bind(at)
                .bind(status.map(i64::from))
                .bind(error)
                .bind(clamp_i64(duration_ms))
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?;
                let (state, next_at) = match next {
                    DeliveryNext::Delivered => ("delivered", at),
                    DeliveryNext::RetryAt(t) => ("pending", t),
                    DeliveryNext::Failed => ("failed", at),
                    DeliveryNext::Disabled => ("disabled", at),
                };
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = $1, next_at = $2, attempts = $3, \
                     lease_until = NULL WHERE id = $4",
                )
                .bind(state)
                .bind(next_at)
                .bind(i64::from(attempt))
                .bind(delivery)
                .execute(&mut *tx)
                .await
                .map_err(Self::err)?;
                tx.commit().await.map_err(Self::err)?;
                Ok(())
            }

            async fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryView>, StoreError> {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT id, event, state FROM webhook_deliveries WHERE job_id = $1 \
                     ORDER BY created_at, id",
                )
                .bind(job_id)
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)?;
                let mut out = Vec::with_capacity(rows.len());
                for (id, event, state) in rows {
                    let attempts = sqlx::query_as::<_, AttemptView>(
                        "SELECT attempt, at, status, error, duration_ms FROM webhook_attempts \
                         WHERE delivery_id = $1 ORDER BY attempt",
                    )
                    .bind(&id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Self::err)?;
                    out.push(DeliveryView {
                        id,
                        event,
                        state,
                        attempts,
                    });
                }
                Ok(out)
            }
        }
    };
}

sql_store!(SqliteJobs, sqlx::Sqlite, "sqlite", "");
sql_store!(
    PostgresJobs,
    sqlx::Postgres,
    "postgres",
    "FOR UPDATE SKIP LOCKED"
);
