//! Pipelines on decoded frames (`weir:host/video`): the first-party live-redact component
//! hides a region of every frame of a live stream (RTMP in with `ffmpeg`, HLS out read back
//! with `ffprobe` and `ffmpeg`), its frames keeping their times and the stream its audio; and a
//! component that makes frames without bound is refused at its cap, every call alike.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::ai::{gateway, wait_discovered, CLIENT_TOKEN};
use crate::byoc::{listed, publish, start_stream};
use crate::component_payments::answer;
use crate::component_storage::node_with;
use crate::support::*;

/// An orchestrator serving the `live-redact` pipeline as capability `live-redact`.
fn redact_orchestrator() -> Weir {
    let config = "[orchestrator.byoc]\nsecret = \"video-frames-secret\"\nhealth_interval_secs = 1\n[[orchestrator.byoc.pipelines]]\nname = \"live-redact\"\ncomponent = \"live-redact\"\nprice_per_unit = 3\n";
    Weir::start_with("orchestrator", config, &[], |dir| {
        place_default(dir, "live-redact");
    })
}

/// The first frame of HLS segment `uri` of stream `id` as 640x360 RGB24, read with `ffmpeg`.
fn first_frame(gw: &Weir, id: &str, uri: &str) -> Vec<u8> {
    let url = format!("{}/stream/{id}/{uri}", gw.url);
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i", &url])
        .args([
            "-frames:v",
            "1",
            "-s",
            "640x360",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 640 * 360 * 3);
    out.stdout
}

fn pixel(frame: &[u8], x: usize, y: usize) -> [u8; 3] {
    let i = (y * 640 + x) * 3;
    [frame[i], frame[i + 1], frame[i + 2]]
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 200 && p[1] < 60 && p[2] < 60
}

/// `ffprobe` of HLS segment `uri`: (video frame times in seconds, key flag of the first, has audio).
fn probe_segment(gw: &Weir, id: &str, uri: &str) -> (Vec<f64>, bool, bool) {
    let url = format!("{}/stream/{id}/{uri}", gw.url);
    let v = ffprobe_json(&url, &["-show_streams", "-show_frames"]);
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let audio = streams.iter().any(|s| s["codec_type"] == "audio");
    let video: Vec<&Value> = v["frames"]
        .as_array()
        .map(|f| f.iter().filter(|f| f["media_type"] == "video").collect())
        .unwrap_or_default();
    let mut times: Vec<f64> = video
        .iter()
        .filter_map(|f| f["pts_time"].as_str()?.parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    let key = video.first().is_some_and(|f| f["key_frame"] == 1);
    (times, key, audio)
}

#[test]
fn a_live_stream_is_redacted_frame_by_frame_on_the_host() {
    let o = redact_orchestrator();
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);

    let (status, body) = start_stream(&gw, "live-redact", json!({"effect": "sparkle"}));
    assert!(status == 422 || status == 400, "{status} {body}");

    // Paint the top-left quarter red.
    let params = json!({"effect": "fill", "color": "#ff0000", "x": 0, "y": 0, "w": 0.5, "h": 0.5});
    let (status, urls) = start_stream(&gw, "live-redact", params);
    assert_eq!(status, 200, "{urls}");
    let id = urls["stream_id"].as_str().expect("stream id").to_owned();
    let mut ffmpeg = publish(urls["rtmp_url"].as_str().expect("rtmp url"), 16);

    let first = eventually(Duration::from_secs(60), || {
        let l = listed(&gw, &id);
        (l.len() >= 2).then_some(l)
    })
    .expect("the pipeline's output was never listed as HLS");
    let frame = first_frame(&gw, &id, &first[1]);
    assert!(is_red(pixel(&frame, 80, 45)), "{:?}", pixel(&frame, 80, 45));
    assert!(
        is_red(pixel(&frame, 300, 160)),
        "{:?}",
        pixel(&frame, 300, 160)
    );
    assert!(
        !is_red(pixel(&frame, 560, 300)),
        "outside the region: {:?}",
        pixel(&frame, 560, 300)
    );

    // Every frame kept its time: 30 per second, evenly spaced, an IDR first, audio kept.
    let (times, key, audio) = probe_segment(&gw, &id, &first[1]);
    assert!(key, "the segment starts with a keyframe");
    assert!(audio, "the segment's audio is copied");
    assert!(times.len() >= 30, "{} frames", times.len());
    for w in times.windows(2) {
        assert!(((w[1] - w[0]) - 1.0 / 30.0).abs() < 0.002, "{w:?}");
    }

    // A control message changes the effect from the following segments on: an outline leaves
    // the inside of the region as the source drew it.
    let r = client()
        .post(urls["update_url"].as_str().expect("update url"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&json!({"effect": "outline"}))
        .send()
        .expect("update");
    assert_eq!(r.status().as_u16(), 200);
    let outlined = eventually(Duration::from_secs(40), || {
        let l = listed(&gw, &id);
        let frame = first_frame(&gw, &id, l.last()?);
        (is_red(pixel(&frame, 1, 1)) && !is_red(pixel(&frame, 160, 90))).then_some(())
    });
    assert!(outlined.is_some(), "the update never reached the pipeline");

    let r = client()
        .post(urls["stop_url"].as_str().expect("stop url"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("stop");
    assert_eq!(r.status().as_u16(), 200);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}

#[test]
fn a_component_hoarding_frames_is_refused_at_its_cap_every_call_alike() {
    let node = node_with("");
    // 1080p frames: the 256 MiB of pixels an instance may hold is 43 of them.
    let big = answer(&node, "hoard:1920x1080");
    assert!(big.starts_with("made 43 frames: "), "{big}");
    assert!(big.contains("256 MiB"), "{big}");
    // Tiny frames: the count cap.
    let small = answer(&node, "hoard:2x2");
    assert!(small.starts_with("made 1024 frames: "), "{small}");
    // What a call held went with it: the next call has the whole budget again.
    assert_eq!(answer(&node, "hoard:1920x1080"), big);
    let bad = answer(&node, "hoard:5000x10");
    assert!(
        bad.starts_with("made 0 frames: ") && bad.contains("4096"),
        "{bad}"
    );
}
