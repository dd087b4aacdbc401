//! Live video on a gateway: HTTP push (`POST|PUT /live/{stream}/{file}`), HLS and low-latency
//! HLS playback (`/stream/...`), recordings (`/recordings/...`), and stored results
//! (`/results/{name}`, `/objects/{key}`). Errors are Livepeer's `HTTPError`, except the jobs
//! storage's `/objects`, which answers the jobs API's `JobError`.

use serde_json::{json, Map, Value};

use super::{json_response, path_param, Part};

/// The media type of an HLS playlist.
pub const PLAYLIST: &str = "application/vnd.apple.mpegurl";

fn playlist_ok(description: &str) -> Value {
    json!({"description": description, "content": {PLAYLIST: {"schema": {"type": "string"}}}})
}

fn not_found() -> Value {
    json_response(
        "No such stream, rendition or file (or no longer held)",
        "HTTPError",
    )
}

fn binary() -> Value {
    json!({"schema": {"type": "string", "format": "binary"}})
}

/// A pushed segment: bytes, at least one.
fn segment() -> Value {
    json!({"schema": {"type": "string", "format": "binary", "minLength": 1}})
}

/// A 400 from the query string: axum's plain-text rejection of a parameter that is not a
/// number, or the handler's `HTTPError`.
fn bad_query() -> Value {
    json!({"description": "A query parameter that is not a non-negative integer, or `_HLS_msn` more than two segments ahead",
           "content": {"application/json": {"schema": super::schema_ref("HTTPError")},
                       "text/plain": {"schema": {"type": "string"}}}})
}

/// `POST|PUT /live/{stream}/{file}`.
fn push() -> Value {
    let error = |d: &str| json_response(d, "HTTPError");
    let op = |id: &str| {
        json!({
            "operationId": id,
            "summary": "Push one segment of a live stream (Livepeer's HTTP push)",
            "tags": ["live"],
            "security": super::client_security(),
            "parameters": [
                {"name": "Content-Duration", "in": "header",
                 "description": "The segment's length in milliseconds (default: probed)",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 300000}},
                {"name": "Accept", "in": "header",
                 "description": "`multipart/mixed` to get the renditions back, one part each",
                 "schema": {"type": "string"}}
            ],
            "requestBody": {"required": true, "content": {
                "video/mp2t": segment(), "video/mp4": segment(), "application/octet-stream": segment()}},
            "responses": {
                // No `content`: the answer is empty unless `Accept: multipart/mixed` asks for
                // the renditions.
                "200": {"description": "Transcoded and listed: an empty body, or with `Accept: multipart/mixed` the renditions as `multipart/mixed`, one part each (`Rendition-Name`)"},
                "400": error("A file name other than `{seq}.ts` or `{seq}.mp4`, an empty body or a bad Content-Duration"),
                "401": error("Missing or unknown bearer token"),
                "403": error("The auth webhook refused the stream"),
                "409": error("The stream was republished while this segment was transcoded"),
                "413": error("The segment is larger than `max_push_mib`"),
                "415": error("The body is media of another kind than MPEG-TS or MP4"),
                "422": error("The segment cannot be read as MPEG-TS or MP4"),
                "503": error("No sessions available: `max_sessions` streams are live, or no orchestrator could transcode"),
            }
        })
    };
    json!({
        "parameters": [
            path_param("stream", "The stream key"),
            {"name": "file", "in": "path", "required": true,
             "description": "`{seq}.ts` or `{seq}.mp4`: the segment's number in the stream",
             "schema": {"type": "string", "pattern": "^[0-9]{1,19}\\.(ts|mp4)$"}}
        ],
        "post": op("live_push"),
        "put": op("live_push_put"),
    })
}

/// The playback routes: `/stream/...` and `/recordings/...`.
fn playback(paths: &mut Map<String, Value>) {
    let get = |id: &str, summary: &str, ok: Value| {
        json!({"operationId": id, "summary": summary, "tags": ["live"],
               "responses": {"200": ok, "404": not_found()}})
    };
    paths.insert("/stream/{file}".into(), json!({
        "parameters": [{"name": "file", "in": "path", "required": true,
                        "description": "`{stream}.m3u8`", "schema": {"type": "string"}}],
        "get": get("stream_master", "The master playlist of a live stream (source and renditions)",
                   playlist_ok("The master playlist")),
    }));
    paths.insert("/stream/{stream}/{file}".into(), json!({
        "parameters": [path_param("stream", "The stream key"),
                       {"name": "file", "in": "path", "required": true,
                        "description": "`{rendition}.m3u8` (a media playlist) or `ll.m3u8` (the low-latency master)",
                        "schema": {"type": "string"}}],
        "get": get("stream_media", "A rendition's media playlist, or the low-latency master playlist",
                   playlist_ok("The playlist")),
    }));
    let mut segment = get(
        "stream_file",
        "A segment (`{msn}.ts`), the low-latency playlist (`ll.m3u8`, blocking reload with \
         `_HLS_msn`/`_HLS_part`), its init section (`*.mp4`), parts (`{msn}.{part}.m4s`) or \
         whole fMP4 segments (`{msn}.m4s`)",
        json!({"description": "The file", "content": {
            "video/mp2t": binary(), "video/mp4": binary(), PLAYLIST: {"schema": {"type": "string"}}}}),
    );
    segment["parameters"] = json!([
        {"name": "_HLS_msn", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}},
        {"name": "_HLS_part", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}
    ]);
    segment["responses"]["400"] = bad_query();
    segment["responses"]["503"] = json_response(
        "The awaited part did not appear within three target durations",
        "HTTPError",
    );
    paths.insert(
        "/stream/{stream}/{rendition}/{file}".into(),
        json!({
            "parameters": [path_param("stream", "The stream key"),
                           path_param("rendition", "A rendition name (`source`, `P360p30fps16x9`, …)"),
                           path_param("file", "The file")],
            "get": segment,
        }),
    );
    let recorded = json!({"description": "A recorded playlist or segment", "content": {
        PLAYLIST: {"schema": {"type": "string"}}, "video/mp2t": binary()}});
    paths.insert("/recordings/{stream}/{file}".into(), json!({
        "parameters": [path_param("stream", "The stream key"), path_param("file", "`index.m3u8` or a file")],
        "get": get("recording", "A recorded stream's playlist (`index.m3u8`)", recorded.clone()),
    }));
    paths.insert("/recordings/{stream}/{rendition}/{file}".into(), json!({
        "parameters": [path_param("stream", "The stream key"), path_param("rendition", "A rendition name"),
                       path_param("file", "A playlist or segment")],
        "get": get("recording_file", "A recorded rendition's playlist or segment", recorded),
    }));
}

/// `/results/{name}` and `/objects/{key}`.
fn stored(paths: &mut Map<String, Value>) {
    let any = json!({"description": "The stored bytes, with their media type",
                     "content": {"*/*": binary()}});
    paths.insert(
        "/results/{name}".into(),
        json!({
            "parameters": [path_param("name", "The result's name, as in the AI answer's URL")],
            "get": {"operationId": "result", "summary": "A result of the AI API", "tags": ["ai"],
                    "responses": {"200": any, "404": json_response("No such result", "HTTPError")}},
        }),
    );
    paths.insert(
        "/objects/{key}".into(),
        object_link(
            "A job input or result behind a signed, expiring link",
            "jobs",
            "JobError",
        ),
    );
}

/// `GET /objects/{key}`: an object behind a signed, expiring link; errors as `error_schema`.
pub(super) fn object_link(summary: &str, tag: &str, error_schema: &str) -> Value {
    let any = json!({"description": "The stored bytes, with their media type",
                     "content": {"*/*": binary()}});
    let error = |d: &str| json_response(d, error_schema);
    json!({
        "parameters": [path_param("key", "The object's key, as in the signed link"),
                       {"name": "expires", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}},
                       {"name": "sig", "in": "query", "schema": {"type": "string"}}],
        "get": {"operationId": "object", "summary": summary,
                "tags": [tag],
                "responses": {"200": any,
                              "400": {"description": "`expires` is not a non-negative integer",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "403": error("No signature, a wrong one, or an expired link"),
                              "404": error("The object expired or never existed, or this listener stores none"),
                              "503": error("The storage is unavailable")}},
    })
}

/// The live and stored-media routes.
pub(super) fn part() -> Part {
    let mut paths = Map::new();
    paths.insert("/live/{stream}/{file}".into(), push());
    playback(&mut paths);
    stored(&mut paths);
    let mut schemas = Map::new();
    schemas.insert("JobError".into(), job_error());
    Part { paths, schemas }
}

/// The jobs API's error body.
pub fn job_error() -> Value {
    json!({"type": "object", "required": ["error", "code"], "properties": {
        "error": {"type": "string"}, "code": {"type": "string"}, "details": {"type": "array"}}})
}
