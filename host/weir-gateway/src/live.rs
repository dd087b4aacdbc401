//! Live video on the gateway: RTMP publishes and HTTP-pushed segments become MPEG-TS segments,
//! each transcoded to the stream's ladder on an orchestrator (chosen, paid and retried like an
//! AI request), and served as HLS.
//!
//! - RTMP: `rtmp://host/live/{stream}`; the stream key names the stream (its manifest id).
//! - HTTP push: `POST|PUT /live/{stream}/{seq}.ts` (or `.mp4`), Livepeer's headers
//!   (`Content-Duration`, `Accept: multipart/mixed` for the renditions in the answer).
//! - HLS: `/stream/{stream}.m3u8` (master), `/stream/{stream}/{rendition}.m3u8` (media),
//!   `/stream/{stream}/{rendition}/{msn}.ts`; the source is listed as rendition `source`.
//!
//! A segment no orchestrator could transcode is still listed in the source rendition, and the
//! next transcoded segment of each ladder rendition is marked as a discontinuity.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;
use weir_media::hls::{self, MediaPlaylist, Variant};
use weir_media::llhls::{ts_to_fmp4, Fmp4Segment, LlPlaylist};
use weir_media::packet::IngestEvent;
use weir_media::profile::Profile;
use weir_media::rtmp::PublishHandler;
use weir_media::segmenter::Segmenter;
use weir_media::transcode::Rendition;
use weir_media::wire::{
    self, ladder_pixels, CAPABILITY, DURATION_HEADER, MODEL, PROFILES_HEADER, SEGMENT_HEADER,
};
use weir_protocol::AiHttpError;
use weir_runtime::{JobRequest, OutputSize, Param, ParamValue};

use crate::record::{RecordedVariant, Recorder};
use crate::server::{err, Attempt, Choice, Gateway};

/// Settings of live video on the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// The ladder every stream gets unless its auth webhook names another
    /// (`transcodingOptions`).
    pub profiles: Vec<Profile>,
    /// Target segment length (segments are cut on the first keyframe after it).
    pub segment: Duration,
    /// Segments listed in each media playlist.
    pub window: usize,
    /// Streams live at once (Livepeer's `maxSessions`).
    pub max_sessions: usize,
    /// A URL asked to accept or refuse each new stream (Livepeer's `authWebhookUrl`).
    pub auth_webhook_url: Option<String>,
    /// A pushed stream with no new segment for this long has ended.
    pub push_idle: Duration,
    /// Largest pushed segment.
    pub max_push_bytes: usize,
    /// How long an ended stream's playlists stay served.
    pub keep_ended: Duration,
    /// Target length of a low-latency HLS part.
    pub part: Duration,
    /// Where streams are recorded (source and renditions), when they are.
    pub record_dir: Option<std::path::PathBuf>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            profiles: weir_media::profile::default_ladder(),
            segment: Duration::from_secs(2),
            window: 6,
            max_sessions: 10,
            auth_webhook_url: None,
            push_idle: Duration::from_secs(60),
            max_push_bytes: 64 << 20,
            keep_ended: Duration::from_secs(120),
            part: Duration::from_millis(500),
            record_dir: None,
        }
    }
}

/// One rendition's playlist and what the master playlist says of it.
struct Track {
    name: String,
    playlist: MediaPlaylist,
    /// The same segments as fMP4 with parts, for low-latency HLS.
    ll: LlPlaylist,
    codecs: Option<String>,
    resolution: Option<(u32, u32)>,
    frame_rate: Option<f64>,
    /// Size and frame rate come from probing the segments (the source), not from a profile.
    probed: bool,
    nominal_bps: u64,
    /// A segment was skipped: mark the next one.
    gap: bool,
    /// A segment could not be packaged as fMP4: mark the next low-latency one.
    ll_gap: bool,
}

impl Track {
    fn new(name: &str, config: &LiveConfig, nominal_bps: u64) -> Track {
        Track {
            name: name.to_owned(),
            playlist: MediaPlaylist::new(config.window, config.segment),
            ll: LlPlaylist::new(config.window, config.segment, config.part),
            codecs: None,
            resolution: None,
            frame_rate: None,
            probed: false,
            nominal_bps,
            gap: false,
            ll_gap: false,
        }
    }

    fn push(
        &mut self,
        duration: Duration,
        at: SystemTime,
        discontinuity: bool,
        data: Bytes,
        fmp4: Option<Fmp4Segment>,
    ) {
        if self.codecs.is_none() {
            self.codecs = hls::avc_codec(&data).map(|v| format!("{v},mp4a.40.2"));
        }
        let gap = std::mem::take(&mut self.gap);
        self.playlist.push(duration, at, discontinuity || gap, data);
        let ll_gap = std::mem::take(&mut self.ll_gap);
        if let Some(video) = fmp4.as_ref().and_then(|s| s.video).filter(|_| self.probed) {
            self.resolution = Some((video.width, video.height));
            self.frame_rate = Some(video.frame_rate);
        }
        match fmp4 {
            Some(seg) => {
                self.ll
                    .push_segment(seg, at, discontinuity || gap || ll_gap);
            }
            None => self.ll_gap = true,
        }
    }

    fn end(&mut self) {
        self.playlist.end();
        self.ll.end();
    }

    fn resume(&mut self) {
        self.playlist.resume();
        self.ll.resume();
    }

    fn variant(&self, stream: &str) -> Variant {
        let bandwidth = match self.playlist.peak_bps() {
            0 => self.nominal_bps,
            peak => peak,
        };
        Variant {
            uri: format!("{stream}/{}.m3u8", self.name),
            bandwidth,
            average_bandwidth: match self.playlist.average_bps() {
                0 => Some(self.nominal_bps),
                average => Some(average),
            },
            codecs: self
                .codecs
                .clone()
                .unwrap_or_else(|| "avc1.64001f,mp4a.40.2".to_owned()),
            resolution: self.resolution,
            frame_rate: self.frame_rate,
        }
    }
}

struct StreamState {
    /// Bumped by every (re)publish; work of an older generation is dropped.
    generation: u64,
    source: Track,
    renditions: Vec<Track>,
    /// Wall clock of media time 0 (set by the first segment).
    epoch: Option<(SystemTime, i64)>,
    /// The next segment follows a break (a reconnect).
    discontinuity: bool,
    next_seq: u64,
    last_active: Instant,
    /// An RTMP connection feeds the stream.
    connected: bool,
    ended_at: Option<Instant>,
}

impl StreamState {
    /// The ladder's renditions and the source.
    fn tracks_mut(&mut self) -> impl Iterator<Item = &mut Track> {
        self.renditions
            .iter_mut()
            .chain(std::iter::once(&mut self.source))
    }

    /// The track named `name`.
    fn track(&self, name: &str) -> Option<&Track> {
        self.renditions
            .iter()
            .chain(std::iter::once(&self.source))
            .find(|t| t.name == name)
    }
}

/// A live stream and its playlists.
pub(crate) struct LiveStream {
    id: String,
    profiles: Vec<Profile>,
    /// The HLS output of a live AI stream: those are limited by `[gateway.streams]
    /// max_streams`, not by this gateway's `max_sessions` of transcoded streams.
    ai_output: bool,
    state: Mutex<StreamState>,
}

impl LiveStream {
    fn new(id: &str, profiles: Vec<Profile>, ai_output: bool, config: &LiveConfig) -> LiveStream {
        let renditions = profiles
            .iter()
            .map(|p| {
                let mut t = Track::new(&p.name, config, p.bitrate + 128_000);
                t.resolution = Some((p.width, p.height));
                t.frame_rate = Some(p.fps_f64());
                t
            })
            .collect();
        LiveStream {
            id: id.to_owned(),
            profiles,
            ai_output,
            state: Mutex::new(StreamState {
                generation: 0,
                source: Track {
                    probed: true,
                    ..Track::new("source", config, 0)
                },
                renditions,
                epoch: None,
                discontinuity: false,
                next_seq: 0,
                last_active: Instant::now(),
                connected: false,
                ended_at: None,
            }),
        }
    }

    /// The master playlist: plain HLS (`{stream}/{rendition}.m3u8`), or low-latency HLS
    /// (`{rendition}/ll.m3u8`, relative to `/stream/{stream}/ll.m3u8`).
    fn master(&self, low_latency: bool) -> String {
        let s = self.state.lock();
        let mut tracks: Vec<&Track> = s.renditions.iter().collect();
        if s.source.playlist.listed().next().is_some() {
            tracks.push(&s.source);
        }
        let variants: Vec<Variant> = tracks
            .iter()
            .map(|t| {
                let mut v = t.variant(&self.id);
                if low_latency {
                    v.uri = format!("{}/ll.m3u8", t.name);
                }
                v
            })
            .collect();
        hls::master_playlist(&variants)
    }
}

/// The live streams of a gateway.
pub(crate) struct Streams {
    config: LiveConfig,
    recorder: Option<Arc<Recorder>>,
    map: Mutex<HashMap<String, Arc<LiveStream>>>,
    segments: prometheus::IntCounterVec,
    live: prometheus::IntGauge,
}

impl Streams {
    pub(crate) fn new(
        config: LiveConfig,
        metrics: &prometheus::Registry,
    ) -> Result<Streams, prometheus::Error> {
        let segments = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "weir_live_segments_total",
                "Live segments by outcome (transcoded, untranscoded, dropped)",
            ),
            &["outcome"],
        )?;
        let live = prometheus::IntGauge::new("weir_live_streams", "Live streams being ingested")?;
        metrics.register(Box::new(segments.clone()))?;
        metrics.register(Box::new(live.clone()))?;
        Ok(Streams {
            recorder: config
                .record_dir
                .clone()
                .map(|dir| Arc::new(Recorder::new(dir))),
            config,
            map: Mutex::new(HashMap::new()),
            segments,
            live,
        })
    }

    fn get(&self, id: &str) -> Option<Arc<LiveStream>> {
        self.map.lock().get(id).cloned()
    }

    fn active(&self) -> usize {
        self.map
            .lock()
            .values()
            .filter(|s| s.state.lock().ended_at.is_none())
            .count()
    }
}

/// What an auth webhook may answer (Livepeer's field names).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthAnswer {
    #[serde(default, rename = "manifestID")]
    manifest_id: Option<String>,
    #[serde(default)]
    presets: Vec<String>,
    #[serde(default)]
    profiles: Option<serde_json::Value>,
}

/// A stream id is a path segment in every playlist URL: keep it tame.
fn valid_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Gateway {
    fn streams(&self) -> &Streams {
        &self.inner.streams
    }

    /// Ask the auth webhook (if any) about stream `key` published at `url`: the stream id and
    /// ladder to use, or why not.
    async fn authorize_stream(
        &self,
        url: &str,
        key: &str,
    ) -> Result<(String, Vec<Profile>), String> {
        let config = &self.streams().config;
        let Some(hook) = &config.auth_webhook_url else {
            if !valid_stream_id(key) {
                return Err(format!(
                    "stream key `{key}` is not a valid stream id (1-128 of A-Z a-z 0-9 - _)"
                ));
            }
            return Ok((key.to_owned(), config.profiles.clone()));
        };
        let answer = self
            .inner
            .client
            .post(hook)
            .json(&serde_json::json!({ "url": url }))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("auth webhook unreachable: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!(
                "auth webhook refused the stream ({})",
                answer.status()
            ));
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| format!("auth webhook answer: {e}"))?;
        let answer: AuthAnswer = if body.iter().all(u8::is_ascii_whitespace) {
            AuthAnswer::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| format!("auth webhook answer: {e}"))?
        };
        let id = answer.manifest_id.unwrap_or_else(|| key.to_owned());
        if !valid_stream_id(&id) {
            return Err(format!("auth webhook named an invalid stream id `{id}`"));
        }
        let profiles = if let Some(p) = answer.profiles {
            let text = p.to_string();
            weir_media::profile::parse_profiles(&text)
                .map_err(|e| format!("auth webhook profiles: {e}"))?
        } else if !answer.presets.is_empty() {
            weir_media::profile::parse_profiles(&answer.presets.join(","))
                .map_err(|e| format!("auth webhook presets: {e}"))?
        } else {
            config.profiles.clone()
        };
        Ok((id, profiles))
    }

    /// The stream `id`, made (or revived) for a new publish: its generation for this publish.
    /// `ai_output` streams are the HLS output of live AI streams, which are not sessions.
    fn open_stream(
        &self,
        id: &str,
        profiles: Vec<Profile>,
        connected: bool,
        ai_output: bool,
    ) -> Result<(Arc<LiveStream>, u64), String> {
        let streams = self.streams();
        // Checked and taken under one lock: two publishes cannot both take the last session.
        let stream = {
            let mut map = streams.map.lock();
            let is_live = |s: &Arc<LiveStream>| s.state.lock().ended_at.is_none();
            let existing = map.get(id).cloned();
            if !ai_output && existing.as_ref().is_none_or(|s| !is_live(s)) {
                let active = map.values().filter(|s| !s.ai_output && is_live(s)).count();
                if active >= streams.config.max_sessions {
                    return Err(format!(
                        "no sessions available: {active} streams are live (max_sessions)"
                    ));
                }
            }
            match existing {
                // Same ladder: continue the playlists (a reconnect, or a pushed stream).
                Some(s) if s.profiles == profiles => s,
                _ => {
                    let s = Arc::new(LiveStream::new(id, profiles, ai_output, &streams.config));
                    map.insert(id.to_owned(), s.clone());
                    s
                }
            }
        };
        let generation = {
            let mut st = stream.state.lock();
            let revived = st.ended_at.take().is_some();
            if connected || revived {
                // A new publisher: its clock starts again, so the next segment is a
                // discontinuity with a fresh wall-clock anchor; the playlists go on.
                st.generation += 1;
                st.discontinuity = st.next_seq > 0;
                st.epoch = None;
            }
            if revived {
                for t in st.tracks_mut() {
                    t.resume();
                }
            }
            st.connected = connected;
            st.last_active = Instant::now();
            st.generation
        };
        streams.live.set(streams.active() as i64);
        Ok((stream, generation))
    }

    fn end_stream(&self, stream: &LiveStream, generation: u64) {
        let mut st = stream.state.lock();
        if st.generation != generation || st.ended_at.is_some() {
            return;
        }
        st.connected = false;
        st.ended_at = Some(Instant::now());
        for t in st.tracks_mut() {
            t.end();
        }
        let variants: Vec<RecordedVariant> = st
            .renditions
            .iter()
            .chain(std::iter::once(&st.source))
            .map(|t| RecordedVariant {
                name: t.name.clone(),
                variant: t.variant(&stream.id),
            })
            .collect();
        drop(st);
        if let Some(recorder) = &self.streams().recorder {
            recorder.finish(&stream.id, variants);
        }
        tracing::info!(stream = %stream.id, "stream ended");
        self.streams().live.set(self.streams().active() as i64);
    }

    /// End idle pushed streams and forget long-ended ones, periodically.
    pub(crate) fn spawn_live_janitor(&self) -> tokio::task::JoinHandle<()> {
        let g = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let config = &g.streams().config;
                let all: Vec<Arc<LiveStream>> = g.streams().map.lock().values().cloned().collect();
                for s in all {
                    let (idle, generation, ended) = {
                        let st = s.state.lock();
                        (
                            !st.connected && st.last_active.elapsed() >= config.push_idle,
                            st.generation,
                            st.ended_at,
                        )
                    };
                    match ended {
                        None if idle => g.end_stream(&s, generation),
                        Some(at) if at.elapsed() >= config.keep_ended => {
                            g.streams().map.lock().retain(|_, v| !Arc::ptr_eq(v, &s));
                        }
                        _ => {}
                    }
                }
            }
        })
    }

    /// Read events from one RTMP publish until it ends, segmenting and transcoding.
    async fn run_ingest(
        self,
        stream: Arc<LiveStream>,
        generation: u64,
        mut events: mpsc::Receiver<IngestEvent>,
    ) {
        let mut segmenter = Segmenter::new(self.streams().config.segment);
        let (segments, mut queue) = mpsc::channel::<weir_media::segmenter::Segment>(8);
        let worker = {
            let g = self.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                while let Some(seg) = queue.recv().await {
                    if stream.state.lock().generation != generation {
                        break;
                    }
                    let duration = Duration::from_millis(seg.duration_ms);
                    if let Err(e) = g
                        .publish_segment(&stream, generation, seg.start_ms, duration, seg.data)
                        .await
                    {
                        tracing::warn!(stream = %stream.id, error = %e, "segment listed untranscoded");
                    }
                }
            })
        };
        while let Some(event) = events.recv().await {
            match segmenter.push(event) {
                Ok(Some(seg)) => {
                    if segments.send(seg).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(stream = %stream.id, error = %e, "bad media from the publisher; packet dropped");
                    self.streams()
                        .segments
                        .with_label_values(&["dropped"])
                        .inc();
                }
            }
        }
        match segmenter.finish() {
            Ok(Some(seg)) => {
                let _ = segments.send(seg).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(stream = %stream.id, error = %e, "last segment dropped"),
        }
        drop(segments);
        if let Err(e) = worker.await {
            tracing::error!(stream = %stream.id, error = %e, "segment worker failed");
        }
        self.end_stream(&stream, generation);
    }

    /// Transcode one segment and list it (and its renditions) in the stream's playlists.
    /// The source is listed even when transcoding fails; the error says why it failed.
    async fn publish_segment(
        &self,
        stream: &LiveStream,
        generation: u64,
        start_ms: i64,
        duration: Duration,
        data: Bytes,
    ) -> Result<Vec<Rendition>, AiHttpError> {
        let (seq, at, discontinuity) = {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return Err(err(409, "the stream was republished; segment dropped"));
            }
            st.last_active = Instant::now();
            let seq = st.next_seq;
            st.next_seq += 1;
            // The first segment ends now: its first frame was captured `duration` ago.
            let epoch = *st.epoch.get_or_insert_with(|| {
                let now = SystemTime::now();
                (now.checked_sub(duration).unwrap_or(now), start_ms)
            });
            let offset = start_ms.saturating_sub(epoch.1).max(0) as u64;
            let at = epoch.0 + Duration::from_millis(offset);
            (seq, at, std::mem::take(&mut st.discontinuity))
        };
        // The source is listed as soon as it is packaged, while the orchestrator transcodes.
        let list_source = async {
            let fmp4 = self.package(vec![data.clone()]).await.pop().flatten();
            let mut st = stream.state.lock();
            if st.generation == generation {
                st.source
                    .push(duration, at, discontinuity, data.clone(), fmp4);
            }
        };
        let duration_ms = duration.as_millis().max(1) as u64;
        let transcode = async {
            let transcoded = self
                .transcode_remote(&stream.id, seq, &stream.profiles, data.clone(), duration_ms)
                .await;
            let packaged = match &transcoded {
                Ok(renditions) => {
                    self.package(renditions.iter().map(|r| r.data.clone()).collect())
                        .await
                }
                Err(_) => Vec::new(),
            };
            (transcoded, packaged)
        };
        let ((), (transcoded, packaged)) = tokio::join!(list_source, transcode);
        self.record(
            &stream.id,
            vec![("source".to_owned(), duration, data)],
            discontinuity,
        );
        let mut st = stream.state.lock();
        if st.generation != generation {
            return Err(err(409, "the stream was republished; renditions dropped"));
        }
        st.last_active = Instant::now();
        let outcome = match &transcoded {
            Ok(_) => "transcoded",
            Err(_) => "untranscoded",
        };
        self.streams().segments.with_label_values(&[outcome]).inc();
        match transcoded {
            Ok(renditions) => {
                let mut packaged: Vec<Option<Fmp4Segment>> = packaged;
                for t in &mut st.renditions {
                    match renditions.iter().position(|r| r.name == t.name) {
                        Some(i) => {
                            let r = &renditions[i];
                            let d = Duration::from_millis(r.duration_ms.max(1));
                            let fmp4 = packaged.get_mut(i).and_then(Option::take);
                            t.push(d, at, discontinuity, r.data.clone(), fmp4);
                        }
                        None => t.gap = true,
                    }
                }
                drop(st);
                self.record(
                    &stream.id,
                    renditions
                        .iter()
                        .map(|r| {
                            let d = Duration::from_millis(r.duration_ms.max(1));
                            (r.name.clone(), d, r.data.clone())
                        })
                        .collect(),
                    discontinuity,
                );
                Ok(renditions)
            }
            Err(e) => {
                for t in &mut st.renditions {
                    t.gap = true;
                }
                Err(e)
            }
        }
    }

    /// The HLS stream showing AI stream `id`'s output, opened (or continued after the stream
    /// moved, with a discontinuity) for a new session: its generation.
    pub(crate) fn open_ai_output(&self, id: &str) -> Option<(Arc<LiveStream>, u64)> {
        match self.open_stream(id, Vec::new(), true, true) {
            Ok(opened) => Some(opened),
            Err(e) => {
                tracing::warn!(stream = %id, error = %e, "the AI stream's output is not served as HLS");
                None
            }
        }
    }

    /// List one output segment of an AI stream in its HLS playlists.
    pub(crate) async fn list_ai_output(&self, stream: &LiveStream, generation: u64, data: Bytes) {
        let probe_data = data.clone();
        let target = self.streams().config.segment;
        let duration = tokio::task::spawn_blocking(move || {
            weir_media::transcode::probe(&probe_data).map(|i| i.duration_ms)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .filter(|ms| *ms > 0)
        .map_or(target, Duration::from_millis);
        let (at, discontinuity) = {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return;
            }
            st.last_active = Instant::now();
            st.next_seq += 1;
            let now = SystemTime::now();
            (
                now.checked_sub(duration).unwrap_or(now),
                std::mem::take(&mut st.discontinuity),
            )
        };
        let fmp4 = self.package(vec![data.clone()]).await.pop().flatten();
        {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return;
            }
            st.source
                .push(duration, at, discontinuity, data.clone(), fmp4);
        }
        self.record(
            &stream.id,
            vec![("source".to_owned(), duration, data)],
            discontinuity,
        );
    }

    /// The AI stream `id` ended: end its HLS playlists.
    pub(crate) fn end_ai_output(&self, id: &str) {
        if let Some(s) = self.streams().get(id) {
            let generation = s.state.lock().generation;
            self.end_stream(&s, generation);
        }
    }

    /// Append segments to the stream's recording, when streams are recorded (written in the
    /// background, in the order asked).
    fn record(&self, stream: &str, segments: Vec<(String, Duration, Bytes)>, discontinuity: bool) {
        if let Some(recorder) = &self.streams().recorder {
            for (rendition, duration, data) in segments {
                recorder.append(stream, &rendition, duration, discontinuity, data);
            }
        }
    }

    /// MPEG-TS segments as fMP4 with low-latency parts; `None` for one that cannot be
    /// packaged (logged; its low-latency playlist then marks a gap).
    async fn package(&self, segments: Vec<Bytes>) -> Vec<Option<Fmp4Segment>> {
        let part = self.streams().config.part;
        let n = segments.len();
        let work = tokio::task::spawn_blocking(move || {
            segments
                .iter()
                .map(|ts| match ts_to_fmp4(ts, part) {
                    Ok(seg) => Some(seg),
                    Err(e) => {
                        tracing::warn!(error = %e, "segment not packaged for low-latency HLS");
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        match work.await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "fMP4 packaging crashed");
                (0..n).map(|_| None).collect()
            }
        }
    }

    /// Transcode one segment on an orchestrator, paying per output pixel.
    async fn transcode_remote(
        &self,
        stream: &str,
        seq: u64,
        profiles: &[Profile],
        data: Bytes,
        duration_ms: u64,
    ) -> Result<Vec<Rendition>, AiHttpError> {
        let units = ladder_pixels(profiles, duration_ms);
        let request_id = format!("{stream}/{seq}");
        let job = JobRequest {
            id: request_id.clone(),
            capability: CAPABILITY.to_owned(),
            model: MODEL.to_owned(),
            params: vec![Param {
                name: "stream".to_owned(),
                value: ParamValue::Text(stream.to_owned()),
            }],
            output: OutputSize {
                width: profiles.iter().map(|p| p.width).max().unwrap_or(0),
                height: profiles.iter().map(|p| p.height).max().unwrap_or(0),
                frames: profiles
                    .iter()
                    .map(|p| {
                        (duration_ms * u64::from(p.fps))
                            .div_ceil(1000 * u64::from(p.fps_den.max(1)))
                    })
                    .max()
                    .unwrap_or(0) as u32,
                count: profiles.len() as u32,
            },
            units,
            sender: self.inner.payments.sender(),
        };
        let ladder = serde_json::to_string(profiles).map_err(|e| err(500, e.to_string()))?;
        let queue = self.choose(CAPABILITY, None, MODEL, job).await?.into();
        let (choice, renditions, charge, tried) = self
            .with_retries(&request_id, queue, |choice| {
                let (ladder, data) = (&ladder, &data);
                async move {
                    let choice = &choice;
                    self.attempt_with(choice, CAPABILITY, units, |pending| async move {
                        self.send_segment(choice, &pending, seq, ladder, data, duration_ms)
                            .await
                    })
                    .await
                }
            })
            .await?;
        tracing::debug!(stream, seq, orchestrator = %choice.url, units, charge, attempts = tried, "segment transcoded");
        Ok(renditions)
    }

    async fn send_segment(
        &self,
        choice: &Choice,
        pending: &crate::payments::Pending,
        seq: u64,
        ladder: &str,
        data: &Bytes,
        duration_ms: u64,
    ) -> Attempt<Vec<Rendition>> {
        let request = self
            .inner
            .client
            .post(format!("{}/transcode", choice.url))
            .header(header::CONTENT_TYPE, "video/mp2t")
            .header(PROFILES_HEADER, ladder)
            .header(DURATION_HEADER, duration_ms)
            .header(SEGMENT_HEADER, seq)
            .body(data.clone());
        let timeout = self.inner.config.attempt_timeout;
        let rungs = serde_json::from_str::<Vec<serde_json::Value>>(ladder).map_or(0, |v| v.len());
        self.exchange(
            choice,
            CAPABILITY,
            pending,
            request,
            timeout,
            |answer| async move {
                let renditions = wire::parse_renditions(&answer.content_type, &answer.body)?;
                if renditions.len() != rungs {
                    return Err(format!(
                        "answered {} renditions for a ladder of {rungs}",
                        renditions.len()
                    ));
                }
                Ok(renditions)
            },
        )
        .await
    }
}

impl PublishHandler for Gateway {
    fn publish(
        &self,
        app: String,
        key: String,
        peer: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Result<mpsc::Sender<IngestEvent>, String>> + Send>> {
        let g = self.clone();
        Box::pin(async move {
            if let Some(tx) = g.ai_ingest(&key) {
                tracing::info!(%peer, "RTMP publish of a live AI stream accepted");
                return Ok(tx);
            }
            let public = &g.inner.config.public_url;
            let host = public.split_once("://").map_or(public.as_str(), |(_, h)| h);
            let url = format!("rtmp://{host}/{app}/{key}");
            let (id, profiles) = g.authorize_stream(&url, &key).await?;
            let (stream, generation) = g.open_stream(&id, profiles, true, false)?;
            tracing::info!(stream = %id, %peer, generation, "RTMP publish accepted");
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(g.clone().run_ingest(stream, generation, rx));
            Ok(tx)
        })
    }
}

/// `POST|PUT /live/{stream}/{file}`: one pushed segment.
pub(crate) async fn push(
    State(g): State<Gateway>,
    UrlPath((stream_key, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match push_segment(&g, &stream_key, &file, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn push_segment(
    g: &Gateway,
    stream_key: &str,
    file: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AiHttpError> {
    let config = &g.streams().config;
    let (seq, ext) = file
        .rsplit_once('.')
        .ok_or_else(|| err(400, format!("`{file}`: expected {{seq}}.ts or {{seq}}.mp4")))?;
    if !matches!(ext, "ts" | "mp4") {
        return Err(err(
            400,
            format!("`{file}`: only .ts and .mp4 segments are accepted"),
        ));
    }
    let seq: u64 = seq
        .parse()
        .map_err(|_| err(400, format!("`{file}`: the segment number is not a number")))?;
    let body = body.map_err(AiHttpError::from)?;
    if body.is_empty() {
        return Err(err(400, "empty segment"));
    }
    if body.len() > config.max_push_bytes {
        return Err(err(
            413,
            format!("segment larger than {} bytes", config.max_push_bytes),
        ));
    }
    let declared_ms = match headers.get(DURATION_HEADER) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| (1..=300_000).contains(ms))
                .ok_or_else(|| err(400, "Content-Duration must be 1..=300000 milliseconds"))?,
        ),
        None => None,
    };
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
    let duration_ms = declared_ms.unwrap_or(info.duration_ms).max(1);
    // A pushed stream is authorized once, when its first segment arrives.
    let live = g
        .streams()
        .get(stream_key)
        .filter(|s| s.state.lock().ended_at.is_none());
    let (stream, generation) = match live {
        Some(s) => {
            let generation = s.state.lock().generation;
            (s, generation)
        }
        None => {
            let url = format!("{}/live/{stream_key}/{file}", g.inner.config.public_url);
            let (id, profiles) = g
                .authorize_stream(&url, stream_key)
                .await
                .map_err(|e| err(403, e))?;
            g.open_stream(&id, profiles, false, false)
                .map_err(|e| err(503, e))?
        }
    };
    let start_ms = seq.saturating_mul(duration_ms).min(i64::MAX as u64) as i64;
    let renditions = g
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
                    format!("No sessions available: {}", crate::server::message_of(&e)),
                )
            } else {
                e
            }
        })?;
    let wants_parts = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("multipart/mixed"));
    if !wants_parts {
        return Ok(StatusCode::OK.into_response());
    }
    let (content_type, body) = wire::renditions_body(&seq.to_string(), &renditions);
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(response)
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
pub(crate) async fn master(State(g): State<Gateway>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(id) = file.strip_suffix(".m3u8") else {
        return not_found(format!("no such playlist `{file}`"));
    };
    match g.streams().get(id) {
        Some(s) => playlist(s.master(false)),
        None => not_found(format!("no stream `{id}`")),
    }
}

/// `GET /stream/{stream}/{rendition}.m3u8`: a media playlist.
pub(crate) async fn media(
    State(g): State<Gateway>,
    UrlPath((id, file)): UrlPath<(String, String)>,
) -> Response {
    let Some(name) = file.strip_suffix(".m3u8") else {
        return not_found(format!("no such playlist `{file}`"));
    };
    let Some(s) = g.streams().get(&id) else {
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
pub(crate) async fn segment(
    State(g): State<Gateway>,
    UrlPath((id, name, file)): UrlPath<(String, String, String)>,
    Query(reload): Query<Reload>,
) -> Response {
    let Some(s) = g.streams().get(&id) else {
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
pub(crate) async fn recording(
    State(g): State<Gateway>,
    UrlPath(parts): UrlPath<Vec<(String, String)>>,
) -> Response {
    let Some(recorder) = g.streams().recorder.clone() else {
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
