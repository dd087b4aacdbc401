//! Commands for running streams: update, stop, top-up and status, each from the stream's
//! sender (proved by a payment header).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};
use weir_payments::credit::{self, Payment};
use weir_protocol::byoc::{BYOC_MODEL, LIVEPEER_BALANCE_HEADER, STREAM_ID_HEADER};
use weir_protocol::info::BALANCE_HEADER;
use weir_protocol::AiHttpError;

use super::{json_response, Command};
use crate::handler::err;
use crate::Orchestrator;

fn stream_id_of(headers: &HeaderMap, body: &[u8]) -> Result<String, AiHttpError> {
    if let Some(id) = headers.get(STREAM_ID_HEADER).and_then(|v| v.to_str().ok()) {
        return Ok(id.to_owned());
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("stream_id")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            err(
                400,
                "name the stream: X-Stream-Id header or `stream_id` in the body",
            )
        })
}

/// A running stream a command names (by `X-Stream-Id` or `stream_id` in the body), checked to
/// belong to the sender of the request's payment.
struct Named {
    payment: Payment,
    commands: mpsc::Sender<Command>,
    capability: String,
}

fn named_stream(o: &Orchestrator, headers: &HeaderMap, body: &[u8]) -> Result<Named, AiHttpError> {
    let id = stream_id_of(headers, body)?;
    let map = o.streams().map.lock();
    let live = map
        .get(&id)
        .ok_or_else(|| err(404, format!("no stream `{id}` runs here")))?;
    let payment = o.payment(headers)?;
    if payment.sender != live.sender {
        return Err(err(403, "the stream belongs to another sender"));
    }
    let capability = live.status.lock().capability.clone();
    Ok(Named {
        payment,
        commands: live.commands.clone(),
        capability,
    })
}

/// `ok`, or the error in the AI error shape.
fn ok_or_error(r: Result<(), AiHttpError>) -> Response {
    match r {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ai/stream/update`: new params for a running stream (a payment header authenticates
/// the sender). A pipeline's `on-control` answers: `{"ok":true,"applied":true}` once it
/// accepted them, its refusal (422) otherwise. With `"defer_to_control": true` in the body, an
/// external worker's params are not forwarded (`"applied":false`): the caller publishes them on
/// the control channel.
pub(crate) async fn update(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let body_json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("the params are not JSON: {e}")))?;
        let named = named_stream(&o, &headers, &body)?;
        let defer = body_json
            .get("defer_to_control")
            .and_then(|d| d.as_bool())
            .unwrap_or(false);
        let params = body_json.get("params").cloned().unwrap_or(body_json);
        let (tx, rx) = oneshot::channel();
        named
            .commands
            .send(Command::Update(params, defer, tx))
            .await
            .map_err(|_| err(409, "the stream is stopping"))?;
        rx.await.map_err(|_| err(409, "the stream is stopping"))?
    };
    match run.await {
        Ok(applied) => json_response(serde_json::json!({"ok": true, "applied": applied})),
        Err(e) => e.into_response(),
    }
}

/// `POST /ai/stream/stop`.
pub(crate) async fn stop(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ok_or_error(
        async {
            let named = named_stream(&o, &headers, &body)?;
            let (tx, rx) = oneshot::channel();
            if named
                .commands
                .send(Command::Stop("stopped by the gateway".to_owned(), tx))
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
            }
            Ok(())
        }
        .await,
    )
}

/// `POST /ai/stream/payment`: a top-up for a running stream's balance.
pub(crate) async fn top_up(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let Named {
            payment: p,
            capability,
            ..
        } = named_stream(&o, &headers, &body)?;
        let account = credit::account(&capability, BYOC_MODEL);
        if p.account != account {
            return Err(err(
                402,
                format!(
                    "the payment is for `{}`, the stream is `{account}`",
                    p.account
                ),
            ));
        }
        // A top-up of nothing (the balance lacked nothing) credits nothing: it reports it.
        let balance = if p.amount == 0 {
            o.ledger().balance(&p.sender, &account).await
        } else {
            o.ledger()
                .credit(&p.id, &p.sender, &account, p.amount)
                .await
        };
        Ok(balance
            .map_err(|e| err(402, format!("payment refused: {e}")))?
            .amount)
    };
    match run.await {
        Ok(balance) => {
            let mut r = json_response(serde_json::json!({ "balance": balance }));
            r.headers_mut()
                .insert(BALANCE_HEADER, HeaderValue::from(balance));
            r.headers_mut()
                .insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /ai/stream/{id}/status`, for the stream's sender only: a `Weir-Payment` header (any
/// amount, 0 included; nothing is credited) proves who asks, as on update and stop.
pub(crate) async fn status(
    State(o): State<Orchestrator>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let asker = match o.payment(&headers) {
        Ok(p) => p.sender,
        Err(e) => return e.into_response(),
    };
    let map = o.streams().map.lock();
    match map.get(&id) {
        Some(live) if live.sender != asker => {
            err(403, "the stream belongs to another sender").into_response()
        }
        Some(live) => {
            let mut s = live.status.lock().clone();
            s.started_ms_ago = live.started.elapsed().as_millis() as u64;
            json_response(s)
        }
        None => err(404, format!("no stream `{id}` runs here")).into_response(),
    }
}
