//! Live AI streams on a gateway: `POST /process/stream/start` (or Livepeer's
//! `POST /live/video-to-video/{stream}/start`), then `…/{id}/update`, `…/{id}/status`,
//! `…/{id}/stop` and `…/{id}/data`. Errors are Livepeer's `HTTPError` `{"detail": {"msg"}}`;
//! a stream id the gateway does not hold (a generated one, say) is a documented 404.

use serde_json::{json, Map, Value};

use super::{json_response, path_param, Part};

/// The states `GET …/{id}/status` reports.
pub const STREAM_STATES: [&str; 3] = ["running", "stopped", "failed"];

fn schemas() -> Map<String, Value> {
    let url = json!({"type": "string"});
    let urls = json!({"type": "object", "required": [
            "stream_id", "rtmp_url", "whip_url", "whep_url", "rtmp_output_url", "hls_url",
            "update_url", "status_url", "data_url", "stop_url"],
        "properties": {"stream_id": url, "rtmp_url": url, "whip_url": url, "whep_url": url,
            "rtmp_output_url": url, "hls_url": url, "update_url": url, "status_url": url,
            "data_url": url, "stop_url": url}});
    let opt_string = json!({"type": ["string", "null"]});
    let count = json!({"type": "integer", "minimum": 0});
    let status = json!({"type": "object",
        "required": ["stream_id", "capability", "state", "swaps", "segments_in", "segments_out", "paid", "charged"],
        "properties": {
            "stream_id": {"type": "string"}, "capability": {"type": "string"},
            "state": {"type": "string", "enum": STREAM_STATES},
            "orchestrator": opt_string, "swaps": count, "segments_in": count, "segments_out": count,
            "paid": count, "charged": count, "params": {}, "last_event": {},
            "stop_reason": opt_string, "error": opt_string}});
    let start = json!({"type": "object", "properties": {
        "stream_name": {"type": "string"},
        "rtmp_output": {"type": "string", "maxLength": 0, "description": "Not supported yet (501 unless empty)"},
        "stream_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "description": "Generated when empty"},
        "params": {"type": ["object", "null"], "description": "Start parameters for the worker"}}});
    let mut schemas = Map::new();
    schemas.insert("StreamUrls".into(), urls);
    schemas.insert("StreamStatus".into(), status);
    schemas.insert("StreamStart".into(), start);
    schemas
}

fn error(d: &str) -> Value {
    json_response(d, "HTTPError")
}

/// The answers of a stream start.
fn start_responses() -> Value {
    json!({
        "200": json_response("Started: where to send and read everything", "StreamUrls"),
        "400": error("A malformed body or Livepeer header, or a bad stream id"),
        "401": error("Missing or unknown bearer token"),
        "409": error("A stream with this id exists"),
        "501": error("`rtmp_output` is not supported yet"),
        "503": error("`max_streams` streams are live, or no orchestrator could start it"),
    })
}

/// The routes on `/{prefix}/{id}/…`: update and status (and, for `/process/stream`, stop and
/// data).
fn per_stream(paths: &mut Map<String, Value>, prefix: &str, all: bool) {
    let id = json!([path_param("id", "The stream id")]);
    let not_found = error("No such stream on this gateway");
    let tag = json!(["streams"]);
    let op = |name: &str| {
        format!(
            "{}_{name}",
            prefix.trim_matches('/').replace(['/', '-'], "_")
        )
    };
    paths.insert(format!("{prefix}/{{id}}/update"), json!({"parameters": id, "post": {
        "operationId": op("update"), "tags": tag, "security": super::client_security(),
        "summary": "New params for the stream, sent over its control channel",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "Delivered (and accepted by a pipeline component)", "content": {"application/json": {"schema": {
                "type": "object", "required": ["ok"], "properties": {"ok": {"const": true}}}}}},
            "400": error("The params are not a JSON object, or the pipeline refused them"),
            "401": error("Missing or unknown bearer token"),
            "404": not_found,
            "409": error("The stream has stopped or is moving to another orchestrator"),
            "422": error("The pipeline refused the params"),
            "502": error("The params could not be delivered"),
        }}}));
    paths.insert(
        format!("{prefix}/{{id}}/status"),
        json!({"parameters": id, "get": {
        "operationId": op("status"), "tags": tag, "security": super::client_security(),
        "summary": "The stream's state, counters and last event",
        "responses": {"200": json_response("The stream", "StreamStatus"),
                      "401": error("Missing or unknown bearer token"), "404": not_found}}}),
    );
    if !all {
        return;
    }
    paths.insert(
        format!("{prefix}/{{id}}/stop"),
        json!({"parameters": id, "post": {
        "operationId": op("stop"), "tags": tag, "security": super::client_security(),
        "summary": "Stop the stream; answers its final state",
        "responses": {"200": json_response("The stream, stopped", "StreamStatus"),
                      "401": error("Missing or unknown bearer token"), "404": not_found}}}),
    );
    paths.insert(
        format!("{prefix}/{{id}}/data"),
        json!({"parameters": id, "get": {
        "operationId": op("data"), "tags": tag, "security": super::client_security(),
        "summary": "The worker's JSONL data records as server-sent events, as they arrive",
        "responses": {"200": {"description": "One `data:` event per record",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "401": error("Missing or unknown bearer token"), "404": not_found}}}),
    );
}

/// The AI stream routes.
pub(super) fn part() -> Part {
    let mut paths = Map::new();
    paths.insert("/process/stream/start".into(), json!({"post": {
        "operationId": "process_stream_start", "tags": ["streams"],
        "summary": "Start a live AI stream on an orchestrator offering the capability",
        "security": super::client_security(),
        "parameters": [super::byoc::job_header(true)],
        "requestBody": {"content": {"application/json": {"schema": super::schema_ref("StreamStart")}}},
        "responses": start_responses(),
    }}));
    let live = json!({"type": "object", "properties": {
        "pipeline": {"type": "string", "description": "The capability (or `pipeline=` in `query`)"},
        "params": {}, "query": {"type": "string", "description": "`pipeline=…&params=…` as Livepeer's media server sends"}}});
    paths.insert(
        "/live/video-to-video/{stream}/start".into(),
        json!({
            "parameters": [path_param("stream", "The stream id to use")],
            "post": {
                "operationId": "live_video_to_video_start", "tags": ["streams"],
                "summary": "Livepeer's live video-to-video start",
                "security": super::client_security(),
                "parameters": [super::byoc::job_header(false)],
                "requestBody": {"content": {"application/json": {"schema": live}}},
                "responses": start_responses(),
            }
        }),
    );
    per_stream(&mut paths, "/process/stream", true);
    per_stream(&mut paths, "/live/video-to-video", false);
    Part {
        paths,
        schemas: schemas(),
    }
}
