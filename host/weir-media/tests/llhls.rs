//! LL-HLS packaging of real MPEG-TS segments made with the `ffmpeg` CLI, checked with `ffprobe`
//! and `ffmpeg`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use support::{ffmpeg, ffprobe, ffprobe_errors, frames, packets, stream, write};
use weir_media::llhls::{
    read_boxes, track_fragments, ts_to_fmp4, Fmp4Segment, LlHlsError, LlPlaylist, AUDIO_TRACK_ID,
    VIDEO_TIMESCALE, VIDEO_TRACK_ID,
};

const PART: Duration = Duration::from_millis(500);
/// One video frame at 30 fps.
const FRAME: Duration = Duration::from_nanos(33_333_334);
/// One AAC frame at 48 kHz.
const AAC_FRAME: Duration = Duration::from_nanos(21_333_334);

/// 4 s of 30 fps H.264 (IDR every second, B-frames) + AAC, cut into two 2 s TS segments that
/// keep the running timestamps.
fn make_segments(dir: &Path) -> Vec<PathBuf> {
    let pattern = dir.join("seg%d.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=48000",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-sc_threshold",
        "0",
        "-bf",
        "2",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-segment_format",
        "mpegts",
        "-reset_timestamps",
        "0",
        pattern.to_str().expect("utf-8 path"),
    ]);
    let segs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("seg{i}.ts"))).collect();
    for s in &segs {
        assert!(s.exists(), "{} was made", s.display());
    }
    segs
}

/// What `ffmpeg -v error` prints while decoding every frame of `path` (empty when clean).
/// The Python interpreter with the `m3u8` package: `$M3U8_PYTHON`, else the tools venv's
/// (`make tools`), else `python3`. `None` (the check is skipped, saying why) when none has the
/// package outside CI; under `CI=true` a missing package fails the test.
fn m3u8_python() -> Option<String> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py/bin/python");
    let python = std::env::var("M3U8_PYTHON").unwrap_or_else(|_| {
        if venv.is_file() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let has_m3u8 = Command::new(&python)
        .args(["-c", "import m3u8"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_m3u8 {
        return Some(python);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{python} has no `m3u8` package: run `make tools` (CI must run the m3u8 parse)"
    );
    eprintln!("skipped the m3u8 parse: {python} has no `m3u8` package (run `make tools`)");
    None
}

fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "decoding {} failed", path.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Decode time of the first packet of `codec_type` in a file, seconds.
fn first_dts(path: &Path, codec_type: &str) -> f64 {
    packets(path)
        .iter()
        .find(|p| p.codec_type == codec_type)
        .map(|p| p.dts)
        .expect("a packet")
}

fn convert(path: &Path) -> Fmp4Segment {
    let ts = std::fs::read(path).expect("read segment");
    ts_to_fmp4(&ts, PART).expect("repackage")
}

/// Checks the parts of a segment: each a moof+mdat sequence, at most one frame over the part
/// target, durations adding up to the segment's.
fn check_parts(seg: &Fmp4Segment, slack: Duration) {
    assert!(!seg.parts.is_empty());
    assert!(seg.parts[0].independent, "the first part starts on an IDR");
    for (i, p) in seg.parts.iter().enumerate() {
        assert!(p.duration <= PART + slack, "part {i} is {:?}", p.duration);
        assert!(p.duration > Duration::ZERO);
        let boxes = read_boxes(&p.data).expect("part boxes");
        assert!(!boxes.is_empty());
        for pair in boxes.chunks(2) {
            assert_eq!(&pair[0].kind, b"moof");
            assert_eq!(pair.get(1).map(|b| b.kind), Some(*b"mdat"));
        }
    }
    let sum: Duration = seg.parts.iter().map(|p| p.duration).sum();
    let diff = sum.abs_diff(seg.duration);
    assert!(
        diff < Duration::from_micros(10),
        "{sum:?} vs {:?}",
        seg.duration
    );
    let init = read_boxes(&seg.init).expect("init boxes");
    let kinds: Vec<[u8; 4]> = init.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, vec![*b"ftyp", *b"moov"]);
}

#[test]
fn consecutive_segments_play_as_one_track() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = make_segments(dir.path());
    let out: Vec<Fmp4Segment> = segs.iter().map(|p| convert(p)).collect();

    for seg in &out {
        check_parts(seg, FRAME);
        assert!(
            seg.duration.abs_diff(Duration::from_secs(2)) <= FRAME,
            "{:?}",
            seg.duration
        );
        // 15 frames per part; IDRs every 30 frames.
        let independent: Vec<bool> = seg.parts.iter().map(|p| p.independent).collect();
        assert_eq!(independent, [true, false, true, false]);
        for p in &seg.parts {
            let tf = track_fragments(&p.data).expect("trafs");
            let v: Vec<_> = tf.iter().filter(|t| t.track_id == VIDEO_TRACK_ID).collect();
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].sample_count, 15);
            assert_eq!(v[0].duration, 15 * 3000);
            assert!(
                tf.iter().any(|t| t.track_id == AUDIO_TRACK_ID),
                "audio in every part"
            );
        }
    }
    assert_eq!(out[0].init, out[1].init, "one init segment serves both");

    // tfdt keeps the TS decode times.
    let tf0 = track_fragments(&out[0].data()).expect("trafs 0");
    let tf1 = track_fragments(&out[1].data()).expect("trafs 1");
    let video = |tf: &[weir_media::llhls::TrackFragment]| {
        tf.iter()
            .filter(|t| t.track_id == VIDEO_TRACK_ID)
            .copied()
            .collect::<Vec<_>>()
    };
    let audio = |tf: &[weir_media::llhls::TrackFragment]| {
        tf.iter()
            .filter(|t| t.track_id == AUDIO_TRACK_ID)
            .copied()
            .collect::<Vec<_>>()
    };
    for (seg, tf) in segs.iter().zip([&tf0, &tf1]) {
        let want = (first_dts(seg, "video") * f64::from(VIDEO_TIMESCALE)).round() as i64;
        let got = video(tf)[0].base_media_decode_time as i64;
        assert!((got - want).abs() <= 1, "video tfdt {got}, TS dts {want}");
        let want = (first_dts(seg, "audio") * 48_000.0).round() as i64;
        let got = audio(tf)[0].base_media_decode_time as i64;
        assert!((got - want).abs() <= 1, "audio tfdt {got}, TS dts {want}");
    }
    assert!(
        video(&tf0)[0].base_media_decode_time > 0,
        "not reset to zero"
    );
    // Segment 2 continues segment 1 exactly (video) and within a sample or two (audio).
    let v0 = video(&tf0);
    let last = v0.last().expect("video fragments");
    let end0 = last.base_media_decode_time + last.duration;
    assert_eq!(video(&tf1)[0].base_media_decode_time, end0);
    let a0 = audio(&tf0);
    let last = a0.last().expect("audio fragments");
    let end0 = (last.base_media_decode_time + last.duration) as i64;
    let start1 = audio(&tf1)[0].base_media_decode_time as i64;
    assert!((start1 - end0).abs() <= 2, "audio {end0} -> {start1}");
    // Within a segment, each fragment starts where the previous one ended.
    for track in [video(&tf0), audio(&tf0), video(&tf1), audio(&tf1)] {
        for w in track.windows(2) {
            assert_eq!(
                w[1].base_media_decode_time,
                w[0].base_media_decode_time + w[0].duration
            );
        }
    }

    // init + every part of both segments is one clean, continuous file.
    let mut file = out[0].init.to_vec();
    for seg in &out {
        for p in &seg.parts {
            file.extend_from_slice(&p.data);
        }
    }
    let path = write(dir.path(), "joined.mp4", &file);
    assert_eq!(decode_errors(&path), "");
    assert_eq!(ffprobe_errors(&path), "");
    let probe = ffprobe(&path);
    let v = stream(&probe, "video").expect("video stream");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["width"].as_u64(), Some(640));
    assert_eq!(v["height"].as_u64(), Some(360));
    let a = stream(&probe, "audio").expect("audio stream");
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["sample_rate"], "48000");
    let vf = frames(&probe, "video");
    assert_eq!(vf.len(), 120);
    let source_first = frames(&ffprobe(&segs[0]), "video")[0].pts;
    assert!(
        (vf[0].pts - source_first).abs() < 0.001,
        "first frame at {} but the TS has it at {source_first}",
        vf[0].pts
    );
    let keys: Vec<f64> = vf
        .iter()
        .filter(|f| f.key)
        .map(|f| f.pts - vf[0].pts)
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for (k, t) in keys.iter().enumerate() {
        assert!((t - k as f64).abs() < 0.001, "{keys:?}");
    }
    for w in vf.windows(2) {
        assert!(((w[1].pts - w[0].pts) - 1.0 / 30.0).abs() < 0.0005, "{w:?}");
    }
    let source_audio: usize = segs
        .iter()
        .map(|s| frames(&ffprobe(s), "audio").len())
        .sum();
    assert_eq!(frames(&probe, "audio").len(), source_audio);
}

#[test]
fn audio_only_segments_are_all_independent_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "2",
        "-c:a",
        "aac",
        "-f",
        "mpegts",
        path.to_str().expect("utf-8 path"),
    ]);
    let seg = convert(&path);
    check_parts(&seg, AAC_FRAME);
    assert!(seg.parts.len() >= 4, "{} parts", seg.parts.len());
    assert!(seg.parts.iter().all(|p| p.independent));
    let tf = track_fragments(&seg.data()).expect("trafs");
    assert!(tf.iter().all(|t| t.track_id == AUDIO_TRACK_ID));
    let want = (first_dts(&path, "audio") * 48_000.0).round() as i64;
    assert!((tf[0].base_media_decode_time as i64 - want).abs() <= 1);
    let total: u64 = tf.iter().map(|t| t.duration).sum();
    assert_eq!(
        Duration::from_nanos(total * 1_000_000_000 / 48_000),
        seg.duration
    );

    let mut file = seg.init.to_vec();
    file.extend_from_slice(&seg.data());
    let out = write(dir.path(), "a.mp4", &file);
    assert_eq!(decode_errors(&out), "");
    let probe = ffprobe(&out);
    assert!(stream(&probe, "video").is_none());
    assert_eq!(
        frames(&probe, "audio").len(),
        frames(&ffprobe(&path), "audio").len()
    );
}

#[test]
fn damaged_or_foreign_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = make_segments(dir.path());
    let ts = std::fs::read(&segs[0]).expect("read");

    // Not MPEG-TS at all.
    let wav = dir.path().join("tone.wav");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-t",
        "0.5",
        wav.to_str().expect("utf-8 path"),
    ]);
    let wav = std::fs::read(&wav).expect("read wav");
    assert!(matches!(
        ts_to_fmp4(&wav, PART),
        Err(LlHlsError::InvalidInput(_))
    ));
    // MPEG-TS with a codec the packager does not carry.
    let mp2 = dir.path().join("mp2.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-t",
        "0.5",
        "-c:a",
        "mp2",
        "-f",
        "mpegts",
        mp2.to_str().expect("utf-8 path"),
    ]);
    let mp2 = std::fs::read(&mp2).expect("read mp2");
    assert!(matches!(
        ts_to_fmp4(&mp2, PART),
        Err(LlHlsError::Unsupported(_))
    ));
    // Only the first few packets: no frame survives.
    assert!(ts_to_fmp4(&ts[..188 * 3], PART).is_err());

    // Truncated or overwritten segments must not panic; whatever comes out is well formed.
    let mut damaged = Vec::new();
    damaged.push(ts[..ts.len() / 2 + 77].to_vec());
    let mut zeroed = ts.clone();
    let mid = zeroed.len() / 3;
    zeroed[mid..mid + 20_000].fill(0);
    damaged.push(zeroed);
    let mut scrambled = ts.clone();
    for (i, b) in scrambled.iter_mut().enumerate().skip(1000) {
        if i % 97 == 0 {
            *b ^= 0x5a;
        }
    }
    damaged.push(scrambled);
    for d in &damaged {
        if let Ok(seg) = ts_to_fmp4(d, PART) {
            assert!(!seg.parts.is_empty());
            let sum: Duration = seg.parts.iter().map(|p| p.duration).sum();
            assert!(sum.abs_diff(seg.duration) < Duration::from_micros(10));
            for p in &seg.parts {
                track_fragments(&p.data).expect("parts parse");
            }
        }
    }
}

#[test]
fn the_playlist_serves_real_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segs = make_segments(dir.path());
    let mut playlist = LlPlaylist::new(4, Duration::from_secs(2), PART);
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for (i, s) in segs.iter().enumerate() {
        let seg = convert(s);
        let whole = seg.data();
        let parts: Vec<_> = seg.parts.iter().map(|p| p.data.clone()).collect();
        let msn = playlist.push_segment(seg, start + Duration::from_secs(2 * i as u64), false);
        assert_eq!(msn, i as u64);
        assert_eq!(playlist.segment(msn), Some(whole));
        for (k, p) in parts.iter().enumerate() {
            assert_eq!(playlist.part(msn, k).as_ref(), Some(p));
        }
    }
    assert_eq!(playlist.last(), Some((1, 3)));
    assert!(playlist.has(1, 3) && !playlist.has(1, 4) && !playlist.has(2, 0));
    let text = playlist.render();
    for tag in [
        "#EXT-X-VERSION:9\n",
        "#EXT-X-TARGETDURATION:2\n",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500\n",
        "#EXT-X-PART-INF:PART-TARGET=0.500\n",
        "#EXT-X-MAP:URI=\"init.mp4\"\n",
        "#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:00.000Z\n",
        "#EXT-X-PART:DURATION=0.500,URI=\"1.2.m4s\",INDEPENDENT=YES\n",
        "#EXT-X-PART:DURATION=0.500,URI=\"1.3.m4s\"\n",
        "#EXTINF:2.000,\n1.m4s\n",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"2.0.m4s\"\n",
    ] {
        assert!(text.contains(tag), "missing {tag:?} in\n{text}");
    }
    assert_eq!(playlist.init(), Some(convert(&segs[0]).init));

    // An ended playlist, served from files, plays through FFmpeg's HLS reader.
    playlist.end();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("mkdir");
    write(&site, "init.mp4", &playlist.init().expect("init"));
    for msn in 0..2 {
        write(
            &site,
            &format!("{msn}.m4s"),
            &playlist.segment(msn).expect("segment"),
        );
    }
    let index = write(&site, "index.m3u8", playlist.render().as_bytes());
    assert_eq!(decode_errors(&index), "");
    let probe = ffprobe(&index);
    assert_eq!(frames(&probe, "video").len(), 120);
    assert!(stream(&probe, "audio").is_some());

    // Parsed by the third-party Python `m3u8` package (`make tools` installs it).
    let Some(python) = m3u8_python() else {
        return;
    };
    let path = write(dir.path(), "index.m3u8", text.as_bytes());
    let script = "import m3u8,sys,json\n\
        p=m3u8.load(sys.argv[1])\n\
        print(json.dumps({'segs':[s.uri for s in p.segments],\
        'parts':[[x.uri for x in s.parts] for s in p.segments],\
        'indep':[[bool(x.independent) for x in s.parts] for s in p.segments],\
        'part_target':p.part_inf.part_target,\
        'hold':p.server_control.part_hold_back,\
        'block':p.server_control.can_block_reload,\
        'hint':[h.uri for h in p.preload_hint] if isinstance(p.preload_hint,list) else p.preload_hint.uri,\
        'map':p.segment_map[0].uri,'version':p.version,'target':p.target_duration}))";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "m3u8 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["segs"], serde_json::json!(["0.m4s", "1.m4s"]));
    assert_eq!(
        v["parts"][1],
        serde_json::json!(["1.0.m4s", "1.1.m4s", "1.2.m4s", "1.3.m4s"])
    );
    assert_eq!(v["indep"][0], serde_json::json!([true, false, true, false]));
    assert_eq!(v["part_target"].as_f64(), Some(0.5));
    assert_eq!(v["hold"].as_f64(), Some(1.5));
    assert_eq!(v["block"], "YES");
    assert_eq!(v["map"], "init.mp4");
    assert_eq!(v["version"].as_i64(), Some(9));
    assert_eq!(v["target"].as_i64(), Some(2));
    let hint = if v["hint"].is_array() {
        v["hint"][0].clone()
    } else {
        v["hint"].clone()
    };
    assert_eq!(hint, "2.0.m4s");
}
