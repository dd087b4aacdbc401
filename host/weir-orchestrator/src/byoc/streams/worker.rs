//! The external worker's side of a stream: told to start and to stop.

use weir_protocol::byoc::{WorkerStreamStart, STREAM_ID_HEADER};
use weir_protocol::AiHttpError;

use crate::byoc::Offered;
use crate::handler::err;
use crate::Orchestrator;

/// Tell the worker where the stream's channels are (`POST {url}/stream/start`).
pub(super) async fn start_worker(
    o: &Orchestrator,
    offered: &Offered,
    url: &str,
    token: Option<&str>,
    start: &WorkerStreamStart,
) -> Result<(), AiHttpError> {
    let mut request = o
        .byoc()
        .client
        .post(format!("{url}/stream/start"))
        .header(STREAM_ID_HEADER, &start.stream_id)
        .timeout(o.byoc().config().worker_timeout())
        .json(start);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status == 401 || status == 403 {
                offered.worker_failed("the worker refused the orchestrator's token");
            }
            Err(err(
                502,
                format!(
                    "the worker refused the stream ({status}): {}",
                    &text[..text.len().min(300)]
                ),
            ))
        }
        Err(e) => {
            offered.worker_failed(&e.to_string());
            Err(err(
                502,
                format!("the worker did not start the stream: {e}"),
            ))
        }
    }
}

/// Tell the worker the stream is over (`POST {url}/stream/stop`); a failure is logged.
pub(super) async fn stop_worker(o: &Orchestrator, url: &str, token: Option<&str>, stream_id: &str) {
    let mut request = o
        .byoc()
        .client
        .post(format!("{url}/stream/stop"))
        .header(STREAM_ID_HEADER, stream_id)
        .timeout(o.byoc().config().worker_timeout())
        .json(&serde_json::json!({ "stream_id": stream_id }));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            tracing::warn!(stream = %stream_id, status = %r.status(), "the worker refused to stop the stream")
        }
        Err(e) => {
            tracing::warn!(stream = %stream_id, error = %e, "could not tell the worker to stop")
        }
    }
}
