//! The node's own routes: `/healthz`, `/readyz`, `/metrics`, and the admin API
//! (`/admin/components…`, `/admin/ledger`) behind the admin token (its own security scheme,
//! `adminBearer`). Errors are `AdminError` `{"error": {"code", "message"}}`.

use serde_json::{json, Map, Value};

use super::{json_response, path_param, Part};

fn schemas() -> Map<String, Value> {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let component = json!({"type": "object",
        "required": ["name", "world", "version", "hash", "limits", "instance"],
        "properties": {
            "name": {"type": "string"}, "world": {"type": "string", "enum": ["router", "pricing", "pipeline"]},
            "version": {"type": "string"}, "description": {"type": "string"}, "hash": {"type": "string"},
            "loaded_at_ms": {"type": "integer"}, "warm_instances": {"type": "integer"},
            "imports": strings, "exports": strings, "last_error": {"type": ["string", "null"]},
            "limits": {"type": "object", "properties": {
                "memory_mib": {"type": "integer"}, "timeout_ms": {"type": "integer"}, "fuel": {"type": "integer"},
                "pool_size": {"type": "integer"}, "max_calls_per_instance": {"type": "integer"},
                "storage_object_kib": {"type": "integer"}}},
            "instance": {"type": "string", "enum": ["warm", "fresh"]}}});
    let error = json!({"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}});
    let mut schemas = Map::new();
    schemas.insert("Component".into(), component);
    schemas.insert("AdminError".into(), error);
    schemas
}

fn error(d: &str) -> Value {
    json_response(d, "AdminError")
}

fn security() -> Value {
    json!([{"adminBearer": []}])
}

/// `/healthz`, `/readyz` and `/metrics`.
fn node_routes(paths: &mut Map<String, Value>, full: bool) {
    let health = if full {
        json!({"description": "Serving", "content": {"application/json": {"schema": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"const": "ok"}, "components": {"type": "integer", "minimum": 0}}}}}})
    } else {
        json!({"description": "Serving", "content": {"text/plain": {"schema": {"const": "ok"}}}})
    };
    paths.insert(
        "/healthz".into(),
        json!({"get": {"operationId": "healthz", "tags": ["node"],
        "summary": "Liveness", "responses": {"200": health}}}),
    );
    if !full {
        return;
    }
    let ready = |d: &str, v: bool| {
        json!({"description": d, "content": {"application/json": {"schema": {
            "type": "object", "required": ["ready"],
            "properties": {"ready": {"const": v}, "missing": {"type": "array", "items": {"type": "string"}}}}}}})
    };
    paths.insert("/readyz".into(), json!({"get": {"operationId": "readyz", "tags": ["node"],
        "summary": "Readiness: the router and pricing components are loaded",
        "responses": {"200": ready("Ready", true), "503": ready("Not ready: what is missing", false)}}}));
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "metrics", "tags": ["node"],
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "The text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      "500": error("The metrics could not be encoded")}}}),
    );
}

/// `/admin/components` and `/admin/components/{name}`.
fn components(paths: &mut Map<String, Value>) {
    let unauthorized = error("Missing or wrong admin token");
    let not_found = error("No such component");
    let failed = json!({"type": "object", "properties": {"name": {"type": "string"},
                        "error": {"type": ["string", "null"]}, "at_ms": {"type": "integer"}}});
    paths.insert(
        "/admin/components".into(),
        json!({"get": {
        "operationId": "admin_components", "tags": ["admin"], "security": security(),
        "summary": "Loaded components and failed loads",
        "responses": {
            "200": {"description": "The registry", "content": {"application/json": {"schema": {
                "type": "object", "required": ["components", "failed", "installing"], "properties": {
                    "components": {"type": "array", "items": super::schema_ref("Component")},
                    "failed": {"type": "array", "items": failed},
                    "installing": {"type": "array", "items": install_state()}}}}}},
            "401": unauthorized}}}),
    );
    let install = json!({"type": "object", "required": ["manifest", "wasm"], "properties": {
        "manifest": {"type": "string", "description": "The component's manifest (TOML)"},
        "wasm": {"type": "string", "format": "binary"}}});
    let component = json_response("The component", "Component");
    paths.insert("/admin/components/{name}".into(), json!({
        "parameters": [path_param("name", "The component's name")],
        "get": {"operationId": "admin_component", "tags": ["admin"], "security": security(),
                "summary": "One component, with its effective limits and instance mode",
                "responses": {"200": component, "401": unauthorized, "404": not_found}},
        "put": {"operationId": "admin_install", "tags": ["admin"], "security": security(),
                "summary": "Install a component: checked at once, then written atomically into the directory and compiled and loaded in the background",
                "parameters": [{"name": "wait", "in": "query", "required": false,
                                "description": "Seconds to wait for the load before answering 202 (default 0)",
                                "schema": {"type": "integer", "minimum": 0, "maximum": 600}}],
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": install}}},
                "responses": {"200": json_response("Replaced (loaded within `wait`)", "Component"),
                              "201": json_response("Installed (loaded within `wait`)", "Component"),
                              "202": {"description": "Accepted: compiling in the background; follow `Location`",
                                      "headers": {"Location": {"schema": {"type": "string"}}},
                                      "content": {"application/json": {"schema": install_state()}}},
                              "400": error("A malformed form or query, a missing or unexpected part, or a manifest naming another component"),
                              "401": unauthorized,
                              "409": error("An install of this name is running, or the component's world does not fit"),
                              "413": error("The body is too large"),
                              "422": error("The manifest is invalid, the wasm is not a component, or it fails to load"),
                              "429": error("Too many installs are compiling")}},
        "delete": {"operationId": "admin_remove", "tags": ["admin"], "security": security(),
                   "summary": "Unload a component and delete its files",
                   "responses": {"204": {"description": "Removed"}, "401": unauthorized, "404": not_found,
                                 "409": error("An install of this name is running")}},
    }));
    paths.insert("/admin/components/{name}/install".into(), json!({
        "parameters": [path_param("name", "The component's name")],
        "get": {"operationId": "admin_install_state", "tags": ["admin"], "security": security(),
                "summary": "The latest install of a component since the node started: its phase, times, estimated progress and outcome",
                "responses": {"200": {"description": "The install",
                                      "content": {"application/json": {"schema": install_state()}}},
                              "401": unauthorized, "404": error("No install of that name since the node started")}},
    }));
}

/// An install as `PUT /admin/components/{name}` (202) and its `install` resource show it.
fn install_state() -> Value {
    json!({"type": "object", "required": ["name", "state", "bytes", "elapsed_ms"], "properties": {
        "name": {"type": "string"},
        "state": {"enum": ["queued", "writing", "compiling", "linking", "loaded", "failed"]},
        "bytes": {"type": "integer"},
        "replaces": {"type": "boolean", "description": "A version was serving when the upload arrived"},
        "started_at_ms": {"type": "integer"},
        "elapsed_ms": {"type": "integer", "description": "Until now, or until the install ended"},
        "expected_compile_ms": {"type": ["integer", "null"], "description": "From this node's measured compile speed; null before its first compilation"},
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "An estimate; null while compiling with nothing to estimate from"},
        "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
        "component": {"description": "The loaded component, once loaded", "oneOf": [super::schema_ref("Component"), {"type": "null"}]}}})
}

/// Reload, call and the ledger.
fn operations(paths: &mut Map<String, Value>) {
    let unauthorized = error("Missing or wrong admin token");
    paths.insert("/admin/components/{name}/reload".into(), json!({
        "parameters": [path_param("name", "The component's name")],
        "post": {"operationId": "admin_reload", "tags": ["admin"], "security": security(),
                 "summary": "Reload a component from the directory",
                 "responses": {"200": json_response("Reloaded", "Component"), "401": unauthorized,
                               "404": error("No such component"), "409": error("The component's world does not fit"),
                               "422": error("The directory holds no such component, or it fails to load")}},
    }));
    let call = json!({"type": "object", "properties": {
        "request": {"type": "object"},
        "candidates": {"type": "array", "items": {"type": "object", "required": ["id", "price"]}},
        "context": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["content_type", "data_base64"], "properties": {
            "content_type": {"type": "string"}, "data_base64": {"type": "string"}}}}}});
    paths.insert("/admin/components/{name}/call".into(), json!({
        "parameters": [path_param("name", "The component's name")],
        "post": {"operationId": "admin_call", "tags": ["admin"], "security": security(),
                 "summary": "Try a component: `{request, candidates}` (router), `{request, context}` (pricing), `{request, inputs}` (pipeline)",
                 "requestBody": {"required": true, "content": {"application/json": {"schema": call}}},
                 "responses": {
                    "200": {"description": "The component's answer: `ranking`, `price` or `outputs`",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": error("A malformed call"), "401": unauthorized,
                    "404": error("No such component"), "413": error("The body is too large"),
                    "422": error("The component answered an error"),
                    "502": error("The component trapped or ran out of memory"),
                    "504": error("The component ran past its deadline")}},
    }));
    let rows = json!({"type": "array", "items": {"type": "object", "properties": {
        "party": {"type": "string"}, "capability": {"type": "string"}, "model": {"type": "string"},
        "jobs": {"type": "integer"}, "amount": {"type": "integer"}}}});
    paths.insert("/admin/ledger".into(), json!({"get": {
        "operationId": "admin_ledger", "tags": ["admin"], "security": security(),
        "summary": "Totals per party, capability and model: what the gateway spent, what the orchestrator charged",
        "responses": {"200": {"description": "Totals by role", "content": {"application/json": {"schema": {
                          "type": "object", "properties": {"gateway": rows, "orchestrator": rows}}}}},
                      "401": unauthorized, "500": error("The ledger could not be read")}}}));
}

/// The node's routes; without `full`, only the plain-text `/healthz` an orchestrator's own
/// listener answers in a combined node.
pub(super) fn part(full: bool) -> Part {
    let mut paths = Map::new();
    node_routes(&mut paths, full);
    if full {
        components(&mut paths);
        operations(&mut paths);
    }
    Part {
        paths,
        schemas: if full { schemas() } else { Map::new() },
    }
}
