//! Transcoding and segmenting real clips made with the `ffmpeg` CLI, checked with `ffprobe`.

mod support;

use std::path::Path;

use support::{ffmpeg, ffmpeg_stderr, ffprobe, frames, make_h264_clip, stream, write};
use weir_media::profile::{default_ladder, parse_profiles, Profile};
use weir_media::transcode::{
    gpu_available, pixels, probe, Accel, Rendition, TranscodeError, TranscodeOptions, Transcoder,
};

fn transcoder() -> Transcoder {
    Transcoder::new(TranscodeOptions {
        threads: 2,
        ..Default::default()
    })
    .expect("transcoder")
}

/// Checks a rendition against its profile with ffprobe and returns its IDR times.
fn check_rendition(dir: &Path, r: &Rendition, p: &Profile, source_first_pts: f64) -> Vec<f64> {
    let path = write(dir, &format!("{}.ts", r.name), &r.data);
    let probe = ffprobe(&path);
    assert_eq!(probe["format"]["format_name"], "mpegts");
    let v = stream(&probe, "video").expect("video stream");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["width"].as_u64(), Some(u64::from(p.width)));
    assert_eq!(v["height"].as_u64(), Some(u64::from(p.height)));
    assert_eq!(
        v["r_frame_rate"].as_str(),
        Some(format!("{}/{}", p.fps, p.fps_den).as_str())
    );
    assert_eq!((r.width, r.height), (p.width, p.height));
    assert_eq!(r.fps, (p.fps, p.fps_den));
    let vf = frames(&probe, "video");
    assert!(!vf.is_empty());
    assert!(vf[0].key, "{}: the first frame must be a keyframe", r.name);
    assert_eq!(vf[0].pict_type, "I");
    assert_eq!(vf.len() as u64, r.frames, "{}: frame count", r.name);
    assert!(
        (vf[0].pts - source_first_pts).abs() < 0.002,
        "{}: starts at {} but the source at {}",
        r.name,
        vf[0].pts,
        source_first_pts
    );
    // Frames are evenly spaced at the profile's rate.
    let step = f64::from(p.fps_den) / f64::from(p.fps);
    for w in vf.windows(2) {
        assert!(((w[1].pts - w[0].pts) - step).abs() < 0.0015, "{w:?}");
    }
    let a = stream(&probe, "audio").expect("audio copied");
    assert_eq!(a["codec_name"], "aac");
    vf.iter().filter(|f| f.key).map(|f| f.pts).collect()
}

fn first_video_pts(path: &Path) -> f64 {
    frames(&ffprobe(path), "video")[0].pts
}

#[test]
fn h264_with_b_frames_to_the_default_ladder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = make_h264_clip(dir.path(), "src.ts", "1280x720", 4.0);
    let src_probe = ffprobe(&src);
    let src_frames = frames(&src_probe, "video");
    assert!(
        src_frames.iter().any(|f| f.pict_type == "B"),
        "source has B-frames"
    );
    let t0 = src_frames[0].pts;
    let ladder = default_ladder();
    let data = std::fs::read(&src).expect("read");
    let out = transcoder()
        .transcode_detailed(&data, &ladder)
        .expect("transcode");
    assert_eq!(out.decoder.as_deref(), Some("h264"));
    assert_eq!(out.decoded_frames, 120);
    let r = &out.renditions;
    assert_eq!(r.len(), 2);
    let mut idrs = Vec::new();
    for (rend, prof) in r.iter().zip(&ladder) {
        assert_eq!(rend.name, prof.name);
        assert_eq!(rend.frames, 120, "30 fps in, 30 fps out, 4 s");
        assert_eq!(rend.duration_ms, 4000);
        idrs.push(check_rendition(dir.path(), rend, prof, t0));
    }
    // GOP = 2 s at 30 fps: IDRs at 0 s and 2 s, the same in both renditions.
    assert_eq!(idrs[0].len(), 2, "{idrs:?}");
    assert_eq!(idrs[0], idrs[1]);
    assert!((idrs[0][1] - idrs[0][0] - 2.0).abs() < 0.001);
    let expected: u64 = r
        .iter()
        .map(|x| {
            let p = write(dir.path(), "count.ts", &x.data);
            u64::from(x.width) * u64::from(x.height) * frames(&ffprobe(&p), "video").len() as u64
        })
        .sum();
    assert_eq!(pixels(r), expected);
    assert_eq!(pixels(r), (426 * 240 + 640 * 360) * 120);
}

#[test]
fn consecutive_segments_continue_in_time_and_custom_profiles_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = make_h264_clip(dir.path(), "src.mp4", "640x360", 4.0);
    // Cut into two 2 s TS segments, as an HTTP pusher would.
    ffmpeg(&[
        "-i",
        src.to_str().expect("path"),
        "-c",
        "copy",
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-segment_format",
        "mpegts",
        dir.path().join("seg%d.ts").to_str().expect("path"),
    ]);
    let ladder = parse_profiles(
        r#"[{"name":"low","width":320,"height":180,"bitrate":250000,"fps":15,"profile":"h264baseline","gop":"1"},
            {"name":"hi","width":640,"height":360,"bitrate":800000,"fps":60,"profile":"h264main"}]"#,
    )
    .expect("profiles");
    let t = transcoder();
    let mut ends = Vec::new();
    for i in 0..2 {
        let seg = dir.path().join(format!("seg{i}.ts"));
        let t0 = first_video_pts(&seg);
        let r = t
            .transcode(&std::fs::read(&seg).expect("read"), &ladder)
            .expect("transcode");
        assert_eq!(r[0].frames, 30, "15 fps for 2 s");
        assert_eq!(r[1].frames, 120, "60 fps for 2 s (repeated frames)");
        let idr_low = check_rendition(dir.path(), &r[0], &ladder[0], t0);
        assert_eq!(idr_low.len(), 2, "gop 1 s: {idr_low:?}");
        let idr_hi = check_rendition(dir.path(), &r[1], &ladder[1], t0);
        assert_eq!(idr_hi.len(), 1, "{idr_hi:?}");
        let low = write(dir.path(), "low.ts", &r[0].data);
        let lp = ffprobe(&low);
        let v = stream(&lp, "video").expect("video");
        assert_eq!(v["profile"], "Constrained Baseline");
        assert!(frames(&lp, "video").iter().all(|f| f.pict_type != "B"));
        let hi = write(dir.path(), "hi.ts", &r[1].data);
        assert_eq!(
            stream(&ffprobe(&hi), "video").expect("video")["profile"],
            "Main"
        );
        ends.push((t0, t0 + r[1].duration_ms as f64 / 1000.0));
    }
    // The second segment's renditions start where the first's end.
    assert!((ends[0].1 - ends[1].0).abs() < 0.002, "{ends:?}");
}

fn ssim_all(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("SSIM") && l.contains("All:"))
        .expect("ssim summary line");
    let rest = &line[line.find("All:").expect("All:") + 4..];
    rest.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("ssim value")
}

#[test]
fn ssim_against_an_ffmpeg_reference_transcode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = make_h264_clip(dir.path(), "src.ts", "1280x720", 2.0);
    let ladder = default_ladder();
    let r = transcoder()
        .transcode(&std::fs::read(&src).expect("read"), &ladder)
        .expect("transcode");
    let ours = write(dir.path(), "ours.ts", &r[1].data);
    let reference = dir.path().join("ref.ts");
    ffmpeg(&[
        "-i",
        src.to_str().expect("path"),
        "-vf",
        "scale=640:360:flags=bilinear,fps=30",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-b:v",
        "1200k",
        "-g",
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        "-an",
        reference.to_str().expect("path"),
    ]);
    let err = ffmpeg_stderr(&[
        "-i",
        ours.to_str().expect("path"),
        "-i",
        reference.to_str().expect("path"),
        "-lavfi",
        "[0:v][1:v]ssim",
        "-f",
        "null",
        "-",
    ]);
    let ssim = ssim_all(&err);
    eprintln!("SSIM of the 360p rendition against the ffmpeg CLI reference: {ssim}");
    assert!(ssim >= 0.95, "SSIM {ssim} < 0.95");
}

#[test]
fn hevc_input_is_decoded_and_output_as_h264() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hevc.ts");
    let mut args = support::av_source("640x360", 30, 2.0);
    args.extend(
        [
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:keyint=60",
            "-c:a",
            "aac",
        ]
        .map(String::from),
    );
    args.push(path.to_string_lossy().into_owned());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let data = std::fs::read(&path).expect("read");
    let info = probe(&data).expect("probe");
    assert_eq!(info.video.as_ref().map(|v| v.codec.as_str()), Some("hevc"));
    let ladder = default_ladder();
    let r = transcoder()
        .transcode(&data, &ladder)
        .expect("transcode hevc");
    let t0 = first_video_pts(&path);
    for (rend, prof) in r.iter().zip(&ladder) {
        assert_eq!(rend.frames, 60);
        check_rendition(dir.path(), rend, prof, t0);
    }
}

#[test]
fn audio_only_segments_pass_the_audio_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audio.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "2",
        "-c:a",
        "aac",
        path.to_str().expect("path"),
    ]);
    let data = std::fs::read(&path).expect("read");
    let info = probe(&data).expect("probe");
    assert!(info.video.is_none());
    assert!(info.has_audio);
    assert!((1900..=2100).contains(&info.duration_ms), "{info:?}");
    let r = transcoder()
        .transcode(&data, &default_ladder())
        .expect("transcode");
    assert_eq!(r.len(), 2);
    assert_eq!(pixels(&r), 0);
    let src_audio = frames(&ffprobe(&path), "audio");
    for rend in &r {
        assert_eq!(rend.frames, 0);
        assert!(
            (1900..=2100).contains(&rend.duration_ms),
            "{}",
            rend.duration_ms
        );
        let p = ffprobe(&write(dir.path(), "a.ts", &rend.data));
        assert!(stream(&p, "video").is_none());
        assert_eq!(stream(&p, "audio").expect("audio")["codec_name"], "aac");
        let af = frames(&p, "audio");
        assert_eq!(af.len(), src_audio.len());
        assert!((af[0].pts - src_audio[0].pts).abs() < 0.001);
    }
}

#[test]
fn probe_reports_codec_size_duration_and_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = make_h264_clip(dir.path(), "src.ts", "640x360", 2.0);
    let info = probe(&std::fs::read(&src).expect("read")).expect("probe");
    assert_eq!(info.format, "mpegts");
    let v = info.video.expect("video");
    assert_eq!((v.codec.as_str(), v.width, v.height), ("h264", 640, 360));
    assert!(info.has_audio);
    assert!(
        (1950..=2050).contains(&info.duration_ms),
        "{}",
        info.duration_ms
    );
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = transcoder();
    let ladder = default_ladder();
    // Bytes that are no container at all.
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    assert!(t.transcode(&garbage, &ladder).is_err());
    assert!(probe(&garbage).is_err());
    // TS sync bytes with garbage payloads.
    let mut fake_ts = garbage.clone();
    for chunk in fake_ts.chunks_mut(188) {
        chunk[0] = 0x47;
    }
    assert!(t.transcode(&fake_ts, &ladder).is_err());

    let src = make_h264_clip(dir.path(), "src.ts", "640x360", 4.0);
    let data = std::fs::read(&src).expect("read");
    let full = t.transcode(&data, &ladder).expect("full");
    // The tail cut off mid-packet: what remains is transcoded, shorter.
    let head = &data[..data.len() * 55 / 100 + 77];
    let r = t
        .transcode(head, &ladder)
        .expect("truncated tail still transcodes");
    for (cut, whole) in r.iter().zip(&full) {
        assert!(
            cut.frames > 0 && cut.frames < whole.frames,
            "{} vs {}",
            cut.frames,
            whole.frames
        );
        let p = ffprobe(&write(dir.path(), "cut.ts", &cut.data));
        assert!(frames(&p, "video")[0].key);
    }
    // The head cut off (starts mid-GOP, mid-packet): either an error or renditions that start
    // with an IDR.
    let tail = &data[data.len() * 30 / 100 + 5..];
    match t.transcode(tail, &ladder) {
        Ok(r) => {
            for x in &r {
                let p = ffprobe(&write(dir.path(), "tail.ts", &x.data));
                assert!(frames(&p, "video")[0].key);
            }
        }
        Err(e) => assert!(matches!(e, TranscodeError::InvalidInput(_)), "{e}"),
    }
    // Every byte flipped in the middle of the file.
    let mut flipped = data.clone();
    let n = flipped.len();
    for b in &mut flipped[n / 4..n / 2] {
        *b ^= 0x5a;
    }
    if let Ok(r) = t.transcode(&flipped, &ladder) {
        assert_eq!(r.len(), 2);
    }
}

#[test]
fn gpu_decode_is_used_when_present_and_falls_back_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = make_h264_clip(dir.path(), "src.ts", "640x360", 2.0);
    let data = std::fs::read(&src).expect("read");
    let t = Transcoder::new(TranscodeOptions {
        accel: Accel::Cuda,
        threads: 2,
        ..Default::default()
    })
    .expect("transcoder");
    let out = t
        .transcode_detailed(&data, &default_ladder())
        .expect("transcode");
    let decoder = out.decoder.expect("decoder");
    if gpu_available() {
        assert_eq!(decoder, "h264_cuvid");
    } else {
        assert_eq!(decoder, "h264");
    }
    let t0 = first_video_pts(&src);
    for (rend, prof) in out.renditions.iter().zip(&default_ladder()) {
        assert_eq!(rend.frames, 60);
        check_rendition(dir.path(), rend, prof, t0);
    }
}

// ---- Segmenter -------------------------------------------------------------------------------

use std::time::Duration;

use support::{ffprobe_errors, flv_events, make_flv, packets};
use weir_media::packet::{IngestEvent, Track};
use weir_media::segmenter::{Segment, Segmenter, TS_TIME_OFFSET_MS};

fn segment_all(events: Vec<IngestEvent>, target: Duration) -> Vec<Segment> {
    let mut s = Segmenter::new(target);
    let mut out = Vec::new();
    for ev in events {
        out.extend(s.push(ev).expect("push"));
    }
    out.extend(s.finish().expect("finish"));
    out
}

/// The ingest (ms) timestamps of the video keyframes.
fn keyframe_times(events: &[IngestEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            IngestEvent::Packet(p) if p.track == Track::Video && p.keyframe => Some(p.dts_ms),
            _ => None,
        })
        .collect()
}

fn video_packet_count(events: &[IngestEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, IngestEvent::Packet(p) if p.track == Track::Video))
        .count()
}

/// Checks each segment with ffprobe and their concatenation; returns per-segment first video
/// PTS (seconds).
fn check_segments(dir: &Path, segs: &[Segment], target_ms: u64) -> Vec<f64> {
    let mut firsts = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(seg.seq, i as u64);
        let path = write(dir, &format!("s{i}.ts"), &seg.data);
        assert_eq!(
            ffprobe_errors(&path),
            "",
            "segment {i} is not clean MPEG-TS"
        );
        let probe = ffprobe(&path);
        assert_eq!(probe["format"]["format_name"], "mpegts");
        let vf = frames(&probe, "video");
        assert!(vf[0].key, "segment {i} starts with an IDR");
        assert_eq!(vf[0].pict_type, "I");
        assert!(stream(&probe, "audio").is_some() == seg.has_audio);
        firsts.push(vf[0].pts);
        if i + 1 < segs.len() {
            assert!(
                seg.duration_ms >= target_ms,
                "segment {i}: {} ms",
                seg.duration_ms
            );
            assert_eq!(seg.start_ms + seg.duration_ms as i64, segs[i + 1].start_ms);
        }
    }
    for w in firsts.windows(2).zip(segs) {
        let (f, seg) = w;
        assert!(
            ((f[1] - f[0]) * 1000.0 - seg.duration_ms as f64).abs() < 1.5,
            "timestamps continue across segments: {f:?} {}",
            seg.duration_ms
        );
    }
    // Concatenated, the segments are one stream with increasing decode times per track.
    let all: Vec<u8> = segs.iter().flat_map(|s| s.data.iter().copied()).collect();
    let cat = write(dir, "all.ts", &all);
    assert_eq!(ffprobe_errors(&cat), "");
    for kind in ["video", "audio"] {
        let dts: Vec<f64> = packets(&cat)
            .into_iter()
            .filter(|p| p.codec_type == kind)
            .map(|p| p.dts)
            .collect();
        assert!(
            dts.windows(2).all(|w| w[1] > w[0]),
            "{kind} DTS must increase"
        );
    }
    firsts
}

#[test]
fn segmenter_cuts_flv_ingest_on_keyframes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flv = make_flv(dir.path(), "in.flv", "640x360", 7.0, 60, true, true);
    let events = flv_events(&flv);
    let n_video = video_packet_count(&events);
    let keys = keyframe_times(&events);
    assert_eq!(keys.len(), 4, "IDRs at 0, 2, 4, 6 s");
    let has_b = events
        .iter()
        .any(|e| matches!(e, IngestEvent::Packet(p) if p.pts_ms != p.dts_ms));
    assert!(has_b, "the source has B-frames");

    // Target 2 s = the GOP: a segment per GOP.
    let segs = segment_all(events.clone(), Duration::from_secs(2));
    assert_eq!(segs.len(), 4);
    let firsts = check_segments(dir.path(), &segs, 2000);
    for (seg, key) in segs.iter().zip(&keys) {
        assert_eq!(seg.start_ms, key - keys[0], "cut only at keyframes");
        assert!(seg.has_video && seg.has_audio);
    }
    // The TS clock is the segment clock plus the fixed offset (plus the IDR's composition
    // offset, since ffprobe reports presentation times).
    assert!(firsts[0] * 1000.0 >= TS_TIME_OFFSET_MS as f64);
    let total: usize = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            frames(
                &ffprobe(&write(dir.path(), &format!("c{i}.ts"), &s.data)),
                "video",
            )
            .len()
        })
        .sum();
    assert_eq!(total, n_video, "no video frame lost");

    // Target 3 s, GOP 2 s: cuts at 4 s (the first IDR at or after 3 s).
    let segs = segment_all(events.clone(), Duration::from_secs(3));
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].duration_ms as i64, keys[2] - keys[0]);
    check_segments(dir.path(), &segs, 3000);

    // Target 1 s with a 2 s GOP: segments follow the GOP.
    let segs = segment_all(events, Duration::from_secs(1));
    assert_eq!(segs.len(), 4);
    assert!(segs[..3].iter().all(|s| s.duration_ms == 2000));

    // Segmenter output transcodes, and the renditions keep the segment's times.
    let seg_path = write(dir.path(), "seg1.ts", &segs[1].data);
    let t0 = first_video_pts(&seg_path);
    let r = transcoder()
        .transcode(&segs[1].data, &default_ladder())
        .expect("transcode a segment");
    for (rend, prof) in r.iter().zip(&default_ladder()) {
        assert_eq!(rend.frames, 60);
        check_rendition(dir.path(), rend, prof, t0);
    }
}

#[test]
fn segmenter_repairs_bad_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flv = make_flv(dir.path(), "in.flv", "320x240", 6.0, 30, true, true);
    let mut events = flv_events(&flv);
    let mut vi = 0;
    let mut ai = 0;
    for ev in &mut events {
        if let IngestEvent::Packet(p) = ev {
            let i = if p.track == Track::Video {
                vi += 1;
                vi
            } else {
                ai += 1;
                ai
            };
            let shift = match (p.track, i) {
                // Duplicate and backwards video times.
                (Track::Video, 20) => -40,
                (Track::Video, 21) => -60,
                // Missing audio times (0) for a few frames.
                (Track::Audio, 30..=32) => -p.dts_ms,
                _ => 0,
            };
            // A one-hour jump on both tracks after about 3 s.
            let jump = if p.dts_ms >= 3000 { 3_600_000 } else { 0 };
            p.dts_ms += shift + jump;
            p.pts_ms += shift + jump;
        }
    }
    let segs = segment_all(events, Duration::from_secs(2));
    assert!(segs.len() >= 3, "{}", segs.len());
    let last = segs.last().expect("segment");
    assert!(
        last.start_ms + (last.duration_ms as i64) < 10_000,
        "the jump was re-based, not carried into the segment clock"
    );
    check_segments(dir.path(), &segs, 2000);
}

#[test]
fn segmenter_handles_audio_only_and_new_configurations() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Audio only: cut on duration.
    let flv = make_flv(dir.path(), "a.flv", "", 5.0, 30, true, false);
    let segs = segment_all(flv_events(&flv), Duration::from_secs(2));
    assert_eq!(segs.len(), 3);
    for (i, seg) in segs.iter().enumerate() {
        assert!(!seg.has_video && seg.has_audio);
        let path = write(dir.path(), &format!("a{i}.ts"), &seg.data);
        assert_eq!(ffprobe_errors(&path), "");
        let probe = ffprobe(&path);
        assert_eq!(stream(&probe, "audio").expect("audio")["codec_name"], "aac");
        if i < 2 {
            assert!(
                (2000..2100).contains(&seg.duration_ms),
                "{}",
                seg.duration_ms
            );
        }
    }

    // The publisher switches resolution mid-stream: a new configuration, a new segment.
    let first = flv_events(&make_flv(
        dir.path(),
        "p1.flv",
        "640x360",
        3.0,
        30,
        true,
        true,
    ));
    let second = flv_events(&make_flv(
        dir.path(),
        "p2.flv",
        "320x240",
        3.0,
        30,
        true,
        true,
    ));
    let mut events = first;
    for mut ev in second {
        if let IngestEvent::Packet(p) = &mut ev {
            p.dts_ms += 3000;
            p.pts_ms += 3000;
        }
        events.push(ev);
    }
    let segs = segment_all(events, Duration::from_secs(10));
    assert_eq!(segs.len(), 2, "one segment per configuration");
    let sizes: Vec<(u64, u64)> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = ffprobe(&write(dir.path(), &format!("r{i}.ts"), &s.data));
            let v = stream(&p, "video").expect("video");
            (
                v["width"].as_u64().expect("w"),
                v["height"].as_u64().expect("h"),
            )
        })
        .collect();
    assert_eq!(sizes, [(640, 360), (320, 240)]);
    assert!(
        (2990..=3010).contains(&segs[1].start_ms),
        "{}",
        segs[1].start_ms
    );
}
