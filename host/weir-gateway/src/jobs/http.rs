//! The jobs API's routes: submit, list, status, cancel, events and stored objects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use weir_jobs::catalog::Validated;
use weir_jobs::store::{now_ms, Cancel, Inserted, Job, JobState, NewJob, StoreError};

use super::{
    api_status, boxed_problem, invalid, problem, read_submission, request_hash, rfc3339, sniff,
    store_failure, tenant_of, Jobs, Submission,
};

/// A job as the API shows it. `position` is computed for queued jobs when `None`.
pub(super) async fn status_body(jobs: &Jobs, job: &Job, position: Option<u64>) -> Value {
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

/// Where the client finds job `id`.
fn location(jobs: &Jobs, id: &str) -> String {
    format!(
        "{}/api/v1/generate/{id}",
        jobs.public_url.trim_end_matches('/')
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

impl Jobs {
    /// The jobs API's routes: submit and list, status, cancel and events of one job.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/api/v1/generate", post(submit).get(list))
            .route("/api/v1/generate/{job}", get(status))
            .route("/api/v1/generate/{job}/cancel", post(cancel))
            .route("/api/v1/generate/{job}/events", get(events))
            .with_state(Arc::clone(self))
    }

    /// The jobs' public routes: `/objects/{key}`, the stored outputs.
    pub(crate) fn public_routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/objects/{*key}", get(object))
            .with_state(Arc::clone(self))
    }
}

/// `POST /api/v1/generate`.
async fn submit(State(jobs): State<Arc<Jobs>>, headers: HeaderMap, body: Bytes) -> Response {
    match submit_job(&jobs, &headers, &body).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

/// A submit: admitted, read, validated, checked against an earlier use of its idempotency
/// key, its inputs stored and the job queued; answered `202` (or with the outcome, when the
/// client prefers to wait). `Err` is an answer given at once: a refusal, or a replay.
async fn submit_job(
    jobs: &Jobs,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Box<Response>> {
    let tenant = tenant_of(headers);
    if !jobs.admit(&tenant) {
        return Err(Box::new(rate_limited(jobs.config.submit_rate)));
    }
    let submission = read_submission(headers, body, jobs.egress.policy().max_bytes)?;
    let validated = validate(jobs, &submission)?;
    let key = idempotency_key(headers)?;
    let hash = request_hash(&validated, &submission.uploads);
    if let Some(k) = &key {
        replay(jobs, &tenant, k, &hash).await?;
    }
    let idempotency = key.map(|k| (k, hash));
    let job = enqueue(jobs, tenant, &validated, &submission.uploads, idempotency).await?;
    if let Some(wait) = prefer_wait(headers) {
        if let Some(done) = wait_for_outcome(jobs, &job, wait).await {
            return Ok(done);
        }
    }
    Ok(accepted(jobs, &job, false).await)
}

/// `429`: the tenant made more than `limit` submits this second.
fn rate_limited(limit: u32) -> Response {
    let mut r = problem(
        429,
        "rate_limited",
        format!("more than {limit} submits per second"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The submission checked against its model's schema.
fn validate(jobs: &Jobs, submission: &Submission) -> Result<Validated, Box<Response>> {
    let upload_parts: Vec<&str> = submission
        .uploads
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    jobs.catalog
        .validate(&submission.fields, &upload_parts)
        .map_err(|errors| Box::new(invalid(errors)))
}

/// A submit whose idempotency key `key` was used before is answered at once, before
/// anything is fetched (the store decides for good when the job is inserted): the same
/// request is replayed, a different one refused.
async fn replay(jobs: &Jobs, tenant: &str, key: &str, hash: &str) -> Result<(), Box<Response>> {
    match jobs.store.by_idempotency_key(tenant, key).await {
        Ok(Some(existing)) if existing.idem_hash.as_deref() == Some(hash) => {
            Err(Box::new(accepted(jobs, &existing, true).await))
        }
        Ok(Some(existing)) => Err(Box::new(idempotency_conflict(key, &existing.id))),
        Ok(None) => Ok(()),
        Err(e) => Err(Box::new(store_failure(e))),
    }
}

/// `409`: idempotency key `key` was already used with a different request, by job `job_id`.
fn idempotency_conflict(key: &str, job_id: &str) -> Response {
    problem(
        409,
        "idempotency_conflict",
        format!("Idempotency-Key `{key}` was already used with a different request (job {job_id})"),
    )
}

/// Store the inputs of a new job and queue it; a job the store already holds under the same
/// idempotency key is replayed instead (as `Err`).
async fn enqueue(
    jobs: &Jobs,
    tenant: String,
    validated: &Validated,
    uploads: &[(String, String, Bytes)],
    idempotency: Option<(String, String)>,
) -> Result<Job, Box<Response>> {
    let id = format!("job_{:032x}", rand::random::<u128>());
    let inputs = store_inputs(jobs, &id, validated, uploads).await?;
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
        idempotency,
    };
    match jobs.store.insert(new, now_ms()).await {
        Ok(Inserted::New(j)) => {
            tracing::info!(job = %j.id, model = %j.model, tenant = %j.tenant, "job queued");
            jobs.wake.notify_one();
            Ok(j)
        }
        Ok(Inserted::Existing(j)) => Err(Box::new(accepted(jobs, &j, true).await)),
        Err(StoreError::IdempotencyConflict { key, job_id }) => {
            Err(Box::new(idempotency_conflict(&key, &job_id)))
        }
        Err(e) => Err(Box::new(store_failure(e))),
    }
}
/// The `Idempotency-Key` header, when sent: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
        Some(_) => Err(boxed_problem(
            400,
            "bad_idempotency_key",
            "Idempotency-Key must be 1–255 visible ASCII characters",
        )),
    }
}

/// Fetch (or take from the upload) and store the inputs of job `id` now, so a job never
/// depends on a URL that may change or vanish before it runs: input part → stored key.
async fn store_inputs(
    jobs: &Jobs,
    id: &str,
    validated: &Validated,
    uploads: &[(String, String, Bytes)],
) -> Result<Map<String, Value>, Box<Response>> {
    let mut inputs = Map::new();
    for (param, part, url) in validated.inputs() {
        let (content_type, data) = match url {
            Some(url) => match jobs.egress.fetch(&url).await {
                Ok(f) => (f.content_type.unwrap_or_default(), f.data),
                Err(e) => {
                    return Err(boxed_problem(
                        e.http_status(),
                        "input_unavailable",
                        format!("{param}: {e}"),
                    ))
                }
            },
            None => match uploads.iter().find(|(n, _, _)| n == part) {
                Some((_, ct, data)) => (ct.clone(), data.clone()),
                None => continue,
            },
        };
        let Some(content_type) = sniff(part, &content_type, &data) else {
            return Err(boxed_problem(
                415,
                "unsupported_input",
                format!("{param}: not a supported {part} file"),
            ));
        };
        let key = format!("inputs/{id}/{part}");
        if let Err(e) = jobs.storage.put(&key, &content_type, data).await {
            tracing::error!(error = %e, "storing an input failed");
            return Err(boxed_problem(
                503,
                "storage_unavailable",
                format!("storing the input failed: {e}"),
            ));
        }
        inputs.insert(part.to_owned(), Value::String(key));
    }
    Ok(inputs)
}

/// With `Prefer: wait`, the job's outcome once it is final within `wait` seconds (at most
/// `max_wait_secs`); `None` when it is still running.
async fn wait_for_outcome(jobs: &Jobs, job: &Job, wait: u64) -> Option<Response> {
    let deadline = Instant::now() + Duration::from_secs(wait.min(jobs.config.max_wait_secs));
    while Instant::now() < deadline {
        tokio::select! {
            () = jobs.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        match jobs.store.get(None, &job.id).await {
            Ok(Some(j)) if j.state().is_ok_and(JobState::is_final) => {
                let body = with_webhooks(jobs, &j, status_body(jobs, &j, None).await).await;
                let mut r = (StatusCode::OK, Json(body)).into_response();
                r.headers_mut()
                    .insert("preference-applied", HeaderValue::from_static("wait"));
                return Some(r);
            }
            Ok(_) => {}
            Err(e) => return Some(store_failure(e)),
        }
    }
    None
}

/// `202` with the job's id, status and `Location`.
async fn accepted(jobs: &Jobs, job: &Job, replay: bool) -> Response {
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
    if let Ok(v) = HeaderValue::from_str(&location(jobs, &job.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if replay {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// `GET /api/v1/generate/{jobId}`.
async fn status(
    State(jobs): State<Arc<Jobs>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
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
async fn cancel(
    State(jobs): State<Arc<Jobs>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let tenant = tenant_of(&headers);
    let job = match jobs.store.get(Some(&tenant), &id).await {
        Ok(Some(j)) => j,
        Ok(None) => return problem(404, "not_found", format!("no job `{id}`")),
        Err(e) => return store_failure(e),
    };
    let payload = jobs
        .event_payload(&job, JobState::Canceled, None, None)
        .await;
    let webhook = jobs.delivery(&job, "job.canceled", payload);
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
async fn list(
    State(jobs): State<Arc<Jobs>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
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
async fn events(
    State(jobs): State<Arc<Jobs>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
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
async fn object(
    State(jobs): State<Arc<Jobs>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    match jobs
        .storage
        .read_link(&key, q.expires, q.sig.as_deref())
        .await
    {
        Ok(o) => ([(header::CONTENT_TYPE, o.content_type)], o.data).into_response(),
        Err(e) => problem(e.status(), e.code(), e.to_string()),
    }
}
