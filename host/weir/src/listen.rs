//! HTTP listeners with the limits `axum::serve` lacks: a deadline for a request's headers, an
//! idle timeout between requests on a kept-alive connection, and a cap on connections.
//!
//! A connection is in one of three phases. *Head*: from accept, or from the first byte of the
//! next request, until its headers are parsed; it is closed when that takes longer than the
//! header timeout. *Busy*: a request is being answered, including a streamed body (trickle,
//! server-sent events, blocking HLS reloads) however long it lasts; no timeout applies. *Idle*:
//! the last answer is finished and nothing new has arrived; it is closed after the idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// The limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time a client has to send a request's headers (from accept or the request's first byte).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered `503` and closed.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Longest wait for open connections to finish after the shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `router` on `listener` until `shutdown` completes, then let open connections finish
/// their current answer (for at most [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, 1_000_000);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut refusals = RateLimitedLog::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    accept_error(&e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            if let Some(refused) = refusals.tick() {
                tracing::warn!(%peer, max_connections = max, refused, "HTTP connection limit reached, refusing connections");
            }
            refuse(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            serve_connection(tcp, router, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(max as u32)).await;
    if drained.is_err() {
        tracing::warn!(
            open = max - slots.available_permits(),
            "connections still open after {DRAIN_TIMEOUT:?}; stopping anyway"
        );
    }
    Ok(())
}

/// Logs at most once every ten seconds, counting what was left out.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedLog {
    /// `Some(events since the last log)` when it is time to log again.
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Answer `503` without reading the request (best effort, never waiting) and close.
fn refuse(tcp: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 25\r\nretry-after: 1\r\n\r\ntoo many open connections";
    let _ = tcp.try_write(BUSY);
}

/// What `axum::serve` does: per-connection errors are skipped, others (out of file
/// descriptors) pause the accept loop briefly instead of spinning.
async fn accept_error(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    tcp: TcpStream,
    router: axum::Router,
    limits: ListenerLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        phase: Arc::clone(&phase),
    });
    let service_phase = Arc::clone(&phase);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let guard = Busy::start(Arc::clone(&service_phase));
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await?;
            Ok::<Response, std::convert::Infallible>(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header deadline is enforced by `watchdog`, which also knows about idle connections.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let watchdog = phase.watchdog(limits);
    tokio::pin!(watchdog);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            reason = &mut watchdog => {
                tracing::debug!(reason, "closing HTTP connection");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The phase of one connection, shared by its I/O, its service and its watchdog.
struct Phase {
    state: Mutex<PhaseState>,
    changed: Notify,
    reads: AtomicU64,
}

struct PhaseState {
    /// Requests whose answer is not finished.
    busy: usize,
    /// When the headers now awaited began (accept or first byte); `None` while idle or busy.
    head_since: Option<Instant>,
    /// When the connection became idle.
    idle_since: Instant,
    /// `reads` when the connection became idle: a change means a new request is arriving.
    reads_when_idle: u64,
}

impl Phase {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(PhaseState {
                busy: 0,
                head_since: Some(now),
                idle_since: now,
                reads_when_idle: 0,
            }),
            changed: Notify::new(),
            reads: AtomicU64::new(0),
        }
    }

    /// Bytes arrived: if the connection was idle, the next request's head has begun.
    fn on_read(&self) {
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = self.state.lock();
        if s.busy == 0 && s.head_since.is_none() && reads != s.reads_when_idle {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// The deadline now in force, or `None` while busy.
    fn deadline(&self, limits: ListenerLimits) -> Option<(Instant, &'static str)> {
        let s = self.state.lock();
        if s.busy > 0 {
            None
        } else if let Some(head) = s.head_since {
            Some((head + limits.header_read_timeout, "header read timeout"))
        } else {
            Some((s.idle_since + limits.idle_timeout, "idle timeout"))
        }
    }

    /// Completes (with the reason) when the connection overstays its current phase.
    async fn watchdog(&self, limits: ListenerLimits) -> &'static str {
        loop {
            let notified = self.changed.notified();
            match self.deadline(limits) {
                None => notified.await,
                Some((at, reason)) => {
                    if Instant::now() >= at {
                        return reason;
                    }
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// One request being answered; dropped when its answer's body ends or is abandoned.
struct Busy(Arc<Phase>);

impl Busy {
    fn start(phase: Arc<Phase>) -> Self {
        {
            let mut s = phase.state.lock();
            s.busy += 1;
            s.head_since = None;
        }
        phase.changed.notify_one();
        Busy(phase)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut s = self.0.state.lock();
            s.busy = s.busy.saturating_sub(1);
            if s.busy == 0 {
                s.idle_since = Instant::now();
                s.reads_when_idle = self.0.reads.load(Ordering::Relaxed);
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its connection busy until it ends.
struct Guarded {
    body: Body,
    _guard: Busy,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that reports reads to its connection's [`Phase`].
struct Tracked {
    inner: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.phase.on_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
