//! The AI API: `POST /{capability}` runs one request on an orchestrator through the
//! dispatcher; media in the answer are put in the object store and served from
//! `/results/{name}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use base64::Engine as _;
use prometheus::{IntCounterVec, Opts};
use weir_protocol::ai::{AudioResponse, ImageResponse, LlmChoice, LlmResponse};
use weir_protocol::body::{parse_request, ParsedRequest, WireBody};
use weir_protocol::info::{CHARGE_HEADER, MODEL_HEADER};
use weir_protocol::{AiHttpError, Capability};
use weir_storage::Storage;

use crate::config::GatewayConfig;
use crate::dispatch::{
    err, read_capped, Answer, Call, Choice, Dispatched, Dispatcher, ORCHESTRATOR_HEADER,
};
use crate::seams::{AiRequests, BoxFut, Served};
use crate::storage::{put_result, result_key, StoredResult};

/// The AI API: runs requests on orchestrators through the dispatcher and keeps the media of
/// their answers in the object store.
pub(crate) struct Ai {
    config: Arc<GatewayConfig>,
    dispatcher: Arc<Dispatcher>,
    storage: Storage,
    /// AI API requests by capability and status.
    requests: IntCounterVec,
}

/// One AI request as the dispatcher sends it: the client's body to `/{capability}`, the
/// answer's media stored before it is accepted.
struct AiCall<'a> {
    ai: &'a Ai,
    parsed: &'a ParsedRequest,
    wire: &'a WireBody,
    units: u64,
    timeout: Duration,
}

impl Call for AiCall<'_> {
    /// The answer with its media's URLs the gateway's own, and the media as stored.
    type Output = (serde_json::Value, Vec<StoredResult>);

    fn capability(&self) -> &str {
        self.parsed.request.capability().id()
    }

    fn units(&self) -> u64 {
        self.units
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/{}", choice.url, self.capability()))
            .header(header::CONTENT_TYPE, &self.wire.content_type)
            .header(MODEL_HEADER, &choice.model)
            .body(self.wire.data.clone())
    }

    async fn accept(&self, answer: Answer) -> Result<Self::Output, String> {
        // Store the media before paying: an answer that cannot be stored is not a result.
        let v = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .map_err(|e| format!("invalid JSON: {e}"))?;
        self.ai
            .store_results(self.parsed.request.capability(), v)
            .await
    }
}

impl Ai {
    /// The AI API, its request counter registered in `metrics`.
    pub(crate) fn new(
        config: Arc<GatewayConfig>,
        dispatcher: Arc<Dispatcher>,
        storage: Storage,
        metrics: &prometheus::Registry,
    ) -> Result<Arc<Ai>, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "weir_gateway_requests_total",
                "AI API requests by capability and status",
            ),
            &["capability", "status"],
        )?;
        metrics.register(Box::new(requests.clone()))?;
        Ok(Arc::new(Ai {
            config,
            dispatcher,
            storage,
            requests,
        }))
    }

    /// The AI API's route: `POST /{capability}`.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/{capability}", post(ai))
            .with_state(Arc::clone(self))
    }

    /// The stored results' public route: `GET /results/{name}`.
    pub(crate) fn public_routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/results/{name}", get(result))
            .with_state(Arc::clone(self))
    }

    async fn handle(
        &self,
        capability: Capability,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, AiHttpError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let parsed = parse_request(
            capability,
            Some(&content_type),
            body.clone(),
            self.config.max_file_bytes,
        )
        .await?;
        // The client's own body travels on, unless it asked for a stream: orchestrators answer
        // whole LLM responses and the gateway streams them as events.
        let wire = if is_stream(&parsed) {
            None
        } else {
            Some(WireBody {
                content_type,
                data: body,
            })
        };
        let served = self.serve_ai(parsed, wire).await?;
        let mut response = if served.stream {
            sse(served.body)?
        } else {
            Json(served.body).into_response()
        };
        let h = response.headers_mut();
        h.insert(CHARGE_HEADER, HeaderValue::from(served.charge));
        if let Ok(v) = HeaderValue::from_str(&served.orchestrator) {
            h.insert(ORCHESTRATOR_HEADER, v);
        }
        Ok(response)
    }

    /// Serve one validated AI request (sent as `wire`, or as written from the request when
    /// that is `None`): choose orchestrators, pay and retry until one answers; media in the
    /// answer are stored and their URLs rewritten to the gateway's own.
    async fn serve_ai(
        &self,
        parsed: ParsedRequest,
        wire: Option<WireBody>,
    ) -> Result<Served, AiHttpError> {
        let config = &self.config;
        let dispatcher = &self.dispatcher;
        let capability = parsed.request.capability();
        let units = parsed
            .request
            .units(parsed.facts)
            .map_err(|e| err(400, e))?;
        let request_id = format!("req-{:016x}", rand::random::<u64>());
        let stream = is_stream(&parsed);
        let wire = match wire {
            Some(wire) => Ok(wire),
            // Orchestrators answer whole: a streamed request is sent with `stream` off.
            None if stream => {
                let mut sent = parsed.clone();
                if let weir_protocol::ai::AiRequest::Llm(l) = &mut sent.request {
                    l.stream = false;
                }
                sent.to_wire()
            }
            None => parsed.to_wire(),
        }
        .map_err(|e| err(500, e.to_string()))?;

        let job = weir_runtime::jobs::job_request(
            &request_id,
            &parsed.request,
            parsed.facts,
            units,
            &dispatcher.payments().sender(),
        );
        let named = parsed.model_named.then(|| parsed.request.model_id());
        let queue = dispatcher
            .choose(capability.id(), named, capability.default_model(), job)
            .await?
            .into();
        let call = AiCall {
            ai: self,
            parsed: &parsed,
            wire: &wire,
            units,
            timeout: config.attempt_timeout,
        };
        let Dispatched {
            choice,
            output: (output, results),
            charge,
            attempts,
            ..
        } = dispatcher.run(&request_id, queue, &call).await?;
        tracing::info!(request = %request_id, %capability, model = %choice.model, orchestrator = %choice.url, units, charge, attempts, warm = choice.warm, "request served");
        Ok(Served {
            orchestrator: choice.url,
            body: output,
            results,
            charge,
            units,
            stream,
        })
    }

    /// Store every media object of an answer and rewrite its URL to the gateway's own; the
    /// answer and what was stored, in the answer's order.
    async fn store_results(
        &self,
        capability: Capability,
        body: serde_json::Value,
    ) -> Result<(serde_json::Value, Vec<StoredResult>), String> {
        use weir_protocol::Capability as C;
        let shape = |e: serde_json::Error| format!("not a {capability} answer: {e}");
        let mut stored = Vec::new();
        let body = match capability {
            C::TextToImage | C::ImageToImage | C::Upscale | C::ImageToVideo => {
                let mut r: ImageResponse = serde_json::from_value(body).map_err(shape)?;
                if r.images.is_empty() {
                    return Err("the answer holds no images".to_owned());
                }
                for m in &mut r.images {
                    m.url = self.store_one(&m.url, &mut stored).await?;
                }
                serde_json::to_value(r).map_err(|e| e.to_string())?
            }
            C::TextToSpeech => {
                let mut r: AudioResponse = serde_json::from_value(body).map_err(shape)?;
                r.audio.url = self.store_one(&r.audio.url, &mut stored).await?;
                serde_json::to_value(r).map_err(|e| e.to_string())?
            }
            _ => body,
        };
        Ok((body, stored))
    }

    /// Store the medium at `url` (a data URL or the orchestrator's), add it to `stored`, and
    /// answer its URL on this gateway.
    async fn store_one(&self, url: &str, stored: &mut Vec<StoredResult>) -> Result<String, String> {
        let (content_type, data) = if let Some(rest) = url.strip_prefix("data:") {
            let (meta, payload) = rest.split_once(',').ok_or("data URL without a comma")?;
            let content_type = meta.trim_end_matches(";base64").to_owned();
            let data = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| format!("data URL: {e}"))?;
            (content_type, Bytes::from(data))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            self.fetch_result(url).await?
        } else {
            return Err(format!(
                "unsupported result URL {:?}",
                url.chars().take(40).collect::<String>()
            ));
        };
        let result = put_result(&self.storage, &content_type, data)
            .await
            .map_err(|e| format!("storing a result: {e}"))?;
        let url = format!(
            "{}/{}",
            self.config.public_url.trim_end_matches('/'),
            result.key
        );
        stored.push(result);
        Ok(url)
    }

    /// The content type and bytes of a result an orchestrator serves at `url`.
    async fn fetch_result(&self, url: &str) -> Result<(String, Bytes), String> {
        let response = self
            .dispatcher
            .client()
            .get(url)
            .timeout(self.config.attempt_timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok((content_type, read_capped(response).await?))
    }
}

/// A whole LLM answer as server-sent events: the content as one delta, then the finish
/// reason with usage, then `[DONE]`.
fn sse(body: serde_json::Value) -> Result<Response, AiHttpError> {
    let whole: LlmResponse = serde_json::from_value(body)
        .map_err(|e| err(502, format!("orchestrator sent an invalid LLM answer: {e}")))?;
    let mut events = String::new();
    let event =
        |r: &LlmResponse| format!("data: {}\n\n", serde_json::to_string(r).unwrap_or_default());
    for choice in &whole.choices {
        let piece = LlmResponse {
            choices: vec![LlmChoice {
                index: choice.index,
                message: None,
                delta: choice.message.clone(),
                finish_reason: None,
            }],
            usage: Default::default(),
            ..whole.clone()
        };
        events.push_str(&event(&piece));
    }
    let last = LlmResponse {
        choices: whole
            .choices
            .iter()
            .map(|c| LlmChoice {
                index: c.index,
                message: None,
                delta: None,
                finish_reason: c.finish_reason.clone().or_else(|| Some("stop".to_owned())),
            })
            .collect(),
        ..whole.clone()
    };
    events.push_str(&event(&last));
    events.push_str("data: [DONE]\n\n");
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(events),
    )
        .into_response())
}

/// The jobs worker runs its typed requests, written to the wire once here.
impl AiRequests for Ai {
    fn serve(&self, request: ParsedRequest) -> BoxFut<'_, Result<Served, AiHttpError>> {
        Box::pin(async move { self.serve_ai(request, None).await })
    }
}

/// Whether the client asked for the answer as server-sent events.
fn is_stream(parsed: &ParsedRequest) -> bool {
    matches!(&parsed.request, weir_protocol::ai::AiRequest::Llm(l) if l.stream)
}

/// `POST /{capability}`.
async fn ai(
    State(ai): State<Arc<Ai>>,
    UrlPath(capability): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return AiHttpError::from(e).into_response(),
    };
    let Some(capability) = Capability::from_id(&capability) else {
        return err(404, format!("no such endpoint `/{capability}`")).into_response();
    };
    let response = match ai.handle(capability, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%capability, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    ai.requests
        .with_label_values(&[capability.id(), response.status().as_str()])
        .inc();
    response
}

/// `GET /results/{name}`: read from the object store (on S3 too: result URLs are the
/// gateway's, so they never expire).
async fn result(State(ai): State<Arc<Ai>>, UrlPath(name): UrlPath<String>) -> Response {
    let missing = || err(404, format!("no result `{name}`")).into_response();
    let Some(key) = result_key(&name) else {
        return missing();
    };
    match ai.storage.get(&key).await {
        Ok(Some(object)) => {
            ([(header::CONTENT_TYPE, object.content_type)], object.data).into_response()
        }
        Ok(None) => missing(),
        Err(e) => {
            tracing::warn!(result = %name, error = %e, "reading a result failed");
            err(503, format!("result storage is unavailable: {e}")).into_response()
        }
    }
}
