//! Bring-your-own-compute batch jobs (`POST /process/request/{route}`) and discovery
//! (`GET /gateway/orchestrators` on a gateway, `GET /info` on an orchestrator). Errors are
//! Livepeer's `HTTPError` `{"detail": {"msg"}}`.

use serde_json::{json, Map, Value};

use super::{json_response, Part};
use crate::byoc::{MAX_JOB_HEADER_BYTES, MAX_TIMEOUT_SECONDS};

/// The `Livepeer` header: a base64 JSON job request.
pub(crate) fn job_header(required: bool) -> Value {
    json!({"name": "Livepeer", "in": "header", "required": required,
           "description": format!("Base64 JSON: `{{capability, timeout_seconds (1 to {MAX_TIMEOUT_SECONDS}), id, request, parameters}}`"),
           "schema": {"type": "string", "maxLength": MAX_JOB_HEADER_BYTES}})
}

/// `POST /process/request/{route}`.
fn process_request() -> Value {
    let error = |d: &str| json_response(d, "HTTPError");
    json!({
        "parameters": [{"name": "route", "in": "path", "required": true,
                        "description": "The worker's route (may hold `/`)",
                        "schema": {"type": "string"}}],
        "post": {
            "operationId": "process_request",
            "summary": "Run a batch job on a BYOC worker: routed, paid for its timeout, forwarded to `{url}/{route}`",
            "tags": ["byoc"],
            "security": super::client_security(),
            "parameters": [job_header(true)],
            "requestBody": {"content": {"*/*": {"schema": {}}}},
            "responses": {
                "200": {"description": "The worker's answer, relayed (server-sent events relayed as they come)",
                        "headers": {"Livepeer-Balance": {"schema": {"type": "integer"}},
                                    "Weir-Charge": {"schema": {"type": "integer"}}},
                        "content": {"*/*": {"schema": {}}, "text/event-stream": {"schema": {"type": "string"}}}},
                "400": error("A missing or malformed Livepeer header"),
                "401": error("Missing or unknown bearer token"),
                "413": error("The body is larger than `max_upload_mib`"),
                "503": error("No orchestrator offers the capability, or none could serve it (the cause is in the message)"),
            }
        }
    })
}

/// `GET /gateway/orchestrators`.
fn orchestrators() -> Value {
    let known = json!({"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string"},
        "info": {"oneOf": [super::schema_ref("OrchestratorInfo"), {"type": "null"}]},
        "refreshed_ms_ago": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "suspended_ms": {"type": ["integer", "null"]},
        "suspended_because": {"type": ["string", "null"]},
        "stats": {}}});
    json!({"get": {
        "operationId": "gateway_orchestrators",
        "summary": "What discovery knows: every orchestrator's info, prices, errors and suspensions",
        "tags": ["byoc"],
        "security": super::client_security(),
        "responses": {
            "200": {"description": "The known orchestrators", "content": {"application/json": {"schema": {
                "type": "object", "required": ["orchestrators"],
                "properties": {"orchestrators": {"type": "array", "items": known}}}}}},
            "401": json_response("Missing or unknown bearer token", "HTTPError"),
        }
    }})
}

/// `GET /info`'s answer.
fn info_schema() -> Value {
    let model = json!({"type": "object",
        "required": ["capability", "model_id", "warm", "runner", "price", "capacity", "in_flight"],
        "properties": {
            "capability": {"type": "string"}, "model_id": {"type": "string"}, "warm": {"type": "boolean"},
            "runner": {"type": "string"},
            "price": {"type": "object", "required": ["price_per_unit", "pixels_per_unit", "currency"],
                      "properties": {"price_per_unit": {"type": "integer", "minimum": 0},
                                     "pixels_per_unit": {"type": "integer", "minimum": 0},
                                     "currency": {"type": "string"}}},
            "capacity": {"type": "integer", "minimum": 0}, "in_flight": {"type": "integer", "minimum": 0}}});
    json!({"type": "object", "required": ["version", "service_url", "models"], "properties": {
        "version": {"type": "string"}, "service_url": {"type": "string"},
        "region": {"type": "string"}, "gpu_class": {"type": "string"},
        "models": {"type": "array", "items": model}}})
}

fn schemas() -> Map<String, Value> {
    let mut schemas = Map::new();
    schemas.insert("OrchestratorInfo".into(), info_schema());
    schemas.insert("HTTPError".into(), super::http_error());
    schemas
}

/// The gateway's BYOC batch route and `/gateway/orchestrators`.
pub(super) fn part() -> Part {
    let mut paths = Map::new();
    paths.insert("/process/request/{route}".into(), process_request());
    paths.insert("/gateway/orchestrators".into(), orchestrators());
    Part {
        paths,
        schemas: schemas(),
    }
}

/// `POST /capability/register` and `/capability/unregister`: external workers, with the
/// orchestrator's secret.
fn registration(paths: &mut Map<String, Value>) {
    let error = |d: &str| json_response(d, "HTTPError");
    let ok = json!({"description": "Done", "content": {"text/plain": {"schema": {"const": "ok"}}}});
    let refused = |paths: Value| {
        let mut r = json!({
            "401": error("Missing or wrong orchestrator secret"),
            "403": error("A secret was sent but registration is off: no orchestrator secret is configured"),
            "409": error("The name is a pipeline configured on this orchestrator"),
        });
        if let (Some(r), Value::Object(more)) = (r.as_object_mut(), paths) {
            r.extend(more);
        }
        r
    };
    let register = json!({"type": "object", "required": ["name", "url", "capacity"], "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
        "description": {"type": "string", "maxLength": 1024},
        "url": {"type": "string", "pattern": "^https?://"},
        "capacity": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
        "price_per_unit": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
        "price_scaling": {"type": "integer", "minimum": 1, "maximum": u64::MAX, "default": 1},
        "currency": {"type": "string"}, "token": {"type": ["string", "null"]}}});
    let mut responses = refused(json!({"400": error("Not a valid registration"),
                                       "503": error("`max_capabilities` are registered")}));
    responses["200"] = ok.clone();
    paths.insert(
        "/capability/register".into(),
        json!({"post": {
        "operationId": "capability_register", "tags": ["orchestrator"],
        "summary": "Register (or update) an external worker's capability (Livepeer's BYOC body)",
        "security": [{"orchestratorSecret": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": register}}},
        "responses": responses}}),
    );
    let mut responses = refused(
        json!({"400": error("A body that is not UTF-8, or an object without `name`"),
                                       "404": error("No such capability is registered")}),
    );
    responses["200"] = ok;
    paths.insert(
        "/capability/unregister".into(),
        json!({"post": {
        "operationId": "capability_unregister", "tags": ["orchestrator"],
        "summary": "Unregister a worker's capability: the body is its name, or `{\"name\"}`",
        "security": [{"orchestratorSecret": []}],
        "requestBody": {"required": true, "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string"}}}}}},
        "responses": responses}}),
    );
}

/// The orchestrator's `GET /info` and worker registration.
pub(super) fn info_part() -> Part {
    let mut paths = Map::new();
    registration(&mut paths);
    paths.insert(
        "/info".into(),
        json!({"get": {
            "operationId": "info",
            "summary": "The orchestrator's models, warm or cold, prices quoted by its pricing component, capacity and load",
            "tags": ["orchestrator"],
            "responses": {"200": json_response("The orchestrator's info", "OrchestratorInfo")}
        }}),
    );
    Part {
        paths,
        schemas: schemas(),
    }
}
