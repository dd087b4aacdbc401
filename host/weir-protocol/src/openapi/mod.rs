//! The OpenAPI 3.1 documents of the HTTP APIs a Weir node serves, one module per API, each
//! built from the same specs and constants its handlers enforce where there are some.
//!
//! A node serves the document of what its listener really answers: a gateway's
//! ([`gateway_document`]: the AI API, live push and playback, results, BYOC, AI streams, and the
//! node's health and admin routes; the jobs API is added by the gateway, which holds its model
//! catalog) or an orchestrator's ([`orchestrator_document`]: `/info` and trickle).
//!
//! Error bodies, one shape per API (each a component schema):
//! - AI API, live, results, BYOC, AI streams, `/gateway/orchestrators`: Livepeer's
//!   `HTTPError` `{"detail": {"msg"}}` (and `HTTPValidationError` for the AI API's 422);
//! - jobs API and `/objects`: `JobError` `{"error", "code", "details"}`;
//! - trickle: `TrickleError` `{"error": {"message"}}`;
//! - admin and node routes: `AdminError` `{"error": {"code", "message"}}`.

use serde_json::{json, Map, Value};

mod admin;
mod ai;
mod byoc;
mod live;
mod streams;
mod trickle;

pub use ai::{field_schema, NOT_BLANK};

/// One API's part of a document: its paths and the component schemas they refer to.
#[derive(Debug, Default)]
pub struct Part {
    /// Paths by template.
    pub paths: Map<String, Value>,
    /// Component schemas by name.
    pub schemas: Map<String, Value>,
}

impl Part {
    /// Adds `other`'s paths and schemas to this part.
    pub fn merge(&mut self, other: Part) {
        self.paths.extend(other.paths);
        self.schemas.extend(other.schemas);
    }
}

/// A `$ref` to component schema `name`.
pub(crate) fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Livepeer's error body, `{"detail": {"msg"}}`: the gateway's APIs' and the orchestrator's
/// BYOC routes' errors.
pub(crate) fn http_error() -> Value {
    json!({"type": "object", "required": ["detail"], "properties": {"detail": {
        "type": "object", "required": ["msg"], "properties": {"msg": {"type": "string"}}}}})
}

/// A response described as `description` whose JSON body is component schema `schema`.
pub(crate) fn json_response(description: &str, schema: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": schema_ref(schema)}}})
}

/// A required path parameter `name` of type string, described as `description`.
pub(crate) fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "minLength": 1}})
}

/// The client bearer requirement of the public APIs (dropped by [`without_auth`]).
pub(crate) fn client_security() -> Value {
    json!([{"bearer": []}])
}

/// The document holding `part`, with the security schemes every API may refer to.
pub fn assemble(title: &str, description: &str, part: Part) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION"), "description": description},
        "paths": part.paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A client token (`[gateway] auth_tokens`)"},
                "adminBearer": {"type": "http", "scheme": "bearer",
                                "description": "The node's admin token (`--admin-token`)"},
                "orchestratorSecret": {"type": "apiKey", "in": "header", "name": "Authorization",
                                       "description": "The orchestrator's secret for worker registration (`[orchestrator.byoc] secret`), as is or after `Bearer `"},
                "trickleToken": {"type": "http", "scheme": "bearer",
                                 "description": "A channel's publish or subscribe token, when the URL does not carry it (`{name}.{token}`)"},
            },
            "schemas": part.schemas,
        },
    })
}

/// The gateway's APIs without the jobs API: AI, live push and playback, results, BYOC and AI
/// streams, plus the node's health, metrics and admin routes.
pub fn gateway_part() -> Part {
    let mut part = ai::part();
    part.merge(live::part());
    part.merge(byoc::part());
    part.merge(streams::part());
    part.merge(admin::part(true));
    part
}

/// The gateway's document (see [`gateway_part`]); the gateway adds its jobs API.
pub fn gateway_document() -> Value {
    assemble(
        "Weir gateway",
        "Livepeer-compatible AI API, live video, BYOC and live AI streams, and the node's \
         admin API, served by a Weir gateway.",
        gateway_part(),
    )
}

/// The gateway's document: see [`gateway_document`].
pub fn document() -> Value {
    gateway_document()
}

/// An orchestrator's document: `/info`, worker registration, the trickle channels and
/// `/healthz`; with `admin`, the
/// node's metrics, readiness and admin routes as well (an orchestrator-only node serves them
/// on the same listener; a combined node's orchestrator listener does not).
pub fn orchestrator_document(admin: bool) -> Value {
    let mut part = trickle::part();
    part.merge(byoc::info_part());
    part.merge(admin::part(admin));
    part.paths.insert(
        "/objects/{key}".into(),
        live::object_link(
            "An object one of the node's components stored, behind a signed, expiring link",
            "orchestrator",
            "HTTPError",
        ),
    );
    assemble(
        "Weir orchestrator",
        "The orchestrator's public routes: its capabilities and prices, and Livepeer's trickle \
         protocol for live AI streams.",
        part,
    )
}

/// Drops every operation's client bearer requirement and its 401 answer: what an open gateway
/// (one that asks clients for no token) serves, so that the document says what the server
/// does. The admin API keeps its own token.
pub fn without_auth(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in item.values_mut().filter_map(Value::as_object_mut) {
            if op.get("security") == Some(&client_security()) {
                op.remove("security");
                if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    r.remove("401");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
