//! Live video end to end with real clients nobody here wrote: `ffmpeg` and GStreamer publish
//! over RTMP, `curl` pushes segments over HTTP, `ffprobe`/`ffmpeg` read the HLS output. A real
//! `weir gateway` transcodes on real `weir orchestrator`s (FFmpeg libraries, x264).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::ai::{gateway, wait_discovered, TestServer, CLIENT_TOKEN};
use crate::support::*;
use weir_runtime::StreamInfo;

fn orchestrator() -> Weir {
    Weir::start(
        "orchestrator",
        "[orchestrator.transcode]\ncapacity = 4\n",
        &[],
    )
}

fn rtmp_url(gw: &Weir) -> String {
    ready_field(&gw.ready, "rtmp").unwrap_or_else(|| panic!("no rtmp= in {:?}", gw.ready))
}

/// Run a command to completion, failing the test with its output if it fails.
fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn get_text(url: &str) -> (u16, String) {
    let r = client().get(url).send().expect("GET");
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

/// `ffprobe` of a file as JSON: the video frames' key flags and times plus the streams.
fn probe_frames(path: &Path) -> Value {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pts_time,pict_type:stream=codec_name,width,height,r_frame_rate",
            "-of",
            "json",
        ])
        .arg(path));
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// The `EXTINF` durations and URIs of a media playlist, its target duration and first msn.
struct Media {
    target: f64,
    first_msn: u64,
    segments: Vec<(f64, String)>,
    ended: bool,
    discontinuities: usize,
}

fn parse_media(text: &str) -> Media {
    let mut m = Media {
        target: 0.0,
        first_msn: 0,
        segments: Vec::new(),
        ended: text.contains("#EXT-X-ENDLIST"),
        discontinuities: text.matches("#EXT-X-DISCONTINUITY\n").count(),
    };
    let mut extinf = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            m.target = v.parse().expect("target");
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            m.first_msn = v.parse().expect("msn");
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            extinf = Some(v.trim_end_matches(',').parse::<f64>().expect("extinf"));
        } else if !line.starts_with('#') && !line.is_empty() {
            m.segments
                .push((extinf.take().expect("EXTINF before URI"), line.to_owned()));
        }
    }
    m
}

/// Wait until every media playlist of `stream` ends, then return the master playlist.
fn wait_ended(gw: &Weir, stream: &str, renditions: &[&str]) -> String {
    let done = eventually(Duration::from_secs(120), || {
        renditions
            .iter()
            .all(|r| {
                let (s, text) = get_text(&format!("{}/stream/{stream}/{r}.m3u8", gw.url));
                s == 200 && text.contains("#EXT-X-ENDLIST")
            })
            .then_some(())
    });
    assert!(done.is_some(), "the playlists of {stream} never ended");
    let (status, master) = get_text(&format!("{}/stream/{stream}.m3u8", gw.url));
    assert_eq!(status, 200);
    master
}

/// Check one rendition's playlist and segments; returns each segment's first video pts.
fn check_rendition(gw: &Weir, stream: &str, name: &str, size: (u64, u64), dir: &Path) -> Vec<f64> {
    let (status, text) = get_text(&format!("{}/stream/{stream}/{name}.m3u8", gw.url));
    assert_eq!(status, 200);
    let media = parse_media(&text);
    assert!(!media.segments.is_empty(), "{name}: no segments\n{text}");
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
    let mut starts = Vec::new();
    for (i, (extinf, uri)) in media.segments.iter().enumerate() {
        assert!(
            extinf.round() <= media.target,
            "{name}: EXTINF {extinf} above the target {}",
            media.target
        );
        let expected_uri = format!("{name}/{}.ts", media.first_msn + i as u64);
        assert_eq!(uri, &expected_uri, "media sequence not continuous");
        let r = client()
            .get(format!("{}/stream/{stream}/{uri}", gw.url))
            .send()
            .expect("segment");
        assert_eq!(r.status(), 200, "listed segment {uri} is not served");
        let path = dir.join(format!("{name}-{i}.ts"));
        std::fs::write(&path, r.bytes().expect("bytes")).expect("write");
        let probe = probe_frames(&path);
        let stream_info = &probe["streams"][0];
        assert_eq!(stream_info["codec_name"], "h264");
        assert_eq!(
            (
                stream_info["width"].as_u64().expect("w"),
                stream_info["height"].as_u64().expect("h")
            ),
            size,
            "{name} segment {i}"
        );
        assert_eq!(stream_info["r_frame_rate"], "30/1", "{name} segment {i}");
        let frames = probe["frames"].as_array().expect("frames");
        assert!(!frames.is_empty(), "{name} segment {i} has no frames");
        assert_eq!(
            frames[0]["key_frame"], 1,
            "{name} segment {i} does not start with a keyframe"
        );
        assert_eq!(frames[0]["pict_type"], "I");
        starts.push(
            frames[0]["pts_time"]
                .as_str()
                .and_then(|t| t.parse::<f64>().ok())
                .expect("pts_time"),
        );
    }
    starts
}

#[test]
fn an_rtmp_publish_from_ffmpeg_becomes_an_abr_ladder_in_hls() {
    let o = orchestrator();
    let gw = gateway(
        &[&o.url],
        "segment_secs = 2\nhls_window = 10\nrecord = true",
    );
    wait_discovered(&gw, 1);
    let rtmp = rtmp_url(&gw);

    // Garbage on the RTMP port first: the server drops it and keeps serving.
    let addr = rtmp.trim_start_matches("rtmp://");
    let mut junk = std::net::TcpStream::connect(addr).expect("connect");
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x03garbage")
        .expect("write");
    drop(junk);

    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args([
            "-t", "9", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args([
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-f", "flv",
        ])
        .arg(format!("{rtmp}/live/ladder")));

    let ladder = ["P240p30fps16x9", "P360p30fps16x9"];
    let master = wait_ended(&gw, "ladder", &ladder);
    assert!(master.contains("#EXT-X-INDEPENDENT-SEGMENTS"), "{master}");
    for (name, res) in [("P240p30fps16x9", "426x240"), ("P360p30fps16x9", "640x360")] {
        let line = master
            .lines()
            .find(|l| l.starts_with("#EXT-X-STREAM-INF") && l.contains(res))
            .unwrap_or_else(|| panic!("no variant {res} in\n{master}"));
        assert!(line.contains("BANDWIDTH="), "{line}");
        assert!(line.contains("CODECS=\"avc1."), "{line}");
        assert!(line.contains("mp4a.40.2"), "{line}");
        assert!(line.contains("FRAME-RATE=30.000"), "{line}");
        assert!(master.contains(&format!("ladder/{name}.m3u8")), "{master}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let low = check_rendition(&gw, "ladder", "P240p30fps16x9", (426, 240), dir.path());
    let high = check_rendition(&gw, "ladder", "P360p30fps16x9", (640, 360), dir.path());
    // 9 s cut at keyframes every second into ~2 s segments.
    assert!(low.len() >= 4, "{low:?}");
    assert_eq!(low.len(), high.len());
    for (a, b) in low.iter().zip(&high) {
        assert!(
            (a - b).abs() < 0.001,
            "IDRs not aligned: {low:?} vs {high:?}"
        );
    }
    for pair in low.windows(2) {
        assert!(pair[1] > pair[0], "segment times go backwards: {low:?}");
    }

    // A real player reads the ladder through the master playlist.
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .arg("-i")
        .arg(format!("{}/stream/ladder.m3u8", gw.url))
        .args(["-map", "0:v:0", "-frames:v", "60", "-f", "null", "-"]));

    // The same ladder as low-latency HLS: fMP4 parts that decode as one track.
    let (status, ll_master) = get_text(&format!("{}/stream/ladder/ll.m3u8", gw.url));
    assert_eq!(status, 200);
    assert!(ll_master.contains("P360p30fps16x9/ll.m3u8"), "{ll_master}");
    let (status, ll) = get_text(&format!("{}/stream/ladder/P360p30fps16x9/ll.m3u8", gw.url));
    assert_eq!(status, 200);
    for tag in [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PART:DURATION=",
        "INDEPENDENT=YES",
        "#EXT-X-ENDLIST",
    ] {
        assert!(ll.contains(tag), "no {tag} in\n{ll}");
    }
    let fetch = |uri: &str| {
        let r = client()
            .get(format!("{}/stream/ladder/P360p30fps16x9/{uri}", gw.url))
            .send()
            .expect("GET");
        assert_eq!(r.status(), 200, "{uri}");
        r.bytes().expect("bytes").to_vec()
    };
    let mut track = fetch("init.mp4");
    for uri in ll
        .lines()
        .filter(|l| !l.starts_with('#') && l.ends_with(".m4s"))
    {
        track.extend(fetch(uri));
    }
    let mp4 = dir.path().join("ll.mp4");
    std::fs::write(&mp4, &track).expect("write");
    let probe = probe_frames(&mp4);
    assert_eq!(probe["streams"][0]["width"].as_u64(), Some(640));
    let frames = probe["frames"].as_array().expect("frames");
    assert_eq!(frames[0]["key_frame"], 1);
    assert!(
        frames.len() >= 240,
        "{} frames in the fMP4 track",
        frames.len()
    );

    // The recording plays as video on demand.
    let recorded = eventually(Duration::from_secs(20), || {
        let (status, text) = get_text(&format!("{}/recordings/ladder/index.m3u8", gw.url));
        (status == 200 && text.contains("P360p30fps16x9.m3u8")).then_some(())
    });
    assert!(recorded.is_some(), "the recording was never closed");
    let (_, vod) = get_text(&format!("{}/recordings/ladder/P360p30fps16x9.m3u8", gw.url));
    assert!(
        vod.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && vod.contains("#EXT-X-ENDLIST"),
        "{vod}"
    );
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width",
            "-of",
            "json",
        ])
        .arg(format!("{}/recordings/ladder/P360p30fps16x9.m3u8", gw.url)));
    let vod_probe: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(vod_probe["streams"][0]["width"].as_u64(), Some(640));
    let frames: u64 = vod_probe["streams"][0]["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("frame count");
    assert_eq!(frames, 270, "9 s at 30 fps");

    // Both ledgers agree on what the segments cost.
    let paid: u64 = gw.ledger()["gateway"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["capability"] == "transcode")
        .filter_map(|r| r["amount"].as_u64())
        .sum();
    assert!(paid > 0, "no transcoding was paid for: {}", gw.ledger());
    let charged: u64 = o.ledger()["orchestrator"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["amount"].as_u64())
        .sum();
    assert_eq!(paid, charged, "{} vs {}", gw.ledger(), o.ledger());
}

#[test]
fn a_gstreamer_rtmp2sink_publish_is_transcoded_too() {
    let o = orchestrator();
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let rtmp = rtmp_url(&gw);
    let pipeline = format!(
        "videotestsrc num-buffers=150 ! video/x-raw,width=640,height=360,framerate=30/1 ! \
         x264enc key-int-max=30 speed-preset=veryfast ! h264parse ! flvmux name=m streamable=true ! \
         rtmp2sink location={rtmp}/live/gst audiotestsrc num-buffers=235 ! audioconvert ! \
         avenc_aac ! aacparse ! m."
    );
    run(Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null()));
    let ladder = ["P240p30fps16x9", "P360p30fps16x9"];
    wait_ended(&gw, "gst", &ladder);
    let dir = tempfile::tempdir().expect("tempdir");
    let low = check_rendition(&gw, "gst", "P240p30fps16x9", (426, 240), dir.path());
    assert!(low.len() >= 2, "{low:?}");
}

fn make_clip(dir: &Path, name: &str, codec_args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "2"])
        .args(codec_args)
        .args(["-c:a", "aac", "-f", "mpegts", "-y"])
        .arg(&path));
    path
}

fn curl_push(
    gw: &Weir,
    path_and_query: &str,
    file: &Path,
    accept_parts: bool,
) -> (u16, Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    // Over 1 MiB curl asks `Expect: 100-continue`; it waits for the answer instead of sending
    // the body after a second (a refused body must be refused before it is sent).
    cmd.args([
        "-sS",
        "--expect100-timeout",
        "60",
        "-X",
        "POST",
        "--data-binary",
    ])
    .arg(format!("@{}", file.display()))
    .args(["-H", &format!("Authorization: Bearer {CLIENT_TOKEN}")])
    .args([
        "-H",
        "Content-Duration: 2000",
        "-H",
        "Content-Type: video/mp2t",
    ])
    .arg("-o")
    .arg(&body)
    .arg("-D")
    .arg(&headers)
    .args(["-w", "%{http_code}"]);
    if accept_parts {
        cmd.args(["-H", "Accept: multipart/mixed"]);
    }
    let out = run(cmd.arg(format!("{}{path_and_query}", gw.url)));
    let status: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("status");
    (
        status,
        std::fs::read(&body).unwrap_or_default(),
        std::fs::read_to_string(&headers).unwrap_or_default(),
    )
}

#[test]
fn http_pushed_segments_come_back_as_multipart_renditions() {
    let o = orchestrator();
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = make_clip(
        dir.path(),
        "h264.ts",
        &["-c:v", "libx264", "-g", "30", "-bf", "2"],
    );

    let (status, body, headers) = curl_push(&gw, "/live/pushed/0.ts", &clip, true);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let content_type = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .expect("content type");
    let boundary = weir_protocol::multipart::boundary_of(&content_type).expect("multipart");
    let parts =
        weir_protocol::multipart::parse(&boundary, &bytes::Bytes::from(body)).expect("parts");
    assert_eq!(parts.len(), 2);
    for (part, (name, size)) in parts.iter().zip([
        ("P240p30fps16x9", (426, 240)),
        ("P360p30fps16x9", (640, 360)),
    ]) {
        assert_eq!(part.header("Rendition-Name"), Some(name));
        assert_eq!(
            part.header("Content-Type"),
            Some(format!("video/MP2T; name=\"{name}_0.ts\"").as_str())
        );
        let path = dir.path().join(format!("{name}.ts"));
        std::fs::write(&path, &part.data).expect("write");
        let probe = probe_frames(&path);
        assert_eq!(probe["streams"][0]["width"].as_u64(), Some(size.0));
        assert_eq!(probe["streams"][0]["height"].as_u64(), Some(size.1));
        assert_eq!(probe["frames"][0]["key_frame"], 1);
    }
    // Listed in the stream's playlists.
    let (status, text) = get_text(&format!("{}/stream/pushed/P360p30fps16x9.m3u8", gw.url));
    assert_eq!(status, 200);
    assert_eq!(parse_media(&text).segments.len(), 1, "{text}");

    // Without Accept: multipart/mixed, an empty 200.
    let (status, body, _) = curl_push(&gw, "/live/pushed/1.ts", &clip, false);
    assert_eq!((status, body.len()), (200, 0));

    // HEVC in: transcoded to the H.264 ladder.
    let hevc = make_clip(
        dir.path(),
        "hevc.ts",
        &["-c:v", "libx265", "-x265-params", "log-level=error"],
    );
    let (status, body, _) = curl_push(&gw, "/live/hevc/0.ts", &hevc, true);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // Garbage, a wrong extension, no token.
    let junk = dir.path().join("junk.ts");
    std::fs::write(&junk, vec![0x47u8; 188 * 10]).expect("write");
    let (status, body, _) = curl_push(&gw, "/live/pushed/2.ts", &junk, true);
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = curl_push(&gw, "/live/pushed/3.flv", &clip, true);
    assert_eq!(status, 400);
    let anonymous = client()
        .post(format!("{}/live/pushed/4.ts", gw.url))
        .body(std::fs::read(&clip).expect("clip"))
        .send()
        .expect("send");
    assert_eq!(anonymous.status(), 401);

    // An auth webhook refuses one key and renames another stream with its own ladder.
    let hook = TestServer::start(axum::Router::new().route(
        "/auth",
        axum::routing::post(|axum::Json(v): axum::Json<Value>| async move {
            let url = v["url"].as_str().unwrap_or_default().to_owned();
            if url.contains("/denied/") {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(serde_json::json!({})),
                )
            } else {
                (
                    axum::http::StatusCode::OK,
                    axum::Json(serde_json::json!({
                        "manifestID": "renamed",
                        "presets": ["P144p30fps16x9"]
                    })),
                )
            }
        }),
    ));
    let guarded = gateway(
        &[&o.url],
        &format!("auth_webhook_url = \"{}/auth\"", hook.url),
    );
    wait_discovered(&guarded, 1);
    let (status, body, _) = curl_push(&guarded, "/live/denied/0.ts", &clip, true);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let (status, body, _) = curl_push(&guarded, "/live/anything/0.ts", &clip, true);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, text) = get_text(&format!(
        "{}/stream/renamed/P144p30fps16x9.m3u8",
        guarded.url
    ));
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse_media(&text).segments.len(), 1);

    // No orchestrator at all: 503 "No sessions available".
    let alone = gateway(&[], "");
    let (status, body, _) = curl_push(&alone, "/live/nobody/0.ts", &clip, true);
    assert_eq!(status, 503);
    assert!(
        String::from_utf8_lossy(&body).contains("No sessions available"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn a_stream_survives_an_orchestrator_dying_mid_stream() {
    let mut orchestrators = [orchestrator(), orchestrator()];
    let urls: Vec<String> = orchestrators.iter().map(|o| o.url.clone()).collect();
    let gw = gateway(&[&urls[0], &urls[1]], "");
    wait_discovered(&gw, 2);
    let rtmp = rtmp_url(&gw);
    let mut publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args([
            "-t", "12", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv"])
        .arg(format!("{rtmp}/live/failover"))
        .spawn()
        .expect("ffmpeg");
    // Once the first segment is listed, one orchestrator dies.
    let first = eventually(Duration::from_secs(60), || {
        let (s, text) = get_text(&format!("{}/stream/failover/P240p30fps16x9.m3u8", gw.url));
        (s == 200 && !parse_media(&text).segments.is_empty()).then_some(())
    });
    assert!(first.is_some(), "no segment was ever listed");
    // A blocking reload is held until the part it asks for exists. It asks for the first part
    // of the segment after the next one (the furthest the spec allows), which cannot exist
    // yet; the answer must list it as a part, not merely hint at it (`EXT-X-PRELOAD-HINT`
    // names the next part in any immediate answer). One further ahead is refused.
    let ll_url = format!("{}/stream/failover/source/ll.m3u8", gw.url);
    let has_part = |playlist: &str, msn: u64| {
        let uri = format!("URI=\"{msn}.0.m4s\"");
        playlist
            .lines()
            .any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&uri))
    };
    let (_, ll) = get_text(&ll_url);
    let first_msn: u64 = ll
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no media sequence:\n{ll}"));
    let next = first_msn + ll.lines().filter(|l| l.starts_with("#EXTINF:")).count() as u64;
    let ahead = next + 1;
    assert!(!has_part(&ll, ahead), "{ahead}.0 exists already:\n{ll}");
    let (status, held) = get_text(&format!("{ll_url}?_HLS_msn={ahead}&_HLS_part=0"));
    assert_eq!(status, 200, "{held}");
    assert!(
        has_part(&held, ahead),
        "the blocking reload for {ahead}.0 answered without it:\n{held}"
    );
    let (status, _) = get_text(&format!("{ll_url}?_HLS_msn={}&_HLS_part=0", next + 10));
    assert_eq!(status, 400);
    // The orchestrator that transcoded it dies.
    let served = gw.ledger()["gateway"][0]["party"]
        .as_str()
        .expect("a paid segment")
        .to_owned();
    let dead = urls
        .iter()
        .position(|u| *u == served)
        .expect("known orchestrator");
    orchestrators[dead].kill();
    let status = publisher.wait().expect("ffmpeg");
    assert!(status.success());
    let ladder = ["P240p30fps16x9", "P360p30fps16x9"];
    wait_ended(&gw, "failover", &ladder);
    let (_, source) = get_text(&format!("{}/stream/failover/source.m3u8", gw.url));
    let source = parse_media(&source);
    for name in ladder {
        let (_, text) = get_text(&format!("{}/stream/failover/{name}.m3u8", gw.url));
        let media = parse_media(&text);
        assert!(media.ended);
        assert_eq!(
            media.segments.len(),
            source.segments.len(),
            "{name} lost segments when the orchestrator died:\n{text}"
        );
        assert_eq!(media.discontinuities, 0, "{text}");
    }
    assert!(source.segments.len() >= 5);
    let survivor = &orchestrators[1 - dead];
    assert!(
        survivor.ledger()["orchestrator"][0]["jobs"].as_u64() > Some(0),
        "the other orchestrator never took over"
    );
}

#[test]
fn a_pipeline_component_reuses_the_host_transcoder() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "ladder",
        &artifact("test-programs/ladder-pipeline.wasm"),
        &manifest("ladder", "pipeline", "[limits]\ntimeout_ms = 60000"),
    );
    let ladder = registry.load("ladder").expect("loads");
    let clips = tempfile::tempdir().expect("tempdir");
    let clip = make_clip(clips.path(), "in.ts", &["-c:v", "libx264", "-g", "30"]);
    let segment = || weir_runtime::media::Segment {
        seq: 4,
        duration_ms: 2000,
        content_type: "video/mp2t".into(),
        data: std::fs::read(&clip).expect("clip").into(),
    };
    let info = StreamInfo {
        id: "s".into(),
        capability: "transcode".into(),
        params: vec![],
    };

    // Without a transcoder on the node, the component is told so.
    let mut stream = ladder.start_stream(info.clone()).expect("start");
    let refused = stream.on_segment(segment()).expect_err("no transcoder yet");
    assert!(refused.to_string().contains("no transcoder"), "{refused}");
    stream.stop().expect("stop");

    let transcoder = weir_media::transcode::Transcoder::new(Default::default()).expect("x264");
    assert!(registry.runtime().provide_media(std::sync::Arc::new(
        weir_orchestrator::GuestMedia::new(std::sync::Arc::new(transcoder))
    )));
    let mut stream = ladder.start_stream(info).expect("start");
    let out = stream.on_segment(segment()).expect("ladder");
    assert_eq!(out.len(), 2);
    for (rendition, (w, h)) in out.iter().zip([(426, 240), (640, 360)]) {
        assert_eq!(rendition.seq, 4);
        let path = clips.path().join(format!("{w}.ts"));
        std::fs::write(&path, &*rendition.data).expect("write");
        let probe = probe_frames(&path);
        assert_eq!(probe["streams"][0]["width"].as_u64(), Some(w));
        assert_eq!(probe["streams"][0]["height"].as_u64(), Some(h));
        assert_eq!(probe["frames"][0]["key_frame"], 1);
    }
    // Garbage in: the component gets the host's error, the host keeps going.
    let bad = stream.on_segment(weir_runtime::media::Segment {
        data: vec![0x47u8; 188 * 4].into(),
        ..segment()
    });
    assert!(bad.is_err());
    stream.stop().expect("stop");
}

fn publish(rtmp: &str, key: &str, seconds: u32) {
    run(&mut ffmpeg_publish(
        &format!("{rtmp}/live/{key}"),
        seconds,
        false,
    ));
}

#[test]
fn a_publisher_that_reconnects_continues_its_stream_and_sessions_are_limited() {
    let o = orchestrator();
    let gw = gateway(&[&o.url], "max_sessions = 1\nmax_push_mib = 1");
    wait_discovered(&gw, 1);
    let rtmp = rtmp_url(&gw);
    let ladder = ["P240p30fps16x9", "P360p30fps16x9"];

    publish(&rtmp, "again", 5);
    wait_ended(&gw, "again", &ladder);
    let (_, text) = get_text(&format!("{}/stream/again/source.m3u8", gw.url));
    let before = parse_media(&text).segments.len();
    assert!(before >= 2, "{text}");

    // The same key again: the playlists go on after a discontinuity.
    publish(&rtmp, "again", 5);
    let resumed = eventually(Duration::from_secs(120), || {
        let (_, text) = get_text(&format!("{}/stream/again/P240p30fps16x9.m3u8", gw.url));
        let m = parse_media(&text);
        (m.ended && m.segments.len() > before).then_some(m)
    })
    .expect("the second publish was never listed");
    assert_eq!(resumed.discontinuities, 1);
    assert_eq!(resumed.first_msn, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    check_rendition(&gw, "again", "P240p30fps16x9", (426, 240), dir.path());
    let (_, ll) = get_text(&format!("{}/stream/again/P240p30fps16x9/ll.m3u8", gw.url));
    assert!(ll.contains("#EXT-X-DISCONTINUITY"), "{ll}");

    // Nothing is left running once the publisher is gone.
    let live = eventually(Duration::from_secs(10), || {
        (metric(&gw.metrics(), "weir_live_streams") == Some(0.0)).then_some(())
    });
    assert!(live.is_some(), "{}", gw.metrics());

    // One session at a time: a second stream is refused while a pushed one is live.
    let clip = make_clip(dir.path(), "clip.ts", &["-c:v", "libx264", "-g", "30"]);
    let (status, _, _) = curl_push(&gw, "/live/first/0.ts", &clip, false);
    assert_eq!(status, 200);
    let (status, body, _) = curl_push(&gw, "/live/second/0.ts", &clip, false);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no sessions available"));

    // A push over the size limit.
    let huge = dir.path().join("huge.ts");
    std::fs::write(&huge, vec![0x47u8; 2 << 20]).expect("write");
    let (status, _, _) = curl_push(&gw, "/live/first/1.ts", &huge, false);
    assert_eq!(status, 413);
}
