//! Fuzz targets: every parser that takes bytes from a stranger, run on mutants of real inputs.
//! `WEIR_FUZZ_SECS` sets the budget per target (2 s by default: the short pass in `make test`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weir_fuzz::{fuzz, fuzz_watching, panics_on};
use weir_media::packet::{CodecConfig, IngestEvent, MediaPacket, Track};
use weir_media::rtmp::{PublishHandler, RtmpLimits};
use weir_media::segmenter::Segmenter;

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

const BOUNDARY: &str = "weirFuzzBoundary";

fn multipart_seed() -> Vec<u8> {
    let parts = vec![
        weir_protocol::multipart::Part {
            headers: vec![
                (
                    "Content-Disposition".into(),
                    "form-data; name=\"image\"; filename=\"a.png\"".into(),
                ),
                ("Content-Type".into(), "image/png".into()),
            ],
            data: Bytes::from_static(b"\x89PNG\r\n\x1a\n0000"),
        },
        weir_protocol::multipart::Part {
            headers: vec![
                (
                    "Content-Disposition".into(),
                    "form-data; name=\"prompt\"".into(),
                ),
                ("Content-Length".into(), "5".into()),
            ],
            data: Bytes::from_static(b"hello"),
        },
    ];
    weir_protocol::multipart::write(BOUNDARY, &parts).to_vec()
}

#[test]
fn multipart_bodies() {
    let seeds = vec![multipart_seed(), Vec::new()];
    let r = fuzz("multipart", seeds, |input| {
        let body = Bytes::copy_from_slice(input);
        let _ = weir_protocol::multipart::parse(BOUNDARY, &body);
        // The boundary parameter of a content type, from the first line of the input.
        let first = input.split(|b| *b == b'\n').next().unwrap_or_default();
        let _ = weir_protocol::multipart::boundary_of(&text(first));
    });
    assert!(r.executions > 0);
}

#[test]
fn rendition_bodies() {
    let r = weir_media::transcode::Rendition {
        name: "240p".into(),
        width: 426,
        height: 240,
        fps: (30, 1),
        frames: 60,
        duration_ms: 2000,
        data: Bytes::from_static(b"segment"),
    };
    let (ct, body) = weir_media::wire::renditions_body("7", &[r]);
    let mut seed = ct.into_bytes();
    seed.push(b'\n');
    seed.extend_from_slice(&body);
    let r = fuzz("renditions", vec![seed], |input| {
        let (ct, body) = match input.iter().position(|b| *b == b'\n') {
            Some(i) => (text(&input[..i]), Bytes::copy_from_slice(&input[i + 1..])),
            None => (String::new(), Bytes::copy_from_slice(input)),
        };
        let _ = weir_media::wire::parse_renditions(&ct, &body);
    });
    assert!(r.executions > 0);
}

fn job_request_seed() -> Vec<u8> {
    serde_json::json!({
        "id": "job-1",
        "request": "{\"prompt\":\"x\"}",
        "parameters": "{\"orchestrators\":{\"include\":[\"http://o\"],\"exclude\":[]}}",
        "capability": "echo-worker",
        "timeout_seconds": 30
    })
    .to_string()
    .into_bytes()
}

/// The BYOC `Livepeer` header: the JSON inside is mutated, then encoded as the header carries
/// it (so mutants reach the JSON parser and the validation), and the raw bytes are tried too.
#[test]
fn livepeer_job_header() {
    let r = fuzz("livepeer-header", vec![job_request_seed()], |input| {
        let header = STANDARD.encode(input);
        if let Ok(job) = weir_protocol::byoc::JobRequest::from_header(&header) {
            let _ = job.params();
            let again = weir_protocol::byoc::JobRequest::from_header(&job.to_header());
            assert!(again.is_ok(), "a job request that parsed must parse again");
        }
        let _ = weir_protocol::byoc::JobRequest::from_header(&text(input));
    });
    assert!(r.executions > 0);
}

/// The `Weir-Payment` header: mutated JSON payloads behind a well-formed signature part, and
/// mutated whole headers made by a real wallet.
#[test]
fn payment_header() {
    let wallet = weir_payments::credit::Wallet::generate();
    let signed = wallet.pay(
        "id-1",
        "upscale/model",
        1_000,
        weir_payments::UnitPrice {
            price_per_unit: 1,
            pixels_per_unit: 1,
        },
    );
    let payload = signed
        .split_once('.')
        .and_then(|(p, _)| URL_SAFE_NO_PAD.decode(p).ok())
        .unwrap_or_default();
    let seeds = vec![payload, signed.clone().into_bytes()];
    let skew = Duration::from_secs(300);
    let r = fuzz("payment-header", seeds, |input| {
        let sig = signed.split_once('.').map(|(_, s)| s).unwrap_or_default();
        let header = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(input));
        let _ = weir_payments::credit::verify(&header, skew);
        let _ = weir_payments::credit::verify(&text(input), skew);
    });
    assert!(r.executions > 0);
}

/// One ingest event, as `arbitrary` builds it from fuzz bytes.
#[derive(Debug, Arbitrary)]
enum FuzzEvent {
    Avc(Vec<u8>),
    Aac(Vec<u8>),
    Packet {
        video: bool,
        dts_ms: i64,
        cts_ms: i32,
        keyframe: bool,
        data: Vec<u8>,
    },
}

impl From<FuzzEvent> for IngestEvent {
    fn from(e: FuzzEvent) -> Self {
        match e {
            FuzzEvent::Avc(b) => IngestEvent::Config(CodecConfig::Avc(Bytes::from(b))),
            FuzzEvent::Aac(b) => IngestEvent::Config(CodecConfig::Aac(Bytes::from(b))),
            FuzzEvent::Packet {
                video,
                dts_ms,
                cts_ms,
                keyframe,
                data,
            } => IngestEvent::Packet(MediaPacket {
                track: if video { Track::Video } else { Track::Audio },
                dts_ms,
                pts_ms: dts_ms.saturating_add(i64::from(cts_ms)),
                keyframe,
                data: Bytes::from(data),
            }),
        }
    }
}

/// A plausible start: an avcC for 64x64 baseline, an AAC config, an IDR and audio frames.
fn segmenter_seed() -> Vec<u8> {
    let avcc: &[u8] = &[
        1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 4, 0x68, 0xce, 0x3c,
        0x80,
    ];
    let mut out = Vec::new();
    // `arbitrary` reads the variant index as a u32 and lengths from the end; a seed of plain
    // bytes is enough for the mutator to work from.
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(avcc);
    out.extend_from_slice(&[2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(&[0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x10]);
    out
}

#[test]
fn segmenter_events() {
    let r = fuzz("segmenter", vec![segmenter_seed()], |input| {
        let mut u = Unstructured::new(input);
        let mut seg = Segmenter::new(Duration::from_millis(500));
        while let Ok(ev) = FuzzEvent::arbitrary(&mut u) {
            if seg.push(ev.into()).is_err() {
                break;
            }
            if u.is_empty() {
                break;
            }
        }
        let _ = seg.finish();
    });
    assert!(r.executions > 0);
}

/// MPEG-TS and other containers through the FFmpeg demuxer the orchestrator probes with.
#[test]
fn segment_probe() {
    let r = fuzz("ts-probe", Vec::new(), |input| {
        let _ = weir_media::transcode::probe(input);
    });
    assert!(r.executions > 0);
}

// --- RTMP: a real server on loopback, fed mutated handshakes and mutated sessions. ---

struct Discard;

impl PublishHandler for Discard {
    fn publish(&self, _publish: weir_media::ingest::Publish) -> weir_media::ingest::Decision {
        Box::pin(async {
            let (tx, mut rx) = mpsc::channel(64);
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            Ok(tx)
        })
    }
}

async fn rtmp_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = RtmpLimits {
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        max_connections: 64,
        max_message_bytes: 1 << 20,
    };
    tokio::spawn(weir_media::rtmp::serve(listener, Arc::new(Discard), limits));
    addr
}

/// Complete a real handshake as a client; returns the stream.
async fn handshake(addr: SocketAddr) -> Option<TcpStream> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut hs = Handshake::new(PeerType::Client);
    stream
        .write_all(&hs.generate_outbound_p0_and_p1().ok()?)
        .await
        .ok()?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        match hs.process_bytes(&buf[..n]).ok()? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                stream.write_all(&response_bytes).await.ok()?;
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                stream.write_all(&response_bytes).await.ok()?;
                return Some(stream);
            }
        }
    }
}

/// What a publishing client sends after the handshake: session set-up, connect, publish,
/// metadata-free media (an AVC sequence header and a keyframe), as `rml_rtmp` writes them.
fn rtmp_session_seed() -> Vec<u8> {
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType,
    };
    let mut out = Vec::new();
    let mut push = |results: Vec<ClientSessionResult>| {
        for r in results {
            if let ClientSessionResult::OutboundResponse(p) = r {
                out.extend_from_slice(&p.bytes);
            }
        }
    };
    let Ok((mut session, initial)) = ClientSession::new(ClientSessionConfig::new()) else {
        return out;
    };
    push(initial);
    if let Ok(r) = session.request_connection("live".into()) {
        push(vec![r]);
    }
    // Publishing needs the server's answer first; the request bytes are what matter here.
    if let Ok(r) = session.request_publishing("key".into(), PublishRequestType::Live) {
        push(vec![r]);
    }
    out
}

async fn feed(addr: SocketAddr, input: &[u8], handshake_first: bool) {
    let stream = if handshake_first {
        handshake(addr).await
    } else {
        TcpStream::connect(addr).await.ok()
    };
    let Some(mut stream) = stream else { return };
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    // Read what the server answers until it closes (bounded), so it processed the input.
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A runtime whose threads are named `threads`, so panics in its tasks are told apart.
fn background_runtime(threads: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

fn rtmp_target(name: &str, seeds: Vec<Vec<u8>>, handshake_first: bool) {
    // The server runs `rml_rtmp` under `catch_unwind` (its arithmetic on peer values can
    // overflow): such a panic ends that connection only, which is what this target checks.
    weir_fuzz::expect_contained_panics_in("weir_media::rtmp::contained");
    let threads = format!("fuzz-bg-{name}");
    let rt = background_runtime(&threads);
    let addr = rt.block_on(rtmp_server());
    let before = panics_on(&threads);
    let r = fuzz_watching(name, Some(&threads), seeds, |input| {
        rt.block_on(feed(addr, input, handshake_first));
    });
    // The server survived all of it: a real client still completes a handshake.
    let alive = rt.block_on(handshake(addr)).is_some();
    assert!(alive, "the RTMP server stopped answering after {r:?}");
    assert_eq!(panics_on(&threads), before, "a connection task panicked");
}

#[test]
fn rtmp_handshakes() {
    let mut c0c1 = vec![3u8];
    c0c1.extend((0..1536u32).map(|i| (i % 251) as u8));
    let mut full = c0c1.clone();
    full.extend((0..1536u32).map(|i| (i % 13) as u8));
    rtmp_target("rtmp-handshake", vec![c0c1, full], false);
}

#[test]
fn rtmp_sessions() {
    rtmp_target("rtmp-session", vec![rtmp_session_seed()], true);
}

// --- Trickle: requests with arbitrary methods, channels, tokens, sequence numbers and bodies
// through the real router, in process. ---

#[derive(Debug, Arbitrary)]
struct TrickleRequest {
    method: u8,
    channel: u8,
    token: u8,
    seq: String,
    body: Vec<u8>,
}

async fn trickle_call(router: &axum::Router, method: &str, path: &str, body: Vec<u8>) -> u16 {
    use tower::ServiceExt as _;
    let Ok(req) = http::Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::from(body))
    else {
        return 0;
    };
    // A GET of a segment nobody published yet waits for it: give up after a moment.
    match tokio::time::timeout(Duration::from_millis(20), router.clone().oneshot(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let _ = tokio::time::timeout(
                Duration::from_millis(20),
                axum::body::to_bytes(resp.into_body(), 1 << 20),
            )
            .await;
            status
        }
        _ => 0,
    }
}

#[test]
fn trickle_requests() {
    let threads = "fuzz-bg-trickle";
    let rt = background_runtime(threads);
    let registry = prometheus::Registry::new();
    let server = weir_trickle::TrickleServer::new(Default::default(), &registry).expect("server");
    let router = server.router();
    let grants: Vec<_> = ["fuzz-media", "fuzz-events"]
        .iter()
        .zip(["video/mp2t", "application/json"])
        .map(|(n, m)| server.create(n, m).expect("create"))
        .collect();
    let path_of = |r: &TrickleRequest| {
        let g = &grants[usize::from(r.channel) % grants.len()];
        let token = match r.token % 3 {
            0 => g.publish_token.as_str(),
            1 => g.subscribe_token.as_str(),
            _ => "forged",
        };
        format!("/ai/trickle/{}.{token}/{}", g.name, r.seq)
    };
    let seed: Vec<u8> = [1u8, 0, 0, b'0', 0, 0, 0, 1, b'x'].to_vec();
    let r = fuzz_watching("trickle", Some(threads), vec![seed], |input| {
        let mut u = Unstructured::new(input);
        rt.block_on(async {
            while let Ok(req) = TrickleRequest::arbitrary(&mut u) {
                let method = ["GET", "POST", "DELETE"][usize::from(req.method) % 3];
                let path = path_of(&req);
                trickle_call(&router, method, &path, req.body).await;
                if u.is_empty() {
                    break;
                }
            }
        });
    });
    // Still serving: a new channel takes a segment and gives it back.
    let fresh = server
        .create("fuzz-after", "video/mp2t")
        .expect("create after");
    let base = "";
    let publish = format!("{}/0", fresh.publish_url(base));
    let subscribe = format!("{}/0", fresh.subscribe_url(base));
    let posted = rt.block_on(trickle_call(&router, "POST", &publish, b"ok".to_vec()));
    let got = rt.block_on(trickle_call(&router, "GET", &subscribe, Vec::new()));
    assert_eq!((posted, got), (200, 200), "after {r:?}");
}
