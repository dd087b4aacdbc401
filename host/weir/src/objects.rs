//! The object store of the node's components (`weir:host/storage`) when the orchestrator role
//! keeps its own — `[orchestrator.storage]`, or local disk under `<data_dir>/objects` on a node
//! without the gateway role — and the route that serves its signed links on the orchestrator's
//! listener. A node with a gateway and no `[orchestrator.storage]` gives its components the
//! gateway's object store instead (served by the gateway's own `/objects` route).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use weir_protocol::error::HttpErrorBody;
use weir_runtime::{ObjectStorage, Registry};
use weir_storage::{Storage, StorageConfig};

use crate::config::NodeConfig;

/// How long the links a component's `storage.put` answers stay valid.
const LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The store the orchestrator's `/objects` route serves, once there is one.
pub(crate) type ObjectSlot = Arc<OnceLock<Storage>>;

/// Whether the orchestrator role opens its own object store for the node's components.
pub(crate) fn own_store(config: &NodeConfig, has_gateway: bool) -> bool {
    config.orchestrator.storage.is_some() || !has_gateway
}

/// Open the orchestrator's object store; its local links point at `service_url` and are
/// signed with a key kept in `<data_dir>/object-link-key`.
pub(crate) async fn open(config: &NodeConfig, service_url: &str) -> anyhow::Result<Storage> {
    let key = crate::node::token_file(
        &config.data_dir.join("object-link-key"),
        "an object link key",
    )?;
    let storage = config
        .orchestrator
        .storage
        .clone()
        .unwrap_or_else(|| StorageConfig::Local {
            dir: config.data_dir.join("objects"),
        });
    Storage::open(&storage, service_url, key.as_bytes())
        .await
        .context("opening the orchestrator's object store")
}

/// Give the node's components `storage` (the first store provided wins).
pub(crate) fn provide(registry: &Registry, storage: Storage) {
    let backend = storage.backend();
    let objects = ObjectStorage::new(storage, tokio::runtime::Handle::current(), LINK_LIFETIME);
    if registry.runtime().provide_storage(Arc::new(objects)) {
        tracing::info!(storage = backend, "components' object store ready");
    }
}

/// `GET /objects/{*key}` for the store in `slot`.
pub(crate) fn route(slot: ObjectSlot) -> Router {
    Router::new()
        .route("/objects/{*key}", get(serve))
        .with_state(slot)
}

/// Query of a signed object link.
#[derive(Debug, Deserialize)]
struct LinkQuery {
    expires: Option<u64>,
    sig: Option<String>,
}

async fn serve(
    State(slot): State<ObjectSlot>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let Some(storage) = slot.get() else {
        let body = HttpErrorBody::new(
            "this listener serves no objects: the node's components store theirs with its gateway",
        );
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    match storage.read_link(&key, q.expires, q.sig.as_deref()).await {
        Ok(o) => ([(header::CONTENT_TYPE, o.content_type)], o.data).into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(HttpErrorBody::new(e.to_string()))).into_response()
        }
    }
}
