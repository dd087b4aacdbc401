//! Live video's HTTP routes: pushed segments in, HLS playlists, segments and recordings out.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use serde::Deserialize;
use weir_media::transcode::Rendition;
use weir_media::wire::{self, DURATION_HEADER};
use weir_protocol::AiHttpError;

use super::{Live, LiveStream, Track};
use crate::dispatch::err;

impl Live {
    /// The live streams' public routes: HLS playlists and segments, and recordings.
    pub(crate) fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/stream/{file}", get(master))
            .route("/stream/{stream}/{file}", get(media))
            .route("/stream/{stream}/{rendition}/{file}", get(segment))
            .route("/recordings/{stream}/{file}", get(recording))
            .route("/recordings/{stream}/{rendition}/{file}", get(recording))
            .with_state(Arc::clone(self))
    }

    /// The route segments are pushed to: `POST|PUT /live/{stream}/{file}`.
    pub(crate) fn push_routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route("/live/{stream}/{file}", post(push).put(push))
            .with_state(Arc::clone(self))
    }
}

/// `POST|PUT /live/{stream}/{file}`: one pushed segment.
async fn push(
    State(live): State<Arc<Live>>,
    UrlPath((stream_key, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match push_segment(&live, &stream_key, &file, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Take one pushed segment: checked, transcoded and listed; the renditions are in the
/// answer when the client accepts `multipart/mixed`.
async fn push_segment(
    live: &Live,
    stream_key: &str,
    file: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, AiHttpError> {
    let seq = segment_number(file)?;
    let body = read_pushed(body, headers, live.config.max_push_bytes).await?;
    let declared_ms = declared_duration(headers)?;
    let probed_ms = probe_pushed(&body).await?;
    let duration_ms = declared_ms.unwrap_or(probed_ms).max(1);
    let (stream, generation) = live.pushed_stream(stream_key, file).await?;
    let start_ms = seq.saturating_mul(duration_ms).min(i64::MAX as u64) as i64;
    let renditions = live
        .publish_segment(
            &stream,
            generation,
            start_ms,
            Duration::from_millis(duration_ms),
            body,
        )
        .await
        .map_err(|e| {
            if e.status == 503 {
                err(
                    503,
                    format!("No sessions available: {}", crate::dispatch::message_of(&e)),
                )
            } else {
                e
            }
        })?;
    Ok(push_answer(seq, headers, &renditions))
}

/// The segment number of `{seq}.ts` or `{seq}.mp4`.
fn segment_number(file: &str) -> Result<u64, AiHttpError> {
    let (seq, ext) = file
        .rsplit_once('.')
        .ok_or_else(|| err(400, format!("`{file}`: expected {{seq}}.ts or {{seq}}.mp4")))?;
    if !matches!(ext, "ts" | "mp4") {
        return Err(err(
            400,
            format!("`{file}`: only .ts and .mp4 segments are accepted"),
        ));
    }
    seq.parse()
        .map_err(|_| err(400, format!("`{file}`: the segment number is not a number")))
}

/// The pushed body, not empty and within `max` bytes. A body whose declared length is over
/// `max` is refused before any of it is read, so a client that sent `Expect: 100-continue`
/// gets its 413 without sending the body (and never a connection reset mid-upload).
async fn read_pushed(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, AiHttpError> {
    let too_large = || err(413, format!("segment larger than {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| err(400, format!("reading the segment: {e}")))?;
        if data.len() + chunk.len() > max {
            return Err(too_large());
        }
        data.extend_from_slice(&chunk);
    }
    if data.is_empty() {
        return Err(err(400, "empty segment"));
    }
    Ok(Bytes::from(data))
}

/// Livepeer's `Content-Duration` header, when sent (1 ms to 5 minutes).
fn declared_duration(headers: &HeaderMap) -> Result<Option<u64>, AiHttpError> {
    let Some(v) = headers.get(DURATION_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=300_000).contains(ms))
        .map(Some)
        .ok_or_else(|| err(400, "Content-Duration must be 1..=300000 milliseconds"))
}

/// Probe a pushed segment: its duration in milliseconds, when it is MPEG-TS or MP4.
async fn probe_pushed(body: &Bytes) -> Result<u64, AiHttpError> {
    let probe_input = body.clone();
    let info = tokio::task::spawn_blocking(move || weir_media::transcode::probe(&probe_input))
        .await
        .map_err(|e| err(500, format!("probe crashed: {e}")))?
        .map_err(|e| err(422, format!("unreadable segment: {e}")))?;
    // FFmpeg reads many things (a PNG is a one-frame video): only segments are taken.
    if !matches!(info.format.as_str(), "mpegts" | "mov,mp4,m4a,3gp,3g2,mj2") {
        return Err(err(
            415,
            format!(
                "a segment must be MPEG-TS or MP4 (this is `{}`)",
                info.format
            ),
        ));
    }
    Ok(info.duration_ms)
}

/// The answer to a pushed segment: `200`, or the renditions as `multipart/mixed` when the
/// client accepts them.
fn push_answer(seq: u64, headers: &HeaderMap, renditions: &[Rendition]) -> Response {
    let wants_parts = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("multipart/mixed"));
    if !wants_parts {
        return StatusCode::OK.into_response();
    }
    let (content_type, body) = wire::renditions_body(&seq.to_string(), renditions);
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

impl Live {
    /// The live stream a pushed segment belongs to, and its generation: a pushed stream is
    /// authorized once, when its first segment arrives.
    async fn pushed_stream(
        &self,
        stream_key: &str,
        file: &str,
    ) -> Result<(Arc<LiveStream>, u64), AiHttpError> {
        let live = self
            .get(stream_key)
            .filter(|s| s.state.lock().ended_at.is_none());
        if let Some(s) = live {
            let generation = s.state.lock().generation;
            return Ok((s, generation));
        }
        let url = format!("{}/live/{stream_key}/{file}", self.public_url);
        let (id, profiles) = self
            .authorize_stream(&url, stream_key)
            .await
            .map_err(|e| err(403, e))?;
        self.open_stream(&id, profiles, false, false)
            .map_err(|e| err(503, e))
    }
}

fn playlist(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

fn not_found(what: impl Into<String>) -> Response {
    err(404, what).into_response()
}

/// `GET /stream/{stream}.m3u8`: the master playlist.
async fn master(State(live): State<Arc<Live>>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(id) = file.strip_suffix(".m3u8") else {
        return not_found(format!("no such playlist `{file}`"));
    };
    match live.get(id) {
        Some(s) => playlist(s.master(false)),
        None => not_found(format!("no stream `{id}`")),
    }
}

/// `GET /stream/{stream}/{rendition}.m3u8`: a media playlist.
async fn media(
    State(live): State<Arc<Live>>,
    UrlPath((id, file)): UrlPath<(String, String)>,
) -> Response {
    let Some(name) = file.strip_suffix(".m3u8") else {
        return not_found(format!("no such playlist `{file}`"));
    };
    let Some(s) = live.get(&id) else {
        return not_found(format!("no stream `{id}`"));
    };
    if name == "ll" {
        return playlist(s.master(true));
    }
    let st = s.state.lock();
    match st.track(name) {
        // A playlist with no segment yet is still a playlist: players poll it.
        Some(t) => playlist(t.playlist.render(&format!("{name}/"))),
        None => not_found(format!("stream `{id}` has no rendition `{name}`")),
    }
}

/// The `_HLS_msn` / `_HLS_part` of a blocking playlist reload.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Reload {
    #[serde(rename = "_HLS_msn")]
    msn: Option<u64>,
    #[serde(rename = "_HLS_part")]
    part: Option<usize>,
}

/// `GET /stream/{stream}/{rendition}/{file}`: a segment (`{msn}.ts`), or the rendition's
/// low-latency HLS: `ll.m3u8` (blocking reload with `_HLS_msn`/`_HLS_part`), `init.mp4`,
/// parts `{msn}.{part}.m4s` and whole segments `{msn}.m4s`.
async fn segment(
    State(live): State<Arc<Live>>,
    UrlPath((id, name, file)): UrlPath<(String, String, String)>,
    Query(reload): Query<Reload>,
) -> Response {
    let Some(s) = live.get(&id) else {
        return not_found(format!("no stream `{id}`"));
    };
    if file == "ll.m3u8" {
        return ll_playlist(&s, &name, reload).await;
    }
    let found = {
        let st = s.state.lock();
        st.track(&name).and_then(|t| media_file(t, &file))
    };
    match found {
        Some((content_type, data)) => {
            ([(header::CONTENT_TYPE, content_type)], data).into_response()
        }
        None => not_found(format!("`{id}/{name}/{file}` is not (or no longer) held")),
    }
}

/// A file of a track by name, with its content type.
fn media_file(t: &Track, file: &str) -> Option<(&'static str, Bytes)> {
    if let Some(msn) = file.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok()) {
        return t
            .playlist
            .segment(msn)
            .map(|seg| ("video/mp2t", seg.data.clone()));
    }
    if file.ends_with(".mp4") {
        return t.ll.init_by_uri(file).map(|d| ("video/mp4", d));
    }
    let stem = file.strip_suffix(".m4s")?;
    let data = match stem.split_once('.') {
        Some((msn, part)) => t.ll.part(msn.parse().ok()?, part.parse().ok()?),
        None => t.ll.segment(stem.parse().ok()?),
    };
    data.map(|d| ("video/mp4", d))
}

/// A low-latency media playlist; with `_HLS_msn` (and `_HLS_part`) held until that part exists
/// (at most three target durations).
async fn ll_playlist(s: &LiveStream, name: &str, reload: Reload) -> Response {
    let (mut waiter, last, target) = {
        let st = s.state.lock();
        let Some(t) = st.track(name) else {
            return not_found(format!("stream `{}` has no rendition `{name}`", s.id));
        };
        (t.ll.subscribe(), t.ll.last(), t.ll.target_duration())
    };
    if let Some(msn) = reload.msn {
        let part = reload.part.unwrap_or(0);
        // The spec's limit: no more than two segments ahead of the last one.
        let newest = last.map_or(0, |(m, _)| m);
        if msn > newest + 2 {
            return err(
                400,
                format!(
                    "_HLS_msn {msn} is more than two segments ahead of the playlist ({newest})"
                ),
            )
            .into_response();
        }
        let wait = Duration::from_secs(3 * target.max(1));
        if !waiter.wait_for(msn, part, wait).await && !waiter.progress().ended {
            return err(
                503,
                format!("part {msn}.{part} did not appear within {wait:?}"),
            )
            .into_response();
        }
    }
    let st = s.state.lock();
    match st.track(name) {
        Some(t) => playlist(t.ll.render()),
        None => not_found(format!("stream `{}` has no rendition `{name}`", s.id)),
    }
}

/// `GET /recordings/{stream}/{file}` and `/recordings/{stream}/{rendition}/{file}`: recorded
/// playlists and segments.
async fn recording(
    State(live): State<Arc<Live>>,
    UrlPath(parts): UrlPath<Vec<(String, String)>>,
) -> Response {
    let Some(recorder) = live.recorder.clone() else {
        return not_found("this gateway does not record streams");
    };
    let rel: Vec<String> = parts.into_iter().map(|(_, v)| v).collect();
    let read = tokio::task::spawn_blocking(move || {
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        recorder.files.read(&rel)
    })
    .await;
    match read {
        Ok(Some((content_type, data))) => {
            ([(header::CONTENT_TYPE, content_type)], data).into_response()
        }
        _ => not_found("no such recording file"),
    }
}
