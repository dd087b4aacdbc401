//! Workers registering and unregistering capabilities (`POST /capability/register`,
//! `POST /capability/unregister`), authenticated by the orchestrator secret.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use weir_protocol::byoc::RegisterCapability;
use weir_protocol::AiHttpError;

use crate::handler::err;
use crate::Orchestrator;

/// No credentials is a 401 whether or not registration is on; a secret when registration is
/// off is a 403; a wrong one a 401.
fn check_secret(o: &Orchestrator, headers: &HeaderMap) -> Result<(), AiHttpError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(err(
            401,
            "missing the orchestrator secret: send Authorization: <secret>",
        ));
    }
    let Some(secret) = o.byoc().config().secret.as_deref() else {
        return Err(err(
            403,
            "capability registration is off: no orchestrator secret is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or(given);
    if weir_protocol::auth::constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(err(401, "wrong or missing orchestrator secret"))
    }
}

/// `POST /capability/register`.
pub(crate) async fn register(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = check_secret(&o, &headers).and_then(|()| {
        let r: RegisterCapability = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("not a capability registration: {e}")))?;
        o.byoc().register(r)
    });
    match result {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /capability/unregister`: the body is the capability name (or `{"name": …}`).
pub(crate) async fn unregister(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = check_secret(&o, &headers).and_then(|()| {
        let text = std::str::from_utf8(&body)
            .map_err(|_| err(400, "the body is not UTF-8"))?
            .trim();
        let name = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .ok_or_else(|| err(400, "no `name` in the body"))?,
            Ok(serde_json::Value::String(s)) => s,
            _ => text.to_owned(),
        };
        o.byoc().unregister(&name)
    });
    match result {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}
