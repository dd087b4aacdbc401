//! Transcoding one MPEG-TS segment to an ABR ladder with the FFmpeg libraries.
//!
//! The source video is decoded once; every decoded frame is scaled (swscale) to each rendition,
//! converted to the rendition's frame rate by dropping or repeating frames, and encoded with
//! libx264. AAC (or any other) audio is copied into every rendition unchanged. Output
//! timestamps follow the input's, so the renditions of consecutive segments play in sequence,
//! and the first frame of every rendition is an IDR at the same time, so IDRs line up across
//! the ladder.
//!
//! [`Transcoder::transcode`] blocks; call it from `tokio::task::spawn_blocking`.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use ff::format::Pixel;
use ff::software::scaling;
use ff::{codec, decoder, encoder, frame, media, Packet, Rational};
use ffmpeg_next as ff;

use crate::gpu;
use crate::profile::{validate_ladder, Profile, ProfileError};

/// The x264 presets accepted in [`TranscodeOptions::preset`].
pub const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// A gap in the source longer than this (seconds) is treated as a discontinuity: the output
/// jumps with it instead of repeating the last frame to fill it.
const MAX_FILL_SECONDS: i64 = 10;

/// Where video is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Always decode on the CPU.
    #[default]
    Cpu,
    /// Decode with NVDEC (`*_cuvid`) when a CUDA GPU is present, else fall back to the CPU.
    Cuda,
    /// Same as [`Accel::Cuda`]: use a GPU when one is found.
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "sw" | "none" => Ok(Accel::Cpu),
            "cuda" | "nv" | "nvidia" | "gpu" => Ok(Accel::Cuda),
            "auto" => Ok(Accel::Auto),
            other => Err(format!("unknown acceleration {other:?} (cpu, cuda, auto)")),
        }
    }
}

/// How a [`Transcoder`] works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscodeOptions {
    /// Threads for the decoder and for each encoder; 0 lets FFmpeg/x264 choose.
    pub threads: usize,
    /// The x264 preset (one of [`X264_PRESETS`]).
    pub preset: String,
    /// Where to decode.
    pub accel: Accel,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            threads: 0,
            preset: "veryfast".to_string(),
            accel: Accel::Cpu,
        }
    }
}

/// One encoded rendition of a segment.
#[derive(Debug, Clone)]
pub struct Rendition {
    /// The profile's name.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame rate as (numerator, denominator).
    pub fps: (u32, u32),
    /// Video frames encoded (0 for an audio-only segment).
    pub frames: u64,
    /// Duration of the rendition in milliseconds.
    pub duration_ms: u64,
    /// The MPEG-TS bytes.
    pub data: Bytes,
}

/// Total pixels encoded: Σ width × height × frames.
pub fn pixels(renditions: &[Rendition]) -> u64 {
    renditions
        .iter()
        .map(|r| u64::from(r.width) * u64::from(r.height) * r.frames)
        .sum()
}

/// The video stream of a probed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoInfo {
    /// FFmpeg's codec name (`h264`, `hevc`, …).
    pub codec: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Average frame rate as numerator and denominator, when the container says.
    pub fps: Option<(u32, u32)>,
}

/// What [`probe`] found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The container FFmpeg detected (`mpegts`, …).
    pub format: String,
    /// Media duration in milliseconds (video if present, else audio).
    pub duration_ms: u64,
    /// The video stream, if any.
    pub video: Option<VideoInfo>,
    /// Whether there is an audio stream.
    pub has_audio: bool,
}

/// The result of [`Transcoder::transcode_detailed`].
#[derive(Debug, Clone)]
pub struct TranscodeOutput {
    /// One entry per requested profile, in order.
    pub renditions: Vec<Rendition>,
    /// The decoder used for the video (`h264`, `h264_cuvid`, …), if there was video.
    pub decoder: Option<String>,
    /// Video frames decoded from the source.
    pub decoded_frames: u64,
}

/// Why a transcode or probe failed.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The FFmpeg libraries or libx264 are unusable.
    #[error("transcoder unavailable: {0}")]
    Unavailable(String),
    /// The options are invalid.
    #[error("invalid transcode options: {0}")]
    Options(String),
    /// The profiles are invalid.
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    /// The input is not a readable media segment.
    #[error("invalid input segment: {0}")]
    InvalidInput(String),
    /// The input's video codec cannot be decoded.
    #[error("unsupported video codec {0}")]
    UnsupportedCodec(String),
    /// Temporary files could not be written or read.
    #[error("temporary file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An FFmpeg call failed while producing output.
    #[error("{context}: {source}")]
    Ffmpeg {
        /// What was being done.
        context: String,
        /// FFmpeg's error.
        source: ff::Error,
    },
}

pub(crate) fn ffe(context: impl Into<String>) -> impl FnOnce(ff::Error) -> TranscodeError {
    let context = context.into();
    move |source| TranscodeError::Ffmpeg { context, source }
}

/// Initialises the FFmpeg libraries once per process (and quiets their logging to fatal
/// errors); every module that uses FFmpeg goes through here.
pub(crate) fn ffmpeg_ready() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ff::init().map_err(|e| e.to_string())?;
        // Damaged input makes the decoders log freely; failures surface as errors instead.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
        Ok(())
    })
    .clone()
}

pub(crate) fn init_ffmpeg() -> Result<(), TranscodeError> {
    ffmpeg_ready().map_err(TranscodeError::Unavailable)
}

/// Whether a CUDA GPU is present at run time (see [`crate::gpu`]).
pub fn gpu_available() -> bool {
    gpu::gpu_available()
}

/// Transcodes segments to a ladder. Cheap to create; holds no FFmpeg state between calls, so
/// one `Transcoder` may be shared across threads.
#[derive(Debug, Clone)]
pub struct Transcoder {
    opts: TranscodeOptions,
}

impl Transcoder {
    /// Checks the options and that libx264 is available.
    pub fn new(opts: TranscodeOptions) -> Result<Self, TranscodeError> {
        init_ffmpeg()?;
        if !X264_PRESETS.contains(&opts.preset.as_str()) {
            return Err(TranscodeError::Options(format!(
                "unknown x264 preset {:?} (one of {})",
                opts.preset,
                X264_PRESETS.join(", ")
            )));
        }
        if opts.threads > 64 {
            return Err(TranscodeError::Options(format!(
                "threads {} is above 64",
                opts.threads
            )));
        }
        if encoder::find_by_name("libx264").is_none() {
            return Err(TranscodeError::Unavailable(
                "this FFmpeg build has no libx264 encoder".into(),
            ));
        }
        if opts.accel != Accel::Cpu {
            if let gpu::GpuStatus::Unavailable(why) = gpu::gpu_status() {
                tracing::info!(reason = %why, "GPU decoding requested but unavailable; decoding on the CPU");
            }
        }
        Ok(Transcoder { opts })
    }

    /// The options in use.
    pub fn options(&self) -> &TranscodeOptions {
        &self.opts
    }

    /// Transcodes one segment (MPEG-TS bytes) to every profile. Blocking.
    pub fn transcode(
        &self,
        segment: &[u8],
        profiles: &[Profile],
    ) -> Result<Vec<Rendition>, TranscodeError> {
        self.transcode_detailed(segment, profiles)
            .map(|o| o.renditions)
    }

    /// Like [`Transcoder::transcode`], also saying which decoder ran.
    pub fn transcode_detailed(
        &self,
        segment: &[u8],
        profiles: &[Profile],
    ) -> Result<TranscodeOutput, TranscodeError> {
        validate_ladder(profiles)?;
        if segment.is_empty() {
            return Err(TranscodeError::InvalidInput("empty segment".into()));
        }
        let dir = tempfile::Builder::new().prefix("weir-tc-").tempdir()?;
        let in_path = dir.path().join("in.ts");
        std::fs::write(&in_path, segment)?;
        let out_paths: Vec<_> = (0..profiles.len())
            .map(|i| dir.path().join(format!("out{i}.ts")))
            .collect();
        let mut job = Job::open(&in_path, &self.opts)?;
        let mut outs = profiles
            .iter()
            .zip(&out_paths)
            .map(|(p, path)| Output::open(p, path, &job, &self.opts))
            .collect::<Result<Vec<_>, _>>()?;
        job.run(&mut outs)?;
        let mut renditions = Vec::with_capacity(outs.len());
        for (out, path) in outs.into_iter().zip(&out_paths) {
            let p = out.profile.clone();
            let (frames, duration_ms) = out.finish(&job)?;
            let data = Bytes::from(std::fs::read(path)?);
            renditions.push(Rendition {
                name: p.name.clone(),
                width: p.width,
                height: p.height,
                fps: (p.fps, p.fps_den),
                frames,
                duration_ms,
                data,
            });
        }
        Ok(TranscodeOutput {
            renditions,
            decoder: job.video.as_ref().map(|v| v.decoder_name.clone()),
            decoded_frames: job.video.as_ref().map_or(0, |v| v.decoded),
        })
    }
}

fn open_input(path: &Path) -> Result<ff::format::context::Input, TranscodeError> {
    ff::format::input(&path)
        .map_err(|e| TranscodeError::InvalidInput(format!("cannot open the segment: {e}")))
}

/// Probes a segment: container, duration, video codec and size, audio presence.
pub fn probe(segment: &[u8]) -> Result<SegmentInfo, TranscodeError> {
    init_ffmpeg()?;
    if segment.is_empty() {
        return Err(TranscodeError::InvalidInput("empty segment".into()));
    }
    let dir = tempfile::Builder::new().prefix("weir-probe-").tempdir()?;
    let path = dir.path().join("in.ts");
    std::fs::write(&path, segment)?;
    let mut ictx = open_input(&path)?;
    let format = ictx.format().name().to_string();
    let vst = ictx.streams().best(media::Type::Video);
    let ast = ictx.streams().best(media::Type::Audio);
    if vst.is_none() && ast.is_none() {
        return Err(TranscodeError::InvalidInput(
            "no audio or video stream".into(),
        ));
    }
    let v_index = vst.as_ref().map(|s| s.index());
    let a_index = ast.as_ref().map(|s| s.index());
    let mut video = None;
    if let Some(vst) = vst {
        let id = vst.parameters().id();
        let name = id.name().to_string();
        if decoder::find(id).is_none() {
            return Err(TranscodeError::UnsupportedCodec(name));
        }
        let dec = codec::context::Context::from_parameters(vst.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(|e| TranscodeError::InvalidInput(format!("video stream: {e}")))?;
        if dec.width() == 0 || dec.height() == 0 {
            return Err(TranscodeError::InvalidInput(
                "video stream has no dimensions".into(),
            ));
        }
        let rate = vst.avg_frame_rate();
        let fps = match (
            u32::try_from(rate.numerator()),
            u32::try_from(rate.denominator()),
        ) {
            (Ok(n), Ok(d)) if n > 0 && d > 0 => Some((n, d)),
            _ => None,
        };
        video = Some(VideoInfo {
            codec: name,
            width: dec.width(),
            height: dec.height(),
            fps,
        });
    }
    let timed = v_index.or(a_index);
    let mut span = Span::default();
    for (stream, packet) in ictx.packets() {
        if Some(stream.index()) == timed {
            span.add(&packet, stream.time_base());
        }
    }
    if span.count == 0 {
        return Err(TranscodeError::InvalidInput("no media packets".into()));
    }
    Ok(SegmentInfo {
        format,
        duration_ms: span.duration_ms(),
        video,
        has_audio: a_index.is_some(),
    })
}

/// The time span covered by a stream's packets.
#[derive(Default)]
struct Span {
    start: Option<f64>,
    end: Option<f64>,
    count: u64,
}

impl Span {
    fn add(&mut self, p: &Packet, tb: Rational) {
        self.count += 1;
        let Some(ts) = p.pts().or(p.dts()) else {
            return;
        };
        let secs = |t: i64| t as f64 * f64::from(tb);
        let start = secs(ts);
        let end = secs(ts + p.duration().max(0));
        self.start = Some(self.start.map_or(start, |s| s.min(start)));
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
    }

    fn duration_ms(&self) -> u64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) if e > s => ((e - s) * 1000.0).round() as u64,
            _ => 0,
        }
    }
}

/// The decoding side of one transcode.
struct Job {
    ictx: ff::format::context::Input,
    video: Option<VideoIn>,
    audio: Option<AudioIn>,
}

struct VideoIn {
    index: usize,
    tb: Rational,
    decoder: decoder::Video,
    decoder_name: String,
    /// Duration of one source frame in `tb` units.
    frame_dur: i64,
    /// Presentation time of the first decoded frame (`tb`).
    t0: Option<i64>,
    last_pts: Option<i64>,
    decoded: u64,
}

struct AudioIn {
    index: usize,
    tb: Rational,
    parameters: codec::Parameters,
    last_dts: Option<i64>,
    span: Span,
}

impl Job {
    fn open(path: &Path, opts: &TranscodeOptions) -> Result<Job, TranscodeError> {
        let ictx = open_input(path)?;
        let vst = ictx.streams().best(media::Type::Video);
        let ast = ictx.streams().best(media::Type::Audio);
        if vst.is_none() && ast.is_none() {
            return Err(TranscodeError::InvalidInput(
                "no audio or video stream".into(),
            ));
        }
        let audio = ast.map(|s| AudioIn {
            index: s.index(),
            tb: s.time_base(),
            parameters: s.parameters(),
            last_dts: None,
            span: Span::default(),
        });
        let video = match vst {
            None => None,
            Some(s) => {
                let tb = s.time_base();
                if tb.numerator() <= 0 || tb.denominator() <= 0 {
                    return Err(TranscodeError::InvalidInput("bad video time base".into()));
                }
                let rate = [s.avg_frame_rate(), s.rate()]
                    .into_iter()
                    .find(|r| r.numerator() > 0 && r.denominator() > 0)
                    .unwrap_or(Rational::new(30, 1));
                // One frame in time-base units: tb.den * rate.den / (tb.num * rate.num).
                let frame_dur = (i64::from(tb.denominator()) * i64::from(rate.denominator())
                    / (i64::from(tb.numerator()) * i64::from(rate.numerator())).max(1))
                .max(1);
                let (decoder, decoder_name) = open_video_decoder(&s, opts)?;
                Some(VideoIn {
                    index: s.index(),
                    tb,
                    decoder,
                    decoder_name,
                    frame_dur,
                    t0: None,
                    last_pts: None,
                    decoded: 0,
                })
            }
        };
        Ok(Job { ictx, video, audio })
    }

    fn run(&mut self, outs: &mut [Output]) -> Result<(), TranscodeError> {
        for o in outs.iter_mut() {
            o.octx
                .write_header()
                .map_err(ffe("writing the MPEG-TS header"))?;
            o.v_tb = o
                .v_ost
                .and_then(|i| o.octx.stream(i))
                .map(|s| s.time_base());
            o.a_tb = o
                .a_ost
                .and_then(|i| o.octx.stream(i))
                .map(|s| s.time_base());
        }
        let mut packet = Packet::empty();
        let mut decoded = frame::Video::empty();
        loop {
            match packet.read(&mut self.ictx) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::InvalidData) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "stopped reading a damaged segment early");
                    break;
                }
            }
            let idx = packet.stream();
            if let Some(v) = self.video.as_mut().filter(|v| v.index == idx) {
                if let Err(e) = v.decoder.send_packet(&packet) {
                    tracing::debug!(error = %e, "video packet rejected by the decoder");
                    continue;
                }
                v.drain(&mut decoded, outs)?;
            } else if let Some(a) = self.audio.as_mut().filter(|a| a.index == idx) {
                a.copy(&packet, outs)?;
            }
        }
        if let Some(v) = self.video.as_mut() {
            if v.decoder.send_eof().is_ok() {
                v.drain(&mut decoded, outs)?;
            }
            if v.decoded == 0 {
                return Err(TranscodeError::InvalidInput(
                    "the video stream has no decodable frames".into(),
                ));
            }
            v.fill_to_end(outs)?;
        } else if self.audio.as_ref().is_none_or(|a| a.span.count == 0) {
            return Err(TranscodeError::InvalidInput("no media packets".into()));
        }
        Ok(())
    }
}

fn open_video_decoder(
    s: &ff::format::stream::Stream,
    opts: &TranscodeOptions,
) -> Result<(decoder::Video, String), TranscodeError> {
    let id = s.parameters().id();
    let name = id.name().to_string();
    if opts.accel != Accel::Cpu && gpu::gpu_available() {
        let cuvid = match id {
            codec::Id::H264 => Some("h264_cuvid"),
            codec::Id::HEVC => Some("hevc_cuvid"),
            codec::Id::VP9 => Some("vp9_cuvid"),
            codec::Id::VP8 => Some("vp8_cuvid"),
            codec::Id::AV1 => Some("av1_cuvid"),
            _ => None,
        };
        match cuvid.and_then(decoder::find_by_name) {
            None => {
                tracing::info!(codec = %name, "no NVDEC decoder for this codec; decoding on the CPU")
            }
            Some(codec) => {
                let opened =
                    codec::context::Context::from_parameters(s.parameters()).and_then(|c| {
                        let mut d = c.decoder();
                        d.set_packet_time_base(s.time_base());
                        d.open_as(codec).and_then(|o| o.video())
                    });
                match opened {
                    Ok(d) => return Ok((d, codec.name().to_string())),
                    Err(e) => tracing::warn!(
                        decoder = codec.name(),
                        error = %e,
                        "GPU decoder failed to open; decoding on the CPU"
                    ),
                }
            }
        }
    }
    let Some(codec) = decoder::find(id) else {
        return Err(TranscodeError::UnsupportedCodec(name));
    };
    let mut ctx = codec::context::Context::from_parameters(s.parameters())
        .map_err(|e| TranscodeError::InvalidInput(format!("video stream parameters: {e}")))?;
    ctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: opts.threads,
        ..Default::default()
    });
    let mut dec = ctx.decoder();
    dec.set_packet_time_base(s.time_base());
    let dec = dec.open_as(codec).and_then(|o| o.video()).map_err(|e| {
        TranscodeError::InvalidInput(format!("cannot open the {name} decoder: {e}"))
    })?;
    Ok((dec, codec.name().to_string()))
}

impl VideoIn {
    /// Receives every frame the decoder has ready and feeds it to the outputs.
    fn drain(
        &mut self,
        decoded: &mut frame::Video,
        outs: &mut [Output],
    ) -> Result<(), TranscodeError> {
        loop {
            match self.decoder.receive_frame(decoded) {
                Ok(()) => {}
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                    return Ok(())
                }
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "video decode error");
                    return Ok(());
                }
            }
            if decoded.width() == 0 || decoded.height() == 0 {
                continue;
            }
            let pts = match (decoded.timestamp().or(decoded.pts()), self.last_pts) {
                (Some(p), Some(last)) if p <= last => last + 1,
                (Some(p), _) => p,
                (None, Some(last)) => last + self.frame_dur,
                (None, None) => 0,
            };
            if let Some(last) = self.last_pts {
                let delta = pts - last;
                if delta > 0 && delta < self.frame_dur * 4 && self.decoded < 2 {
                    self.frame_dur = delta;
                }
            }
            self.last_pts = Some(pts);
            let t0 = *self.t0.get_or_insert(pts);
            self.decoded += 1;
            for o in outs.iter_mut() {
                o.push_frame(decoded, pts - t0, t0, self.tb)?;
            }
        }
    }

    /// Repeats the last frame up to the end of the last source frame's display time.
    fn fill_to_end(&mut self, outs: &mut [Output]) -> Result<(), TranscodeError> {
        let (Some(t0), Some(last)) = (self.t0, self.last_pts) else {
            return Ok(());
        };
        let end = last + self.frame_dur - t0;
        for o in outs.iter_mut() {
            o.fill_until(end, self.tb)?;
        }
        Ok(())
    }
}

impl AudioIn {
    /// Copies one audio packet into every output.
    fn copy(&mut self, packet: &Packet, outs: &mut [Output]) -> Result<(), TranscodeError> {
        let Some(dts) = packet.dts().or(packet.pts()) else {
            tracing::debug!("dropping an audio packet without timestamps");
            return Ok(());
        };
        if self.last_dts.is_some_and(|l| dts <= l) {
            tracing::debug!(
                dts,
                "dropping an audio packet with a non-increasing timestamp"
            );
            return Ok(());
        }
        self.last_dts = Some(dts);
        self.span.add(packet, self.tb);
        for o in outs.iter_mut() {
            let (Some(ost), Some(otb)) = (o.a_ost, o.a_tb) else {
                continue;
            };
            let mut p = packet.clone();
            if p.pts().is_none() {
                p.set_pts(Some(dts));
            }
            if p.dts().is_none() {
                p.set_dts(Some(dts));
            }
            p.set_stream(ost);
            p.set_position(-1);
            p.rescale_ts(self.tb, otb);
            p.write_interleaved(&mut o.octx)
                .map_err(ffe("writing audio"))?;
        }
        Ok(())
    }
}

/// One rendition being produced.
struct Output {
    profile: Profile,
    octx: ff::format::context::Output,
    encoder: Option<encoder::Video>,
    /// Encoder time base (the source video's time base).
    enc_tb: Rational,
    v_ost: Option<usize>,
    a_ost: Option<usize>,
    v_tb: Option<Rational>,
    a_tb: Option<Rational>,
    scaler: ToYuv420,
    /// The latest scaled frame and its output slot (frame index at the profile's rate, from
    /// the first source frame), waiting for the next frame to know how often to encode it.
    pending: Option<(frame::Video, i64)>,
    /// Presentation time of the first source frame (encoder `tb`).
    t0: Option<i64>,
    /// Frames sent to the encoder.
    frames_sent: u64,
    packets: u64,
}

/// What an H.264 encoder for one rendition is set up with.
struct EncoderSettings<'a> {
    profile: &'a Profile,
    opts: &'a TranscodeOptions,
    tb: Rational,
    fps: Rational,
}

/// An unopened video encoder for `codec` with the rendition's size, rate, bitrate and GOP.
fn video_encoder(
    codec: ff::Codec,
    s: &EncoderSettings<'_>,
    threads: usize,
) -> Result<encoder::video::Video, TranscodeError> {
    let mut ctx = codec::context::Context::new_with_codec(codec);
    ctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: threads,
        ..Default::default()
    });
    let mut enc = ctx
        .encoder()
        .video()
        .map_err(ffe(format!("creating the {} encoder", codec.name())))?;
    enc.set_width(s.profile.width);
    enc.set_height(s.profile.height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base(s.tb);
    enc.set_frame_rate(Some(s.fps));
    enc.set_bit_rate(usize::try_from(s.profile.bitrate).unwrap_or(usize::MAX));
    enc.set_gop(s.profile.gop_frames());
    if s.profile.profile.forbids_b_frames() {
        enc.set_max_b_frames(0);
    }
    Ok(enc)
}

/// libx264 with a fixed GOP, no scene-cut keyframes and IDRs where asked.
fn open_x264(s: &EncoderSettings<'_>) -> Result<(ff::Codec, encoder::Video), TranscodeError> {
    let codec = encoder::find_by_name("libx264")
        .ok_or_else(|| TranscodeError::Unavailable("no libx264 encoder".into()))?;
    let enc = video_encoder(codec, s, s.opts.threads)?;
    let gop = s.profile.gop_frames();
    let mut dict = ff::Dictionary::new();
    dict.set("preset", &s.opts.preset);
    if let Some(p) = s.profile.profile.x264_profile() {
        dict.set("profile", p);
    }
    dict.set("forced-idr", "1");
    let mut params = format!("keyint={gop}:min-keyint={gop}:scenecut=0");
    if s.profile.profile.forbids_b_frames() {
        params.push_str(":bframes=0");
    }
    dict.set("x264-params", &params);
    let opened = enc
        .open_as_with(codec, dict)
        .map_err(ffe(format!("opening x264 for {}", s.profile.name)))?;
    Ok((codec, opened))
}

/// Whether NVENC opened before (`Some(true)`), failed (`Some(false)`), or was never tried.
static NVENC_WORKS: OnceLock<bool> = OnceLock::new();

/// NVENC (`h264_nvenc`) when GPU work is allowed, a CUDA device is present and the encoder
/// opens; `None` (x264 is used) otherwise. A failure is logged once and not retried: GPUs
/// without NVENC (H100, H200, A100) have NVDEC but no encoder.
fn open_nvenc(s: &EncoderSettings<'_>) -> Option<(ff::Codec, encoder::Video)> {
    if s.opts.accel == Accel::Cpu || NVENC_WORKS.get() == Some(&false) || !gpu::gpu_available() {
        return None;
    }
    let codec = encoder::find_by_name("h264_nvenc")?;
    let gop = s.profile.gop_frames();
    let opened = video_encoder(codec, s, 0).and_then(|enc| {
        let mut dict = ff::Dictionary::new();
        dict.set("preset", "p4");
        dict.set("forced-idr", "1");
        dict.set("no-scenecut", "1");
        dict.set("strict_gop", "1");
        dict.set("g", &gop.to_string());
        if let Some(p) = s.profile.profile.x264_profile() {
            dict.set("profile", p);
        }
        enc.open_as_with(codec, dict)
            .map_err(ffe(format!("opening NVENC for {}", s.profile.name)))
    });
    match opened {
        Ok(enc) => {
            if NVENC_WORKS.set(true).is_ok() {
                tracing::info!("encoding with NVENC (h264_nvenc)");
            }
            Some((codec, enc))
        }
        Err(e) => {
            if NVENC_WORKS.set(false).is_ok() {
                tracing::info!(reason = %e, "NVENC unavailable; encoding with x264");
            }
            None
        }
    }
}

impl Output {
    fn open(
        profile: &Profile,
        path: &Path,
        job: &Job,
        opts: &TranscodeOptions,
    ) -> Result<Output, TranscodeError> {
        let mut octx =
            ff::format::output_as(&path, "mpegts").map_err(ffe("creating the MPEG-TS muxer"))?;
        let mut encoder_opened = None;
        let mut v_ost = None;
        let enc_tb = job
            .video
            .as_ref()
            .map_or(Rational::new(1, 90_000), |v| v.tb);
        if job.video.is_some() {
            let fps = Rational::new(
                i32::try_from(profile.fps).unwrap_or(30),
                i32::try_from(profile.fps_den).unwrap_or(1),
            );
            let settings = EncoderSettings {
                profile,
                opts,
                tb: enc_tb,
                fps,
            };
            let (codec, opened) = match open_nvenc(&settings) {
                Some(nvenc) => nvenc,
                None => open_x264(&settings)?,
            };
            let mut ost = octx
                .add_stream(codec)
                .map_err(ffe("adding the video stream"))?;
            ost.set_parameters(&opened);
            ost.set_time_base(enc_tb);
            v_ost = Some(ost.index());
            encoder_opened = Some(opened);
        }
        let mut a_ost = None;
        if let Some(a) = job.audio.as_ref() {
            let mut ost = octx
                .add_stream(encoder::find(codec::Id::None))
                .map_err(ffe("adding the audio stream"))?;
            ost.set_parameters(a.parameters.clone());
            ost.set_time_base(a.tb);
            a_ost = Some(ost.index());
        }
        Ok(Output {
            profile: profile.clone(),
            octx,
            encoder: encoder_opened,
            enc_tb,
            v_ost,
            a_ost,
            v_tb: None,
            a_tb: None,
            scaler: ToYuv420::new(profile.width, profile.height),
            pending: None,
            t0: None,
            frames_sent: 0,
            packets: 0,
        })
    }

    /// The output slot (frame index at the profile's rate) nearest to `rel` (source `tb` units
    /// after the first frame).
    fn slot_of(&self, rel: i64, tb: Rational) -> i64 {
        let num = i128::from(rel) * i128::from(tb.numerator()) * i128::from(self.profile.fps);
        let den = i128::from(tb.denominator()) * i128::from(self.profile.fps_den.max(1));
        let den = den.max(1);
        let slot = (2 * num + den).div_euclid(2 * den);
        i64::try_from(slot).unwrap_or(i64::MAX)
    }

    /// The presentation time (encoder `tb` units) of an output slot.
    fn pts_of(&self, slot: i64, t0: i64) -> i64 {
        let tb = self.enc_tb;
        let num = i128::from(slot)
            * i128::from(tb.denominator())
            * i128::from(self.profile.fps_den.max(1));
        let den = (i128::from(tb.numerator()) * i128::from(self.profile.fps)).max(1);
        let rel = (2 * num + den).div_euclid(2 * den);
        t0.saturating_add(i64::try_from(rel).unwrap_or(i64::MAX))
    }

    fn max_fill(&self) -> i64 {
        MAX_FILL_SECONDS * i64::from(self.profile.fps) / i64::from(self.profile.fps_den.max(1))
    }

    /// Takes the next decoded frame (`rel` source `tb` units after the first one). A frame is
    /// held until the next one arrives, then encoded for every output slot up to the next
    /// frame's slot: repeated when the output rate is higher, replaced by the later frame when
    /// two land on the same slot.
    fn push_frame(
        &mut self,
        src: &frame::Video,
        rel: i64,
        t0: i64,
        tb: Rational,
    ) -> Result<(), TranscodeError> {
        if self.encoder.is_none() {
            return Ok(());
        }
        self.t0 = Some(t0);
        let slot = self.slot_of(rel, tb);
        let scaled = self.scaler.scale(src)?;
        match self.pending.take() {
            Some((_, ps)) if slot <= ps => self.pending = Some((scaled, ps)),
            Some((held, ps)) => {
                self.emit(held, ps, slot)?;
                self.pending = Some((scaled, slot));
            }
            None => self.pending = Some((scaled, slot)),
        }
        Ok(())
    }

    /// Encodes the held frame up to `rel_end` (the end of the last source frame).
    fn fill_until(&mut self, rel_end: i64, tb: Rational) -> Result<(), TranscodeError> {
        let Some((held, ps)) = self.pending.take() else {
            return Ok(());
        };
        let mut end = self.slot_of(rel_end, tb);
        if end <= ps && self.frames_sent == 0 {
            // A segment shorter than one output frame still gets its one frame.
            end = ps + 1;
        }
        if end > ps {
            self.emit(held, ps, end)?;
        }
        Ok(())
    }

    /// Encodes `frame` at slots `from..to` (only at `from` when the gap is a discontinuity).
    fn emit(&mut self, mut frame: frame::Video, from: i64, to: i64) -> Result<(), TranscodeError> {
        let to = if to - from > self.max_fill() {
            tracing::warn!(
                rendition = %self.profile.name,
                gap_frames = to - from,
                "timestamp jump in the source; not filling the gap"
            );
            from + 1
        } else {
            to
        };
        for slot in from..to {
            self.encode(&mut frame, slot)?;
        }
        Ok(())
    }

    /// Encodes `frame` at output slot `slot`.
    fn encode(&mut self, frame: &mut frame::Video, slot: i64) -> Result<(), TranscodeError> {
        let pts = self.pts_of(slot, self.t0.unwrap_or(0));
        let first = self.frames_sent == 0;
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        frame.set_pts(Some(pts));
        // The first frame of every rendition is an IDR, so IDRs line up across the ladder.
        frame.set_kind(if first {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        });
        enc.send_frame(frame).map_err(ffe("encoding"))?;
        self.frames_sent += 1;
        self.write_encoded()
    }

    fn write_encoded(&mut self) -> Result<(), TranscodeError> {
        let (Some(enc), Some(ost), Some(otb)) = (self.encoder.as_mut(), self.v_ost, self.v_tb)
        else {
            return Ok(());
        };
        let mut pkt = Packet::empty();
        while enc.receive_packet(&mut pkt).is_ok() {
            pkt.set_stream(ost);
            pkt.rescale_ts(self.enc_tb, otb);
            pkt.write_interleaved(&mut self.octx)
                .map_err(ffe("writing video"))?;
            self.packets += 1;
        }
        Ok(())
    }

    /// Flushes the encoder and the muxer; returns (frames, duration in ms).
    fn finish(mut self, job: &Job) -> Result<(u64, u64), TranscodeError> {
        if let Some(enc) = self.encoder.as_mut() {
            enc.send_eof().map_err(ffe("flushing the encoder"))?;
            self.write_encoded()?;
        }
        self.octx
            .write_trailer()
            .map_err(ffe("finishing the MPEG-TS output"))?;
        let frames = self.packets;
        let duration_ms = if self.encoder.is_some() {
            frames * 1000 * u64::from(self.profile.fps_den) / u64::from(self.profile.fps.max(1))
        } else {
            job.audio.as_ref().map_or(0, |a| a.span.duration_ms())
        };
        Ok((frames, duration_ms))
    }
}

/// A scaler to YUV 4:2:0 at a fixed output size; its swscale context is rebuilt only when the
/// source's pixel format or size changes.
pub(crate) struct ToYuv420 {
    width: u32,
    height: u32,
    ctx: Option<(scaling::Context, (Pixel, u32, u32))>,
}

impl ToYuv420 {
    /// A scaler to `width`×`height`.
    pub(crate) fn new(width: u32, height: u32) -> Self {
        ToYuv420 {
            width,
            height,
            ctx: None,
        }
    }

    /// `src` scaled and converted to the output size and format.
    pub(crate) fn scale(&mut self, src: &frame::Video) -> Result<frame::Video, TranscodeError> {
        let key = (src.format(), src.width(), src.height());
        if self.ctx.as_ref().is_none_or(|(_, k)| *k != key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BILINEAR,
            )
            .map_err(ffe(format!(
                "creating a scaler from {:?} {}x{}",
                key.0, key.1, key.2
            )))?;
            self.ctx = Some((ctx, key));
        }
        let mut out = frame::Video::new(Pixel::YUV420P, self.width, self.height);
        if let Some((ctx, _)) = self.ctx.as_mut() {
            ctx.run(src, &mut out).map_err(ffe("scaling"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_sums_width_height_frames() {
        let r = |w, h, frames| Rendition {
            name: String::new(),
            width: w,
            height: h,
            fps: (30, 1),
            frames,
            duration_ms: 0,
            data: Bytes::new(),
        };
        assert_eq!(pixels(&[]), 0);
        assert_eq!(
            pixels(&[r(426, 240, 60), r(640, 360, 60)]),
            426 * 240 * 60 + 640 * 360 * 60
        );
    }

    #[test]
    fn options_are_checked() {
        let bad = TranscodeOptions {
            preset: "turbo".into(),
            ..Default::default()
        };
        assert!(matches!(
            Transcoder::new(bad),
            Err(TranscodeError::Options(_))
        ));
        assert_eq!("CUDA".parse::<Accel>(), Ok(Accel::Cuda));
        assert!("tpu".parse::<Accel>().is_err());
    }

    #[test]
    fn garbage_and_empty_input_are_errors() {
        let t = Transcoder::new(TranscodeOptions::default()).expect("transcoder");
        let ladder = crate::profile::default_ladder();
        assert!(matches!(
            t.transcode(&[], &ladder),
            Err(TranscodeError::InvalidInput(_))
        ));
        let garbage: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(t.transcode(&garbage, &ladder).is_err());
        assert!(probe(&garbage).is_err());
        assert!(matches!(
            t.transcode(&garbage, &[]),
            Err(TranscodeError::Profiles(ProfileError::Empty))
        ));
    }
}
