//! One rendition being produced: its encoder, frame-rate conversion and muxer.

use std::path::Path;
use std::sync::OnceLock;

use ff::format::Pixel;
use ff::{codec, encoder, frame, Packet, Rational};
use ffmpeg_next as ff;

use crate::gpu;
use crate::profile::Profile;

use super::input::Job;
use super::scale::ToYuv420;
use super::{ffe, Accel, TranscodeError, TranscodeOptions, MAX_FILL_SECONDS};

/// One rendition being produced.
pub(super) struct Output {
    pub(super) profile: Profile,
    pub(super) octx: ff::format::context::Output,
    pub(super) encoder: Option<encoder::Video>,
    /// Encoder time base (the source video's time base).
    pub(super) enc_tb: Rational,
    pub(super) v_ost: Option<usize>,
    pub(super) a_ost: Option<usize>,
    pub(super) v_tb: Option<Rational>,
    pub(super) a_tb: Option<Rational>,
    pub(super) scaler: ToYuv420,
    /// The latest scaled frame and its output slot (frame index at the profile's rate, from
    /// the first source frame), waiting for the next frame to know how often to encode it.
    pub(super) pending: Option<(frame::Video, i64)>,
    /// Presentation time of the first source frame (encoder `tb`).
    pub(super) t0: Option<i64>,
    /// Frames sent to the encoder.
    pub(super) frames_sent: u64,
    pub(super) packets: u64,
}

/// What an H.264 encoder for one rendition is set up with.
pub(super) struct EncoderSettings<'a> {
    pub(super) profile: &'a Profile,
    pub(super) opts: &'a TranscodeOptions,
    pub(super) tb: Rational,
    pub(super) fps: Rational,
}

/// An unopened video encoder for `codec` with the rendition's size, rate, bitrate and GOP.
pub(super) fn video_encoder(
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
pub(super) fn open_x264(
    s: &EncoderSettings<'_>,
) -> Result<(ff::Codec, encoder::Video), TranscodeError> {
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
pub(super) static NVENC_WORKS: OnceLock<bool> = OnceLock::new();

/// NVENC (`h264_nvenc`) when GPU work is allowed, a CUDA device is present and the encoder
/// opens; `None` (x264 is used) otherwise. A failure is logged once and not retried: GPUs
/// without NVENC (H100, H200, A100) have NVDEC but no encoder.
pub(super) fn open_nvenc(s: &EncoderSettings<'_>) -> Option<(ff::Codec, encoder::Video)> {
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
    pub(super) fn open(
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
    pub(super) fn slot_of(&self, rel: i64, tb: Rational) -> i64 {
        let num = i128::from(rel) * i128::from(tb.numerator()) * i128::from(self.profile.fps);
        let den = i128::from(tb.denominator()) * i128::from(self.profile.fps_den.max(1));
        let den = den.max(1);
        let slot = (2 * num + den).div_euclid(2 * den);
        i64::try_from(slot).unwrap_or(i64::MAX)
    }

    /// The presentation time (encoder `tb` units) of an output slot.
    pub(super) fn pts_of(&self, slot: i64, t0: i64) -> i64 {
        let tb = self.enc_tb;
        let num = i128::from(slot)
            * i128::from(tb.denominator())
            * i128::from(self.profile.fps_den.max(1));
        let den = (i128::from(tb.numerator()) * i128::from(self.profile.fps)).max(1);
        let rel = (2 * num + den).div_euclid(2 * den);
        t0.saturating_add(i64::try_from(rel).unwrap_or(i64::MAX))
    }

    pub(super) fn max_fill(&self) -> i64 {
        MAX_FILL_SECONDS * i64::from(self.profile.fps) / i64::from(self.profile.fps_den.max(1))
    }

    /// Takes the next decoded frame (`rel` source `tb` units after the first one). A frame is
    /// held until the next one arrives, then encoded for every output slot up to the next
    /// frame's slot: repeated when the output rate is higher, replaced by the later frame when
    /// two land on the same slot.
    pub(super) fn push_frame(
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
    pub(super) fn fill_until(&mut self, rel_end: i64, tb: Rational) -> Result<(), TranscodeError> {
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
    pub(super) fn emit(
        &mut self,
        mut frame: frame::Video,
        from: i64,
        to: i64,
    ) -> Result<(), TranscodeError> {
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
    pub(super) fn encode(
        &mut self,
        frame: &mut frame::Video,
        slot: i64,
    ) -> Result<(), TranscodeError> {
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

    pub(super) fn write_encoded(&mut self) -> Result<(), TranscodeError> {
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
    pub(super) fn finish(mut self, job: &Job) -> Result<(u64, u64), TranscodeError> {
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
