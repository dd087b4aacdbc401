//! Encoding an AI runner's still frames into one MP4 ([`weir_media::frames`]): frames made with
//! the `ffmpeg` CLI, the video checked with `ffprobe`.

mod support;

use std::path::Path;

use bytes::Bytes;
use support::{ffmpeg, ffprobe, frames, stream, write};
use weir_media::frames::{encode_frames_to_mp4, MAX_SIDE};

/// `count` images of the moving test pattern at `size` (`WxH`), named `{stem}NN.{ext}`.
fn make_frames(dir: &Path, stem: &str, size: &str, count: u32, ext: &str) -> Vec<Bytes> {
    let pattern = dir.join(format!("{stem}%02d.{ext}"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size={size}:rate=8"),
        "-frames:v",
        &count.to_string(),
        "-start_number",
        "0",
        &pattern.to_string_lossy(),
    ]);
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{stem}{i:02}.{ext}"));
            Bytes::from(std::fs::read(path).expect("frame"))
        })
        .collect()
}

fn position(data: &[u8], atom: &[u8; 4]) -> Option<usize> {
    data.windows(4).position(|w| w == atom)
}

#[test]
fn twelve_png_frames_become_one_h264_mp4_at_the_requested_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pngs = make_frames(dir.path(), "frame", "128x96", 12, "png");
    let mp4 = encode_frames_to_mp4(&pngs, 8).expect("encode");
    let path = write(dir.path(), "out.mp4", &mp4);
    let probe = ffprobe(&path);
    let video = stream(&probe, "video").expect("a video stream");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["width"], 128);
    assert_eq!(video["height"], 96);
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(video["r_frame_rate"], "8/1");
    assert_eq!(
        frames(&probe, "video").len(),
        12,
        "every frame is in the video"
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("duration");
    assert!(
        (duration - 1.5).abs() < 0.05,
        "12 frames at 8 fps: {duration} s"
    );
    assert!(
        probe["format"]["format_name"]
            .as_str()
            .is_some_and(|f| f.contains("mp4")),
        "{}",
        probe["format"]
    );
    // +faststart: the index comes before the media data.
    let (moov, mdat) = (position(&mp4, b"moov"), position(&mp4, b"mdat"));
    assert!(moov.is_some() && moov < mdat, "moov {moov:?} mdat {mdat:?}");
}

#[test]
fn frames_of_other_sizes_and_formats_are_scaled_to_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mixed = make_frames(dir.path(), "a", "130x98", 2, "png");
    mixed.extend(make_frames(dir.path(), "b", "64x48", 2, "jpg"));
    mixed.extend(make_frames(dir.path(), "c", "320x240", 2, "png"));
    let mp4 = encode_frames_to_mp4(&mixed, 6).expect("encode");
    let probe = ffprobe(&write(dir.path(), "mixed.mp4", &mp4));
    let video = stream(&probe, "video").expect("a video stream");
    assert_eq!(
        (&video["width"], &video["height"]),
        (&130.into(), &98.into())
    );
    assert_eq!(frames(&probe, "video").len(), 6);

    // Odd sizes are rounded down to even ones (4:2:0 needs them).
    let odd = make_frames(dir.path(), "odd", "33x21", 2, "png");
    let probe = ffprobe(&write(
        dir.path(),
        "odd.mp4",
        &encode_frames_to_mp4(&odd, 6).expect("encode"),
    ));
    let video = stream(&probe, "video").expect("a video stream");
    assert_eq!(
        (&video["width"], &video["height"]),
        (&32.into(), &20.into())
    );
}

#[test]
fn a_bad_or_oversized_frame_is_named_by_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pngs = make_frames(dir.path(), "f", "64x48", 3, "png");
    let mut broken = pngs[2].to_vec();
    broken.truncate(40);
    pngs[2] = Bytes::from(broken);
    let e = encode_frames_to_mp4(&pngs, 8).expect_err("a broken frame");
    assert!(e.to_string().contains("frame 2"), "{e}");

    let wide = format!("{}x16", MAX_SIDE + 8);
    let mut frames = make_frames(dir.path(), "g", "64x48", 1, "png");
    frames.extend(make_frames(dir.path(), "w", &wide, 1, "png"));
    let e = encode_frames_to_mp4(&frames, 8).expect_err("too wide");
    let msg = e.to_string();
    assert!(msg.contains("frame 1"), "{msg}");
    assert!(msg.contains("4096x4096"), "{msg}");
}
