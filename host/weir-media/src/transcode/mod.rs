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

use std::sync::OnceLock;

use bytes::Bytes;
use ff::encoder;
use ffmpeg_next as ff;

use crate::gpu;
use crate::profile::{validate_ladder, Profile, ProfileError};

mod input;
mod output;
mod probe;
mod rgb;
mod scale;

use input::Job;
use output::Output;
pub use probe::probe;
pub use rgb::{decode_rgb, encode_rgb, DecodeRoom, RgbFrame, RgbView, MAX_SIDE};
pub(crate) use scale::ToYuv420;

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
