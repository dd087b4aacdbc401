//! The jobs' workers: claiming queued jobs under a lease, running them through the AI API,
//! storing results, delivering webhooks, and the janitor.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;
use weir_jobs::catalog::Kind;
use weir_jobs::store::{
    self, now_ms, Completion, Delivery, DeliveryNext, Job, JobState, Lease, NewDelivery,
};
use weir_jobs::webhook::Outcome;

use super::{rfc3339, Jobs};
use crate::dispatch::message_of;
use crate::seams::Served;
use crate::storage::put_result;

use super::http::status_body;

/// How a supervised run ended.
enum Ended {
    /// It ran to this outcome.
    Ran(Result<Completion, RunError>),
    /// The client canceled it.
    Canceled,
}

impl Jobs {
    /// Start the workers, the webhook loop and the janitor.
    pub(crate) fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        if self.catalog.ids().next().is_none() {
            tracing::info!("no job models configured: the jobs API refuses submits");
        }
        let mut tasks = Vec::new();
        for n in 0..self.config.workers.max(1) {
            let jobs = Arc::clone(self);
            tasks.push(tokio::spawn(async move { jobs.work(n).await }));
        }
        let jobs = Arc::clone(self);
        tasks.push(tokio::spawn(async move { jobs.deliver_webhooks().await }));
        let jobs = Arc::clone(self);
        tasks.push(tokio::spawn(async move { jobs.janitor().await }));
        tasks
    }

    /// Worker `n`: claim a job, run it, and again; idle until woken or polled.
    async fn work(&self, n: u32) {
        let poll = Duration::from_millis(250 + u64::from(n) * 20);
        loop {
            let claimed = self
                .store
                .claim(
                    &self.worker,
                    now_ms(),
                    self.lease(),
                    self.config.tenant_concurrency.max(1),
                )
                .await;
            match claimed {
                Ok(Some(job)) => self.run_job(job).await,
                Ok(None) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
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
    async fn run_job(&self, job: Job) {
        let wait = (now_ms() - job.created_at).max(0) as f64 / 1000.0;
        self.metrics
            .wait
            .with_label_values(&[&job.model])
            .observe(wait);
        if job.attempts > job.max_attempts {
            let why = format!(
                "gave up after {} runs (the gateway running it stopped each time)",
                job.max_attempts
            );
            self.finish_failed(&job, &why).await;
            return;
        }
        if job.cancel_requested != 0 {
            self.finish_canceled(&job).await;
            return;
        }
        tracing::info!(job = %job.id, model = %job.model, attempt = job.attempts, "job started");
        let cancel = Arc::new(Notify::new());
        self.running.lock().insert(job.id.clone(), cancel.clone());
        let started = Instant::now();
        let ended = self.supervise(&job, &cancel).await;
        self.running.lock().remove(&job.id);
        // A lost lease leaves the job to the worker holding it now: nothing to record.
        let Some(ended) = ended else {
            return;
        };
        self.metrics
            .run
            .with_label_values(&[&job.model])
            .observe(started.elapsed().as_secs_f64());
        match ended {
            Ended::Canceled => self.finish_canceled(&job).await,
            Ended::Ran(Ok(done)) => self.finish_completed(&job, done, started).await,
            Ended::Ran(Err(RunError::Transient(why))) if job.attempts < job.max_attempts => {
                self.retry_later(&job, &why).await;
            }
            Ended::Ran(Err(RunError::Transient(why) | RunError::Permanent(why))) => {
                self.finish_failed(&job, &why).await;
            }
        }
    }

    /// Run `job` within its deadline, renewing its lease (with the progress made) a third of
    /// the way through each lease, until it ends or is canceled; `None` when its lease was
    /// lost to another worker.
    async fn supervise(&self, job: &Job, cancel: &Notify) -> Option<Ended> {
        let timeout = Duration::from_millis(u64::try_from(job.timeout_ms).unwrap_or(600_000));
        // What the next heartbeat reports: 10 once dispatched, 90 once the answer is in.
        let progress = AtomicU8::new(10);
        // Dropping the run (cancel) drops the request to the orchestrator, which stops the
        // work and frees its slot; the attempt's payment is taken back.
        let mut run = Box::pin(tokio::time::timeout(timeout, self.execute(job, &progress)));
        let beat = self.lease() / 3;
        loop {
            tokio::select! {
                r = &mut run => return Some(Ended::Ran(r.unwrap_or_else(|_| Err(RunError::Permanent(format!("the job ran past its {} s deadline", timeout.as_secs())))))),
                () = cancel.notified() => return Some(Ended::Canceled),
                () = tokio::time::sleep(beat) => {
                    let done = progress.load(Ordering::Relaxed);
                    match self.store.heartbeat(&job.id, &self.worker, now_ms(), self.lease(), done).await {
                        Ok(Lease::Held { cancel: false }) => {}
                        Ok(Lease::Held { cancel: true }) => return Some(Ended::Canceled),
                        Ok(Lease::Lost) => {
                            tracing::warn!(job = %job.id, "lease lost to another worker; stopping this run");
                            return None;
                        }
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                    }
                }
            }
        }
    }

    /// Record `job`'s completion (and its webhook), unless its lease was lost meanwhile.
    async fn finish_completed(&self, job: &Job, done: Completion, started: Instant) {
        let payload = self
            .event_payload(job, JobState::Completed, Some(&done), None)
            .await;
        let webhook = self.delivery(job, "job.completed", payload);
        match self
            .store
            .complete(&job.id, &self.worker, now_ms(), done, webhook)
            .await
        {
            Ok(true) => {
                self.metrics
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
        self.wake.notify_waiters();
    }

    /// Queue `job` again after a transient failure, after its attempt's backoff.
    async fn retry_later(&self, job: &Job, why: &str) {
        let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
        let retry_at =
            now_ms() + i64::try_from(store::backoff(attempts).as_millis()).unwrap_or(60_000);
        self.metrics
            .outcomes
            .with_label_values(&[&job.model, "retried"])
            .inc();
        tracing::warn!(job = %job.id, error = %why, attempt = job.attempts, "job run failed; retrying later");
        if let Err(e) = self
            .store
            .fail(&job.id, &self.worker, now_ms(), why, Some(retry_at), None)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording a retry failed");
        }
    }

    /// Record that `job` failed for good (and its webhook).
    async fn finish_failed(&self, job: &Job, why: &str) {
        let payload = self
            .event_payload(job, JobState::Failed, None, Some(why))
            .await;
        let webhook = self.delivery(job, "job.failed", payload);
        self.metrics
            .outcomes
            .with_label_values(&[&job.model, "failed"])
            .inc();
        tracing::warn!(job = %job.id, error = %why, "job failed");
        if let Err(e) = self
            .store
            .fail(&job.id, &self.worker, now_ms(), why, None, webhook)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording a failure failed");
        }
        self.wake.notify_waiters();
    }

    /// Record that `job` was canceled while running (and its webhook).
    async fn finish_canceled(&self, job: &Job) {
        let payload = self
            .event_payload(job, JobState::Canceled, None, None)
            .await;
        let webhook = self.delivery(job, "job.canceled", payload);
        self.metrics
            .outcomes
            .with_label_values(&[&job.model, "canceled"])
            .inc();
        tracing::info!(job = %job.id, "job canceled while running; its work was stopped");
        if let Err(e) = self
            .store
            .finish_canceled(&job.id, &self.worker, now_ms(), webhook)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording a cancel failed");
        }
        self.wake.notify_waiters();
    }

    /// The webhook delivery of `event` for `job`, when it has a webhook.
    pub(super) fn delivery(&self, job: &Job, event: &str, payload: Value) -> Option<NewDelivery> {
        job.webhook_url.as_ref().map(|url| NewDelivery {
            id: format!("msg_{:032x}", rand::random::<u128>()),
            event: event.to_owned(),
            url: url.clone(),
            payload: payload.to_string(),
        })
    }

    /// The webhook body of an event: `{type, timestamp, data}` with `data` the job's status.
    pub(super) async fn event_payload(
        &self,
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
        let data = status_body(self, &j, None).await;
        json!({
            "type": format!("job.{}", state.as_str()),
            "timestamp": rfc3339(now),
            "data": data,
        })
    }

    /// One run: build the AI request from the stored parameters and inputs, dispatch it like a
    /// synchronous request (selection, payment, retries), store the output.
    async fn execute(&self, job: &Job, progress: &AtomicU8) -> Result<Completion, RunError> {
        let Some((spec, kind)) = self.catalog.get(&job.model) else {
            return Err(RunError::Permanent(format!(
                "model `{}` is no longer configured",
                job.model
            )));
        };
        let params = job
            .params()
            .map_err(|e| RunError::Permanent(e.to_string()))?;
        let capability =
            weir_protocol::Capability::from_id(kind.capability()).ok_or_else(|| {
                RunError::Permanent(format!("capability `{}` unknown", kind.capability()))
            })?;
        let request = self.ai_request(capability, spec, kind, &params).await?;
        let started = Instant::now();
        let served = self.ai.serve(request).await.map_err(|e| {
            let msg = message_of(&e);
            if e.status >= 500 || e.status == 429 || e.status == 408 {
                RunError::Transient(msg)
            } else {
                RunError::Permanent(msg)
            }
        })?;
        let gpu_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        progress.store(90, Ordering::Relaxed);
        let result = self.job_result(kind, &served).await?;
        let ttl =
            i64::try_from(self.config.result_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(Completion {
            result,
            charge: served.charge,
            gpu_ms,
            output_units: served.units,
            orchestrator: served.orchestrator,
            expires_at: now_ms().saturating_add(ttl),
        })
    }

    /// The job's result: the output the AI API stored (under `results/…`) with its facts.
    async fn job_result(&self, kind: Kind, served: &Served) -> Result<Value, RunError> {
        let body = &served.body;
        let shape =
            |what: &str| RunError::Transient(format!("the orchestrator's answer has no {what}"));
        let (key, content_type, data) = if kind == Kind::AudioToText {
            let text = body.get("text").ok_or_else(|| shape("text"))?;
            let data = serde_json::to_vec(
                &json!({"text": text, "chunks": body.get("chunks").cloned().unwrap_or(json!([]))}),
            )
            .map_err(|e| RunError::Permanent(e.to_string()))?;
            let stored = put_result(&self.storage, "application/json", Bytes::from(data))
                .await
                .map_err(|e| RunError::Transient(format!("storing the result: {e}")))?;
            (stored.key, stored.content_type, stored.data)
        } else {
            let stored = served.results.first().ok_or_else(|| shape("image"))?;
            (
                stored.key.clone(),
                stored.content_type.clone(),
                stored.data.clone(),
            )
        };
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

    /// Send due webhooks, 16 at a time, and record each attempt.
    async fn deliver_webhooks(&self) {
        let lease = Duration::from_secs(self.config.webhook_timeout_secs.max(1) * 2 + 5);
        loop {
            let due = match self.store.due_deliveries(now_ms(), lease, 16).await {
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
            let sends = due.into_iter().map(|d| self.deliver(d));
            futures_util::future::join_all(sends).await;
        }
    }

    /// Send one due webhook and record the attempt and what comes next.
    async fn deliver(&self, d: Delivery) {
        let attempt = u32::try_from(d.attempts).unwrap_or(0) + 1;
        let started = Instant::now();
        let outcome = self
            .webhooks
            .send(&d.url, &self.secret, &d.id, d.payload.as_bytes())
            .await;
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        let at = now_ms();
        let (status, error, next) = match &outcome {
            Outcome::Delivered { status } => (Some(*status), None, DeliveryNext::Delivered),
            Outcome::Disabled { status } => (
                Some(*status),
                Some("endpoint answered 410 Gone: disabled".to_owned()),
                DeliveryNext::Disabled,
            ),
            Outcome::Failed {
                status,
                error,
                retry_after,
            } => {
                let next = match self.schedule.next_delay(attempt, *retry_after) {
                    Some(d) => DeliveryNext::RetryAt(
                        at + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2),
                    ),
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
        self.metrics.webhooks.with_label_values(&[label]).inc();
        if next != DeliveryNext::Delivered {
            tracing::warn!(webhook = %d.id, job = %d.job_id, attempt, ?status, error = error.as_deref().unwrap_or(""), outcome = label, "webhook not delivered");
        }
        if let Err(e) = self
            .store
            .record_attempt(&d.id, attempt, at, status, error.as_deref(), took, next)
            .await
        {
            tracing::error!(webhook = %d.id, error = %e, "recording a webhook attempt failed");
        }
    }

    /// Reclaim jobs of crashed gateways, delete expired results, refresh the queue gauges.
    async fn janitor(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            match self.store.reclaim_expired(now_ms()).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(
                        jobs = ids.len(),
                        "requeued jobs whose worker stopped renewing its lease"
                    );
                    self.wake.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reclaiming jobs failed"),
            }
            if let Ok(expired) = self.store.expired_results(now_ms(), 100).await {
                for job in expired {
                    let keys = result_keys(&job);
                    let mut ok = true;
                    for key in keys {
                        if let Err(e) = self.storage.delete(&key).await {
                            tracing::warn!(job = %job.id, %key, error = %e, "deleting an expired object failed");
                            ok = false;
                        }
                    }
                    if ok {
                        let _ = self.store.clear_result(&job.id).await;
                    }
                }
            }
            if let Ok(counts) = self.store.counts().await {
                for (state, n) in counts {
                    self.metrics
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
pub(super) enum RunError {
    /// Worth another run later (no orchestrator free, a 5xx, a timeout).
    Transient(String),
    /// Running it again would fail the same way.
    Permanent(String),
}
