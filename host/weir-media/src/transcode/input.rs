//! The decoding side of one transcode: the input, its video decoder and its audio stream.

use std::path::Path;

use ff::{codec, decoder, frame, media, Packet, Rational};
use ffmpeg_next as ff;

use crate::gpu;

use super::output::Output;
use super::probe::{open_input, Span};
use super::{ffe, Accel, TranscodeError, TranscodeOptions};

/// The decoding side of one transcode.
pub(super) struct Job {
    pub(super) ictx: ff::format::context::Input,
    pub(super) video: Option<VideoIn>,
    pub(super) audio: Option<AudioIn>,
}

pub(super) struct VideoIn {
    pub(super) index: usize,
    pub(super) tb: Rational,
    pub(super) decoder: decoder::Video,
    pub(super) decoder_name: String,
    /// Duration of one source frame in `tb` units.
    pub(super) frame_dur: i64,
    /// Presentation time of the first decoded frame (`tb`).
    pub(super) t0: Option<i64>,
    pub(super) last_pts: Option<i64>,
    pub(super) decoded: u64,
}

pub(super) struct AudioIn {
    pub(super) index: usize,
    pub(super) tb: Rational,
    pub(super) parameters: codec::Parameters,
    pub(super) last_dts: Option<i64>,
    pub(super) span: Span,
}

impl Job {
    pub(super) fn open(path: &Path, opts: &TranscodeOptions) -> Result<Job, TranscodeError> {
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

    pub(super) fn run(&mut self, outs: &mut [Output]) -> Result<(), TranscodeError> {
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
        let mut decoded = frame::Video::empty();
        loop {
            // A fresh packet each time: av_read_frame does not release what the packet held,
            // so reading into one packet again leaks the previous packet's buffer.
            let mut packet = Packet::empty();
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

pub(super) fn open_video_decoder(
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
    pub(super) fn drain(
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
    pub(super) fn fill_to_end(&mut self, outs: &mut [Output]) -> Result<(), TranscodeError> {
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
    pub(super) fn copy(
        &mut self,
        packet: &Packet,
        outs: &mut [Output],
    ) -> Result<(), TranscodeError> {
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
