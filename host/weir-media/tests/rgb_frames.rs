//! A segment's video as RGB frames and back (`weir:host/video`'s decode and encode), on real
//! clips made with the `ffmpeg` CLI and checked with `ffprobe`.

mod support;

use std::time::{Duration, Instant};

use support::{ffmpeg, ffprobe, frames, make_h264_clip, stream, write};
use weir_media::transcode::{decode_rgb, encode_rgb, DecodeRoom, RgbFrame, RgbView};

const ROOM: DecodeRoom = DecodeRoom {
    frames: 1024,
    bytes: 256 << 20,
};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// A 2 s 320x180 H.264 (B-frames) + AAC segment as MPEG-TS bytes, and its frames' times.
fn segment(dir: &std::path::Path) -> (Vec<u8>, Vec<f64>) {
    let clip = make_h264_clip(dir, "clip.ts", "320x180", 2.0);
    let times = frames(&ffprobe(&clip), "video")
        .iter()
        .map(|f| f.pts)
        .collect();
    (std::fs::read(clip).expect("clip"), times)
}

#[test]
fn a_segment_decodes_to_rgb_frames_and_encodes_back_with_its_times_and_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ts, times) = segment(dir.path());
    let mut decoded = decode_rgb(&ts, ROOM, soon()).expect("decode");
    assert_eq!(decoded.len(), times.len(), "every frame, in order");
    for (f, t) in decoded.iter().zip(&times) {
        assert_eq!((f.width, f.height, f.data.len()), (320, 180, 320 * 180 * 3));
        assert!(
            (f.pts as f64 / 90_000.0 - t).abs() < 0.0001,
            "{} vs {t}",
            f.pts
        );
    }
    // Paint the top-left quarter of every frame pure red, then encode.
    for f in &mut decoded {
        for y in 0..90 {
            for x in 0..160 {
                let i = (y * 320 + x) * 3;
                f.data[i..i + 3].copy_from_slice(&[255, 0, 0]);
            }
        }
    }
    let views: Vec<RgbView<'_>> = decoded.iter().map(RgbFrame::view).collect();
    let out = encode_rgb(&ts, &views, 0, soon()).expect("encode");
    let path = write(dir.path(), "out.ts", &out);
    let probe = ffprobe(&path);
    assert_eq!(
        stream(&probe, "video").expect("video")["codec_name"],
        "h264"
    );
    assert_eq!(
        stream(&probe, "audio").expect("audio copied")["codec_name"],
        "aac"
    );
    let out_frames = frames(&probe, "video");
    assert_eq!(out_frames.len(), times.len());
    assert!(
        out_frames[0].key && out_frames[0].pict_type == "I",
        "IDR first"
    );
    for (f, t) in out_frames.iter().zip(&times) {
        assert!((f.pts - t).abs() < 0.0001, "time {} became {}", t, f.pts);
    }
    // The paint survived encoding: the first frame's corner is red, its opposite corner not.
    let png = dir.path().join("first.png");
    ffmpeg(&[
        "-i",
        &path.to_string_lossy(),
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        &png.to_string_lossy(),
    ]);
    let raw = std::fs::read(&png).expect("raw frame");
    let px = |x: usize, y: usize| &raw[(y * 320 + x) * 3..(y * 320 + x) * 3 + 3];
    let red = px(40, 40);
    assert!(red[0] > 220 && red[1] < 40 && red[2] < 40, "{red:?}");
    let other = px(280, 150);
    assert!(
        !(other[0] > 220 && other[1] < 40 && other[2] < 40),
        "{other:?}"
    );
}

#[test]
fn decoding_stays_within_its_room_and_refuses_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ts, times) = segment(dir.path());
    let small = DecodeRoom {
        frames: times.len() - 1,
        bytes: 256 << 20,
    };
    let e = decode_rgb(&ts, small, soon()).unwrap_err().to_string();
    assert!(e.contains("more than the"), "{e}");
    let tight = DecodeRoom {
        frames: 1024,
        bytes: 320 * 180 * 3 * 10,
    };
    assert!(decode_rgb(&ts, tight, soon()).is_err());
    let e = decode_rgb(&ts, ROOM, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("deadline"), "{e}");
    assert!(decode_rgb(&[], ROOM, soon()).is_err());
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    assert!(decode_rgb(&garbage, ROOM, soon()).is_err());
    // Audio only: no video to decode.
    let audio = dir.path().join("audio.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "1",
        "-c:a",
        "aac",
        &audio.to_string_lossy(),
    ]);
    let e = decode_rgb(&std::fs::read(audio).expect("audio"), ROOM, soon())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no video"), "{e}");
}
