//! The node's HTTP surface: health, readiness, Prometheus metrics and the admin API.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use weir_runtime::{LoadedComponent, Registry, RuntimeError, WorldKind, MAX_WASM_BYTES};

use crate::api::{params_to_json, CallRequest, JsonBlob, JsonPrice};
use crate::installs::{FinishGuard, Install, Installs, Refusal, Stage};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The component registry.
    pub registry: Arc<Registry>,
    /// Prometheus registry behind `/metrics`.
    pub metrics: prometheus::Registry,
    /// Bearer token of the admin API.
    pub admin_token: Arc<str>,
    /// Router component the node uses.
    pub router: Arc<str>,
    /// Pricing component the node uses.
    pub pricing: Arc<str>,
    /// The ledgers of the roles this process plays, by role name.
    pub ledgers: Arc<[(&'static str, Arc<dyn weir_payments::Ledger>)]>,
    /// Component uploads compiling in the background.
    pub installs: Arc<Installs>,
}

/// An error answer: `{"error": {"code", "message"}}` with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        ApiError::from(&e)
    }
}

impl From<&RuntimeError> for ApiError {
    fn from(e: &RuntimeError) -> ApiError {
        let (status, code) = match e {
            RuntimeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RuntimeError::InvalidManifest { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest")
            }
            RuntimeError::Load { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "load_failed"),
            RuntimeError::WrongWorld { .. } => (StatusCode::CONFLICT, "wrong_world"),
            RuntimeError::Call { failure, .. } => match failure {
                weir_runtime::CallFailure::Guest(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "guest_error")
                }
                weir_runtime::CallFailure::Timeout { .. } => {
                    (StatusCode::GATEWAY_TIMEOUT, "component_timeout")
                }
                _ => (StatusCode::BAD_GATEWAY, "component_failed"),
            },
            RuntimeError::Engine(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The node's router: health, metrics, the admin API, and the roles' routes (`roles`).
pub fn app(state: AppState, roles: Router) -> Router {
    let admin = Router::new()
        .route("/admin/components", get(list_components))
        .route(
            "/admin/components/{name}",
            put(install_component)
                .get(get_component)
                .delete(remove_component)
                .layer(DefaultBodyLimit::max(MAX_WASM_BYTES as usize + (1 << 20))),
        )
        .route("/admin/components/{name}/install", get(get_install))
        .route("/admin/components/{name}/reload", post(reload_component))
        .route("/admin/components/{name}/call", post(call_component))
        .route("/admin/ledger", get(ledger_totals))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(admin)
        .with_state(state)
        .merge(roles)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
}

/// `GET /admin/ledger`: totals per party, capability and model — what the gateway spent with
/// each orchestrator, and what the orchestrator charged each sender.
async fn ledger_totals(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut out = serde_json::Map::new();
    for (role, ledger) in state.ledgers.iter() {
        let what = if *role == "gateway" {
            weir_payments::Totals::Spent
        } else {
            weir_payments::Totals::Charged
        };
        let rows = ledger.totals(what).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger", e.to_string())
        })?;
        out.insert(
            (*role).to_owned(),
            serde_json::to_value(rows).unwrap_or_default(),
        );
    }
    Ok(Json(serde_json::Value::Object(out)))
}

async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token)
            if weir_protocol::auth::constant_time_eq(
                token.as_bytes(),
                state.admin_token.as_bytes(),
            ) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid admin token",
        )
        .into_response(),
        None => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <admin token>`",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "components": state.registry.list().len() }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let mut missing = Vec::new();
    for (name, world) in [
        (&*state.router, WorldKind::Router),
        (&*state.pricing, WorldKind::Pricing),
    ] {
        if let Err(e) = state.registry.get_world(name, world) {
            missing.push(e.to_string());
        }
    }
    if missing.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "missing": missing })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let families = state.metrics.gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

/// One loaded component as the admin API shows it.
#[derive(Debug, Serialize)]
struct ComponentView {
    name: String,
    world: WorldKind,
    version: String,
    description: String,
    hash: String,
    loaded_at_ms: u64,
    warm_instances: usize,
    imports: Vec<String>,
    exports: Vec<String>,
    /// The latest load attempt's error, when a newer version failed and this one keeps serving.
    last_error: Option<String>,
    /// The effective per-call limits (the manifest's, else its world's defaults): `timeout_ms`,
    /// `memory_mib`, `fuel`, `pool_size`, `max_calls_per_instance`, `storage_object_kib`.
    limits: weir_runtime::Limits,
    /// The effective instance mode (`warm` or `fresh`).
    instance: weir_runtime::InstanceMode,
}

fn view(c: &LoadedComponent, last_error: Option<String>) -> ComponentView {
    ComponentView {
        name: c.manifest.name.clone(),
        world: c.world(),
        version: c.manifest.version.clone(),
        description: c.manifest.description.clone(),
        hash: c.hash.clone(),
        loaded_at_ms: millis(c.loaded_at),
        warm_instances: c.warm_instances(),
        imports: c.imports.clone(),
        exports: c.exports.clone(),
        last_error,
        limits: c.manifest.limits.clone(),
        instance: c.manifest.instance_mode(),
    }
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn list_components(State(state): State<AppState>) -> Json<serde_json::Value> {
    let statuses = state.registry.statuses();
    let loaded = state.registry.list();
    let components: Vec<ComponentView> = loaded
        .values()
        .map(|c| view(c, statuses.get(c.name()).and_then(|s| s.error.clone())))
        .collect();
    let failed: Vec<serde_json::Value> = statuses
        .iter()
        .filter(|(name, s)| s.error.is_some() && !loaded.contains_key(*name))
        .map(|(name, s)| json!({ "name": name, "error": s.error, "at_ms": millis(s.at) }))
        .collect();
    let installing: Vec<serde_json::Value> = state
        .installs
        .running()
        .iter()
        .map(|i| install_view(&state, i))
        .collect();
    Json(json!({ "components": components, "failed": failed, "installing": installing }))
}

async fn get_component(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentView>, ApiError> {
    let c = state.registry.get(&name)?;
    let last_error = state
        .registry
        .statuses()
        .get(&name)
        .and_then(|s| s.error.clone());
    Ok(Json(view(&c, last_error)))
}

/// `?wait=SECONDS` on `PUT /admin/components/{name}`.
#[derive(Debug, serde::Deserialize)]
struct InstallQuery {
    /// How long to wait for the load before answering `202` (0 to [`MAX_INSTALL_WAIT_SECS`]).
    #[serde(default)]
    wait: u64,
}

/// The longest `?wait=` a `PUT` may ask for.
const MAX_INSTALL_WAIT_SECS: u64 = 600;

/// `PUT /admin/components/{name}`: multipart with a `manifest` (TOML) part and a `wasm` part.
/// The manifest and the wasm's header are checked at once; compiling and loading run in the
/// background. The answer is the loaded component (`201`/`200`) or the load's error when it
/// ends within `?wait=`, else `202` with the install's progress (`Location`).
async fn install_component(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<InstallQuery>, QueryRejection>,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let Query(query) = query.map_err(|e| bad(e.body_text()))?;
    if query.wait > MAX_INSTALL_WAIT_SECS {
        return Err(bad(format!(
            "wait={} is longer than the {MAX_INSTALL_WAIT_SECS} s a request may wait; poll /admin/components/{name}/install instead",
            query.wait
        )));
    }
    let (manifest, wasm) = read_upload(multipart).await?;
    let parsed = weir_runtime::Manifest::parse(&manifest, None)?;
    if parsed.name != name {
        return Err(bad(format!(
            "the manifest names `{}` but the URL names `{name}`",
            parsed.name
        )));
    }
    weir_runtime::check_component_header(&wasm).map_err(|reason| RuntimeError::Load {
        component: name.clone(),
        reason,
    })?;
    let replaces = state.registry.get(&name).is_ok();
    let install = state
        .installs
        .begin(&name, wasm.len(), replaces)
        .map_err(refused)?;
    let guard = FinishGuard(install.clone());
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || {
        let result = registry.install_observed(&manifest, &wasm, &|phase| guard.0.observe(phase));
        guard.0.finish(result);
    });
    let now = install.wait(Duration::from_secs(query.wait)).await;
    match &now.stage {
        Stage::Loaded { .. } => {
            let component = state.registry.get(&name)?;
            let status = if replaces {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(view(&component, None))).into_response())
        }
        Stage::Failed(e) => Err(ApiError::from(&**e)),
        Stage::Running(_) => {
            let location = format!("/admin/components/{name}/install");
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(install_view(&state, &install)),
            )
                .into_response())
        }
    }
}

/// The `manifest` and `wasm` parts of an install's multipart body.
async fn read_upload(mut multipart: Multipart) -> Result<(String, bytes::Bytes), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let (mut manifest, mut wasm) = (None, None);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("malformed multipart body: {e}")))?
    {
        match field.name() {
            Some("manifest") => {
                manifest = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| bad(format!("manifest part: {e}")))?,
                )
            }
            Some("wasm") => {
                wasm = Some(
                    field
                        .bytes()
                        .await
                        .map_err(|e| bad(format!("wasm part: {e}")))?,
                )
            }
            Some(other) => {
                return Err(bad(format!(
                    "unexpected part `{other}` (expected `manifest` and `wasm`)"
                )))
            }
            None => return Err(bad("a multipart part has no name".into())),
        }
    }
    let manifest = manifest.ok_or_else(|| bad("missing the `manifest` part".into()))?;
    let wasm = wasm.ok_or_else(|| bad("missing the `wasm` part".into()))?;
    Ok((manifest, wasm))
}

/// An upload that was not started: `409` while the same name installs, `429` at the cap.
fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::SameName(running) => ApiError::new(
            StatusCode::CONFLICT,
            "install_running",
            format!(
                "an install of `{}` started {:.1} s ago is still {}; wait for it (GET /admin/components/{}/install)",
                running.name,
                running.elapsed(&running.state()).as_secs_f64(),
                stage_name(&running.state().stage),
                running.name
            ),
        ),
        Refusal::Busy(names) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "installs_busy",
            format!(
                "{} installs are compiling ({}); try again when one ends",
                names.len(),
                names.join(", ")
            ),
        ),
    }
}

fn stage_name(stage: &Stage) -> &'static str {
    match stage {
        Stage::Running(phase) => phase.as_str(),
        Stage::Loaded { .. } => "loaded",
        Stage::Failed(_) => "failed",
    }
}

/// An install as the admin API shows it: its state (`queued`, `writing`, `compiling`,
/// `linking`, then `loaded` or `failed`), times, an estimate of progress, and the outcome.
fn install_view(state: &AppState, install: &Install) -> serde_json::Value {
    let now = install.state();
    let expected = state
        .registry
        .runtime()
        .expected_compile_time(install.bytes);
    let (error, component) = match &now.stage {
        Stage::Running(_) => (None, None),
        Stage::Loaded { hash } => (
            None,
            state
                .registry
                .get(&install.name)
                .ok()
                .filter(|c| &c.hash == hash)
                .map(|c| view(&c, None)),
        ),
        Stage::Failed(e) => {
            let e = ApiError::from(&**e);
            (Some(json!({ "code": e.code, "message": e.message })), None)
        }
    };
    json!({
        "name": install.name,
        "state": stage_name(&now.stage),
        "bytes": install.bytes,
        "replaces": install.replaces,
        "started_at_ms": millis(install.started_at),
        "elapsed_ms": install.elapsed(&now).as_millis() as u64,
        "expected_compile_ms": expected.map(|d| d.as_millis() as u64),
        "progress": install.progress(&now, expected),
        "error": error,
        "component": component,
    })
}

/// `GET /admin/components/{name}/install`: the latest install of `name` since the node started.
async fn get_install(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let install = state.installs.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no install of `{name}` since the node started"),
        )
    })?;
    Ok(Json(install_view(&state, &install)))
}

async fn remove_component(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(running) = state.installs.get(&name).filter(|i| !i.state().is_done()) {
        return Err(refused(Refusal::SameName(running)));
    }
    state.registry.remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn reload_component(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentView>, ApiError> {
    let registry = state.registry.clone();
    let loaded = tokio::task::spawn_blocking(move || registry.load(&name))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(view(&loaded, None)))
}

/// `POST /admin/components/{name}/call`: try a component with a JSON request.
async fn call_component(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<CallRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(call) = body.map_err(|e| {
        // A body over the size limit is `413`; every other problem with it is the caller's `400`.
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
        }
    })?;
    let component = state.registry.get(&name)?;
    let answer = tokio::task::spawn_blocking(move || invoke(&component, call))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(answer))
}

fn invoke(component: &LoadedComponent, call: CallRequest) -> Result<serde_json::Value, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let request = call.request.into();
    let answer = match component.world() {
        WorldKind::Router => {
            let candidates: Vec<_> = call.candidates.into_iter().map(Into::into).collect();
            let ranking = component.select(&request, &candidates)?;
            json!({ "ranking": ranking, "version": component.manifest.version, "hash": component.hash })
        }
        WorldKind::Pricing => {
            let context = call
                .context
                .ok_or_else(|| bad("a pricing call needs `context`".into()))?
                .try_into()
                .map_err(bad)?;
            let price: JsonPrice = component.quote(&request, &context)?.into();
            json!({ "price": price, "version": component.manifest.version, "hash": component.hash })
        }
        WorldKind::Pipeline => {
            let inputs = call
                .inputs
                .into_iter()
                .map(JsonBlob::decode)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            let (blobs, params) = component.run(request, inputs)?;
            let outputs: Vec<JsonBlob> = blobs.iter().map(JsonBlob::encode).collect();
            json!({ "outputs": outputs, "params": params_to_json(params), "version": component.manifest.version })
        }
    };
    Ok(answer)
}
