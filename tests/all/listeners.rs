//! Listener hardening: header and handshake deadlines, connection caps, the data directory
//! lock, config paths relative to the config file, and the admin call's body limit.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ai::onnxruntime;
use crate::support::*;

/// `host:port` of a `http://host:port` or `rtmp://host:port/...` URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// `n` connections to `addr` that each send `bytes` and then nothing.
fn stalled(addr: &str, n: usize, bytes: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            s.write_all(bytes).expect("write");
            s
        })
        .collect()
}

/// Whether the server closed `s` within `limit` (EOF or reset), reading and ignoring whatever
/// it sent first; `false` when it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn healthz(base: &str) -> u16 {
    client()
        .get(format!("{base}/healthz"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

const HALF_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: exam";

#[test]
fn half_sent_requests_are_closed_on_every_http_listener() {
    let node = Weir::start("node", "[node]\nheader_read_timeout_secs = 1\n", &[]);
    let orchestrator = ready_field(&node.ready, "orchestrator").expect("orchestrator= URL");
    for base in [node.url.clone(), orchestrator] {
        let mut slow = stalled(&authority(&base), 150, HALF_REQUEST);
        assert_eq!(
            healthz(&base),
            200,
            "{base} answers while 150 requests stall"
        );
        for (i, s) in slow.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(15)),
                "{base}: stalled connection #{i} still open after 15 s"
            );
        }
        assert_eq!(healthz(&base), 200);
    }
}

#[test]
fn connections_beyond_the_cap_are_refused_until_others_close() {
    let node = Weir::start(
        "node",
        "[node]\nmax_connections = 50\nheader_read_timeout_secs = 120\n",
        &[],
    );
    let addr = authority(&node.url);
    let held = stalled(&addr, 50, b"");
    // The 51st connection gets a 503 and is closed without waiting for its request.
    let mut extra = TcpStream::connect(&addr).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answer = Vec::new();
    match extra.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "connection over the cap was left open: {e}"
        ),
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    drop(held);
    let served = eventually(Duration::from_secs(30), || {
        (healthz(&node.url) == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "service did not resume after the connections closed"
    );
}

#[test]
fn rtmp_half_handshakes_are_closed_after_the_configured_timeout() {
    let node = Weir::start("node", "[gateway]\nrtmp_handshake_timeout_secs = 1\n", &[]);
    let rtmp = ready_field(&node.ready, "rtmp").expect("rtmp= in the ready line");
    // C0 (the version byte) and half of C1, then nothing.
    let mut partial = vec![3u8];
    partial.extend(std::iter::repeat_n(0u8, 700));
    let mut slow = stalled(&authority(&rtmp), 20, &partial);
    for (i, s) in slow.iter_mut().enumerate() {
        // The default handshake timeout is 10 s: closing sooner shows the setting applies.
        assert!(
            closed_within(s, Duration::from_secs(8)),
            "half handshake #{i} still open"
        );
    }
    assert_eq!(healthz(&node.url), 200);
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let first = Weir::start("node", "", &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("node")
        .arg("--data-dir")
        .arg(first.data.path())
        .args(["--http-addr", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
        .env("WEIR_RTMP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second node");
    // Without the lock the second node would serve forever: stop it rather than hang.
    let exited = eventually(Duration::from_secs(60), || second.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = second.kill();
    }
    let out = second.wait_with_output().expect("second node output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        exited.is_some(),
        "a second node started on the same data dir: {stderr}"
    );
    assert!(!out.status.success(), "second node ran: {stderr}");
    assert!(stderr.contains("weir.lock"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(healthz(&first.url), 200, "the first node keeps serving");
}

#[test]
fn config_file_paths_are_relative_to_the_file() {
    let folder = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let comps = folder.path().join("comps");
    std::fs::create_dir_all(folder.path().join("models")).expect("mkdir");
    std::fs::create_dir_all(&comps).expect("mkdir");
    for name in ["default-router", "default-pricing"] {
        place_default(&comps, name);
    }
    std::fs::copy(
        artifact("models/upscale-2x.onnx"),
        folder.path().join("models/upscale-2x.onnx"),
    )
    .expect("copy the model");
    let config = format!(
        "[node]\ndata_dir = \"state\"\ncomponents_dir = \"comps\"\n\
         [[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"m\"\nrunner = \"onnx\"\n\
         model_path = \"models/upscale-2x.onnx\"\nonnxruntime = \"{}\"\n",
        onnxruntime()
    );
    std::fs::write(folder.path().join("weir.toml"), config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("orchestrator")
        .arg("--config")
        .arg(folder.path().join("weir.toml"))
        .args(["--http-addr", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
        .current_dir(elsewhere.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weir");
    let mut line = String::new();
    let read = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    );
    let url = ready_field(&line, "http");
    let info = url.as_ref().map(|u| {
        client()
            .get(format!("{u}/info"))
            .send()
            .and_then(|r| r.text())
    });
    let _ = child.kill();
    let _ = child.wait();
    read.expect("read the ready line");
    assert!(url.is_some(), "did not start: {line:?}");
    let info = info.expect("url").expect("/info");
    assert!(info.contains("upscale"), "{info}");
    assert!(folder.path().join("state/weir.lock").is_file());
    assert!(!elsewhere.path().join("state").exists());
}

#[test]
fn an_oversized_admin_call_is_413() {
    let node = Node::start();
    let body = format!("{{\"pad\":\"{}\"}}", "a".repeat(3 << 20));
    let resp = node
        .client()
        .post(format!("{}/admin/components/default-router/call", node.url))
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("call");
    assert_eq!(resp.status().as_u16(), 413);
}
