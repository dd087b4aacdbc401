//! Helpers for the media tests: clips made with the `ffmpeg` CLI, `ffprobe` JSON, and
//! ingest events demuxed from an FLV file.
// Reading a stream's codec extradata (the avcC record and the AAC AudioSpecificConfig) from
// libavformat has no safe accessor in ffmpeg-next, so `flv_events` reads it through the raw
// codec parameters.
#![allow(unsafe_code, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ffmpeg_next as ff;
use serde_json::Value;
use weir_media::packet::{CodecConfig, IngestEvent, MediaPacket, Track};

/// Runs the `ffmpeg` CLI with `args` (quiet, overwrite) and panics with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Like [`ffmpeg`] but returns stderr (for filters that report on stderr, like `ssim`).
pub fn ffmpeg_stderr(args: &[&str]) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ffmpeg {args:?} failed: {err}");
    err
}

/// The test-source video (testsrc2) + sine audio arguments for `secs` seconds.
pub fn av_source(size: &str, rate: u32, secs: f64) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate={rate}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        "sine=frequency=1000:sample_rate=48000".into(),
        "-t".into(),
        format!("{secs}"),
    ]
}

/// An H.264 (with B-frames, GOP 60, no scene cuts) + AAC clip in the container `ext` implies.
pub fn make_h264_clip(dir: &Path, name: &str, size: &str, secs: f64) -> PathBuf {
    let path = dir.join(name);
    let mut args = av_source(size, 30, secs);
    args.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-bf",
            "3",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
        ]
        .map(String::from),
    );
    args.push(path.to_string_lossy().into_owned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&refs);
    path
}

/// `ffprobe -show_streams -show_frames -show_format` as JSON.
pub fn ffprobe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            "-show_frames",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// What ffprobe writes to stderr at `-v error` while decoding every frame (empty when clean).
pub fn ffprobe_errors(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_frames", "-of", "compact"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A parsed frame from ffprobe.
#[derive(Debug, Clone)]
pub struct ProbeFrame {
    pub key: bool,
    pub pict_type: String,
    pub pts: f64,
}

/// The frames of `media_type` ("video" / "audio") in presentation order.
pub fn frames(probe: &Value, media_type: &str) -> Vec<ProbeFrame> {
    let mut v: Vec<ProbeFrame> = probe["frames"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|f| f["media_type"] == media_type)
        .map(|f| ProbeFrame {
            key: f["key_frame"].as_i64() == Some(1),
            pict_type: f["pict_type"].as_str().unwrap_or("").to_string(),
            pts: f["pts_time"]
                .as_str()
                .or(f["best_effort_timestamp_time"].as_str())
                .and_then(|s| s.parse().ok())
                .expect("frame time"),
        })
        .collect();
    v.sort_by(|a, b| a.pts.total_cmp(&b.pts));
    v
}

/// The first stream of `codec_type`.
pub fn stream<'a>(probe: &'a Value, codec_type: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == codec_type)
}

/// Writes bytes to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write file");
    p
}

fn extradata(stream: &ff::format::stream::Stream) -> Bytes {
    let par = stream.parameters();
    // SAFETY: `par` owns a copy of the stream's codec parameters for this scope; extradata is
    // either null or points to `extradata_size` readable bytes, which are copied out at once.
    unsafe {
        let p = par.as_ptr();
        if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
            return Bytes::new();
        }
        let len = usize::try_from((*p).extradata_size).expect("size");
        Bytes::copy_from_slice(std::slice::from_raw_parts((*p).extradata, len))
    }
}

/// Demuxes an FLV file into the events an RTMP publisher would deliver: the avcC and the AAC
/// AudioSpecificConfig first, then AVCC access units and raw AAC frames with ms timestamps.
pub fn flv_events(path: &Path) -> Vec<IngestEvent> {
    ff::init().expect("ffmpeg init");
    let mut ictx = ff::format::input(&path).expect("open flv");
    let mut events = Vec::new();
    let mut tracks = std::collections::HashMap::new();
    for s in ictx.streams() {
        let id = s.parameters().id();
        let ed = extradata(&s);
        let tb = s.time_base();
        match id {
            ff::codec::Id::H264 => {
                assert!(!ed.is_empty(), "flv h264 stream has avcC extradata");
                events.push(IngestEvent::Config(CodecConfig::Avc(ed)));
                tracks.insert(s.index(), (Track::Video, tb));
            }
            ff::codec::Id::AAC => {
                assert!(!ed.is_empty(), "flv aac stream has an AudioSpecificConfig");
                events.push(IngestEvent::Config(CodecConfig::Aac(ed)));
                tracks.insert(s.index(), (Track::Audio, tb));
            }
            _ => {}
        }
    }
    for (s, p) in ictx.packets() {
        let Some(&(track, tb)) = tracks.get(&s.index()) else {
            continue;
        };
        let to_ms = |t: i64| {
            i64::try_from(
                i128::from(t) * i128::from(tb.numerator()) * 1000 / i128::from(tb.denominator()),
            )
            .expect("ms")
        };
        let dts = to_ms(p.dts().or(p.pts()).expect("dts"));
        let pts = to_ms(p.pts().or(p.dts()).expect("pts"));
        events.push(IngestEvent::Packet(MediaPacket {
            track,
            dts_ms: dts,
            pts_ms: pts,
            keyframe: track == Track::Audio || p.is_key(),
            data: Bytes::copy_from_slice(p.data().expect("packet data")),
        }));
    }
    events
}

/// A packet as ffprobe lists it.
#[derive(Debug, Clone)]
pub struct ProbePacket {
    pub codec_type: String,
    pub pts: f64,
    pub dts: f64,
    pub key: bool,
}

/// `ffprobe -show_packets` in file order.
pub fn packets(path: &Path) -> Vec<ProbePacket> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_packets"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let t = |p: &Value, k: &str| {
        p[k].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    v["packets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| ProbePacket {
            codec_type: p["codec_type"].as_str().unwrap_or("").to_string(),
            pts: t(p, "pts_time"),
            dts: t(p, "dts_time"),
            key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
        })
        .collect()
}

/// An FLV (H.264 with B-frames, GOP `gop`, + AAC) of `secs` seconds, as an RTMP publisher sends.
pub fn make_flv(
    dir: &Path,
    name: &str,
    size: &str,
    secs: f64,
    gop: u32,
    audio: bool,
    video: bool,
) -> PathBuf {
    let path = dir.join(name);
    let g = gop.to_string();
    let mut args: Vec<String> = Vec::new();
    if video {
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!("testsrc2=size={size}:rate=30"));
    }
    if audio {
        args.extend(
            ["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"].map(String::from),
        );
    }
    args.extend(["-t".to_string(), secs.to_string()]);
    if video {
        args.extend(
            [
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-bf",
                "2",
                "-g",
                &g,
                "-keyint_min",
                &g,
                "-sc_threshold",
                "0",
                "-pix_fmt",
                "yuv420p",
            ]
            .map(String::from),
        );
    }
    if audio {
        args.extend(["-c:a", "aac", "-b:a", "96k"].map(String::from));
    }
    args.push(path.to_string_lossy().into_owned());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    path
}
