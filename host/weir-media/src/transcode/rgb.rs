//! A segment's video as RGB pictures and back, for pipeline components (`weir:host/video`).
//!
//! [`decode_rgb`] decodes an MPEG-TS segment's video into packed RGB24 frames in presentation
//! order, each with its time on the 90 kHz MPEG-TS clock. [`encode_rgb`] encodes such frames
//! with libx264 (first frame an IDR, no B-frames, each frame at its own time) into an MPEG-TS
//! segment and copies the source segment's audio into it unchanged. Both block; call them from a
//! blocking thread.

use std::path::Path;
use std::time::Instant;

use ff::format::Pixel;
use ff::software::scaling;
use ff::{codec, encoder, frame, media, Packet, Rational};
use ffmpeg_next as ff;

use super::input::open_video_decoder;
use super::probe::open_input;
use super::{ffe, init_ffmpeg, TranscodeError, TranscodeOptions};

/// The largest frame width and height, in pixels.
pub const MAX_SIDE: u32 = 4096;

/// The MPEG-TS clock every frame time is expressed in.
const TICKS: Rational = Rational(1, 90_000);

/// One decoded picture: packed RGB24 rows, top to bottom, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Presentation time in 90 kHz ticks.
    pub pts: i64,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// This frame as [`encode_rgb`] takes it.
    pub fn view(&self) -> RgbView<'_> {
        RgbView {
            width: self.width,
            height: self.height,
            pts: self.pts,
            data: &self.data,
        }
    }
}

/// A picture to encode, borrowed from wherever it is held.
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Presentation time in 90 kHz ticks.
    pub pts: i64,
    /// `width * height * 3` bytes of packed RGB24.
    pub data: &'a [u8],
}

/// How much [`decode_rgb`] may produce: it refuses a segment that would need more.
#[derive(Debug, Clone, Copy)]
pub struct DecodeRoom {
    /// Frames.
    pub frames: usize,
    /// Bytes of pixels.
    pub bytes: u64,
}

fn past(deadline: Instant, what: &str) -> Result<(), TranscodeError> {
    if Instant::now() >= deadline {
        return Err(TranscodeError::InvalidInput(format!(
            "the call's deadline passed while {what}"
        )));
    }
    Ok(())
}

/// Write `segment` to a temporary file FFmpeg can open (the transcoder's way in).
fn spill(segment: &[u8]) -> Result<tempfile::TempDir, TranscodeError> {
    if segment.is_empty() {
        return Err(TranscodeError::InvalidInput("empty segment".into()));
    }
    let dir = tempfile::Builder::new().prefix("weir-rgb-").tempdir()?;
    std::fs::write(dir.path().join("in.ts"), segment)?;
    Ok(dir)
}

/// `segment`'s video decoded into RGB24 frames in presentation order. Refuses a segment with
/// more frames or pixel bytes than `room`, a side over [`MAX_SIDE`], no video, or no decodable
/// frame; stops with an error at `deadline`. Blocking.
pub fn decode_rgb(
    segment: &[u8],
    room: DecodeRoom,
    deadline: Instant,
) -> Result<Vec<RgbFrame>, TranscodeError> {
    init_ffmpeg()?;
    let dir = spill(segment)?;
    let mut ictx = open_input(&dir.path().join("in.ts"))?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| TranscodeError::InvalidInput("the segment has no video stream".into()))?;
    let (index, tb) = (stream.index(), stream.time_base());
    // One thread, like the encoder: a node runs many streams side by side.
    let opts = TranscodeOptions {
        threads: 1,
        ..TranscodeOptions::default()
    };
    let (mut decoder, _) = open_video_decoder(&stream, &opts)?;
    let mut out = Vec::new();
    let mut sink = RgbSink::new(room, tb);
    let mut decoded = frame::Video::empty();
    loop {
        past(deadline, "decoding")?;
        let mut packet = Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "stopped reading a damaged segment early");
                break;
            }
        }
        if packet.stream() != index || decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            sink.take(&decoded, &mut out)?;
        }
    }
    if decoder.send_eof().is_ok() {
        while decoder.receive_frame(&mut decoded).is_ok() {
            sink.take(&decoded, &mut out)?;
        }
    }
    if out.is_empty() {
        return Err(TranscodeError::InvalidInput(
            "the video stream has no decodable frames".into(),
        ));
    }
    Ok(out)
}

/// Converts decoded frames to packed RGB24 within a room.
struct RgbSink {
    room: DecodeRoom,
    tb: Rational,
    bytes: u64,
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
    last_pts: Option<i64>,
}

impl RgbSink {
    fn new(room: DecodeRoom, tb: Rational) -> Self {
        RgbSink {
            room,
            tb,
            bytes: 0,
            scaler: None,
            last_pts: None,
        }
    }

    fn take(&mut self, src: &frame::Video, out: &mut Vec<RgbFrame>) -> Result<(), TranscodeError> {
        let (w, h) = (src.width(), src.height());
        if w == 0 || h == 0 {
            return Ok(());
        }
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(TranscodeError::InvalidInput(format!(
                "the video is {w}x{h}: a side is larger than {MAX_SIDE}"
            )));
        }
        let size = u64::from(w) * u64::from(h) * 3;
        if out.len() + 1 > self.room.frames || self.bytes + size > self.room.bytes {
            return Err(TranscodeError::InvalidInput(format!(
                "the segment decodes to more than the {} frames / {} MiB of pixels this caller may still hold",
                self.room.frames,
                self.room.bytes >> 20
            )));
        }
        let key = (src.format(), w, h);
        if self.scaler.as_ref().is_none_or(|(_, k)| *k != key) {
            let ctx =
                scaling::Context::get(key.0, w, h, Pixel::RGB24, w, h, scaling::Flags::BILINEAR)
                    .map_err(ffe(format!("creating an RGB converter from {:?}", key.0)))?;
            self.scaler = Some((ctx, key));
        }
        let mut rgb = frame::Video::new(Pixel::RGB24, w, h);
        if let Some((ctx, _)) = self.scaler.as_mut() {
            ctx.run(src, &mut rgb).map_err(ffe("converting to RGB"))?;
        }
        let row = w as usize * 3;
        let stride = rgb.stride(0);
        let mut data = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            data.extend_from_slice(&rgb.data(0)[y * stride..y * stride + row]);
        }
        // Times on the 90 kHz clock; a frame without one, or out of order, follows the last.
        let pts = src
            .timestamp()
            .or(src.pts())
            .map(|p| to_ticks(p, self.tb))
            .filter(|p| self.last_pts.is_none_or(|l| *p > l))
            .unwrap_or_else(|| self.last_pts.map_or(0, |l| l + 1));
        self.last_pts = Some(pts);
        self.bytes += size;
        out.push(RgbFrame {
            width: w,
            height: h,
            pts,
            data,
        });
        Ok(())
    }
}

/// `ts` in `from` units on the 90 kHz clock, rounded to the nearest tick.
fn to_ticks(ts: i64, from: Rational) -> i64 {
    let num = i128::from(ts) * i128::from(from.numerator()) * i128::from(TICKS.denominator());
    let den = i128::from(from.denominator().max(1)) * i128::from(TICKS.numerator());
    let half = den / 2;
    let q = if num >= 0 {
        (num + half) / den
    } else {
        (num - half) / den
    };
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

/// Why `frames` cannot be encoded together, if they cannot.
fn check_frames(frames: &[RgbView<'_>]) -> Result<(u32, u32), TranscodeError> {
    let first = frames
        .first()
        .ok_or_else(|| TranscodeError::InvalidInput("no frames to encode".into()))?;
    let (w, h) = (first.width, first.height);
    if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(TranscodeError::InvalidInput(format!(
            "frames are {w}x{h}: H.264 needs an even width and height up to {MAX_SIDE} (scale or crop first)"
        )));
    }
    for (i, f) in frames.iter().enumerate() {
        if (f.width, f.height) != (w, h) {
            return Err(TranscodeError::InvalidInput(format!(
                "frame {i} is {}x{} but frame 0 is {w}x{h}: every frame of a segment must have one size",
                f.width, f.height
            )));
        }
        if f.data.len() != w as usize * h as usize * 3 {
            return Err(TranscodeError::InvalidInput(format!(
                "frame {i} is not packed RGB24 ({} bytes for {w}x{h})",
                f.data.len()
            )));
        }
        if i > 0 && f.pts <= frames[i - 1].pts {
            return Err(TranscodeError::InvalidInput(format!(
                "frame {i} has time {} but frame {} has {}: frames must be in increasing time order",
                f.pts,
                i - 1,
                frames[i - 1].pts
            )));
        }
    }
    Ok((w, h))
}

/// The frame rate the frames' times suggest (their median spacing; 30/s for one frame).
fn frame_rate(frames: &[RgbView<'_>]) -> Rational {
    let mut gaps: Vec<i64> = frames.windows(2).map(|p| p[1].pts - p[0].pts).collect();
    gaps.sort_unstable();
    let gap = gaps
        .get(gaps.len() / 2)
        .copied()
        .unwrap_or(3000)
        .clamp(1, 90_000);
    Rational::new(90_000, i32::try_from(gap).unwrap_or(3000))
}

/// `frames` encoded as an H.264 MPEG-TS segment, first frame an IDR, with `source`'s audio
/// copied in. `bitrate` 0 encodes at constant quality. Frames must share one even size and
/// have increasing times. Stops with an error at `deadline`. Blocking.
pub fn encode_rgb(
    source: &[u8],
    frames: &[RgbView<'_>],
    bitrate: u32,
    deadline: Instant,
) -> Result<Vec<u8>, TranscodeError> {
    init_ffmpeg()?;
    let (w, h) = check_frames(frames)?;
    let dir = spill(source)?;
    let out_path = dir.path().join("out.ts");
    let mut out = RgbOutput::open(
        &dir.path().join("in.ts"),
        &out_path,
        w,
        h,
        frame_rate(frames),
        bitrate,
    )?;
    out.copy_audio()?;
    let mut scaler = scaling::Context::get(
        Pixel::RGB24,
        w,
        h,
        Pixel::YUV420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )
    .map_err(ffe("creating the RGB to YUV converter"))?;
    let row = w as usize * 3;
    let mut rgb = frame::Video::new(Pixel::RGB24, w, h);
    for (i, f) in frames.iter().enumerate() {
        past(deadline, "encoding")?;
        let stride = rgb.stride(0);
        let plane = rgb.data_mut(0);
        for y in 0..h as usize {
            plane[y * stride..y * stride + row].copy_from_slice(&f.data[y * row..(y + 1) * row]);
        }
        let mut yuv = frame::Video::new(Pixel::YUV420P, w, h);
        scaler
            .run(&rgb, &mut yuv)
            .map_err(ffe("converting to YUV"))?;
        yuv.set_pts(Some(f.pts));
        yuv.set_kind(if i == 0 {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        });
        out.encoder.send_frame(&yuv).map_err(ffe("encoding"))?;
        out.write_packets()?;
    }
    out.encoder
        .send_eof()
        .map_err(ffe("flushing the encoder"))?;
    out.write_packets()?;
    out.octx
        .write_trailer()
        .map_err(ffe("finishing the MPEG-TS output"))?;
    drop(out);
    Ok(std::fs::read(out_path)?)
}

/// The muxer, the encoder and the source's audio of one [`encode_rgb`].
struct RgbOutput {
    octx: ff::format::context::Output,
    encoder: encoder::Video,
    video: (usize, Rational),
    source: ff::format::context::Input,
    audio: Option<(usize, Rational, usize, Rational)>,
}

impl RgbOutput {
    fn open(
        source: &Path,
        path: &Path,
        w: u32,
        h: u32,
        fps: Rational,
        bitrate: u32,
    ) -> Result<RgbOutput, TranscodeError> {
        let source = open_input(source)?;
        let mut octx =
            ff::format::output_as(&path, "mpegts").map_err(ffe("creating the MPEG-TS muxer"))?;
        let codec = encoder::find_by_name("libx264")
            .ok_or_else(|| TranscodeError::Unavailable("no libx264 encoder".into()))?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ffe("creating the x264 encoder"))?;
        enc.set_width(w);
        enc.set_height(h);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(TICKS);
        enc.set_frame_rate(Some(fps));
        enc.set_max_b_frames(0);
        let mut dict = ff::Dictionary::new();
        dict.set("preset", "veryfast");
        dict.set("forced-idr", "1");
        if bitrate > 0 {
            enc.set_bit_rate(bitrate as usize);
        } else {
            dict.set("crf", "23");
        }
        dict.set("x264-params", "scenecut=0:bframes=0");
        let encoder = enc.open_as_with(codec, dict).map_err(ffe("opening x264"))?;
        let mut ost = octx
            .add_stream(codec)
            .map_err(ffe("adding the video stream"))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(TICKS);
        let v_index = ost.index();
        let audio_in = source
            .streams()
            .best(media::Type::Audio)
            .map(|s| (s.index(), s.time_base(), s.parameters()));
        let mut a_out = None;
        if let Some((_, tb, parameters)) = &audio_in {
            let mut ost = octx
                .add_stream(encoder::find(codec::Id::None))
                .map_err(ffe("adding the audio stream"))?;
            ost.set_parameters(parameters.clone());
            ost.set_time_base(*tb);
            a_out = Some(ost.index());
        }
        octx.write_header()
            .map_err(ffe("writing the MPEG-TS header"))?;
        let v_tb = octx.stream(v_index).map_or(TICKS, |s| s.time_base());
        let audio = match (audio_in, a_out) {
            (Some((i, tb, _)), Some(o)) => {
                let otb = octx.stream(o).map_or(tb, |s| s.time_base());
                Some((i, tb, o, otb))
            }
            _ => None,
        };
        Ok(RgbOutput {
            octx,
            encoder,
            video: (v_index, v_tb),
            source,
            audio,
        })
    }

    /// Copies every audio packet of the source into the output, unchanged.
    fn copy_audio(&mut self) -> Result<(), TranscodeError> {
        let Some((index, tb, ost, otb)) = self.audio else {
            return Ok(());
        };
        let mut last_dts = None;
        loop {
            let mut packet = Packet::empty();
            match packet.read(&mut self.source) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::InvalidData) => continue,
                Err(_) => break,
            }
            if packet.stream() != index {
                continue;
            }
            let Some(dts) = packet.dts().or(packet.pts()) else {
                continue;
            };
            if last_dts.is_some_and(|l| dts <= l) {
                continue;
            }
            last_dts = Some(dts);
            if packet.pts().is_none() {
                packet.set_pts(Some(dts));
            }
            packet.set_dts(Some(dts));
            packet.set_stream(ost);
            packet.set_position(-1);
            packet.rescale_ts(tb, otb);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(ffe("writing audio"))?;
        }
        Ok(())
    }

    fn write_packets(&mut self) -> Result<(), TranscodeError> {
        let (ost, otb) = self.video;
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(ost);
            packet.rescale_ts(TICKS, otb);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(ffe("writing video"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(w: u32, h: u32, pts: i64, data: &[u8]) -> RgbView<'_> {
        RgbView {
            width: w,
            height: h,
            pts,
            data,
        }
    }

    #[test]
    fn frames_that_cannot_share_a_segment_are_refused_with_the_reason() {
        let a = vec![0u8; 4 * 2 * 3];
        let b = vec![0u8; 2 * 2 * 3];
        assert!(check_frames(&[]).is_err());
        let odd = vec![0u8; 3 * 2 * 3];
        let e = check_frames(&[view(3, 2, 0, &odd)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("even"), "{e}");
        let e = check_frames(&[view(4, 2, 0, &a), view(2, 2, 1, &b)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame 1 is 2x2"), "{e}");
        let e = check_frames(&[view(4, 2, 5, &a), view(4, 2, 5, &a)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("increasing time"), "{e}");
        let e = check_frames(&[view(4, 2, 0, &b)]).unwrap_err().to_string();
        assert!(e.contains("RGB24"), "{e}");
        assert_eq!(
            check_frames(&[view(4, 2, 0, &a), view(4, 2, 9, &a)]).ok(),
            Some((4, 2))
        );
    }

    #[test]
    fn frame_rate_follows_the_median_spacing() {
        let d = vec![0u8; 12];
        let frames: Vec<_> = [0, 3000, 6000, 9000, 30_000]
            .into_iter()
            .map(|p| view(2, 2, p, &d))
            .collect();
        assert_eq!(frame_rate(&frames), Rational::new(90_000, 3000));
        assert_eq!(frame_rate(&frames[..1]), Rational::new(90_000, 3000));
    }

    #[test]
    fn times_move_to_the_90khz_clock() {
        assert_eq!(to_ticks(1, Rational::new(1, 30)), 3000);
        assert_eq!(to_ticks(7, Rational::new(1, 90_000)), 7);
        assert_eq!(to_ticks(1, Rational::new(1, 1000)), 90);
        assert_eq!(to_ticks(-1, Rational::new(1, 1000)), -90);
    }
}
