//! The jobs API in the OpenAPI document: one submit variant per configured model.

use serde_json::{json, Map, Value};
use weir_jobs::catalog::Catalog;

/// The OpenAPI schema of one model field; `None` for an input in a form, which
/// [`submit_variant`] describes as a file part instead.
fn field_openapi(f: &weir_jobs::catalog::Field, form: bool) -> Option<Value> {
    use weir_jobs::catalog::FieldType;
    Some(match f.ty {
        // A required text must hold something other than white space.
        FieldType::Text { max } if f.required => {
            json!({"type": "string", "minLength": 1, "maxLength": max,
                   "pattern": weir_protocol::openapi::NOT_BLANK})
        }
        FieldType::Text { max } => json!({"type": "string", "maxLength": max}),
        FieldType::Int { min, max, default } => {
            json!({"type": "integer", "minimum": min, "maximum": max, "default": default})
        }
        FieldType::Number { min, max, default } => {
            json!({"type": "number", "minimum": min, "maximum": max, "default": default})
        }
        FieldType::Input { .. } if form => return None,
        FieldType::Input { part } => json!({
            "type": "string", "format": "uri", "maxLength": 2048, "pattern": "^https?://",
            "description": format!("http(s) URL fetched by the gateway; or upload the file as multipart part `{part}`")
        }),
    })
}

/// The accepted media types of an upload in form part `part` (what `sniff` recognises).
fn part_media_types(part: &str) -> &'static str {
    if part == "audio" {
        "audio/wav, audio/mpeg, audio/flac, audio/ogg"
    } else {
        "image/png, image/jpeg, image/gif, image/webp"
    }
}

/// One model's submit body, as JSON (inputs are URLs) or as a form (inputs are file parts),
/// with the form's `encoding` (the accepted types of each file part).
fn submit_variant(
    id: &str,
    kind: weir_jobs::catalog::Kind,
    form: bool,
) -> (Value, Map<String, Value>) {
    use weir_jobs::catalog::FieldType;
    let mut props = Map::new();
    props.insert("model".to_owned(), json!({"const": id}));
    props.insert(
        "webhookUrl".to_owned(),
        json!({"type": "string", "pattern": "^https?://",
               "description": "An http(s) URL where the final state is POSTed (Standard Webhooks)"}),
    );
    let mut required = vec![json!("model")];
    let mut encoding = Map::new();
    for f in kind.fields() {
        let name = match (f.ty, field_openapi(f, form)) {
            (_, Some(schema)) => {
                props.insert(f.name.to_owned(), schema);
                f.name
            }
            (FieldType::Input { part }, None) => {
                props.insert(
                    part.to_owned(),
                    json!({"type": "string", "format": "binary", "minLength": 1}),
                );
                encoding.insert(
                    part.to_owned(),
                    json!({"contentType": part_media_types(part)}),
                );
                part
            }
            (_, None) => continue,
        };
        if f.required {
            required.push(json!(name));
        }
    }
    let variant = json!({
        "title": id, "type": "object", "properties": props,
        "required": required, "additionalProperties": false,
    });
    (variant, encoding)
}

/// The submit request body: one variant per configured model, discriminated by `model`.
fn submit_body(catalog: &Catalog) -> Value {
    let mut json_variants = Vec::new();
    let mut form_variants = Vec::new();
    let mut encoding = Map::new();
    for id in catalog.ids() {
        let Some((_, kind)) = catalog.get(id) else {
            continue;
        };
        json_variants.push(submit_variant(id, kind, false).0);
        let (variant, parts) = submit_variant(id, kind, true);
        form_variants.push(variant);
        encoding.extend(parts);
    }
    // With no job models configured there is nothing to discriminate: an empty `oneOf`
    // would accept no body at all.
    let one_of = |variants: Vec<Value>| match variants.as_slice() {
        [] => {
            json!({"type": "object", "description": "No job models are configured on this gateway"})
        }
        [only] => only.clone(),
        _ => json!({"oneOf": variants, "discriminator": {"propertyName": "model"}}),
    };
    json!({"required": true, "content": {
        "application/json": {"schema": one_of(json_variants)},
        "multipart/form-data": {"schema": one_of(form_variants), "encoding": encoding}
    }})
}

/// The schemas of a job's status, of one page of the list, of one server-sent event and of
/// the jobs API's errors.
fn job_schemas() -> (Value, Value, Value, Value) {
    let status = json!({
        "type": "object",
        "required": ["jobId", "model", "status"],
        "properties": {
            "jobId": {"type": "string"}, "model": {"type": "string"},
            "status": {"enum": ["queued", "processing", "completed", "failed", "canceled"]},
            "position": {"type": "integer"}, "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "startedAt": {"type": "string"}, "processingTimeMs": {"type": "integer"},
            "result": {"type": "object", "properties": {
                "url": {"type": "string"}, "urlExpiresAt": {"type": "string"}, "contentType": {"type": "string"},
                "fileSizeBytes": {"type": "integer"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                "durationMs": {"type": "integer"}}},
            "error": {"type": "string"}, "failedAt": {"type": "string"}, "canceledAt": {"type": "string"},
            "webhooks": {"type": "array"}
        }
    });
    let list = json!({"type": "object", "required": ["jobs", "nextCursor"], "properties": {
        "jobs": {"type": "array", "items": status},
        "nextCursor": {"type": ["string", "null"], "pattern": "^-?[0-9]{1,19}$"}}});
    // One server-sent event: `event: status`, its data the job's status as JSON.
    let event = json!({"type": "object", "required": ["data"], "properties": {
        "event": {"const": "status"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": status}}});
    let error = json!({"$ref": "#/components/schemas/JobError"});
    (status, list, event, error)
}

/// The jobs API in OpenAPI 3.1, built from the same schemas that validate submits: one request
/// variant per configured model, discriminated by `model`.
pub(crate) fn openapi_paths(catalog: &Catalog) -> Map<String, Value> {
    let (status, list, event, error) = job_schemas();
    let err_response =
        |d: &str| json!({"description": d, "content": {"application/json": {"schema": error}}});
    let ok =
        |d: &str| json!({"description": d, "content": {"application/json": {"schema": status}}});
    let unauthorized = err_response("Missing or unknown bearer token");
    let unavailable = err_response("The job store or the result storage is unavailable");
    let mut paths = Map::new();
    paths.insert("/api/v1/generate".to_owned(), json!({
        "post": {
            "summary": "Submit an async generation job",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "Idempotency-Key", "in": "header",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}},
                {"name": "Prefer", "in": "header", "schema": {"type": "string", "example": "wait=10"}}
            ],
            "requestBody": submit_body(catalog),
            "responses": {
                "202": ok("Queued (or an idempotent replay); Location names the job"),
                "200": ok("Finished within Prefer: wait"),
                "400": err_response("A malformed body or header, or an input URL that is refused"),
                "401": unauthorized,
                "409": err_response("Idempotency-Key reused with another body"),
                "413": err_response("An upload is too large"),
                "415": err_response("An input is not a supported image or audio file"),
                "422": err_response("Unknown model or invalid parameters, or an input URL that answered an error"),
                "429": err_response("Submit rate exceeded"),
                "502": err_response("An input URL could not be fetched"),
                "503": unavailable,
                "504": err_response("Fetching an input URL timed out")
            }
        },
        "get": {
            "summary": "List the caller's jobs, newest first",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "status", "in": "query",
                 "schema": {"type": "string", "enum": ["queued", "processing", "completed", "failed", "canceled"]}},
                {"name": "cursor", "in": "query", "description": "A nextCursor from the previous page",
                 "schema": {"type": "string", "pattern": "^-?[0-9]{1,18}$"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}
            ],
            "responses": {"200": {"description": "One page of jobs", "content": {"application/json": {"schema": list}}},
                          "400": err_response("A bad status, cursor or limit"),
                          "401": unauthorized, "503": unavailable}
        }
    }));
    let job_id = json!([{"name": "jobId", "in": "path", "required": true,
                         "description": "The job's id, as returned by the submit",
                         "schema": {"type": "string"}}]);
    paths.insert(
        "/api/v1/generate/{jobId}".to_owned(),
        json!({
            "parameters": job_id,
            "get": {"summary": "A job's status", "security": [{"bearer": []}],
                    "responses": {"200": ok("The job"), "404": err_response("No such job"),
                                  "401": unauthorized, "503": unavailable}}
        }),
    );
    paths.insert("/api/v1/generate/{jobId}/cancel".to_owned(), json!({
        "parameters": job_id,
        "post": {"summary": "Cancel a job", "security": [{"bearer": []}],
                 "responses": {"200": ok("Canceled"), "202": ok("Running: its work is being stopped"),
                               "409": err_response("Already ended"), "404": err_response("No such job"),
                               "401": unauthorized, "503": unavailable}}
    }));
    paths.insert("/api/v1/generate/{jobId}/events".to_owned(), json!({
        "parameters": job_id,
        "get": {"summary": "The job's status as server-sent events until it ends", "security": [{"bearer": []}],
                "responses": {"200": {"description": "Status events until the job ends",
                                      "content": {"text/event-stream": {"schema": event}}},
                              "404": err_response("No such job"), "401": unauthorized,
                              "503": unavailable}}
    }));
    paths
}
