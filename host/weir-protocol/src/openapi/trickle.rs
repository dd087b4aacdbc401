//! Livepeer's trickle protocol as an orchestrator serves it (`/ai/trickle/{ch}` and
//! `/ai/trickle/{ch}/{seq}`): every channel has a publish and a subscribe token, carried in
//! the URL (`{name}.{token}`) or as `Authorization: Bearer`. Errors are
//! `TrickleError` `{"error": {"message"}}`; a closed channel answers 404 with
//! `Lp-Trickle-Closed: terminated`, a segment out of the ring 470 with `Lp-Trickle-Latest`.
//! Channels exist only while a stream runs: any other name is a documented 404.

use serde_json::{json, Map, Value};

use super::{json_response, Part};

/// The largest sequence number the server accepts (`weir_trickle::MAX_SEQ`, 2^53).
pub const MAX_SEQ: i64 = 1 << 53;

fn error(d: &str) -> Value {
    json_response(d, "TrickleError")
}

fn closed_or_missing() -> Value {
    json!({"description": "No channel of that name, or the channel is closed (`Lp-Trickle-Closed: terminated`)",
           "headers": {"Lp-Trickle-Closed": {"schema": {"const": "terminated"}}},
           "content": {"application/json": {"schema": super::schema_ref("TrickleError")}}})
}

fn out_of_ring() -> Value {
    json!({"description": "The segment is no longer (or not yet) in the ring; `Lp-Trickle-Latest` is the next write",
           "headers": {"Lp-Trickle-Latest": {"schema": {"type": "integer"}},
                       "Lp-Trickle-Seq": {"schema": {"type": "integer"}}},
           "content": {"application/json": {"schema": super::schema_ref("TrickleError")}}})
}

fn security() -> Value {
    json!([{}, {"trickleToken": []}])
}

fn channel_param() -> Value {
    json!({"name": "ch", "in": "path", "required": true,
           "description": "`{name}.{token}`, or the name alone with `Authorization: Bearer {token}`",
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}(\\.[A-Za-z0-9_-]+)?$"}})
}

/// `POST|DELETE /ai/trickle/{ch}`.
fn channel() -> Value {
    let op = |id: &str, summary: &str| {
        json!({"operationId": id, "summary": summary, "tags": ["trickle"], "security": security(),
               "responses": {"200": {"description": "Done"},
                             "403": error("No token, a wrong one, or a subscribe token"),
                             "404": closed_or_missing()}})
    };
    json!({
        "parameters": [channel_param()],
        "post": op("trickle_create", "Check a publisher's access to a channel (channels are created with their stream)"),
        "delete": op("trickle_close", "Close the channel: subscribers get the end, later requests 404"),
    })
}

/// `GET|POST|DELETE /ai/trickle/{ch}/{seq}`.
fn segment() -> Value {
    let seq = json!({"name": "seq", "in": "path", "required": true,
        "description": "A sequence number; `-1` the next segment, `-2` (GET) the current one, `next` (GET) the next write",
        "schema": {"type": "string", "pattern": format!("^(-1|-2|next|[0-9]{{1,16}})$"),
                   "description": format!("at most {MAX_SEQ}")}});
    let refused = "No token, a wrong one, or a subscribe token used to publish or delete";
    json!({
        "parameters": [channel_param(), seq],
        "get": {"operationId": "trickle_read", "tags": ["trickle"], "security": security(),
                "summary": "Read a segment, streamed as it is written (long-poll until it starts)",
                "responses": {
                    "200": {"description": "The segment's bytes (the channel's media type); for `next`, the next write as text",
                            "headers": {"Lp-Trickle-Seq": {"schema": {"type": "integer"}},
                                        "Lp-Trickle-Latest": {"schema": {"type": "integer"}}},
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                    "400": error("A seq that is not -1, -2, `next` or a plain integer up to 2^53"),
                    "403": error("No token or a wrong one"),
                    "404": closed_or_missing(),
                    "470": out_of_ring()}},
        "post": {"operationId": "trickle_write", "tags": ["trickle"], "security": security(),
                 "summary": "Write a segment, streamed; subscribers read it as it arrives",
                 "parameters": [{"name": "Lp-Trickle-Reset", "in": "header",
                                 "description": "The publisher restarted: older segments are closed",
                                 "schema": {"type": "string"}}],
                 "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                 "responses": {
                    "200": {"description": "Written", "headers": {"Lp-Trickle-Seq": {"schema": {"type": "integer"}}}},
                    "400": error("A seq that is not -1 or a plain integer up to 2^53, or a body cut off"),
                    "403": error(refused),
                    "404": closed_or_missing(),
                    "409": error("The segment was replaced, deleted or evicted while being written"),
                    "413": error("The segment is larger than the channel's limit"),
                    "470": out_of_ring(),
                    "503": error("The node's or the channel's trickle buffers are full")}},
        "delete": {"operationId": "trickle_end_segment", "tags": ["trickle"], "security": security(),
                   "summary": "End a segment that is being written",
                   "responses": {
                    "200": {"description": "Ended"},
                    "400": error("A seq that is not a plain integer up to 2^53"),
                    "403": error(refused),
                    "404": {"description": "No such channel, the channel is closed, or the segment is not in the ring",
                            "headers": {"Lp-Trickle-Closed": {"schema": {"const": "terminated"}}},
                            "content": {"application/json": {"schema": super::schema_ref("TrickleError")}}}}},
    })
}

/// The trickle routes.
pub(super) fn part() -> Part {
    let mut paths = Map::new();
    paths.insert("/ai/trickle/{ch}".into(), channel());
    paths.insert("/ai/trickle/{ch}/{seq}".into(), segment());
    let mut schemas = Map::new();
    schemas.insert(
        "TrickleError".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}}}),
    );
    Part { paths, schemas }
}
