//! Bring-your-own-compute batch jobs on the gateway: `POST /process/request/{route}` with the
//! `Livepeer` job header goes to an orchestrator offering the capability (chosen, paid and
//! retried like an AI request), which forwards it to its worker. The job's `timeout_seconds`
//! is paid up front at the capability's per-second price; the orchestrator charges the seconds
//! used and the rest stays as balance for the next job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use weir_protocol::byoc::{JobRequest, JOB_HEADER, LIVEPEER_BALANCE_HEADER};
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER};
use weir_protocol::{AiBody, AiHttpError};

use crate::dispatch::{
    Answer, Call, Choice, Dispatched, Dispatcher, Streaming, ORCHESTRATOR_HEADER,
};
use crate::payments::{GatewayPayments, Pending};

/// One BYOC request as the dispatcher sends it: the client's body to the orchestrator's
/// `/process/request/{route}` with the job header; an event-stream answer is relayed as it
/// comes and paid for the time it ran once it ends.
struct ByocCall<'a> {
    payments: &'a Arc<GatewayPayments>,
    capability: &'a str,
    route: &'a str,
    content_type: &'a str,
    job_header: &'a str,
    body: &'a Bytes,
    units: u64,
    timeout: Duration,
}

impl Call for ByocCall<'_> {
    type Output = Reply;

    fn capability(&self) -> &str {
        self.capability
    }

    fn units(&self) -> u64 {
        self.units
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/process/request/{}", choice.url, self.route))
            .header(header::CONTENT_TYPE, self.content_type)
            .header(JOB_HEADER, self.job_header)
            .body(self.body.clone())
    }

    fn take_streaming(
        &self,
        _choice: &Choice,
        pending: &Pending,
        response: reqwest::Response,
        started: Instant,
    ) -> Streaming<Reply> {
        if !is_event_stream(response.headers()) {
            return Streaming::Whole(response);
        }
        // Relayed as it comes; paid for the time it ran once it ends.
        let balance = number(response.headers(), BALANCE_HEADER);
        Streaming::Taken(Reply::Events(Box::new(Events {
            balance,
            response,
            settlement: Settlement {
                payments: self.payments.clone(),
                pending: pending.clone(),
                started,
                done: false,
            },
        })))
    }

    async fn accept(&self, answer: Answer) -> Result<Reply, String> {
        Ok(Reply::Whole(answer))
    }
}

/// The BYOC batch service: `POST /process/request/{route}` sent through the shared
/// dispatcher (which also holds the payments).
pub(crate) struct Byoc {
    /// The shared select → pay → send → accept → retry path.
    dispatcher: Arc<Dispatcher>,
}

impl Byoc {
    /// The BYOC service, sending its jobs through `dispatcher`.
    pub(crate) fn new(dispatcher: Arc<Dispatcher>) -> Arc<Byoc> {
        Arc::new(Byoc { dispatcher })
    }

    /// The BYOC batch route, `POST /process/request/{route}`, with the service as its state.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/process/request/{*route}", post(process_request))
            .with_state(Arc::clone(self))
    }

    /// Run one BYOC job: chosen, paid and retried by the dispatcher, answered whole or as
    /// relayed events.
    async fn run(
        &self,
        route: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, AiHttpError> {
        let dispatcher = &self.dispatcher;
        let mut job = JobRequest::from_headers(headers)?;
        job.sender = dispatcher.payments().sender();
        let units = job.timeout_seconds;
        let queue = dispatcher.choose_for_job(&job, units).await?;
        let content_type = content_type_of(headers);
        let job_header = job.to_header();
        let call = ByocCall {
            payments: dispatcher.payments(),
            capability: job.capability.as_str(),
            route,
            content_type: &content_type,
            job_header: &job_header,
            body: &body,
            units,
            timeout: Duration::from_secs(job.timeout_seconds) + Duration::from_secs(2),
        };
        let dispatched = dispatcher.run(&request_id(&job), queue, &call).await?;
        Ok(respond(call.capability, route, dispatched))
    }
}

/// `POST /process/request/{route}`.
async fn process_request(
    State(byoc): State<Arc<Byoc>>,
    UrlPath(route): UrlPath<String>,
    headers: HeaderMap,
    AiBody(body): AiBody,
) -> Response {
    match byoc.run(&route, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The client's content type, passed on to the orchestrator.
fn content_type_of(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// The job's own id, or a fresh one when the client gave none.
fn request_id(job: &JobRequest) -> String {
    if job.id.is_empty() {
        format!("byoc-{:016x}", rand::random::<u64>())
    } else {
        job.id.clone()
    }
}

/// The client's response to a dispatched job: the whole answer with its charge, or the
/// orchestrator's events relayed as they come; with the [answer's headers](add_answer_headers).
fn respond(cap: &str, route: &str, dispatched: Dispatched<Reply>) -> Response {
    let Dispatched {
        choice,
        output: reply,
        charge,
        attempts: tried,
        ..
    } = dispatched;
    let (mut response, content_type, balance) = match reply {
        Reply::Whole(answer) => {
            tracing::info!(capability = %cap, route, orchestrator = %choice.url, charge, attempts = tried, "BYOC job served");
            let mut r = (StatusCode::OK, answer.body).into_response();
            r.headers_mut()
                .insert(CHARGE_HEADER, HeaderValue::from(charge));
            (r, answer.content_type, answer.balance)
        }
        Reply::Events(events) => {
            let Events {
                balance,
                response,
                settlement,
            } = *events;
            tracing::info!(capability = %cap, route, orchestrator = %choice.url, attempts = tried, "BYOC job streaming events");
            let body = relay_events(response, settlement);
            (
                (StatusCode::OK, body).into_response(),
                "text/event-stream".to_owned(),
                balance,
            )
        }
    };
    add_answer_headers(response.headers_mut(), &content_type, balance, &choice.url);
    response
}

/// The headers every BYOC answer carries: its content type, the balance the orchestrator
/// reported (in both header spellings) and the orchestrator that served it.
fn add_answer_headers(
    h: &mut HeaderMap,
    content_type: &str,
    balance: Option<u64>,
    orchestrator: &str,
) {
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(b) = balance {
        h.insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(b));
        h.insert(BALANCE_HEADER, HeaderValue::from(b));
    }
    if let Ok(v) = HeaderValue::from_str(orchestrator) {
        h.insert(ORCHESTRATOR_HEADER, v);
    }
}

/// What an orchestrator answered a BYOC job.
enum Reply {
    /// A whole answer, already settled.
    Whole(Answer),
    /// Server-sent events still coming; settled when they end.
    Events(Box<Events>),
}

/// An answer of server-sent events as it starts.
struct Events {
    /// The balance the orchestrator reported as it started.
    balance: Option<u64>,
    response: reqwest::Response,
    settlement: Settlement,
}

fn is_event_stream(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn number(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// The payment of a streamed answer, settled once it ends (or the client goes away) for the
/// seconds it ran: the orchestrator debits the same time from the balance as the stream runs.
struct Settlement {
    payments: Arc<GatewayPayments>,
    pending: Pending,
    started: Instant,
    done: bool,
}

impl Settlement {
    /// The agreed cost of the seconds used so far.
    fn charge(&self) -> u64 {
        prorated(
            self.pending.cost,
            self.pending.units,
            self.started.elapsed(),
        )
    }

    fn finish(&mut self, why: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let charge = self.charge();
        let (payments, pending) = (self.payments.clone(), self.pending.clone());
        tokio::spawn(async move {
            match payments.settle(&pending, Some(charge), None).await {
                Ok(s) => {
                    tracing::info!(capability = %pending.capability, orchestrator = %pending.orchestrator, charge = s.charge, why, "BYOC job served (events)")
                }
                Err(e) => {
                    tracing::error!(job = %pending.job_id, error = %e, "could not settle a streamed answer")
                }
            }
        });
    }
}

/// The share of `cost` (agreed for `units` seconds) that `elapsed` used: whole seconds, at
/// least one, never more than `cost`.
fn prorated(cost: u64, units: u64, elapsed: Duration) -> u64 {
    let units = units.max(1);
    let secs = u64::try_from(elapsed.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .clamp(1, units);
    let charge = (u128::from(cost) * u128::from(secs)).div_ceil(u128::from(units));
    u64::try_from(charge).unwrap_or(cost).min(cost)
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.finish("the client went away");
    }
}

/// The orchestrator's event stream passed through to the client as it arrives.
fn relay_events(response: reqwest::Response, settlement: Settlement) -> axum::body::Body {
    let stream = futures_util::stream::unfold(
        (Some(response), settlement),
        |(response, mut settlement)| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    Some((Ok::<_, std::io::Error>(bytes), (Some(response), settlement)))
                }
                Ok(None) => {
                    settlement.finish("the stream ended");
                    None
                }
                Err(e) => {
                    settlement.finish("the orchestrator's stream broke");
                    let data = serde_json::json!({ "error": format!("the orchestrator's stream broke: {e}") });
                    Some((
                        Ok(Bytes::from(format!("event: error\ndata: {data}\n\n"))),
                        (None, settlement),
                    ))
                }
            }
        },
    );
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_answers_are_charged_by_the_whole_seconds_they_ran() {
        // 30 s were priced at 150: 5 per second.
        assert_eq!(prorated(150, 30, Duration::from_millis(0)), 5);
        assert_eq!(prorated(150, 30, Duration::from_millis(1_000)), 5);
        assert_eq!(prorated(150, 30, Duration::from_millis(1_001)), 10);
        assert_eq!(prorated(150, 30, Duration::from_secs(12)), 60);
        // Never more than agreed, however long it ran.
        assert_eq!(prorated(150, 30, Duration::from_secs(3_600)), 150);
        // Uneven prices round up, and a zero-second job is one second.
        assert_eq!(prorated(10, 3, Duration::from_millis(500)), 4);
        assert_eq!(prorated(10, 0, Duration::from_secs(5)), 10);
        assert_eq!(
            prorated(u64::MAX, 2, Duration::from_secs(1)),
            u64::MAX / 2 + 1
        );
    }
}
