//! `weir bench trickle`: the trickle relay (`weir-trickle`) on loopback against a plain TCP
//! relay (`tokio::io::copy` between two sockets) measured in the same run, with the same
//! runtime shape and the same load:
//!
//! 1. per-hop latency: from the publisher writing a segment's first byte to the subscriber
//!    receiving it, one channel, segments a few milliseconds apart;
//! 2. many channels at a live bitrate, each segment written in real time in ten chunks: the
//!    server's CPU (the threads of its runtime, from `/proc/self/task/*/stat`), dropped and
//!    late segments, and latency under that load.
//!
//! The server (or the TCP relay) runs on its own runtime, so its CPU is measured apart from
//! the publishers and subscribers, which run in the same process on another runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::serve::ListenerExt as _;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weir_trickle::{Publisher, Subscriber, TrickleConfig, TrickleServer};

/// Added first-byte latency per hop to stay under, p99.
const ADDED_P99_TARGET_MS: f64 = 5.0;
/// Server CPU for 100 channels to stay under, as a share of two cores.
const CPU_TARGET_OF_TWO_CORES: f64 = 0.25;
/// A segment whose last byte arrives later than this after it was written is late.
const LATE_MS: f64 = 50.0;
/// Chunks per segment in the load phase (a live encoder writes as it goes).
const CHUNKS: usize = 10;
/// Payload of each latency-phase segment.
const LATENCY_CHUNK: usize = 1024;

/// Settings of `weir bench trickle`.
#[derive(Debug, clap::Args)]
pub struct TrickleArgs {
    /// Concurrent channels in the load phase.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Bitrate of each channel, kbit/s.
    #[arg(long, default_value_t = 2_000)]
    bitrate_kbps: u64,
    /// Segment length, milliseconds.
    #[arg(long, default_value_t = 250)]
    segment_ms: u64,
    /// Length of the load phase, seconds (each side).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Segments measured in the latency phase (each side).
    #[arg(long, default_value_t = 1_000)]
    latency_segments: usize,
    /// Worker threads of the server's (and the reference relay's) runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
}

/// Run the benchmark and print its report.
pub fn run(args: TrickleArgs) -> anyhow::Result<()> {
    if args.channels == 0 || args.seconds == 0 || args.segment_ms < CHUNKS as u64 {
        bail!("--channels and --seconds must be at least 1, --segment-ms at least {CHUNKS}");
    }
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "trickle benchmark: weir-trickle on loopback against a plain TCP relay (tokio::io::copy), \
         each on its own {}-thread runtime; publishers and subscribers in the same process; {cores} CPU cores",
        args.server_threads
    );

    // 1. Per-hop latency.
    let n = args.latency_segments.max(20);
    let relay = Server::start(&args, Kind::Relay)?;
    let reference = clients.block_on(relay_latency(relay.addr, n))?;
    drop(relay);
    let trickle = Server::start(&args, Kind::Trickle)?;
    let measured = clients.block_on(trickle_latency(&trickle, n))?;
    drop(trickle);
    println!("per-hop latency: publisher's first byte written -> subscriber's first byte received, {n} segments each:");
    let (r50, r99) = (percentile(&reference, 0.5), percentile(&reference, 0.99));
    let (t50, t99) = (percentile(&measured, 0.5), percentile(&measured, 0.99));
    println!("  tcp relay (reference)  p50 {r50:>7.3} ms  p99 {r99:>7.3} ms");
    println!(
        "  trickle                p50 {t50:>7.3} ms  p99 {t99:>7.3} ms  added p99 {:>6.3} ms (target <= {ADDED_P99_TARGET_MS} ms: {})  ratio p50 {:.1}x p99 {:.1}x",
        t99 - r99,
        verdict(t99 - r99 <= ADDED_P99_TARGET_MS),
        t50 / r50.max(1e-6),
        t99 / r99.max(1e-6),
    );

    // 2. Load.
    let shape = Shape::new(&args);
    println!(
        "load: {} channels x {} kbit/s, {} ms segments of {} bytes written in {CHUNKS} chunks in real time, {} s:",
        args.channels, args.bitrate_kbps, args.segment_ms, shape.segment_bytes(), args.seconds
    );
    let relay = Server::start(&args, Kind::Relay)?;
    let reference = clients.block_on(relay_load(&relay, &shape))?;
    drop(relay);
    let trickle = Server::start(&args, Kind::Trickle)?;
    let measured = clients.block_on(trickle_load(&trickle, &shape))?;
    drop(trickle);
    reference.print("tcp relay (reference)", &shape, None);
    measured.print("trickle", &shape, Some(&reference));
    // Share of two cores, scaled to 100 channels.
    let share = measured.server_cpu / 2.0 * 100.0 / args.channels as f64;
    println!(
        "  trickle server CPU for 100 channels: {:.1}% of 2 cores (target < {:.0}%: {})",
        share * 100.0,
        CPU_TARGET_OF_TWO_CORES * 100.0,
        verdict(share < CPU_TARGET_OF_TWO_CORES),
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 * q) as usize).min(s.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Nanoseconds since the benchmark's epoch, written at the start of chunks.
fn stamp(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds from a stamp in `data` (its first 8 bytes) to now.
fn since_stamp(epoch: Instant, data: &[u8]) -> Option<f64> {
    let sent = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    Some((stamp(epoch).saturating_sub(sent)) as f64 / 1e6)
}

fn chunk(epoch: Instant, len: usize) -> Bytes {
    let mut v = vec![0x47u8; len.max(8)];
    v[..8].copy_from_slice(&stamp(epoch).to_le_bytes());
    Bytes::from(v)
}

/// CPU time of a set of threads (or of the process), from `/proc`, in seconds.
#[derive(Clone, Default)]
struct Threads(Arc<Mutex<Vec<u32>>>);

/// Clock ticks per second of `/proc/*/stat` (`CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

impl Threads {
    fn record_current(&self) {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok());
        if let Some(tid) = tid {
            self.0.lock().push(tid);
        }
    }

    fn cpu_seconds(&self) -> Option<f64> {
        let tids = self.0.lock().clone();
        let mut total = 0.0;
        for tid in tids {
            // A thread that exited no longer counts; its time is lost (runtimes keep theirs).
            if let Some(t) = stat_cpu(&format!("/proc/self/task/{tid}/stat")) {
                total += t;
            }
        }
        Some(total).filter(|_| std::path::Path::new("/proc/self/task").exists())
    }
}

fn stat_cpu(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

fn process_cpu() -> Option<f64> {
    stat_cpu("/proc/self/stat")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trickle,
    Relay,
}

/// A trickle server or a TCP relay on its own runtime.
struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    threads: Threads,
    addr: SocketAddr,
    trickle: Option<TrickleServer>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    fn start(args: &TrickleArgs, kind: Kind) -> anyhow::Result<Server> {
        let threads = Threads::default();
        let recorder = threads.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.server_threads.max(1))
            .on_thread_start(move || recorder.record_current())
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let trickle = match kind {
            Kind::Trickle => {
                let server = TrickleServer::new(
                    TrickleConfig {
                        max_channels: args.channels.max(1) + 10,
                        ..TrickleConfig::default()
                    },
                    &prometheus::Registry::new(),
                )?;
                let router = server.router();
                // Without TCP_NODELAY, small writes after the first wait for a delayed ACK.
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                runtime.spawn(async move { axum::serve(listener, router).await });
                Some(server)
            }
            Kind::Relay => {
                runtime.spawn(relay(listener));
                None
            }
        };
        Ok(Server {
            runtime: Some(runtime),
            threads,
            addr,
            trickle,
        })
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn trickle(&self) -> anyhow::Result<&TrickleServer> {
        self.trickle.as_ref().context("not a trickle server")
    }
}

/// Connections of the reference relay waiting for their other end, per channel: (publisher,
/// subscriber).
type Waiting = Arc<Mutex<HashMap<u64, (Option<TcpStream>, Option<TcpStream>)>>>;

/// The reference relay: each connection says who it is (role byte, channel id); a
/// publisher's bytes are copied to its channel's subscriber.
async fn relay(listener: TcpListener) {
    let waiting: Waiting = Arc::default();
    while let Ok((mut stream, _)) = listener.accept().await {
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[1..]);
            let id = u64::from_le_bytes(id);
            let pair = {
                let mut w = waiting.lock();
                let entry = w.entry(id).or_default();
                if header[0] == 0 {
                    entry.0 = Some(stream);
                } else {
                    entry.1 = Some(stream);
                }
                match entry {
                    (Some(_), Some(_)) => w.remove(&id),
                    _ => None,
                }
            };
            if let Some((Some(mut from), Some(mut to))) = pair {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }
        });
    }
}

/// A publisher and a subscriber connected through the relay for channel `id`.
async fn relay_pair(addr: SocketAddr, id: u64) -> anyhow::Result<(TcpStream, TcpStream)> {
    let mut publisher = TcpStream::connect(addr).await?;
    let mut subscriber = TcpStream::connect(addr).await?;
    publisher.set_nodelay(true)?;
    subscriber.set_nodelay(true)?;
    let mut header = [0u8; 9];
    header[1..].copy_from_slice(&id.to_le_bytes());
    publisher.write_all(&header).await?;
    header[0] = 1;
    subscriber.write_all(&header).await?;
    Ok((publisher, subscriber))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1_000)
        .build()?)
}

async fn relay_latency(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<f64>> {
    let epoch = Instant::now();
    let (mut publisher, mut subscriber) = relay_pair(addr, 0).await?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::with_capacity(n);
        let mut stamp_buf = [0u8; 8];
        let mut rest = vec![0u8; LATENCY_CHUNK];
        for _ in 0..n + n / 10 {
            subscriber.read_exact(&mut stamp_buf).await?;
            let latency = since_stamp(epoch, &stamp_buf);
            subscriber.read_exact(&mut rest).await?;
            out.extend(latency);
        }
        anyhow::Ok(out)
    });
    for _ in 0..n + n / 10 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        publisher
            .write_all(&chunk(epoch, LATENCY_CHUNK + 8))
            .await?;
    }
    let mut out = reader.await??;
    out.drain(..n / 10);
    Ok(out)
}

async fn trickle_latency(server: &Server, n: usize) -> anyhow::Result<Vec<f64>> {
    let epoch = Instant::now();
    let grant = server.trickle()?.create("latency", "video/mp2t")?;
    let client = http_client()?;
    let mut subscriber =
        Subscriber::new(client.clone(), grant.subscribe_url(&server.base())).starting_at(0);
    let total = n + n / 10;
    let reader = tokio::spawn(async move {
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let Some(mut segment) = subscriber.next().await? else {
                break;
            };
            let first = segment.chunk().await?.unwrap_or_default();
            out.extend(since_stamp(epoch, &first));
            while segment.chunk().await?.is_some() {}
        }
        anyhow::Ok(out)
    });
    let mut publisher = Publisher::new(client, grant.publish_url(&server.base()));
    for _ in 0..total {
        // Between segments, as in a live stream: both sides' pre-connects are in place.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut writer = publisher.begin().await?;
        writer.send(chunk(epoch, LATENCY_CHUNK + 8)).await?;
        writer.send(chunk(epoch, LATENCY_CHUNK)).await?;
        writer.finish().await?;
    }
    let mut out = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .context("the subscriber fell behind")???;
    publisher.close().await?;
    out.drain(..(out.len().min(n / 10)));
    Ok(out)
}

/// The load's shape, the same on both sides.
struct Shape {
    channels: usize,
    chunk_bytes: usize,
    segment: Duration,
    seconds: u64,
}

impl Shape {
    fn new(args: &TrickleArgs) -> Shape {
        let bytes = args.bitrate_kbps * 1_000 / 8 * args.segment_ms / 1_000;
        Shape {
            channels: args.channels,
            chunk_bytes: (bytes as usize / CHUNKS).max(16),
            segment: Duration::from_millis(args.segment_ms),
            seconds: args.seconds,
        }
    }

    fn segment_bytes(&self) -> usize {
        self.chunk_bytes * CHUNKS
    }

    fn segments(&self) -> u64 {
        (self.seconds * 1_000) / (self.segment.as_millis() as u64).max(1)
    }

    /// The schedule of a load starting at `start`.
    fn clock(&self, start: tokio::time::Instant) -> Clock {
        Clock {
            start,
            segment: self.segment,
            channels: self.channels,
        }
    }
}

/// When each chunk is written.
#[derive(Clone, Copy)]
struct Clock {
    start: tokio::time::Instant,
    segment: Duration,
    channels: usize,
}

impl Clock {
    /// When channel `c` writes chunk `j` of segment `k`: channels are spread over a segment.
    fn due(&self, c: usize, k: u64, j: usize) -> tokio::time::Instant {
        let stagger = self.segment.mul_f64(c as f64 / self.channels.max(1) as f64);
        self.start
            + stagger
            + self.segment.mul_f64(k as f64)
            + self.segment.mul_f64(j as f64 / CHUNKS as f64)
    }
}

/// What the load phase measured.
#[derive(Default)]
struct Load {
    published: u64,
    received: u64,
    truncated: u64,
    first_ms: Vec<f64>,
    last_ms: Vec<f64>,
    wall: f64,
    /// Server CPU, in cores (CPU seconds per second).
    server_cpu: f64,
    process_cpu: f64,
}

/// Per-subscriber tallies, merged into [`Load`].
#[derive(Default)]
struct Tally {
    received: u64,
    truncated: u64,
    first_ms: Vec<f64>,
    last_ms: Vec<f64>,
}

impl Load {
    fn print(&self, label: &str, shape: &Shape, reference: Option<&Load>) {
        let late = self.last_ms.iter().filter(|&&l| l > LATE_MS).count();
        let dropped = self.published.saturating_sub(self.received);
        println!(
            "  {label:<22} server CPU {:>5.1}% of a core, {:.3}%/channel; process CPU (with clients) {:>5.1}%{}",
            self.server_cpu * 100.0,
            self.server_cpu * 100.0 / shape.channels as f64,
            self.process_cpu * 100.0,
            reference.map_or(String::new(), |r| format!(
                "; server CPU ratio {:.1}x",
                self.server_cpu / r.server_cpu.max(1e-6)
            )),
        );
        println!(
            "  {:<22} segments published {} received {} dropped {dropped} truncated {} late (> {LATE_MS} ms) {late}; \
             first byte p50 {:.2} ms p99 {:.2} ms; last byte p50 {:.2} ms p99 {:.2} ms; {:.1} s",
            "",
            self.published,
            self.received,
            self.truncated,
            percentile(&self.first_ms, 0.5),
            percentile(&self.first_ms, 0.99),
            percentile(&self.last_ms, 0.5),
            percentile(&self.last_ms, 0.99),
            self.wall,
        );
    }

    fn merge(&mut self, t: Tally) {
        self.received += t.received;
        self.truncated += t.truncated;
        self.first_ms.extend(t.first_ms);
        self.last_ms.extend(t.last_ms);
    }
}

/// CPU use between two points.
struct Meter {
    at: Instant,
    server: Option<f64>,
    process: Option<f64>,
}

impl Meter {
    fn start(server: &Server) -> Meter {
        Meter {
            at: Instant::now(),
            server: server.threads.cpu_seconds(),
            process: process_cpu(),
        }
    }

    fn stop(self, server: &Server, load: &mut Load) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        load.wall = wall;
        let rate = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) => (a - b) / wall,
            _ => f64::NAN,
        };
        load.server_cpu = rate(self.server, server.threads.cpu_seconds());
        load.process_cpu = rate(self.process, process_cpu());
    }
}

async fn relay_load(server: &Server, shape: &Shape) -> anyhow::Result<Load> {
    let epoch = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let clock = shape.clock(start);
    let segments = shape.segments();
    let chunk_bytes = shape.chunk_bytes;
    for c in 0..shape.channels {
        let (mut publisher, mut subscriber) = relay_pair(server.addr, c as u64).await?;
        readers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut buf = vec![0u8; chunk_bytes];
            for _ in 0..segments {
                let mut first = None;
                for j in 0..CHUNKS {
                    if subscriber.read_exact(&mut buf[..8]).await.is_err() {
                        return tally;
                    }
                    if j == 0 {
                        first = since_stamp(epoch, &buf[..8]);
                    }
                    let stamped = buf[..8].to_vec();
                    if subscriber.read_exact(&mut buf[8..]).await.is_err() {
                        tally.truncated += 1;
                        return tally;
                    }
                    if j == CHUNKS - 1 {
                        tally.first_ms.extend(first);
                        tally.last_ms.extend(since_stamp(epoch, &stamped));
                    }
                }
                tally.received += 1;
            }
            tally
        }));
        let published = published.clone();
        writers.push(tokio::spawn(async move {
            for k in 0..segments {
                for j in 0..CHUNKS {
                    tokio::time::sleep_until(clock.due(c, k, j)).await;
                    if publisher
                        .write_all(&chunk(epoch, chunk_bytes))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep_until(start).await;
    let meter = Meter::start(server);
    for w in writers {
        w.await?;
    }
    let mut load = Load::default();
    meter.stop(server, &mut load);
    for r in readers {
        load.merge(r.await?);
    }
    load.published = published.load(Ordering::Relaxed);
    Ok(load)
}

async fn trickle_load(server: &Server, shape: &Shape) -> anyhow::Result<Load> {
    let epoch = Instant::now();
    let trickle = server.trickle()?;
    let client = http_client()?;
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let clock = shape.clock(start);
    let segments = shape.segments();
    let chunk_bytes = shape.chunk_bytes;
    let max = shape.segment_bytes() * 2;
    for c in 0..shape.channels {
        let grant = trickle.create(&format!("load-{c}"), "video/mp2t")?;
        let subscriber =
            Subscriber::new(client.clone(), grant.subscribe_url(&server.base())).starting_at(0);
        readers.push(tokio::spawn(trickle_subscribe(
            subscriber,
            epoch,
            chunk_bytes,
            max,
        )));
        let publisher = Publisher::new(client.clone(), grant.publish_url(&server.base()));
        let counters = (published.clone(), failed.clone());
        writers.push(tokio::spawn(trickle_publish(
            publisher,
            clock,
            c,
            segments,
            (epoch, chunk_bytes),
            counters,
        )));
    }
    tokio::time::sleep_until(start).await;
    let meter = Meter::start(server);
    let mut publishers = Vec::new();
    for w in writers {
        publishers.push(w.await?);
    }
    let mut load = Load::default();
    meter.stop(server, &mut load);
    // Let the subscribers take the last segments, then close the channels.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &publishers {
        let _ = p.close().await;
    }
    for r in readers {
        let tally = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .context("a subscriber did not finish")??;
        load.merge(tally);
    }
    load.published = published.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("  trickle: {failed} segments failed to publish");
    }
    Ok(load)
}

/// One trickle subscriber's loop: read segments until the channel ends, tallying each.
async fn trickle_subscribe(
    mut subscriber: Subscriber,
    epoch: Instant,
    chunk_bytes: usize,
    max: usize,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let mut segment = match subscriber.next().await {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => return tally,
        };
        let mut first = None;
        let mut last_chunk_at = 0.0;
        let mut data = Vec::with_capacity(max);
        let complete = loop {
            match segment.chunk().await {
                Ok(Some(bytes)) => {
                    if data.is_empty() {
                        first = since_stamp(epoch, &bytes);
                    }
                    data.extend_from_slice(&bytes);
                    last_chunk_at = stamp(epoch) as f64 / 1e6;
                    if data.len() > max {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        // The last chunk's stamp, where it starts in the segment.
        let last_sent = data
            .get((CHUNKS - 1) * chunk_bytes..)
            .and_then(|d| d.get(..8))
            .and_then(|d| d.try_into().ok())
            .map(|d| u64::from_le_bytes(d) as f64 / 1e6);
        match (complete && data.len() == chunk_bytes * CHUNKS, last_sent) {
            (true, Some(sent)) => {
                tally.received += 1;
                tally.first_ms.extend(first);
                tally.last_ms.push(last_chunk_at - sent);
            }
            _ => tally.truncated += 1,
        }
    }
}

/// One trickle publisher's loop: `segments` segments of [`CHUNKS`] stamped chunks on channel
/// `c`'s clock, counting each as published or failed; the publisher back, to close it.
async fn trickle_publish(
    mut publisher: Publisher,
    clock: Clock,
    c: usize,
    segments: u64,
    (epoch, chunk_bytes): (Instant, usize),
    (published, failed): (Arc<AtomicU64>, Arc<AtomicU64>),
) -> Publisher {
    for k in 0..segments {
        let ok = async {
            let mut writer = publisher.begin().await?;
            for j in 0..CHUNKS {
                tokio::time::sleep_until(clock.due(c, k, j)).await;
                writer.send(chunk(epoch, chunk_bytes)).await?;
            }
            writer.finish().await
        }
        .await;
        match ok {
            Ok(()) => published.fetch_add(1, Ordering::Relaxed),
            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
    publisher
}
