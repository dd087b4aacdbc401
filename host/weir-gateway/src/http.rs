//! The gateway's HTTP surface: every feature's routes merged in one router, client
//! authentication, CORS, `/gateway/orchestrators` and `/openapi.json`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::dispatch::err;
use crate::services::Services;

/// The HTTP routes of the gateway's services `g`: the features' client APIs behind the bearer token, pushed live
/// segments behind it too (with their own body limit), and the public routes (HLS, results,
/// objects, the OpenAPI document), with CORS as `cors_origins` says (see [`crate::cors`]).
pub(crate) fn router(g: &Arc<Services>) -> Router {
    let config = &g.config;
    let api = Router::new()
        .merge(g.jobs.routes())
        .merge(g.ai.routes())
        .route("/gateway/orchestrators", get(orchestrators))
        .merge(g.byoc.routes())
        .merge(g.ai_streams.routes())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(g.clone(), require_client));
    let push = g
        .live
        .push_routes()
        .layer(DefaultBodyLimit::max(config.live.max_push_bytes))
        .layer(middleware::from_fn_with_state(g.clone(), require_client));
    let public = g
        .live
        .routes()
        .merge(push)
        .merge(g.ai.public_routes())
        .merge(g.jobs.public_routes())
        .route("/openapi.json", get(openapi))
        .merge(api)
        .with_state(g.clone());
    match crate::cors::layer(&config.cors_origins) {
        Some(cors) => public
            .layer(cors)
            .layer(middleware::from_fn(crate::cors::preflight_no_content)),
        None => public,
    }
}

async fn require_client(
    State(g): State<Arc<Services>>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let config = &g.config;
    if config.open {
        return next.run(req).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let jobs_api = req.uri().path().starts_with("/api/v1/");
    match token {
        Some(t)
            if config
                .auth_tokens
                .iter()
                .any(|k| weir_protocol::auth::constant_time_eq(k.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        // Each API refuses in its own error shape: the jobs API's `{"error", "code"}`, the
        // others' Livepeer `{"detail": {"msg"}}`.
        Some(_) if jobs_api => crate::jobs::unauthorized("invalid bearer token"),
        Some(_) => err(401, "invalid bearer token").into_response(),
        None if jobs_api => crate::jobs::unauthorized(MISSING_TOKEN),
        None => err(401, MISSING_TOKEN).into_response(),
    }
}

const MISSING_TOKEN: &str = "missing bearer token: send Authorization: Bearer <token>";

async fn orchestrators(State(g): State<Arc<Services>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "orchestrators": g.dispatcher.discovery().views() }))
}

/// `GET /openapi.json`: the gateway's APIs (AI, jobs, live, results, BYOC, AI streams) and the
/// node's health and admin routes it is served beside; an open gateway documents no client
/// token.
async fn openapi(State(g): State<Arc<Services>>) -> Response {
    let mut doc = weir_protocol::openapi::gateway_document();
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.extend(crate::jobs::openapi_paths(g.jobs.catalog()));
    }
    if g.config.open {
        weir_protocol::openapi::without_auth(&mut doc);
    }
    (StatusCode::OK, Json(doc)).into_response()
}
