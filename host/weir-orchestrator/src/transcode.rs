//! Live transcoding: `POST /transcode` takes one MPEG-TS segment and the ladder it should become,
//! paid per output pixel, and answers the renditions as `multipart/mixed`.
//!
//! Request headers: `Weir-Payment` (a signed credit for account `transcode/h264`),
//! `Weir-Profiles` (the ladder as JSON), `Content-Duration` (the segment's length in ms, as in
//! Livepeer's push API). The job is reserved at the pixels the ladder produces for that
//! duration and charged the pixels actually encoded (never more than reserved).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use weir_media::profile::{validate_ladder, Profile};
use weir_media::transcode::{Accel, Rendition, TranscodeOptions, Transcoder};
use weir_media::wire::{
    ladder_pixels, renditions_body, DURATION_HEADER, PROFILES_HEADER, SEGMENT_HEADER,
};
use weir_models::capacity::Capacity;
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER};
use weir_protocol::AiHttpError;

use crate::handler::{err, AiBody};
use crate::paid::{Order, PaidJob, Payer, Quote};
use crate::Orchestrator;

pub use weir_media::wire::{CAPABILITY, MODEL};

/// `[orchestrator.transcode]`: the FFmpeg transcoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Whether transcoding is offered (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Segments transcoded at once (Livepeer's `maxSessions`; default 2).
    #[serde(default = "two")]
    pub capacity: u32,
    /// Threads per transcode (default 0: FFmpeg's choice).
    #[serde(default)]
    pub threads: usize,
    /// x264 preset (default `veryfast`).
    #[serde(default = "veryfast")]
    pub preset: String,
    /// `cpu`, `cuda` or `auto` (default: GPU decode where CUDA is present).
    #[serde(default)]
    pub accel: AccelSetting,
    /// Deadline of one segment, seconds (default 30).
    #[serde(default = "thirty")]
    pub timeout_secs: u64,
    /// Longest segment accepted, seconds (default 30).
    #[serde(default = "thirty")]
    pub max_segment_secs: u64,
}

/// Hardware acceleration setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// Software decode and scale.
    Cpu,
    /// NVIDIA decode; refused at start when no CUDA driver is present.
    Cuda,
    /// NVIDIA decode where present, software otherwise.
    #[default]
    Auto,
}

fn yes() -> bool {
    true
}
fn two() -> u32 {
    2
}
fn thirty() -> u64 {
    30
}
fn veryfast() -> String {
    "veryfast".to_owned()
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        TranscodeConfig {
            enabled: true,
            capacity: two(),
            threads: 0,
            preset: veryfast(),
            accel: AccelSetting::Auto,
            timeout_secs: thirty(),
            max_segment_secs: thirty(),
        }
    }
}

/// The transcoder with its capacity.
pub(crate) struct TranscodeSlot {
    pub transcoder: Arc<Transcoder>,
    pub capacity: Arc<Capacity>,
    pub timeout: Duration,
    pub max_segment_ms: u64,
    pub kind: &'static str,
}

impl TranscodeSlot {
    /// The transcoder `config` asks for, or why it cannot be had.
    pub fn build(config: &TranscodeConfig) -> Result<Option<TranscodeSlot>, String> {
        if !config.enabled {
            return Ok(None);
        }
        if config.capacity == 0 {
            return Err("[orchestrator.transcode] capacity must be at least 1".to_owned());
        }
        let gpu = weir_media::transcode::gpu_available();
        let accel = match config.accel {
            AccelSetting::Cpu => Accel::Cpu,
            AccelSetting::Cuda if !gpu => {
                return Err(
                    "[orchestrator.transcode] accel = \"cuda\" but no CUDA driver was found"
                        .to_owned(),
                )
            }
            AccelSetting::Cuda => Accel::Cuda,
            AccelSetting::Auto => Accel::Auto,
        };
        let transcoder = Transcoder::new(TranscodeOptions {
            threads: config.threads,
            preset: config.preset.clone(),
            accel,
        })
        .map_err(|e| format!("[orchestrator.transcode]: {e}"))?;
        let kind = if gpu && accel != Accel::Cpu {
            "ffmpeg-cuda"
        } else {
            "ffmpeg"
        };
        tracing::info!(
            kind,
            preset = %config.preset,
            capacity = config.capacity,
            "transcoding offered"
        );
        Ok(Some(TranscodeSlot {
            transcoder: Arc::new(transcoder),
            capacity: Capacity::new(config.capacity),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            max_segment_ms: config.max_segment_secs.max(1) * 1000,
            kind,
        }))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The ladder and duration a request names, validated.
fn job_terms(headers: &HeaderMap, max_ms: u64) -> Result<(Vec<Profile>, u64), AiHttpError> {
    let profiles: Vec<Profile> = match header_str(headers, PROFILES_HEADER) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| err(400, format!("{PROFILES_HEADER}: not a ladder: {e}")))?,
        None => weir_media::profile::default_ladder(),
    };
    validate_ladder(&profiles).map_err(|e| err(422, format!("{PROFILES_HEADER}: {e}")))?;
    let duration_ms = header_str(headers, DURATION_HEADER)
        .ok_or_else(|| {
            err(
                400,
                format!("the {DURATION_HEADER} header (milliseconds) is required"),
            )
        })?
        .trim()
        .parse::<u64>()
        .map_err(|_| {
            err(
                400,
                format!("{DURATION_HEADER} must be a whole number of milliseconds"),
            )
        })?;
    if duration_ms == 0 || duration_ms > max_ms {
        return Err(err(
            422,
            format!("{DURATION_HEADER} {duration_ms} ms is outside 1..={max_ms} ms"),
        ));
    }
    Ok((profiles, duration_ms))
}

impl Orchestrator {
    async fn transcode_segment(
        &self,
        slot: &TranscodeSlot,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(Vec<Rendition>, u64, u64), AiHttpError> {
        let (profiles, duration_ms) = job_terms(headers, slot.max_segment_ms)?;
        if body.is_empty() {
            return Err(err(400, "empty segment"));
        }
        let payer = Payer::for_account(self.payment(headers)?, CAPABILITY, MODEL, "job")?;
        let units = ladder_pixels(&profiles, duration_ms);
        let size = weir_media::wire::ladder_size(&profiles, duration_ms);
        let output =
            weir_runtime::OutputSize::new(size.width, size.height, size.frames, size.count);
        let what = payer.account.clone();
        let order = Order {
            what: &what,
            model: MODEL,
            units,
            id_prefix: "seg",
        };
        let quote = Quote::Component {
            capability: CAPABILITY,
            model: MODEL,
            capacity: &slot.capacity,
            output,
        };
        let take_slot = || {
            slot.capacity.try_acquire().map_err(|full| {
                err(
                    503,
                    format!(
                        "insufficient capacity: transcoding runs {} of {} segments",
                        full.in_flight, full.limit
                    ),
                )
            })
        };
        let mut job = PaidJob::open(self, payer, order, quote, take_slot).await?;
        let started = Instant::now();
        let outcome = transcode_on(slot, body, profiles).await;
        job.free_slot();
        let renditions = match outcome {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "segment not transcoded; reservation released");
                job.release().await;
                return Err(e);
            }
        };
        let pixels = weir_media::transcode::pixels(&renditions);
        let charge = job.charge_for(pixels);
        let job_id = job.id.clone();
        let balance = job.settle(charge).await?;
        tracing::debug!(job = %job_id, duration_ms, pixels, charge, ms = started.elapsed().as_millis() as u64, "segment transcoded");
        Ok((renditions, balance, charge))
    }
}

/// `body` transcoded to `ladder` off the async workers, within the slot's deadline.
async fn transcode_on(
    slot: &TranscodeSlot,
    body: Bytes,
    ladder: Vec<Profile>,
) -> Result<Vec<Rendition>, AiHttpError> {
    let transcoder = slot.transcoder.clone();
    let work = tokio::task::spawn_blocking(move || transcoder.transcode(&body, &ladder));
    match tokio::time::timeout(slot.timeout, work).await {
        Ok(Ok(Ok(renditions))) => Ok(renditions),
        Ok(Ok(Err(e))) => Err(err(422, format!("transcoding failed: {e}"))),
        Ok(Err(join)) => Err(err(500, format!("transcoder crashed: {join}"))),
        Err(_) => Err(err(
            504,
            format!("transcoding took longer than {:?}", slot.timeout),
        )),
    }
}

/// `POST /transcode`.
pub(crate) async fn handle(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    AiBody(body): AiBody,
) -> Response {
    let Some(slot) = o.transcode_slot() else {
        return err(404, "this orchestrator does not offer transcoding").into_response();
    };
    let seq = header_str(&headers, SEGMENT_HEADER)
        .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("0")
        .to_owned();
    match o.transcode_segment(slot, &headers, body).await {
        Ok((renditions, balance, charge)) => {
            let (content_type, body) = renditions_body(&seq, &renditions);
            let mut response = body.into_response();
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(CHARGE_HEADER, HeaderValue::from(charge));
            response
        }
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(error = %e, "segment refused");
            }
            e.into_response()
        }
    }
}

/// The transcoder as components see it: `segment.probe`, `transcode.ladder` and
/// `video.decode`/`encode` of the WIT `media`/`transcode`/`video` interfaces, so pipeline
/// components reuse the host's FFmpeg decoder and encoders.
pub struct GuestMedia {
    transcoder: Arc<Transcoder>,
}

impl GuestMedia {
    /// Components' media work done by `transcoder`.
    pub fn new(transcoder: Arc<Transcoder>) -> GuestMedia {
        GuestMedia { transcoder }
    }
}

fn guest_error(e: impl std::fmt::Display) -> weir_runtime::GuestError {
    weir_runtime::GuestError::InvalidRequest(e.to_string())
}

impl weir_runtime::MediaSource for GuestMedia {
    fn probe(
        &self,
        segment: &weir_runtime::media::Segment,
    ) -> Result<weir_runtime::bindings::media::VideoInfo, weir_runtime::GuestError> {
        let info = weir_media::transcode::probe(&segment.data).map_err(guest_error)?;
        let video = info
            .video
            .ok_or_else(|| guest_error("the segment has no video stream"))?;
        Ok(weir_runtime::bindings::media::VideoInfo {
            codec: video.codec,
            width: video.width,
            height: video.height,
            // 0/1 says unknown.
            fps_num: video.fps.map_or(0, |f| f.0),
            fps_den: video.fps.map_or(1, |f| f.1),
        })
    }

    fn ladder(
        &self,
        segment: &weir_runtime::media::Segment,
        renditions: &[weir_runtime::bindings::transcode::Rendition],
    ) -> Result<Vec<weir_runtime::media::Segment>, weir_runtime::GuestError> {
        // Frame rate 0 keeps the source's (30 when the source does not say).
        let source_fps = if renditions.iter().any(|r| r.fps_num == 0) {
            weir_media::transcode::probe(&segment.data)
                .map_err(guest_error)?
                .video
                .and_then(|v| v.fps)
                .unwrap_or((30, 1))
        } else {
            (30, 1)
        };
        let profiles = renditions
            .iter()
            .map(|r| {
                let (fps, fps_den) = match r.fps_num {
                    0 => source_fps,
                    n => (n, r.fps_den.max(1)),
                };
                Ok(Profile {
                    name: r.name.clone(),
                    width: r.width,
                    height: r.height,
                    bitrate: u64::from(r.bitrate),
                    fps,
                    fps_den,
                    profile: weir_media::profile::H264Profile::None,
                    gop: match r.gop_ms {
                        // One keyframe per segment: a GOP longer than the segment.
                        0 => weir_media::profile::Gop::Seconds(
                            (f64::from(segment.duration_ms) / 1000.0 + 1.0).min(60.0),
                        ),
                        ms => weir_media::profile::Gop::Seconds(f64::from(ms) / 1000.0),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        validate_ladder(&profiles).map_err(guest_error)?;
        let out = self
            .transcoder
            .transcode(&segment.data, &profiles)
            .map_err(guest_error)?;
        Ok(out
            .into_iter()
            .map(|r| weir_runtime::media::Segment {
                seq: segment.seq,
                duration_ms: u32::try_from(r.duration_ms).unwrap_or(u32::MAX),
                content_type: "video/mp2t".to_owned(),
                data: r.data.to_vec().into(),
            })
            .collect())
    }

    fn decode(
        &self,
        segment: &weir_runtime::media::Segment,
        frames: usize,
        bytes: u64,
        deadline: std::time::Instant,
    ) -> Result<Vec<weir_runtime::video::Frame>, weir_runtime::GuestError> {
        let room = weir_media::transcode::DecodeRoom { frames, bytes };
        let decoded = weir_media::transcode::decode_rgb(&segment.data, room, deadline)
            .map_err(|e| guest_error(format!("decoding segment {}: {e}", segment.seq)))?;
        Ok(decoded
            .into_iter()
            .map(|f| weir_runtime::video::Frame {
                width: f.width,
                height: f.height,
                format: weir_runtime::video::PixelFormat::Rgb24,
                pts: f.pts,
                data: f.data,
            })
            .collect())
    }

    fn encode(
        &self,
        source: &weir_runtime::media::Segment,
        frames: &[&weir_runtime::video::Frame],
        settings: &weir_runtime::bindings::video::EncodeSettings,
        deadline: std::time::Instant,
    ) -> Result<weir_runtime::media::Segment, weir_runtime::GuestError> {
        let views: Vec<_> = frames
            .iter()
            .map(|f| weir_media::transcode::RgbView {
                width: f.width,
                height: f.height,
                pts: f.pts,
                data: &f.data,
            })
            .collect();
        let data =
            weir_media::transcode::encode_rgb(&source.data, &views, settings.bitrate, deadline)
                .map_err(|e| guest_error(format!("encoding segment {}: {e}", source.seq)))?;
        Ok(weir_runtime::media::Segment {
            seq: source.seq,
            duration_ms: source.duration_ms,
            content_type: "video/mp2t".to_owned(),
            data: data.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_section_has_defaults_and_refuses_typos() {
        let c: TranscodeConfig = toml::from_str("").expect("defaults");
        assert_eq!(c, TranscodeConfig::default());
        assert!(toml::from_str::<TranscodeConfig>("capacty = 3").is_err());
        let c: TranscodeConfig = toml::from_str("accel = \"cpu\"\ncapacity = 4").expect("valid");
        assert_eq!(c.accel, AccelSetting::Cpu);
    }
}
