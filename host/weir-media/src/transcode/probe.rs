//! Opening and probing a segment, and the time span its packets cover.

use std::path::Path;

use ff::{codec, decoder, media, Packet, Rational};
use ffmpeg_next as ff;

use super::{init_ffmpeg, SegmentInfo, TranscodeError, VideoInfo};

pub(super) fn open_input(path: &Path) -> Result<ff::format::context::Input, TranscodeError> {
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
pub(super) struct Span {
    pub(super) start: Option<f64>,
    pub(super) end: Option<f64>,
    pub(super) count: u64,
}

impl Span {
    pub(super) fn add(&mut self, p: &Packet, tb: Rational) {
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

    pub(super) fn duration_ms(&self) -> u64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) if e > s => ((e - s) * 1000.0).round() as u64,
            _ => 0,
        }
    }
}
