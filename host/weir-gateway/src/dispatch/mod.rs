//! The one shared path every call to an orchestrator takes, in named phases in the manner of
//! Pingora's `ProxyHttp`: **select** candidates ([`Dispatcher::choose`]: discovery, the max
//! price, the router component) → **pay** (reserve in the ledger, sign what the balance
//! lacks) → **send** (the feature's request with the payment) → **accept** (the feature reads
//! the answer) and **settle** → **retry** the next candidate or give up ([`Dispatcher::run`]).
//!
//! A feature describes its kind of call (an AI request, a segment, a BYOC request) with the
//! small [`Call`] trait; the [`Dispatcher`] owns everything the phases share: discovery, the
//! router component, payments, the HTTP client and the attempt metrics. Features depend on
//! this module, never on each other.

mod attempt;
pub(crate) mod busy;
mod refusal;
mod retry;
mod select;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use prometheus::{IntCounterVec, Opts};
use weir_payments::UnitPrice;
use weir_protocol::AiHttpError;
use weir_runtime::Registry;

use crate::config::GatewayConfig;
use crate::discovery::Discovery;
use crate::payments::{GatewayPayments, Pending};

pub(crate) use retry::Dispatched;

/// Header naming the orchestrator that served a request.
pub const ORCHESTRATOR_HEADER: &str = "weir-orchestrator";
/// Cap on one orchestrator answer.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// One orchestrator to try, with the terms it advertised.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// Its URL.
    pub url: String,
    /// The model the call runs.
    pub model: String,
    /// Its price for the model.
    pub price: UnitPrice,
    /// Whether it has the model loaded.
    pub warm: bool,
}

/// A successful answer's body and its content type.
pub(crate) struct Answer {
    /// The answer's content type.
    pub content_type: String,
    /// The answer.
    pub body: Bytes,
    /// The sender's balance the orchestrator reported.
    pub balance: Option<u64>,
}

/// How one attempt with one orchestrator ended.
pub(crate) enum Attempt<T = serde_json::Value> {
    /// Served, at this charge.
    Done {
        /// What the call's [`Call::accept`] made of the answer.
        body: T,
        /// What the gateway paid.
        charge: u64,
        /// What the attempt's payment credited (the part of the cost the balance lacked).
        paid: u64,
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

/// What a call does with a successful answer before it is read (see [`Call::take_streaming`]).
pub(crate) enum Streaming<T> {
    /// The call took the answer as it comes: served.
    Taken(T),
    /// Read the answer whole and [`Call::accept`] it.
    Whole(reqwest::Response),
}

/// One kind of call a feature sends through the dispatcher: what it costs, what request it
/// sends (the **send** phase) and how it reads a successful answer (the **accept** phase).
/// Paying, settling, classifying failures and retrying are the dispatcher's.
pub(crate) trait Call: Sync {
    /// What an accepted answer becomes.
    type Output: Send;

    /// The capability the call is paid and recorded under.
    fn capability(&self) -> &str;

    /// The units the call is priced by.
    fn units(&self) -> u64;

    /// How long one attempt may take.
    fn timeout(&self) -> Duration;

    /// The request to send to `choice`; the dispatcher adds the payment and the timeout.
    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder;

    /// A successful answer this call takes as it comes instead of reading it whole (an event
    /// stream): [`Streaming::Taken`] ends the attempt served, its payment left to the output
    /// to settle (`pending`, `started`); [`Streaming::Whole`] hands the response back to be
    /// read and accepted. By default every answer is read whole.
    fn take_streaming(
        &self,
        _choice: &Choice,
        _pending: &Pending,
        response: reqwest::Response,
        _started: Instant,
    ) -> Streaming<Self::Output> {
        Streaming::Whole(response)
    }

    /// What the gateway records as charged for an accepted answer whose orchestrator reported
    /// `reported` (`None`: the agreed cost is recorded). By default what it reported; a call
    /// that pays ahead (a stream start) is charged nothing, its payment left as balance.
    fn charge(&self, reported: Option<u64>) -> Option<u64> {
        reported
    }

    /// Turn a whole successful answer into the output, or refuse it with the reason (the
    /// payment is then taken back and the next orchestrator tried).
    fn accept(&self, answer: Answer) -> impl Future<Output = Result<Self::Output, String>> + Send;
}

/// Counters of the shared path.
struct DispatchMetrics {
    attempts: IntCounterVec,
    router_failures: IntCounterVec,
}

/// The shared path: discovery, max prices, the router component, payments, the HTTP client
/// and the attempt metrics.
pub(crate) struct Dispatcher {
    config: Arc<GatewayConfig>,
    registry: Arc<Registry>,
    discovery: Arc<Discovery>,
    payments: Arc<GatewayPayments>,
    client: reqwest::Client,
    metrics: DispatchMetrics,
}

impl Dispatcher {
    /// A dispatcher for the gateway configured by `config`, registering its counters in
    /// `metrics`.
    pub(crate) fn new(
        config: Arc<GatewayConfig>,
        registry: Arc<Registry>,
        discovery: Arc<Discovery>,
        payments: GatewayPayments,
        client: reqwest::Client,
        metrics: &prometheus::Registry,
    ) -> Result<Dispatcher, prometheus::Error> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "weir_gateway_attempts_total",
                "Orchestrator attempts by outcome",
            ),
            &["orchestrator", "outcome"],
        )?;
        let router_failures = IntCounterVec::new(
            Opts::new(
                "weir_gateway_router_failures_total",
                "Router component failures (the gateway fell back to price order)",
            ),
            &["component"],
        )?;
        for c in [&attempts, &router_failures] {
            metrics.register(Box::new(c.clone()))?;
        }
        Ok(Dispatcher {
            config,
            registry,
            discovery,
            payments: Arc::new(payments),
            client,
            metrics: DispatchMetrics {
                attempts,
                router_failures,
            },
        })
    }

    /// Orchestrator discovery.
    pub(crate) fn discovery(&self) -> &Arc<Discovery> {
        &self.discovery
    }

    /// The gateway's payments (ledger and wallet).
    pub(crate) fn payments(&self) -> &Arc<GatewayPayments> {
        &self.payments
    }

    /// The HTTP client orchestrators are called with.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Leave `url` out of selection for the configured while, because of `why`.
    pub(crate) fn suspend(&self, url: &str, why: &str) {
        self.discovery.suspend(url, self.config.suspend_for, why);
    }
}

/// An error answer with `status` and `msg`.
pub(crate) fn err(status: u16, msg: impl Into<String>) -> AiHttpError {
    AiHttpError::new(status, msg)
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

/// An answer's whole body, at most [`MAX_ANSWER_BYTES`]. An answer that arrives in one chunk
/// is passed on without a copy.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, String> {
    let mut first: Option<Bytes> = None;
    let mut out: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        let held = first.as_ref().map_or(0, Bytes::len) + out.len();
        if held + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        match first.take() {
            None if out.is_empty() => first = Some(chunk),
            None => out.extend_from_slice(&chunk),
            Some(head) => {
                out.reserve(head.len() + chunk.len());
                out.extend_from_slice(&head);
                out.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(out)))
}
