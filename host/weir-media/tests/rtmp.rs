//! RTMP ingest against real publishers (the `ffmpeg` CLI, GStreamer's `rtmp2sink`) and against
//! misbehaving clients.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use weir_media::packet::{CodecConfig, IngestEvent, MediaPacket, Track};
use weir_media::rtmp::{serve, PublishHandler, RtmpLimits};

/// Failure guard for anything that should finish: far above what any run needs.
const GUARD: Duration = Duration::from_secs(60);

/// One publish the test handler accepted.
struct Publish {
    app: String,
    key: String,
    rx: mpsc::Receiver<IngestEvent>,
}

struct TestHandler {
    publishes: mpsc::UnboundedSender<Publish>,
    capacity: usize,
    refuse: Option<String>,
}

impl PublishHandler for TestHandler {
    fn publish(&self, publish: weir_media::ingest::Publish) -> weir_media::ingest::Decision {
        assert_eq!(publish.protocol, weir_media::ingest::Protocol::Rtmp);
        let result = match &self.refuse {
            Some(reason) => Err(reason.clone()),
            None => {
                let (tx, rx) = mpsc::channel(self.capacity);
                let _ = self.publishes.send(Publish {
                    app: publish.path,
                    key: publish.key,
                    rx,
                });
                Ok(tx)
            }
        };
        Box::pin(async move { result })
    }
}

struct Server {
    addr: SocketAddr,
    publishes: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn next_publish(&mut self) -> Publish {
        timeout(GUARD, self.publishes.recv())
            .await
            .expect("no publish within the guard time")
            .expect("server gone")
    }

    fn no_publish_pending(&mut self) -> bool {
        self.publishes.try_recv().is_err()
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weir_media=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn start_with(limits: RtmpLimits, capacity: usize, refuse: Option<&str>) -> Server {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, publishes) = mpsc::unbounded_channel();
    let handler = Arc::new(TestHandler {
        publishes: tx,
        capacity,
        refuse: refuse.map(str::to_string),
    });
    let task = tokio::spawn(serve(listener, handler, limits));
    Server {
        addr,
        publishes,
        task,
    }
}

async fn start(limits: RtmpLimits) -> Server {
    start_with(limits, 4096, None).await
}

fn limits() -> RtmpLimits {
    RtmpLimits {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 16,
        max_message_bytes: 16 * 1024 * 1024,
    }
}

/// Reads every event until the server drops the sender.
async fn collect(mut rx: mpsc::Receiver<IngestEvent>) -> Vec<IngestEvent> {
    let mut events = Vec::new();
    loop {
        match timeout(GUARD, rx.recv()).await {
            Ok(Some(e)) => events.push(e),
            Ok(None) => return events,
            Err(_) => panic!("event stream not closed within the guard time"),
        }
    }
}

fn video_packets(events: &[IngestEvent]) -> Vec<&MediaPacket> {
    events
        .iter()
        .filter_map(|e| match e {
            IngestEvent::Packet(p) if p.track == Track::Video => Some(p),
            _ => None,
        })
        .collect()
}

fn audio_packets(events: &[IngestEvent]) -> Vec<&MediaPacket> {
    events
        .iter()
        .filter_map(|e| match e {
            IngestEvent::Packet(p) if p.track == Track::Audio => Some(p),
            _ => None,
        })
        .collect()
}

/// Checks a publish of `frames` H.264 frames with an IDR every `gop` frames plus AAC audio.
fn check_av_stream(events: &[IngestEvent], frames: usize, gop: usize, expect_b_frames: bool) {
    let first_avc_config = events
        .iter()
        .position(|e| matches!(e, IngestEvent::Config(CodecConfig::Avc(b)) if !b.is_empty()))
        .expect("an AVC config");
    let first_video = events
        .iter()
        .position(|e| matches!(e, IngestEvent::Packet(p) if p.track == Track::Video))
        .expect("a video packet");
    assert!(
        first_avc_config < first_video,
        "AVC config must precede video"
    );
    if let IngestEvent::Config(CodecConfig::Avc(avcc)) = &events[first_avc_config] {
        assert_eq!(avcc[0], 1, "avcC configurationVersion");
    }

    let video = video_packets(events);
    assert_eq!(video.len(), frames, "video packet count");
    assert!(video[0].keyframe, "first video packet must be a keyframe");
    let keyframes: Vec<usize> = video
        .iter()
        .enumerate()
        .filter(|(_, p)| p.keyframe)
        .map(|(i, _)| i)
        .collect();
    let expected: Vec<usize> = (0..frames).step_by(gop).collect();
    assert_eq!(keyframes, expected, "keyframe positions");
    for w in video.windows(2) {
        assert!(w[1].dts_ms >= w[0].dts_ms, "video dts went backwards");
    }
    for p in &video {
        assert!(p.pts_ms >= p.dts_ms, "pts {} < dts {}", p.pts_ms, p.dts_ms);
        assert!(p.data.len() > 4, "video payload too small");
        // AVCC: the first NALU length must fit in the payload.
        let n = u32::from_be_bytes([p.data[0], p.data[1], p.data[2], p.data[3]]) as usize;
        assert!(n + 4 <= p.data.len(), "first NALU length exceeds payload");
    }
    // Publishers clamp the first B-frame-delayed dts values to 0, so measure on pts.
    let max_pts = video.iter().map(|p| p.pts_ms).max().expect("video");
    let min_pts = video.iter().map(|p| p.pts_ms).min().expect("video");
    let span = max_pts - min_pts;
    let expected_span = (frames as i64 - 1) * 1000 / 30;
    assert!(
        (span - expected_span).abs() <= 40,
        "video pts span {span} ms, expected about {expected_span}"
    );
    let reordered = video.iter().filter(|p| p.pts_ms > p.dts_ms).count();
    if expect_b_frames {
        assert!(reordered > 0, "expected B-frames (pts > dts)");
    }

    let first_aac_config = events
        .iter()
        .position(|e| matches!(e, IngestEvent::Config(CodecConfig::Aac(b)) if !b.is_empty()))
        .expect("an AAC config");
    let first_audio = events
        .iter()
        .position(|e| matches!(e, IngestEvent::Packet(p) if p.track == Track::Audio))
        .expect("an audio packet");
    assert!(
        first_aac_config < first_audio,
        "AAC config must precede audio"
    );
    let audio = audio_packets(events);
    assert!(audio.len() >= 50, "only {} audio packets", audio.len());
    assert!(audio.iter().all(|p| p.keyframe && p.pts_ms == p.dts_ms));
    for w in audio.windows(2) {
        assert!(w[1].dts_ms >= w[0].dts_ms, "audio dts went backwards");
    }
}

async fn run_tool(mut cmd: tokio::process::Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn publisher (is it installed?)");
    timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("publisher did not finish within the guard time")
        .expect("publisher output")
}

#[tokio::test]
async fn ffmpeg_publish_h264_aac() {
    let mut server = start(limits()).await;
    let url = format!("rtmp://{}/live/ffmpeg-key", server.addr);
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args([
            "-t", "3", "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
        ])
        .args([
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ])
        .arg(&url);
    let tool = tokio::spawn(run_tool(cmd));
    let publish = server.next_publish().await;
    assert_eq!(publish.app, "live");
    assert_eq!(publish.key, "ffmpeg-key");
    let events = collect(publish.rx).await;
    let out = tool.await.expect("join");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_av_stream(&events, 90, 30, true);
}

#[tokio::test]
async fn gstreamer_publish_h264_aac() {
    let mut server = start(limits()).await;
    let url = format!("rtmp://{}/live/gst-key", server.addr);
    let pipeline = format!(
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 ! h264parse ! flvmux name=m streamable=true \
         ! rtmp2sink location={url} \
         audiotestsrc num-buffers=100 ! audioconvert ! avenc_aac ! aacparse ! m."
    );
    let mut cmd = tokio::process::Command::new("gst-launch-1.0");
    cmd.arg("-q").args(pipeline.split_whitespace());
    let tool = tokio::spawn(run_tool(cmd));
    let publish = server.next_publish().await;
    assert_eq!(publish.app, "live");
    assert_eq!(publish.key, "gst-key");
    let events = collect(publish.rx).await;
    let out = tool.await.expect("join");
    assert!(
        out.status.success(),
        "gst-launch failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_av_stream(&events, 90, 30, true);
}

/// `ffmpeg` publishing one second of 320x240 video encoded with `codec` as FLV to `url`.
fn video_only_publisher(codec: &str, url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-t",
            "1",
        ])
        .args(["-c:v", codec, "-preset", "ultrafast", "-f", "flv"])
        .arg(url);
    cmd
}

#[tokio::test]
async fn refused_publish_makes_ffmpeg_fail_and_forwards_nothing() {
    let mut server = start_with(limits(), 16, Some("unknown stream key")).await;
    let url = format!("rtmp://{}/live/bad-key", server.addr);
    let cmd = video_only_publisher("libx264", &url);
    let out = run_tool(cmd).await;
    assert!(
        !out.status.success(),
        "ffmpeg should fail when its publish is refused"
    );
    assert!(server.no_publish_pending());
}

// ---------------------------------------------------------------------------------------------
// A minimal RTMP publisher built on rml_rtmp's client session, for hand-made streams.

struct TestClient {
    stream: TcpStream,
    session: ClientSession,
}

impl TestClient {
    async fn handshake(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut hs = Handshake::new(PeerType::Client);
        let p0p1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
        stream.write_all(&p0p1).await.expect("write c0c1");
        let mut buf = vec![0_u8; 8192];
        loop {
            let n = timeout(GUARD, stream.read(&mut buf))
                .await
                .expect("handshake guard")
                .expect("read");
            assert!(n > 0, "server closed during handshake");
            match hs.process_bytes(&buf[..n]).expect("handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream.write_all(&response_bytes).await.expect("write");
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream.write_all(&response_bytes).await.expect("write");
                    return (stream, remaining_bytes);
                }
            }
        }
    }

    async fn publish(addr: SocketAddr, app: &str, key: &str) -> TestClient {
        let (stream, remaining) = Self::handshake(addr).await;
        let (session, initial) = ClientSession::new(ClientSessionConfig::new()).expect("session");
        let mut client = TestClient { stream, session };
        client.send(initial).await;
        let results = client.session.handle_input(&remaining).expect("input");
        client.send(results).await;
        let r = client
            .session
            .request_connection(app.to_string())
            .expect("connect request");
        client.send(vec![r]).await;
        client
            .wait_for(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
            .await;
        let r = client
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .expect("publish request");
        client.send(vec![r]).await;
        client
            .wait_for(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
            .await;
        client
    }

    async fn send(&mut self, results: Vec<ClientSessionResult>) {
        for r in results {
            if let ClientSessionResult::OutboundResponse(p) = r {
                self.stream.write_all(&p.bytes).await.expect("write");
            }
        }
    }

    async fn wait_for(&mut self, pred: impl Fn(&ClientSessionEvent) -> bool) {
        let mut buf = vec![0_u8; 8192];
        loop {
            let n = timeout(GUARD, self.stream.read(&mut buf))
                .await
                .expect("waiting for server event")
                .expect("read");
            assert!(n > 0, "server closed the connection");
            let results = self.session.handle_input(&buf[..n]).expect("client input");
            let mut hit = false;
            let mut out = Vec::new();
            for r in results {
                match r {
                    ClientSessionResult::RaisedEvent(e) if pred(&e) => hit = true,
                    other => out.push(other),
                }
            }
            self.send(out).await;
            if hit {
                return;
            }
        }
    }

    /// Sends one video message; returns false if the server had closed the connection.
    async fn video(&mut self, data: Vec<u8>, ts: u32) -> bool {
        let r = self
            .session
            .publish_video_data(Bytes::from(data), RtmpTimestamp::new(ts), false)
            .expect("video");
        self.try_send(r).await
    }

    async fn audio(&mut self, data: Vec<u8>, ts: u32) -> bool {
        let r = self
            .session
            .publish_audio_data(Bytes::from(data), RtmpTimestamp::new(ts), false)
            .expect("audio");
        self.try_send(r).await
    }

    async fn try_send(&mut self, r: ClientSessionResult) -> bool {
        match r {
            ClientSessionResult::OutboundResponse(p) => {
                self.stream.write_all(&p.bytes).await.is_ok()
            }
            _ => true,
        }
    }
}

/// Waits until the peer closes `stream` (EOF or reset), returning how long that took.
async fn wait_closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = vec![0_u8; 8192];
    loop {
        match timeout(GUARD, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection not closed within the guard time"),
        }
    }
}

fn avc_config() -> Vec<u8> {
    // FLV AVC sequence header + a small avcC (Baseline 3.0, one SPS, one PPS).
    let mut v = vec![0x17, 0, 0, 0, 0];
    v.extend_from_slice(&[
        1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e,
    ]);
    v.extend_from_slice(&[1, 0, 4, 0x68, 0xce, 0x3c, 0x80]);
    v
}

fn avc_frame(key: bool, cts: i32) -> Vec<u8> {
    let c = cts.to_be_bytes();
    let mut v = vec![if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
    v.extend_from_slice(&[0, 0, 0, 3, if key { 0x65 } else { 0x41 }, 0x88, 0x80]);
    v
}

fn aac_config() -> Vec<u8> {
    vec![0xaf, 0, 0x11, 0x90]
}

fn aac_frame() -> Vec<u8> {
    vec![0xaf, 1, 0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c]
}

#[tokio::test]
async fn hand_made_stream_timestamps_unwrap_and_composition_offsets_apply() {
    let mut server = start(limits()).await;
    let mut client = TestClient::publish(server.addr, "live", "wrap").await;
    let publish = server.next_publish().await;
    assert_eq!(
        (publish.app.as_str(), publish.key.as_str()),
        ("live", "wrap")
    );

    let base = u32::MAX - 99; // wraps after 100 ms
    assert!(client.video(avc_config(), base).await);
    assert!(client.audio(aac_config(), base).await);
    for i in 0..8_u32 {
        let ts = base.wrapping_add(i * 33);
        assert!(
            client
                .video(avc_frame(i % 4 == 0, if i % 2 == 0 { 66 } else { -33 }), ts)
                .await
        );
        assert!(client.audio(aac_frame(), ts.wrapping_add(5)).await);
    }
    drop(client);
    let events = collect(publish.rx).await;
    let video = video_packets(&events);
    assert_eq!(video.len(), 8);
    for (i, p) in video.iter().enumerate() {
        let expected = i64::from(base) + i as i64 * 33;
        assert_eq!(p.dts_ms, expected, "dts of frame {i}");
        let cts = if i % 2 == 0 { 66 } else { -33 };
        assert_eq!(p.pts_ms, expected + cts, "pts of frame {i}");
        assert_eq!(p.keyframe, i % 4 == 0);
        assert_eq!(&p.data[..4], &[0, 0, 0, 3]);
    }
    assert!(video.last().expect("video").dts_ms > i64::from(u32::MAX));
    let audio = audio_packets(&events);
    assert_eq!(audio.len(), 8);
    assert_eq!(audio[7].dts_ms, i64::from(base) + 7 * 33 + 5);
    assert!(
        matches!(&events[0], IngestEvent::Config(CodecConfig::Avc(b)) if b[..] == avc_config()[5..])
    );
    assert!(
        matches!(&events[1], IngestEvent::Config(CodecConfig::Aac(b)) if b[..] == [0x11, 0x90])
    );
}

async fn check_hevc_refused(video_tag: Vec<u8>) {
    let mut server = start(limits()).await;
    let mut client = TestClient::publish(server.addr, "live", "hevc").await;
    let publish = server.next_publish().await;
    assert!(client.audio(aac_config(), 0).await);
    // The HEVC sequence header, then more media the server must not forward.
    client.video(video_tag.clone(), 0).await;
    for i in 1..20 {
        client.audio(aac_frame(), i * 21).await;
        client.video(video_tag.clone(), i * 33).await;
    }
    wait_closed(&mut client.stream).await;
    let events = collect(publish.rx).await;
    assert_eq!(
        events.len(),
        1,
        "only the AAC config may be forwarded: {events:?}"
    );
    assert!(matches!(
        &events[0],
        IngestEvent::Config(CodecConfig::Aac(_))
    ));
}

#[tokio::test]
async fn hevc_codec_id_12_is_refused() {
    // FLV video tag: keyframe, codec id 12, packet type 0 (sequence header), hvcC bytes.
    check_hevc_refused(vec![0x1c, 0, 0, 0, 0, 1, 0x01, 0x60, 0, 0, 0]).await;
}

#[tokio::test]
async fn enhanced_rtmp_hvc1_is_refused() {
    // Enhanced RTMP: IsExHeader | keyframe, PacketTypeSequenceStart, FourCC 'hvc1', hvcC.
    check_hevc_refused(vec![0x90, b'h', b'v', b'c', b'1', 1, 0x01, 0x60, 0, 0]).await;
}

#[tokio::test]
async fn ffmpeg_hevc_publish_is_not_forwarded() {
    // FFmpeg 5.1's FLV muxer refuses HEVC before anything is published; a newer FFmpeg sends
    // enhanced RTMP, which the server refuses. Either way no HEVC may reach the handler.
    let encoders = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output()
        .expect("ffmpeg -encoders");
    assert!(String::from_utf8_lossy(&encoders.stdout).contains("libx265"));
    let mut server = start(limits()).await;
    let url = format!("rtmp://{}/live/hevc", server.addr);
    let cmd = video_only_publisher("libx265", &url);
    let out = run_tool(cmd).await;
    assert!(!out.status.success(), "an HEVC publish must not succeed");
    while let Ok(publish) = server.publishes.try_recv() {
        let events = collect(publish.rx).await;
        assert!(
            video_packets(&events).is_empty()
                && !events
                    .iter()
                    .any(|e| matches!(e, IngestEvent::Config(CodecConfig::Avc(_)))),
            "HEVC publish forwarded video: {events:?}"
        );
    }
}

#[tokio::test]
async fn garbage_is_dropped_and_server_keeps_serving() {
    let mut server = start(RtmpLimits {
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        ..limits()
    })
    .await;
    // Not RTMP at all.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    wait_closed(&mut s).await;

    // A plausible version byte followed by junk, including junk chunks after the handshake.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let junk: Vec<u8> = std::iter::once(3_u8)
        .chain((0..20_000_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
        .collect();
    let _ = s.write_all(&junk).await;
    wait_closed(&mut s).await;

    // A valid handshake followed by chunk headers that make the chunk parser misbehave.
    let (mut s, _) = TestClient::handshake(server.addr).await;
    let mut bad = vec![0x03, 0, 0, 0, 0x00, 0x03, 0xe8, 9, 1, 0, 0, 0];
    bad.extend_from_slice(&[0x55; 128]);
    bad.extend_from_slice(&[0x04, 0, 0, 0, 0, 0, 10, 9, 1, 0, 0, 0]);
    bad.extend_from_slice(&[0x66; 10]);
    let _ = s.write_all(&bad).await;
    wait_closed(&mut s).await;

    // Still serving.
    let mut client = TestClient::publish(server.addr, "live", "after-garbage").await;
    let publish = server.next_publish().await;
    assert!(client.video(avc_config(), 0).await);
    assert!(client.video(avc_frame(true, 0), 0).await);
    drop(client);
    let events = collect(publish.rx).await;
    assert_eq!(video_packets(&events).len(), 1);
}

#[tokio::test]
async fn stalled_handshake_is_closed_after_the_handshake_timeout() {
    let hs = Duration::from_millis(300);
    let server = start(RtmpLimits {
        handshake_timeout: hs,
        ..limits()
    })
    .await;
    // Silent client.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    assert!(wait_closed(&mut s).await >= hs - Duration::from_millis(50));

    // Client that sends C0+C1 and then stops before C2.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut client_hs = Handshake::new(PeerType::Client);
    s.write_all(&client_hs.generate_outbound_p0_and_p1().expect("c0c1"))
        .await
        .expect("write");
    assert!(wait_closed(&mut s).await >= hs - Duration::from_millis(50));
}

#[tokio::test]
async fn client_stopping_mid_chunk_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(500);
    let mut server = start(RtmpLimits {
        idle_timeout: idle,
        ..limits()
    })
    .await;
    let mut client = TestClient::publish(server.addr, "live", "stall").await;
    let publish = server.next_publish().await;
    assert!(client.video(avc_config(), 0).await);
    // Half of a video message: the chunk header promises more than is sent.
    let r = client
        .session
        .publish_video_data(Bytes::from(vec![0x17; 100]), RtmpTimestamp::new(33), false)
        .expect("video");
    let ClientSessionResult::OutboundResponse(p) = r else {
        panic!("expected bytes")
    };
    client
        .stream
        .write_all(&p.bytes[..p.bytes.len() / 2])
        .await
        .expect("write");
    assert!(wait_closed(&mut client.stream).await >= idle - Duration::from_millis(50));
    let events = collect(publish.rx).await;
    assert_eq!(events.len(), 1, "only the config was complete: {events:?}");
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let mut server = start(RtmpLimits {
        max_message_bytes: 1000,
        ..limits()
    })
    .await;
    let mut client = TestClient::publish(server.addr, "live", "big").await;
    let publish = server.next_publish().await;
    // A video message larger than the limit is refused before it completes (the write may
    // fail part-way once the server closes).
    client.video(vec![0x27; 1_000_000], 0).await;
    wait_closed(&mut client.stream).await;
    let events = collect(publish.rx).await;
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn reconnect_with_same_key_gives_a_second_publish() {
    let mut server = start(limits()).await;
    let mut first = TestClient::publish(server.addr, "live", "same").await;
    let p1 = server.next_publish().await;
    assert!(first.video(avc_config(), 0).await);
    assert!(first.video(avc_frame(true, 0), 0).await);

    let mut second = TestClient::publish(server.addr, "live", "same").await;
    let p2 = server.next_publish().await;
    assert_eq!((p2.app.as_str(), p2.key.as_str()), ("live", "same"));
    assert!(second.video(avc_config(), 1000).await);
    assert!(second.video(avc_frame(true, 0), 1000).await);
    assert!(second.video(avc_frame(false, 0), 1033).await);

    // The first connection's stream ends when it disconnects.
    drop(first);
    let events1 = collect(p1.rx).await;
    assert_eq!(video_packets(&events1).len(), 1);

    drop(second);
    let events2 = collect(p2.rx).await;
    let v2 = video_packets(&events2);
    assert_eq!(v2.len(), 2);
    assert_eq!(v2[0].dts_ms, 1000);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_promptly() {
    let mut server = start(RtmpLimits {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(50),
        ..limits()
    })
    .await;
    let a = TcpStream::connect(server.addr).await.expect("connect a");
    let _b = TestClient::publish(server.addr, "live", "b").await;
    let _pb = server.next_publish().await;
    let mut c = TcpStream::connect(server.addr).await.expect("connect c");
    // Closed long before the handshake timeout of 50 s.
    assert!(wait_closed(&mut c).await < Duration::from_secs(20));

    // Freeing a slot admits a new publisher.
    drop(a);
    let start = Instant::now();
    loop {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let mut hs = Handshake::new(PeerType::Client);
        s.write_all(&hs.generate_outbound_p0_and_p1().expect("c0c1"))
            .await
            .expect("write");
        let mut buf = [0_u8; 1];
        match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(1)) => break,
            _ => {
                assert!(start.elapsed() < GUARD, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn stalled_consumer_closes_the_connection() {
    let idle = Duration::from_millis(500);
    let mut server = start_with(
        RtmpLimits {
            idle_timeout: idle,
            ..limits()
        },
        1,
        None,
    )
    .await;
    let mut client = TestClient::publish(server.addr, "live", "slow").await;
    let publish = server.next_publish().await;
    client.video(avc_config(), 0).await;
    for i in 0..20 {
        if !client.video(avc_frame(i == 0, 0), i * 33).await {
            break;
        }
    }
    // Nobody reads `publish.rx`: the server gives up after the idle timeout.
    wait_closed(&mut client.stream).await;
    let events = collect(publish.rx).await;
    assert!(events.len() <= 2, "{} events", events.len());
}

#[tokio::test]
async fn consumer_gone_closes_the_connection() {
    let mut server = start(limits()).await;
    let mut client = TestClient::publish(server.addr, "live", "gone").await;
    let publish = server.next_publish().await;
    drop(publish);
    client.video(avc_config(), 0).await;
    wait_closed(&mut client.stream).await;
}

#[tokio::test]
async fn dropping_the_server_ends_its_connections() {
    let mut server = start(limits()).await;
    let mut client = TestClient::publish(server.addr, "live", "shutdown").await;
    let mut publish = server.next_publish().await;
    assert!(client.video(avc_config(), 0).await);
    let first = timeout(GUARD, publish.rx.recv()).await.expect("guard");
    assert!(matches!(
        first,
        Some(IngestEvent::Config(CodecConfig::Avc(_)))
    ));
    server.task.abort();
    wait_closed(&mut client.stream).await;
    let events = collect(publish.rx).await;
    assert!(events.is_empty(), "{events:?}");
}
