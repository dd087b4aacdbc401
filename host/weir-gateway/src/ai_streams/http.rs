//! The AI streams' HTTP routes: start, update, status, stop and data.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot};
use weir_protocol::byoc::{JobRequest, StreamStart, StreamUrls, JOB_HEADER};
use weir_protocol::AiHttpError;

use crate::dispatch::err;

use super::{AiStream, AiStreams, Command};

fn urls_response(urls: StreamUrls) -> Response {
    Json(urls).into_response()
}

impl AiStreams {
    /// The AI streams' routes: start, update, status, stop and data of BYOC streams, and the
    /// Livepeer live video-to-video start, update and status.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/process/stream/start", post(start))
            .route("/process/stream/{id}/update", post(update))
            .route("/process/stream/{id}/status", get(status))
            .route("/process/stream/{id}/stop", post(stop))
            .route("/process/stream/{id}/data", get(data))
            .route("/live/video-to-video/{stream}/start", post(live_start))
            .route("/live/video-to-video/{id}/update", post(update))
            .route("/live/video-to-video/{id}/status", get(status))
            .with_state(Arc::clone(self))
    }

    /// The stream `id`, or a 404.
    fn stream(&self, id: &str) -> Result<Arc<AiStream>, AiHttpError> {
        self.map
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| err(404, format!("no stream `{id}`")))
    }
}

/// `POST /process/stream/start`: `Livepeer` header + `{stream_name, rtmp_output, stream_id, params}`.
async fn start(State(streams): State<Arc<AiStreams>>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let job = weir_protocol::byoc::JobRequest::from_headers(&headers)?;
        let start: StreamStart = if body.is_empty() {
            StreamStart::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| err(400, format!("not a stream start: {e}")))?
        };
        streams.start(job, start).await
    };
    match run.await {
        Ok(urls) => urls_response(urls),
        Err(e) => e.into_response(),
    }
}

/// Livepeer's live video-to-video start, `POST /live/video-to-video/{stream}/start`: the
/// pipeline (capability) and params come as JSON `{pipeline, params}`, or as the `query`
/// field (`pipeline=…&params=…`) Livepeer's media server sends.
async fn live_start(
    State(streams): State<Arc<AiStreams>>,
    UrlPath(stream): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct LiveStart {
        #[serde(default)]
        pipeline: String,
        #[serde(default)]
        params: serde_json::Value,
        #[serde(default)]
        query: String,
    }
    let run = async {
        let mut req: LiveStart = if body.is_empty() {
            LiveStart {
                pipeline: String::new(),
                params: serde_json::Value::Null,
                query: String::new(),
            }
        } else {
            serde_json::from_slice(&body).map_err(|e| err(400, format!("not a live start: {e}")))?
        };
        for pair in req.query.clone().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "pipeline" if req.pipeline.is_empty() => req.pipeline = v,
                "params" if req.params.is_null() => {
                    req.params = serde_json::from_str(&v)
                        .map_err(|e| err(400, format!("params in query are not JSON: {e}")))?;
                }
                _ => {}
            }
        }
        if req.pipeline.is_empty() {
            return Err(err(
                400,
                "name the pipeline: `pipeline` in the body or query",
            ));
        }
        let job = match headers.get(JOB_HEADER) {
            Some(_) => weir_protocol::byoc::JobRequest::from_headers(&headers)?,
            None => JobRequest {
                id: stream.clone(),
                request: String::new(),
                parameters: String::new(),
                capability: req.pipeline.clone(),
                timeout_seconds: 30,
                sender: String::new(),
                sig: String::new(),
            },
        };
        job.validate().map_err(|e| err(400, e))?;
        streams
            .start(
                job,
                StreamStart {
                    stream_name: stream.clone(),
                    rtmp_output: String::new(),
                    stream_id: stream,
                    params: req.params,
                },
            )
            .await
    };
    match run.await {
        Ok(urls) => urls_response(urls),
        Err(e) => e.into_response(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /process/stream/{id}/update`: new params, forwarded over the control channel.
async fn update(
    State(streams): State<Arc<AiStreams>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let run = async {
        let params: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("the params are not JSON: {e}")))?;
        if !params.is_object() {
            return Err(err(400, "the params must be a JSON object"));
        }
        let stream = streams.stream(&id)?;
        let (tx, rx) = oneshot::channel();
        stream
            .commands
            .send(Command::Update(params, tx))
            .await
            .map_err(|_| err(409, "the stream has stopped"))?;
        rx.await.map_err(|_| err(409, "the stream has stopped"))?
    };
    match run.await {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /process/stream/{id}/status`.
async fn status(State(streams): State<Arc<AiStreams>>, UrlPath(id): UrlPath<String>) -> Response {
    match streams.stream(&id) {
        Ok(s) => Json(s.status.lock().clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /process/stream/{id}/stop`.
async fn stop(State(streams): State<Arc<AiStreams>>, UrlPath(id): UrlPath<String>) -> Response {
    let run = async {
        let stream = streams.stream(&id)?;
        let (tx, rx) = oneshot::channel();
        if stream
            .commands
            .send(Command::Stop("stopped by the client".to_owned(), tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(15), rx).await;
        }
        let status = stream.status.lock().clone();
        Ok::<_, AiHttpError>(status)
    };
    match run.await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /process/stream/{id}/data`: the worker's JSONL data as server-sent events.
async fn data(State(streams): State<Arc<AiStreams>>, UrlPath(id): UrlPath<String>) -> Response {
    let stream = match streams.stream(&id) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let rx = stream.data.subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(line.as_ref())),
                        rx,
                    ))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%7B%22h%22%3A1%7D"), "{\"h\":1}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
