//! Encoding a run of still frames (PNG, JPEG or WebP images, as an AI runner answers
//! image-to-video) into one H.264 MP4 video, as Livepeer's gateway returns it.
//!
//! Each frame is decoded with FFmpeg's image decoders, scaled to the first frame's size (rounded
//! down to even dimensions) in YUV 4:2:0, encoded with libx264 at a fixed frame rate and muxed to
//! MP4 with the index in front (`movflags=+faststart`), so a player can start before the whole
//! file has arrived. Blocking and CPU-bound: call it from a blocking task.

use bytes::Bytes;
use ff::format::Pixel;
use ff::{codec, decoder, encoder, frame, Packet, Rational};
use ffmpeg_next as ff;

use crate::transcode::{ffe, init_ffmpeg, ToYuv420, TranscodeError};

/// The most frames one video may have.
pub const MAX_FRAMES: usize = 600;

/// The largest frame width and height, in pixels.
pub const MAX_SIDE: u32 = 4096;

/// The highest frame rate accepted.
pub const MAX_FPS: u32 = 240;

/// The x264 preset: frames arrive after a long inference, so encoding stays a small share.
const PRESET: &str = "veryfast";

/// Encodes `frames` (each a whole PNG, JPEG or WebP image) into one H.264 MP4 at `fps` frames
/// per second, every frame shown for `1/fps` s. The video has the first frame's size rounded
/// down to even dimensions; later frames of another size are scaled to it. Blocking.
///
/// Errors: no frames, more than [`MAX_FRAMES`], `fps` outside `1..=`[`MAX_FPS`], a frame larger
/// than [`MAX_SIDE`] on a side, or a frame that does not decode
/// ([`TranscodeError::InvalidInput`] or [`TranscodeError::Options`], naming the frame's index
/// or the limit); no FFmpeg or no libx264 ([`TranscodeError::Unavailable`]).
pub fn encode_frames_to_mp4(frames: &[Bytes], fps: u32) -> Result<Bytes, TranscodeError> {
    init_ffmpeg()?;
    if frames.is_empty() {
        return Err(TranscodeError::InvalidInput("no frames to encode".into()));
    }
    if frames.len() > MAX_FRAMES {
        return Err(TranscodeError::InvalidInput(format!(
            "{} frames is more than the limit of {MAX_FRAMES}",
            frames.len()
        )));
    }
    if fps == 0 || fps > MAX_FPS {
        return Err(TranscodeError::Options(format!(
            "fps {fps} is outside 1..={MAX_FPS}"
        )));
    }
    let first = decode_frame(0, &frames[0])?;
    let (width, height) = (first.width() & !1, first.height() & !1);
    if width == 0 || height == 0 {
        return Err(TranscodeError::InvalidInput(format!(
            "frame 0 is {}x{}: too small for a video",
            first.width(),
            first.height()
        )));
    }
    let dir = tempfile::Builder::new().prefix("weir-frames-").tempdir()?;
    let path = dir.path().join("out.mp4");
    let mut mp4 = Mp4Writer::open(&path, width, height, fps)?;
    mp4.push(&first)?;
    drop(first);
    for (index, data) in frames.iter().enumerate().skip(1) {
        let decoded = decode_frame(index, data)?;
        mp4.push(&decoded)?;
    }
    mp4.finish()?;
    let video = Bytes::from(std::fs::read(&path)?);
    tracing::debug!(
        frames = frames.len(),
        width,
        height,
        fps,
        bytes = video.len(),
        "encoded frames to MP4"
    );
    Ok(video)
}

/// The FFmpeg image decoder for `data`, from its magic bytes.
fn image_codec(data: &[u8]) -> Option<codec::Id> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(codec::Id::PNG)
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(codec::Id::MJPEG)
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some(codec::Id::WEBP)
    } else {
        None
    }
}

/// Decodes frame `index` (one whole image), refusing images over [`MAX_SIDE`] on a side before
/// their pixels are allocated (FFmpeg's `max_pixels`).
fn decode_frame(index: usize, data: &[u8]) -> Result<frame::Video, TranscodeError> {
    let bad = |why: String| TranscodeError::InvalidInput(format!("frame {index}: {why}"));
    let id = image_codec(data).ok_or_else(|| bad("not a PNG, JPEG or WebP image".to_owned()))?;
    let codec = decoder::find(id)
        .ok_or_else(|| TranscodeError::Unavailable(format!("no {} decoder", id.name())))?;
    let limit = format!("images are limited to {MAX_SIDE}x{MAX_SIDE} pixels");
    let mut options = ff::Dictionary::new();
    options.set(
        "max_pixels",
        &(u64::from(MAX_SIDE) * u64::from(MAX_SIDE)).to_string(),
    );
    let mut dec = codec::context::Context::new_with_codec(codec)
        .decoder()
        .open_as_with(codec, options)
        .and_then(|d| d.video())
        .map_err(|e| bad(format!("cannot open the {} decoder: {e}", id.name())))?;
    let undecodable =
        |e: ff::Error| bad(format!("does not decode as {}: {e} ({limit})", id.name()));
    dec.send_packet(&Packet::copy(data)).map_err(undecodable)?;
    dec.send_eof().map_err(undecodable)?;
    let mut decoded = frame::Video::empty();
    dec.receive_frame(&mut decoded).map_err(undecodable)?;
    if decoded.width() > MAX_SIDE || decoded.height() > MAX_SIDE {
        return Err(bad(format!(
            "{}x{} is too large ({limit})",
            decoded.width(),
            decoded.height()
        )));
    }
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(bad("the image has no pixels".to_owned()));
    }
    Ok(decoded)
}

/// libx264 into an MP4 file: scales each pushed frame to the video's size and encodes it as the
/// next frame.
struct Mp4Writer {
    octx: ff::format::context::Output,
    encoder: encoder::Video,
    enc_tb: Rational,
    scaler: ToYuv420,
    next_pts: i64,
}

impl Mp4Writer {
    fn open(
        path: &std::path::Path,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Mp4Writer, TranscodeError> {
        let mut octx =
            ff::format::output_as(&path, "mp4").map_err(ffe("creating the MP4 muxer"))?;
        let codec = encoder::find_by_name("libx264").ok_or_else(|| {
            TranscodeError::Unavailable("this FFmpeg build has no libx264 encoder".into())
        })?;
        let rate = i32::try_from(fps)
            .map_err(|_| TranscodeError::Options(format!("fps {fps} is out of range")))?;
        let enc_tb = Rational::new(1, rate);
        let mut ctx = codec::context::Context::new_with_codec(codec);
        if octx
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER)
        {
            ctx.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut enc = ctx
            .encoder()
            .video()
            .map_err(ffe("creating the x264 encoder"))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(enc_tb);
        enc.set_frame_rate(Some(Rational::new(rate, 1)));
        let mut options = ff::Dictionary::new();
        options.set("preset", PRESET);
        let encoder = enc
            .open_as_with(codec, options)
            .map_err(ffe("opening x264"))?;
        let mut ost = octx
            .add_stream(codec)
            .map_err(ffe("adding the video stream"))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(enc_tb);
        let mut options = ff::Dictionary::new();
        options.set("movflags", "+faststart");
        octx.write_header_with(options)
            .map_err(ffe("writing the MP4 header"))?;
        Ok(Mp4Writer {
            octx,
            encoder,
            enc_tb,
            scaler: ToYuv420::new(width, height),
            next_pts: 0,
        })
    }

    /// Scales `src` to the video's size and encodes it as the next frame.
    fn push(&mut self, src: &frame::Video) -> Result<(), TranscodeError> {
        let mut out = self.scaler.scale(src)?;
        out.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder
            .send_frame(&out)
            .map_err(ffe("encoding a frame"))?;
        self.write_encoded()
    }

    /// Writes the packets the encoder has ready; each lasts one frame.
    fn write_encoded(&mut self) -> Result<(), TranscodeError> {
        let ost_tb = self.octx.stream(0).map_or(self.enc_tb, |s| s.time_base());
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            pkt.set_stream(0);
            pkt.set_duration(1);
            pkt.rescale_ts(self.enc_tb, ost_tb);
            pkt.write_interleaved(&mut self.octx)
                .map_err(ffe("writing video"))?;
        }
        Ok(())
    }

    /// Flushes the encoder and writes the MP4 index.
    fn finish(mut self) -> Result<(), TranscodeError> {
        self.encoder
            .send_eof()
            .map_err(ffe("flushing the encoder"))?;
        self.write_encoded()?;
        self.octx
            .write_trailer()
            .map_err(ffe("finishing the MP4 output"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_refused_with_the_reason() {
        let err = |frames: &[Bytes], fps| {
            encode_frames_to_mp4(frames, fps)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&[], 8).contains("no frames"));
        let many = vec![Bytes::from_static(b"x"); MAX_FRAMES + 1];
        assert!(err(&many, 8).contains("limit of 600"));
        let junk = [Bytes::from_static(b"not an image")];
        assert!(err(&junk, 0).contains("fps 0"));
        assert!(err(&junk, 8).contains("frame 0: not a PNG"));
        let broken_png = [Bytes::from_static(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")];
        assert!(err(&broken_png, 8).contains("frame 0: does not decode as png"));
    }

    #[test]
    fn image_kinds_are_told_by_their_magic_bytes() {
        assert_eq!(image_codec(b"\x89PNG\r\n\x1a\n...."), Some(codec::Id::PNG));
        assert_eq!(
            image_codec(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(codec::Id::MJPEG)
        );
        assert_eq!(image_codec(b"RIFF\0\0\0\0WEBPVP8 "), Some(codec::Id::WEBP));
        assert_eq!(image_codec(b"GIF89a"), None);
    }
}
