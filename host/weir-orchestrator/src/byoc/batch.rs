//! BYOC batch jobs: `POST /process/request/{route}`, paid through [`PaidJob`], run by the
//! capability's worker (forwarded to `{url}/{route}`) or pipeline component.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use weir_protocol::byoc::{JobRequest, BYOC_MODEL, JOB_HEADER, LIVEPEER_BALANCE_HEADER};
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER};
use weir_protocol::AiHttpError;
use weir_runtime::{ParamValue, WorldKind};

use super::events::{events_body, JobDebits};
use super::{Backend, Offered};
use crate::handler::{err, AiBody};
use crate::paid::{Meter, Order, PaidJob, Payer, Quote};
use crate::Orchestrator;

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

/// `POST /process/request/{route}`: a batch job for a BYOC capability.
pub(crate) async fn process_request(
    State(o): State<Orchestrator>,
    UrlPath(route): UrlPath<String>,
    headers: HeaderMap,
    AiBody(body): AiBody,
) -> Response {
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
    let payer = Payer::for_account(payment, &job.capability, BYOC_MODEL, "job")?;
    // The whole timeout is held; the job is charged for the seconds it took.
    let units = job.timeout_seconds;
    let order = Order {
        what: &job.capability,
        model: BYOC_MODEL,
        units,
        id_prefix: "byoc",
    };
    let quote = Quote::Fixed(offered.quoted());
    let mut paid = PaidJob::open(o, payer, order, quote, || offered.slot()).await?;
    let started = Instant::now();
    let result = run_on_backend(o, &offered, &job, route, headers, body).await;
    let done = match result {
        Ok(done) if (200..300).contains(&done.status) => done,
        refused => {
            paid.release().await;
            return Err(refused.map_or_else(|e| e, refusal));
        }
    };
    let secs = started.elapsed().as_millis().div_ceil(1000).max(1) as u64;
    let charge = paid.charge_for(secs.min(units));
    let slot = paid.take_slot();
    let job_id = paid.id.clone();
    let (sender, account) = (
        paid.payer.payment.sender.clone(),
        paid.payer.account.clone(),
    );
    let balance = paid.settle(charge).await?;
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
                sender,
                account,
                offered: offered.clone(),
                started,
                meter: Meter {
                    ms: secs.saturating_mul(1000),
                    charged: charge,
                },
                max_ms: units.saturating_mul(1000),
                seq: 0,
                finished: false,
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

/// A worker's answer outside 2xx as the job's error (a 5xx is the worker's fault: 502).
fn refusal(done: Done) -> AiHttpError {
    err(
        if done.status >= 500 { 502 } else { done.status },
        format!(
            "the worker answered {}: {}",
            done.status,
            done.body.excerpt()
        ),
    )
}

/// Run `job` on `offered`'s worker or pipeline, within the job's `timeout_seconds`.
async fn run_on_backend(
    o: &Orchestrator,
    offered: &Offered,
    job: &JobRequest,
    route: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Done, AiHttpError> {
    let deadline = Duration::from_secs(job.timeout_seconds);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    match &offered.backend {
        Backend::Worker { url, token } => {
            forward(
                o,
                offered,
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
            run_pipeline(o, component, job, &content_type, body, deadline).await
        }
    }
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
    let request = weir_runtime::JobRequest::priced(
        &job.capability,
        BYOC_MODEL,
        weir_runtime::OutputSize::NONE,
        job.timeout_seconds,
        "",
    )
    .with(&job.id, &[("request", &job.request)]);
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
}
