//! Cross-origin access for browsers: the public media and API routes answer CORS preflights
//! and carry `Access-Control-Allow-Origin`, so an application's page on another origin can
//! play the HLS output with hls.js and call the AI and jobs APIs. The admin API never gets
//! these headers (it is mounted outside the gateway's router).
//!
//! Origins come from `[gateway] cors_origins`: `["*"]` (the default) lets any origin read the
//! responses, a list of exact origins (`https://app.example`) limits them, and an empty list
//! turns CORS off. Credentials (cookies) are never allowed: clients authenticate with the
//! `Authorization` header, which is listed as an allowed request header.

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a browser may send on a cross-origin request.
const ALLOWED_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "prefer",
    "livepeer",
    "content-duration",
    "accept",
    "last-event-id",
    "x-stream-id",
];

/// Response headers scripts on another origin may read.
const EXPOSED_HEADERS: [&str; 9] = [
    "location",
    "livepeer-balance",
    "retry-after",
    "content-duration",
    "x-stream-id",
    "weir-charge",
    "weir-orchestrator",
    "weir-balance",
    "preference-applied",
];

/// The CORS layer for `origins`, or `None` when the list is empty (CORS off). Entries that
/// are not valid header values are skipped with a warning.
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin =
        if origins.iter().any(|o| o.trim() == "*") {
            AllowOrigin::any()
        } else {
            let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o.trim().trim_end_matches('/')) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(origin = %o, error = %e, "ignored an invalid CORS origin");
                    None
                }
            })
            .collect();
            AllowOrigin::list(list)
        };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered `204 No Content`,
/// as browsers and Livepeer's gateway expect; the CORS layer itself answers 200. Put this
/// outside the CORS layer.
pub(crate) async fn preflight_no_content(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(req).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_turns_cors_off() {
        assert!(layer(&[]).is_none());
        assert!(layer(&["*".to_owned()]).is_some());
        assert!(layer(&["https://app.example".to_owned(), "bad\norigin".to_owned()]).is_some());
    }
}
