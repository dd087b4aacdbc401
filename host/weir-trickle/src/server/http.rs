//! The HTTP handlers under `/ai/trickle/` and the answers they give.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use prometheus::IntCounter;

use super::registry::{Found, Received};
use super::{Inner, MAX_SEQ};
use crate::budget::Exhausted;
use crate::channel::{Access, Channel, ReadTarget, WriteRefused};
use crate::segment::{End, Read, ReadPos, Segment, Stop};
use crate::{CLOSED_HEADER, LATEST_HEADER, RESET_HEADER, SEQ_HEADER};

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Parse a seq: `-1`, (when `current` is allowed) `-2`, or plain decimal digits (no sign,
/// no spaces) up to [`MAX_SEQ`].
fn parse_seq(s: &str, current: bool) -> Option<i64> {
    match s {
        "-1" => return Some(-1),
        "-2" if current => return Some(-2),
        _ => {}
    }
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|seq| *seq <= MAX_SEQ)
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "message": message } }).to_string();
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn status_470() -> StatusCode {
    StatusCode::from_u16(470).unwrap_or(StatusCode::NOT_FOUND)
}

fn closed() -> Response {
    let mut r = error(StatusCode::NOT_FOUND, "trickle channel closed");
    r.headers_mut()
        .insert(CLOSED_HEADER, HeaderValue::from_static("terminated"));
    r
}

fn missing(seq: i64, latest: i64) -> Response {
    let mut r = error(
        status_470(),
        &format!("segment {seq} is not available; the next write is {latest}"),
    );
    r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
    r.headers_mut()
        .insert(LATEST_HEADER, HeaderValue::from(latest));
    r
}

/// How long, and how many bytes, the rest of a refused POST body is read and dropped for.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 8 << 20;

/// An answer sent before the request body was read to its end. The connection closes after
/// it, so that the client stops sending; the body is read (and dropped) a little longer in
/// the background, because closing a socket with unread data resets the connection, and the
/// client, still sending, would then get the reset instead of the answer.
fn early(mut r: Response, mut body: BodyDataStream) -> Response {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    tokio::spawn(async move {
        let drain = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(chunk)) = body.next().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    });
    r
}

macro_rules! authorized {
    ($inner:expr, $ch:expr, $headers:expr, $need:expr) => {
        match $inner.authorize(&$ch, &$headers, $need) {
            Ok(Found::Open(channel)) => channel,
            Ok(Found::Closed(_)) => return closed(),
            Err(response) => return response,
        }
    };
}

pub(super) async fn create_channel(
    State(inner): State<Arc<Inner>>,
    Path(ch): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _channel = authorized!(inner, ch, headers, Access::Publish);
    StatusCode::OK.into_response()
}

pub(super) async fn delete_channel(
    State(inner): State<Arc<Inner>>,
    Path(ch): Path<String>,
    headers: HeaderMap,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let id: *const Channel = Arc::as_ptr(&channel);
    inner.close(&channel.name, |c| std::ptr::eq(c, id));
    StatusCode::OK.into_response()
}

pub(super) async fn delete_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let Some(seq) = parse_seq(&seq, false).filter(|s| *s >= 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("seq must be a plain non-negative integer up to {MAX_SEQ}"),
        );
    };
    if channel.close_segment(seq) {
        StatusCode::OK.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("segment {seq} is not in the ring"),
        )
    }
}

pub(super) async fn get_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // A closed channel still serves the segments it kept (`for_read` knows).
    let channel = match inner.authorize(&ch, &headers, Access::Subscribe) {
        Ok(Found::Open(channel) | Found::Closed(channel)) => channel,
        Err(response) => return response,
    };
    if seq == "next" {
        let (next, is_closed) = channel.next_write();
        if is_closed {
            return closed();
        }
        let mut r = ([(CONTENT_TYPE, "text/plain")], next.to_string()).into_response();
        r.headers_mut()
            .insert(LATEST_HEADER, HeaderValue::from(next));
        return r;
    }
    let Some(seq) = parse_seq(&seq, true) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "seq must be -1 (next), -2 (current), `next` or a plain non-negative integer up to {MAX_SEQ}"
            ),
        );
    };
    let segment = match channel.for_read(seq) {
        ReadTarget::Segment(segment) => segment,
        ReadTarget::Missing { seq, latest } => return missing(seq, latest),
        ReadTarget::Closed => return closed(),
    };
    // Long-poll: answer once the first byte is there (or the segment ended).
    loop {
        let changed = segment.notified();
        match segment.first() {
            Some(Ok(())) | Some(Err(End::Complete)) => break,
            Some(Err(End::Closed)) => return closed(),
            Some(Err(End::Aborted)) => {
                let (latest, is_closed) = channel.next_write();
                return if is_closed {
                    closed()
                } else {
                    missing(segment.seq(), latest)
                };
            }
            None => changed.await,
        }
    }
    let (latest, _) = channel.next_write();
    let mut response = Response::new(segment_body(
        segment.clone(),
        inner.metrics.bytes_out.clone(),
    ));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, channel.mime.clone());
    h.insert(SEQ_HEADER, HeaderValue::from(segment.seq()));
    h.insert(LATEST_HEADER, HeaderValue::from(latest));
    response
}

/// The body of a GET: what the segment holds, then the rest as it arrives. A segment that
/// ends other than complete ends the body with an error.
fn segment_body(segment: Arc<Segment>, bytes_out: IntCounter) -> Body {
    let stream = futures_util::stream::unfold(Some((segment, ReadPos::default())), move |state| {
        let bytes_out = bytes_out.clone();
        async move {
            let (segment, mut pos) = state?;
            loop {
                let seg = segment.clone();
                let changed = seg.notified();
                match segment.read(&mut pos) {
                    Read::Data(data) => {
                        bytes_out.inc_by(data.len() as u64);
                        return Some((Ok(data), Some((segment, pos))));
                    }
                    Read::End(End::Complete) => return None,
                    Read::End(_) => {
                        let e =
                            std::io::Error::other("trickle segment ended before it was complete");
                        return Some((Err(e), None));
                    }
                    Read::Wait => changed.await,
                }
            }
        }
    });
    Body::from_stream(stream)
}

pub(super) async fn post_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = body.into_data_stream();
    let response = publish(&inner, &ch, &seq, &headers, &mut body).await;
    if response.status().is_success() {
        response
    } else {
        early(response, body)
    }
}

async fn publish(
    inner: &Inner,
    ch: &str,
    seq: &str,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let Some(seq) = parse_seq(seq, false) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("seq must be -1 (next) or a plain non-negative integer up to {MAX_SEQ}"),
        );
    };
    let reset = headers.contains_key(RESET_HEADER);
    let (segment, seq, generation) = match channel.for_write(seq, reset) {
        Ok(found) => found,
        Err(WriteRefused::TooOld { seq, latest }) => return missing(seq, latest),
        Err(WriteRefused::Closed) => return closed(),
    };
    let received = inner.receive(&channel, &segment, generation, body).await;
    let segments = &inner.metrics.segments;
    match received {
        Received::Complete(n) => {
            segments.with_label_values(&["complete"]).inc();
            tracing::trace!(channel = %channel.name, seq, bytes = n, "trickle segment complete");
            let mut r = StatusCode::OK.into_response();
            r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
            r
        }
        Received::Disconnected(e, n) => {
            if n > 0 {
                segments.with_label_values(&["aborted"]).inc();
            }
            tracing::debug!(channel = %channel.name, seq, bytes = n, error = %e, "trickle publisher went away mid-segment");
            error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))
        }
        Received::TooLarge(n) => {
            segments.with_label_values(&["aborted"]).inc();
            tracing::debug!(channel = %channel.name, seq, bytes = n, "trickle segment too large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "segment larger than {} bytes, this channel's limit",
                    channel.max_segment_bytes
                ),
            )
        }
        Received::NoRoom(exhausted, n) => {
            segments.with_label_values(&["aborted"]).inc();
            tracing::debug!(channel = %channel.name, seq, bytes = n, ?exhausted, "trickle buffers full");
            let message = match exhausted {
                Exhausted::Node => "the server's trickle buffers are full; try again later",
                Exhausted::Channel => {
                    "this channel's buffers are full (its subscribers are behind); try again later"
                }
            };
            error(StatusCode::SERVICE_UNAVAILABLE, message)
        }
        Received::Stopped(stop, n) => {
            if n > 0 {
                segments.with_label_values(&["aborted"]).inc();
            }
            match stop {
                Stop::Closed => closed(),
                Stop::Superseded => error(
                    StatusCode::CONFLICT,
                    &format!("segment {seq} was replaced, deleted or evicted while being written"),
                ),
            }
        }
    }
}
