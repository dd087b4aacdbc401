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

mod ai_output;
mod http;
mod publish;
mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use weir_media::hls::{self, MediaPlaylist, Variant};
use weir_media::llhls::{Fmp4Segment, LlPlaylist};
use weir_media::profile::Profile;
use weir_protocol::ids::{is_plain_id, plain_id_rule, MAX_ID_LEN};

use crate::config::GatewayConfig;
pub use crate::config::LiveConfig;
use crate::dispatch::Dispatcher;
use crate::record::{RecordedVariant, Recorder};

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

/// Live video: the gateway's live streams, their playlists and recordings, and the path a
/// segment takes to be transcoded.
pub(crate) struct Live {
    config: LiveConfig,
    /// The gateway's public URL (pushed streams are authorized by their URL on it).
    public_url: String,
    /// Deadline of one transcode attempt on an orchestrator.
    attempt_timeout: Duration,
    dispatcher: Arc<Dispatcher>,
    recorder: Option<Arc<Recorder>>,
    map: Mutex<HashMap<String, Arc<LiveStream>>>,
    segments: prometheus::IntCounterVec,
    live: prometheus::IntGauge,
}

impl Live {
    /// Live video as `config` says, transcoding through `dispatcher`; its metrics are
    /// registered in `metrics`.
    pub(crate) fn new(
        config: LiveConfig,
        gateway: &GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        metrics: &prometheus::Registry,
    ) -> Result<Arc<Live>, prometheus::Error> {
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
        Ok(Arc::new(Live {
            public_url: gateway.public_url.clone(),
            attempt_timeout: gateway.attempt_timeout,
            dispatcher,
            recorder: config
                .record_dir
                .clone()
                .map(|dir| Arc::new(Recorder::new(dir))),
            config,
            map: Mutex::new(HashMap::new()),
            segments,
            live,
        }))
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

impl Live {
    /// Ask the auth webhook (if any) about stream `key` published at `url`: the stream id and
    /// ladder to use, or why not.
    async fn authorize_stream(
        &self,
        url: &str,
        key: &str,
    ) -> Result<(String, Vec<Profile>), String> {
        let config = &self.config;
        let Some(hook) = &config.auth_webhook_url else {
            if !is_plain_id(key, MAX_ID_LEN) {
                return Err(format!(
                    "stream key `{key}` is not a valid stream id ({})",
                    plain_id_rule(MAX_ID_LEN)
                ));
            }
            return Ok((key.to_owned(), config.profiles.clone()));
        };
        let answer = self
            .dispatcher
            .client()
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
        if !is_plain_id(&id, MAX_ID_LEN) {
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
        // Checked and taken under one lock: two publishes cannot both take the last session.
        let stream = {
            let mut map = self.map.lock();
            let is_live = |s: &Arc<LiveStream>| s.state.lock().ended_at.is_none();
            let existing = map.get(id).cloned();
            if !ai_output && existing.as_ref().is_none_or(|s| !is_live(s)) {
                let active = map.values().filter(|s| !s.ai_output && is_live(s)).count();
                if active >= self.config.max_sessions {
                    return Err(format!(
                        "no sessions available: {active} streams are live (max_sessions)"
                    ));
                }
            }
            match existing {
                // Same ladder: continue the playlists (a reconnect, or a pushed stream).
                Some(s) if s.profiles == profiles => s,
                _ => {
                    let s = Arc::new(LiveStream::new(id, profiles, ai_output, &self.config));
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
        self.live.set(self.active() as i64);
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
        if let Some(recorder) = &self.recorder {
            recorder.finish(&stream.id, variants);
        }
        tracing::info!(stream = %stream.id, "stream ended");
        self.live.set(self.active() as i64);
    }

    /// End idle pushed streams and forget long-ended ones, periodically.
    pub(crate) fn spawn_janitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let g = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let config = &g.config;
                let all: Vec<Arc<LiveStream>> = g.map.lock().values().cloned().collect();
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
                            g.map.lock().retain(|_, v| !Arc::ptr_eq(v, &s));
                        }
                        _ => {}
                    }
                }
            }
        })
    }
}
