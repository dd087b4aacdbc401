//! The stream auth webhook failing (5xx) or not answering in time refuses the stream, on HTTP
//! push and on RTMP ingest; nothing is created for it, and a stream the webhook accepts still
//! plays.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::ai::{wait_discovered, TestServer, CLIENT_TOKEN};
use crate::failover::gateway_with;
use crate::support::*;

/// An auth webhook that answers 500 for URLs with `/broken`, holds those with `/slow` until
/// `release` (past the gateway's 5 s deadline) and accepts everything else; it counts calls.
fn auth_hook(calls: Arc<AtomicUsize>, release: &tokio::sync::watch::Sender<bool>) -> TestServer {
    let release = release.clone();
    TestServer::start(axum::Router::new().route(
        "/auth",
        axum::routing::post(move |Json(v): Json<Value>| {
            let calls = calls.clone();
            let mut released = release.subscribe();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let url = v["url"].as_str().unwrap_or_default().to_owned();
                if url.contains("/broken") {
                    return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                }
                if url.contains("/slow") {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), released.wait_for(|v| *v))
                            .await;
                }
                (StatusCode::OK, Json(json!({})))
            }
        }),
    ))
}

/// Lets the webhook's held calls answer when dropped.
struct ReleaseOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A 2 s MPEG-TS clip (H.264 + AAC) made with the `ffmpeg` CLI.
fn clip(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("clip.ts");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t", "2", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts", "-y"])
        .arg(&path)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("clip")
}

/// `POST /live/{key}/0.ts` with `clip`: status and body.
fn push(gw: &Weir, key: &str, clip: &[u8]) -> (u16, String) {
    let r = client()
        .post(format!("{}/live/{key}/0.ts", gw.url))
        .bearer_auth(CLIENT_TOKEN)
        .header("Content-Duration", "2000")
        .header("Content-Type", "video/mp2t")
        .body(clip.to_vec())
        .send()
        .expect("push");
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

fn playlist_status(gw: &Weir, key: &str) -> u16 {
    client()
        .get(format!("{}/stream/{key}.m3u8", gw.url))
        .send()
        .expect("playlist")
        .status()
        .as_u16()
}

/// Publish 2 s of test pattern to `rtmp://…/live/{key}` (not in real time) and wait (at most
/// 60 s) for `ffmpeg` to give up or finish: whether it succeeded.
fn rtmp_publish(gw: &Weir, key: &str) -> bool {
    let rtmp = ready_field(&gw.ready, "rtmp").expect("rtmp address");
    let mut child = ffmpeg_publish(&format!("{rtmp}/live/{key}"), 2, false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ffmpeg neither finished nor gave up publishing {key}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn guarded_gateway(orchestrator: &str, hook: &TestServer) -> Weir {
    gateway_with(
        &[orchestrator],
        &format!("auth_webhook_url = \"{}/auth\"", hook.url),
        "",
    )
}

fn transcoder() -> Weir {
    Weir::start(
        "orchestrator",
        "[orchestrator.transcode]\ncapacity = 4\n",
        &[],
    )
}

#[test]
fn a_failing_or_silent_auth_webhook_refuses_http_pushed_streams() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, _) = tokio::sync::watch::channel(false);
    let hook = auth_hook(calls.clone(), &release);
    let release = ReleaseOnDrop(release);
    let o = transcoder();
    let gw = guarded_gateway(&o.url, &hook);
    wait_discovered(&gw, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = clip(dir.path());

    let (status, body) = push(&gw, "broken", &clip);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("auth webhook refused the stream (500"),
        "{body}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(playlist_status(&gw, "broken"), 404);

    let started = Instant::now();
    let (status, body) = push(&gw, "slow", &clip);
    let took = started.elapsed();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auth webhook unreachable"), "{body}");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(40),
        "refused after {took:?}, not at the webhook's 5 s deadline"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(playlist_status(&gw, "slow"), 404);
    release.0.send_replace(true);

    // The same gateway takes a stream its webhook accepts.
    let (status, body) = push(&gw, "fine", &clip);
    assert_eq!(status, 200, "{body}");
    assert_eq!(playlist_status(&gw, "fine"), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_failing_or_silent_auth_webhook_refuses_rtmp_publishes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, _) = tokio::sync::watch::channel(false);
    let hook = auth_hook(calls.clone(), &release);
    let _release = ReleaseOnDrop(release);
    let o = transcoder();
    let gw = guarded_gateway(&o.url, &hook);
    wait_discovered(&gw, 1);

    assert!(!rtmp_publish(&gw, "broken"), "a refused publish succeeded");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(playlist_status(&gw, "broken"), 404);

    let started = Instant::now();
    assert!(
        !rtmp_publish(&gw, "slow"),
        "a publish the webhook never answered succeeded"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "refused after {:?}, before the webhook's 5 s deadline",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(playlist_status(&gw, "slow"), 404);

    // An accepted publish plays.
    assert!(rtmp_publish(&gw, "fine"), "an accepted publish failed");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let playing = eventually(Duration::from_secs(30), || {
        (playlist_status(&gw, "fine") == 200).then_some(())
    });
    assert!(playing.is_some(), "the accepted stream never played");
}
