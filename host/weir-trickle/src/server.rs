//! The trickle server: the host API ([`TrickleServer`]) and the HTTP handlers under
//! `/ai/trickle/`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::budget::{Budget, Exhausted};
use crate::channel::{Access, Channel, ChannelSpec, ReadTarget, WriteRefused};
use crate::segment::{End, Read, ReadPos, Segment, Stop};
use crate::{valid_name, TrickleError, CLOSED_HEADER, LATEST_HEADER, RESET_HEADER, SEQ_HEADER};

/// Caps on one channel's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Largest segment accepted; a bigger one is aborted with `413`.
    pub max_segment_bytes: usize,
    /// Most bytes the channel's segments hold together (its ring, plus evicted segments a
    /// subscriber still reads). Past it, the oldest segments are evicted; a write that
    /// still does not fit is refused with `503`. Never below `max_segment_bytes`.
    pub max_channel_bytes: usize,
}

/// What a channel carries, which picks its [`ChannelLimits`] from the [`TrickleConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Media segments (MPEG-TS video in and out): [`TrickleConfig::media`].
    Media,
    /// Control messages (JSON params, keep-alives): [`TrickleConfig::messages`].
    Control,
    /// Event messages (JSON status): [`TrickleConfig::messages`].
    Events,
    /// Data records (JSONL): [`TrickleConfig::messages`].
    Data,
}

impl ChannelKind {
    /// The kind a MIME type suggests: `video/*`, `audio/*` and `image/*` are media,
    /// anything else is data.
    pub fn from_mime(mime: &str) -> ChannelKind {
        let top = mime.split('/').next().unwrap_or_default().trim();
        if ["video", "audio", "image"]
            .iter()
            .any(|t| top.eq_ignore_ascii_case(t))
        {
            ChannelKind::Media
        } else {
            ChannelKind::Data
        }
    }
}

/// Settings of a [`TrickleServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrickleConfig {
    /// Segments kept per channel (Livepeer: 5).
    pub ring: usize,
    /// A channel with no publish or subscribe activity for this long is closed.
    pub idle_timeout: Duration,
    /// How often idle channels are looked for.
    pub sweep_interval: Duration,
    /// Caps of media channels.
    pub media: ChannelLimits,
    /// Caps of control, events and data channels.
    pub messages: ChannelLimits,
    /// Node-wide cap on the bytes buffered by all channels; a write past it is refused with
    /// `503`.
    pub max_buffered_bytes: usize,
    /// How long a closed channel's segments stay readable, so that subscribers still get
    /// what was written just before the close. Under memory pressure they go sooner.
    pub closed_linger: Duration,
    /// Most channels open at once.
    pub max_channels: usize,
}

impl Default for TrickleConfig {
    fn default() -> Self {
        TrickleConfig {
            ring: 5,
            idle_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(60),
            media: ChannelLimits {
                max_segment_bytes: 8 << 20,
                max_channel_bytes: 32 << 20,
            },
            messages: ChannelLimits {
                max_segment_bytes: 1 << 20,
                max_channel_bytes: 2 << 20,
            },
            max_buffered_bytes: 512 << 20,
            closed_linger: Duration::from_secs(30),
            max_channels: 10_000,
        }
    }
}

impl TrickleConfig {
    /// The caps of a channel of `kind`.
    pub fn limits(&self, kind: ChannelKind) -> ChannelLimits {
        match kind {
            ChannelKind::Media => self.media,
            ChannelKind::Control | ChannelKind::Events | ChannelKind::Data => self.messages,
        }
    }
}

/// A channel created by the host: its name and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGrant {
    /// The channel's name.
    pub name: String,
    /// Allows publishing, deleting and subscribing.
    pub publish_token: String,
    /// Allows subscribing only.
    pub subscribe_token: String,
}

impl ChannelGrant {
    /// The URL to hand to a publisher: `{base}/ai/trickle/{name}.{publish_token}`, with `base`
    /// like `http://127.0.0.1:8935`.
    pub fn publish_url(&self, base: &str) -> String {
        channel_url(base, &self.name, &self.publish_token)
    }

    /// The URL to hand to a subscriber: `{base}/ai/trickle/{name}.{subscribe_token}`.
    pub fn subscribe_url(&self, base: &str) -> String {
        channel_url(base, &self.name, &self.subscribe_token)
    }
}

fn channel_url(base: &str, name: &str, token: &str) -> String {
    format!("{}/ai/trickle/{name}.{token}", base.trim_end_matches('/'))
}

struct Metrics {
    channels: IntGauge,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    segments: IntCounterVec,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            channels: IntGauge::new("weir_trickle_channels", "Trickle channels open")?,
            bytes_in: IntCounter::new(
                "weir_trickle_bytes_in_total",
                "Bytes received from trickle publishers",
            )?,
            bytes_out: IntCounter::new(
                "weir_trickle_bytes_out_total",
                "Bytes sent to trickle subscribers",
            )?,
            segments: IntCounterVec::new(
                Opts::new(
                    "weir_trickle_segments_total",
                    "Trickle segments published, by outcome (complete, aborted)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.channels.clone()))?;
        registry.register(Box::new(m.bytes_in.clone()))?;
        registry.register(Box::new(m.bytes_out.clone()))?;
        registry.register(Box::new(m.segments.clone()))?;
        Ok(m)
    }
}

struct Inner {
    config: TrickleConfig,
    epoch: Instant,
    channels: RwLock<HashMap<String, Arc<Channel>>>,
    /// Closed channels, kept for `idle_timeout` so that their clients are told
    /// `Lp-Trickle-Closed` rather than "not found".
    closed: Mutex<HashMap<String, (Arc<Channel>, u64)>>,
    /// Bytes buffered by every channel's segments.
    budget: Arc<Budget>,
    metrics: Metrics,
}

/// A trickle server: channels created by the host, served over HTTP by [`Self::router`].
/// Cheap to clone; clones share the channels.
#[derive(Clone)]
pub struct TrickleServer {
    inner: Arc<Inner>,
}

impl TrickleServer {
    /// A server with no channels; its metrics are registered in `metrics`.
    pub fn new(
        config: TrickleConfig,
        metrics: &prometheus::Registry,
    ) -> Result<TrickleServer, prometheus::Error> {
        Ok(TrickleServer {
            inner: Arc::new(Inner {
                config: config.clone(),
                epoch: Instant::now(),
                channels: RwLock::new(HashMap::new()),
                closed: Mutex::new(HashMap::new()),
                budget: Arc::new(Budget::new(config.max_buffered_bytes)),
                metrics: Metrics::new(metrics)?,
            }),
        })
    }

    /// The HTTP routes, with their state; paths include the `/ai/trickle` prefix.
    ///
    /// Serve them on sockets with `TCP_NODELAY` (`axum::serve::ListenerExt::tap_io`):
    /// segments are relayed in many small writes, and with Nagle's algorithm each one after
    /// the first waits for the peer's delayed ACK, about 40 ms.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/ai/trickle/{ch}",
                post(create_channel).delete(delete_channel),
            )
            .route(
                "/ai/trickle/{ch}/{seq}",
                get(get_segment).post(post_segment).delete(delete_segment),
            )
            .with_state(self.inner.clone())
    }

    /// Create a channel whose segments are served as `mime`, with the caps of the kind the
    /// MIME type suggests ([`ChannelKind::from_mime`]). Fails if the name is invalid or
    /// taken, or if the server holds `max_channels` already.
    pub fn create(&self, name: &str, mime: &str) -> Result<ChannelGrant, TrickleError> {
        self.create_kind(name, mime, ChannelKind::from_mime(mime))
    }

    /// [`Self::create`] with the caps of `kind`.
    pub fn create_kind(
        &self,
        name: &str,
        mime: &str,
        kind: ChannelKind,
    ) -> Result<ChannelGrant, TrickleError> {
        if !valid_name(name) {
            return Err(TrickleError::BadName);
        }
        let mime = HeaderValue::from_str(mime).map_err(|_| TrickleError::BadMime)?;
        let grant = ChannelGrant {
            name: name.to_owned(),
            publish_token: token(),
            subscribe_token: token(),
        };
        let inner = &self.inner;
        let mut channels = inner.channels.write();
        if channels.contains_key(name) {
            return Err(TrickleError::Exists(name.to_owned()));
        }
        if channels.len() >= inner.config.max_channels {
            return Err(TrickleError::TooMany(inner.config.max_channels));
        }
        let limits = inner.config.limits(kind);
        let spec = ChannelSpec {
            mime,
            ring_len: inner.config.ring,
            max_segment_bytes: limits.max_segment_bytes,
            max_channel_bytes: limits.max_channel_bytes,
            node: inner.budget.clone(),
        };
        let channel = Channel::new(
            grant.name.clone(),
            spec,
            grant.publish_token.clone(),
            grant.subscribe_token.clone(),
            inner.now_ms(),
        );
        channels.insert(grant.name.clone(), Arc::new(channel));
        inner.metrics.channels.set(gauge(channels.len()));
        let replaced = inner.closed.lock().remove(name);
        drop(channels);
        if let Some((old, _)) = replaced {
            old.release();
        }
        tracing::debug!(channel = name, "trickle channel created");
        Ok(grant)
    }

    /// Close a channel: its waiting subscribers and pending publishers are answered
    /// `Lp-Trickle-Closed`, segment bodies in flight end. Returns whether it was open.
    pub fn close(&self, name: &str) -> bool {
        self.inner.close(name, |_| true)
    }

    /// Channels open.
    pub fn channels(&self) -> usize {
        self.inner.channels.read().len()
    }

    /// Bytes buffered now by all channels' segments (at most
    /// [`TrickleConfig::max_buffered_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.budget.used()
    }

    /// Bytes buffered now by the segments of the channel `name` (open or closed but still
    /// lingering), if the server knows it.
    pub fn channel_buffered_bytes(&self, name: &str) -> Option<usize> {
        if let Some(c) = self.inner.channels.read().get(name) {
            return Some(c.buffered());
        }
        self.inner
            .closed
            .lock()
            .get(name)
            .map(|(c, _)| c.buffered())
    }

    /// Close the channels idle for longer than `idle_timeout` now, and forget channels closed
    /// longer ago than that. Returns how many were closed. [`Self::spawn_sweeper`] calls this
    /// every `sweep_interval`.
    pub fn sweep(&self) -> usize {
        self.inner.sweep()
    }

    /// Run [`Self::sweep`] every `sweep_interval` until every clone of this server is dropped
    /// (or the task is aborted).
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = self
            .inner
            .config
            .sweep_interval
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.sweep();
            }
        })
    }
}

fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A channel found for a request whose token allows it.
enum Found {
    Open(Arc<Channel>),
    /// Closed, but its last segments may still be readable.
    Closed(Arc<Channel>),
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn close(&self, name: &str, only_if: impl Fn(&Channel) -> bool) -> bool {
        let now = self.now_ms();
        let channel = {
            let mut channels = self.channels.write();
            let channel = match channels.get(name) {
                Some(c) if only_if(c) => c.clone(),
                _ => return false,
            };
            // Moved to the closed channels under the same lock, so that no request finds it
            // in neither (and answers "not found" instead of "closed").
            let mut closed = self.closed.lock();
            if closed.len() >= self.config.max_channels.max(1) {
                // Forget the longest-closed one: its clients will be told "not found".
                if let Some(oldest) = closed
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(n, _)| n.clone())
                {
                    if let Some((old, _)) = closed.remove(&oldest) {
                        old.release();
                    }
                }
            }
            closed.insert(name.to_owned(), (channel.clone(), now));
            channels.remove(name);
            self.metrics.channels.set(gauge(channels.len()));
            channel
        };
        channel.close();
        self.linger(channel);
        tracing::debug!(channel = name, "trickle channel closed");
        true
    }

    /// Keep a closed channel's segments readable for `closed_linger`, then drop them.
    fn linger(&self, channel: Arc<Channel>) {
        let linger = self.config.closed_linger;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !linger.is_zero() => {
                runtime.spawn(async move {
                    tokio::time::sleep(linger).await;
                    channel.release();
                });
            }
            _ => channel.release(),
        }
    }

    /// Drop the segments closed channels still keep (the node's budget ran out).
    fn release_lingering(&self) {
        let closed: Vec<Arc<Channel>> = self
            .closed
            .lock()
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        for channel in closed {
            channel.release();
        }
    }

    fn sweep(&self) -> usize {
        let now = self.now_ms();
        let idle = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let is_idle = |c: &Channel| now.saturating_sub(c.last_activity()) > idle;
        let candidates: Vec<String> = self
            .channels
            .read()
            .values()
            .filter(|c| is_idle(c))
            .map(|c| c.name.clone())
            .collect();
        let mut swept = 0;
        for name in candidates {
            if self.close(&name, |c| is_idle(c)) {
                tracing::info!(channel = %name, "closed idle trickle channel");
                swept += 1;
            }
        }
        let mut forgotten = Vec::new();
        self.closed.lock().retain(|_, (c, at)| {
            let keep = now.saturating_sub(*at) <= idle;
            if !keep {
                forgotten.push(c.clone());
            }
            keep
        });
        for channel in forgotten {
            channel.release();
        }
        swept
    }

    /// Find the channel named by `ch` (`{name}.{token}`, or `{name}` with a bearer token)
    /// and check that the token allows `need`.
    #[allow(clippy::result_large_err)] // the error is the HTTP answer itself, returned at once
    fn authorize(&self, ch: &str, headers: &HeaderMap, need: Access) -> Result<Found, Response> {
        let (name, token) = match ch.split_once('.') {
            Some((name, token)) => (name, Some(token)),
            None => (ch, bearer(headers)),
        };
        let found = if valid_name(name) {
            match self.channels.read().get(name) {
                Some(c) => Some((c.clone(), true)),
                None => self
                    .closed
                    .lock()
                    .get(name)
                    .map(|(c, _)| (c.clone(), false)),
            }
        } else {
            None
        };
        let Some((channel, open)) = found else {
            return Err(error(
                StatusCode::NOT_FOUND,
                &format!("no trickle channel named {name:?}"),
            ));
        };
        let Some(token) = token else {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a token is required: use the channel URL with its token, or Authorization: Bearer",
            ));
        };
        match (channel.access(token), need) {
            (None, _) => Err(error(
                StatusCode::FORBIDDEN,
                "wrong token for this trickle channel",
            )),
            (Some(Access::Subscribe), Access::Publish) => Err(error(
                StatusCode::FORBIDDEN,
                "a subscribe token cannot publish to or delete a trickle channel",
            )),
            (Some(_), _) if open => {
                channel.touch(self.now_ms());
                Ok(Found::Open(channel))
            }
            (Some(_), _) => Ok(Found::Closed(channel)),
        }
    }

    /// Take `n` bytes for segment `seq` of `channel`. When the node's budget is exhausted,
    /// the segments that closed channels keep are dropped first, then it is tried again.
    fn reserve(&self, channel: &Channel, seq: i64, n: usize) -> Result<(), Exhausted> {
        match channel.reserve(seq, n) {
            Err(Exhausted::Node) => {
                self.release_lingering();
                let again = channel.reserve(seq, n);
                if again.is_err() {
                    tracing::warn!(
                        channel = %channel.name,
                        buffered = self.budget.used(),
                        limit = self.budget.limit(),
                        "trickle buffers are full; refusing a write"
                    );
                }
                again
            }
            other => other,
        }
    }

    /// Read a POST body into `segment` as writer `generation`.
    async fn receive(
        &self,
        channel: &Channel,
        segment: &Arc<Segment>,
        generation: u64,
        body: &mut BodyDataStream,
    ) -> Received {
        let seq = segment.seq();
        let mut written = 0usize;
        loop {
            let seg = segment.clone();
            let changed = seg.notified();
            if let Some(stop) = segment.stopped(generation) {
                return Received::Stopped(stop, written);
            }
            let item = tokio::select! {
                item = body.next() => item,
                () = changed => continue,
            };
            match item {
                None => {
                    if written == 0 {
                        // An empty segment still moves the live edge, so readers don't stall.
                        channel.started(seq);
                    }
                    if !segment.finish(generation, End::Complete) {
                        let stop = segment.stopped(generation).unwrap_or(Stop::Superseded);
                        return Received::Stopped(stop, written);
                    }
                    return Received::Complete(written);
                }
                Some(Err(e)) => {
                    if segment.finish(generation, End::Aborted) {
                        channel.forget(segment);
                    }
                    return Received::Disconnected(e.to_string(), written);
                }
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    if written.saturating_add(n) > channel.max_segment_bytes {
                        if segment.finish(generation, End::Aborted) {
                            channel.forget(segment);
                        }
                        return Received::TooLarge(written);
                    }
                    if let Err(exhausted) = self.reserve(channel, seq, n) {
                        if segment.finish(generation, End::Aborted) {
                            channel.forget(segment);
                        }
                        return Received::NoRoom(exhausted, written);
                    }
                    if written == 0 {
                        channel.started(seq);
                    }
                    if let Err(stop) = segment.push(generation, chunk) {
                        channel.unreserve(n);
                        return Received::Stopped(stop, written);
                    }
                    written = written.saturating_add(n);
                    self.metrics.bytes_in.inc_by(n as u64);
                    channel.touch(self.now_ms());
                }
            }
        }
    }
}

/// How reading a POST body ended (with the bytes written).
enum Received {
    Complete(usize),
    Disconnected(String, usize),
    TooLarge(usize),
    NoRoom(Exhausted, usize),
    Stopped(Stop, usize),
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The largest seq accepted (2^53, beyond any real stream: a segment a millisecond for
/// 285,000 years), so that seq arithmetic never comes near overflowing.
pub const MAX_SEQ: i64 = 1 << 53;

/// Parse a seq: `-1`, (when `current` is allowed) `-2`, or plain decimal digits (no sign,
/// no spaces) up to [`MAX_SEQ`].
fn parse_seq(s: &str, current: bool) -> Option<i64> {
    match s {
        "-1" => return Some(-1),
        "-2" if current => return Some(-2),
        _ => {}
    }
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|seq| *seq <= MAX_SEQ)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "message": message } }).to_string();
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn status_470() -> StatusCode {
    StatusCode::from_u16(470).unwrap_or(StatusCode::NOT_FOUND)
}

fn closed() -> Response {
    let mut r = error(StatusCode::NOT_FOUND, "trickle channel closed");
    r.headers_mut()
        .insert(CLOSED_HEADER, HeaderValue::from_static("terminated"));
    r
}

fn missing(seq: i64, latest: i64) -> Response {
    let mut r = error(
        status_470(),
        &format!("segment {seq} is not available; the next write is {latest}"),
    );
    r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
    r.headers_mut()
        .insert(LATEST_HEADER, HeaderValue::from(latest));
    r
}

/// How long, and how many bytes, the rest of a refused POST body is read and dropped for.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 8 << 20;

/// An answer sent before the request body was read to its end. The connection closes after
/// it, so that the client stops sending; the body is read (and dropped) a little longer in
/// the background, because closing a socket with unread data resets the connection, and the
/// client, still sending, would then get the reset instead of the answer.
fn early(mut r: Response, mut body: BodyDataStream) -> Response {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    tokio::spawn(async move {
        let drain = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(chunk)) = body.next().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    });
    r
}

macro_rules! authorized {
    ($inner:expr, $ch:expr, $headers:expr, $need:expr) => {
        match $inner.authorize(&$ch, &$headers, $need) {
            Ok(Found::Open(channel)) => channel,
            Ok(Found::Closed(_)) => return closed(),
            Err(response) => return response,
        }
    };
}

async fn create_channel(
    State(inner): State<Arc<Inner>>,
    Path(ch): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _channel = authorized!(inner, ch, headers, Access::Publish);
    StatusCode::OK.into_response()
}

async fn delete_channel(
    State(inner): State<Arc<Inner>>,
    Path(ch): Path<String>,
    headers: HeaderMap,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let id: *const Channel = Arc::as_ptr(&channel);
    inner.close(&channel.name, |c| std::ptr::eq(c, id));
    StatusCode::OK.into_response()
}

async fn delete_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let Some(seq) = parse_seq(&seq, false).filter(|s| *s >= 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("seq must be a plain non-negative integer up to {MAX_SEQ}"),
        );
    };
    if channel.close_segment(seq) {
        StatusCode::OK.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("segment {seq} is not in the ring"),
        )
    }
}

async fn get_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // A closed channel still serves the segments it kept (`for_read` knows).
    let channel = match inner.authorize(&ch, &headers, Access::Subscribe) {
        Ok(Found::Open(channel) | Found::Closed(channel)) => channel,
        Err(response) => return response,
    };
    if seq == "next" {
        let (next, is_closed) = channel.next_write();
        if is_closed {
            return closed();
        }
        let mut r = ([(CONTENT_TYPE, "text/plain")], next.to_string()).into_response();
        r.headers_mut()
            .insert(LATEST_HEADER, HeaderValue::from(next));
        return r;
    }
    let Some(seq) = parse_seq(&seq, true) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "seq must be -1 (next), -2 (current), `next` or a plain non-negative integer up to {MAX_SEQ}"
            ),
        );
    };
    let segment = match channel.for_read(seq) {
        ReadTarget::Segment(segment) => segment,
        ReadTarget::Missing { seq, latest } => return missing(seq, latest),
        ReadTarget::Closed => return closed(),
    };
    // Long-poll: answer once the first byte is there (or the segment ended).
    loop {
        let changed = segment.notified();
        match segment.first() {
            Some(Ok(())) | Some(Err(End::Complete)) => break,
            Some(Err(End::Closed)) => return closed(),
            Some(Err(End::Aborted)) => {
                let (latest, is_closed) = channel.next_write();
                return if is_closed {
                    closed()
                } else {
                    missing(segment.seq(), latest)
                };
            }
            None => changed.await,
        }
    }
    let (latest, _) = channel.next_write();
    let mut response = Response::new(segment_body(
        segment.clone(),
        inner.metrics.bytes_out.clone(),
    ));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, channel.mime.clone());
    h.insert(SEQ_HEADER, HeaderValue::from(segment.seq()));
    h.insert(LATEST_HEADER, HeaderValue::from(latest));
    response
}

/// The body of a GET: what the segment holds, then the rest as it arrives. A segment that
/// ends other than complete ends the body with an error.
fn segment_body(segment: Arc<Segment>, bytes_out: IntCounter) -> Body {
    let stream = futures_util::stream::unfold(Some((segment, ReadPos::default())), move |state| {
        let bytes_out = bytes_out.clone();
        async move {
            let (segment, mut pos) = state?;
            loop {
                let seg = segment.clone();
                let changed = seg.notified();
                match segment.read(&mut pos) {
                    Read::Data(data) => {
                        bytes_out.inc_by(data.len() as u64);
                        return Some((Ok(data), Some((segment, pos))));
                    }
                    Read::End(End::Complete) => return None,
                    Read::End(_) => {
                        let e =
                            std::io::Error::other("trickle segment ended before it was complete");
                        return Some((Err(e), None));
                    }
                    Read::Wait => changed.await,
                }
            }
        }
    });
    Body::from_stream(stream)
}

async fn post_segment(
    State(inner): State<Arc<Inner>>,
    Path((ch, seq)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = body.into_data_stream();
    let response = publish(&inner, &ch, &seq, &headers, &mut body).await;
    if response.status().is_success() {
        response
    } else {
        early(response, body)
    }
}

async fn publish(
    inner: &Inner,
    ch: &str,
    seq: &str,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
) -> Response {
    let channel = authorized!(inner, ch, headers, Access::Publish);
    let Some(seq) = parse_seq(seq, false) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("seq must be -1 (next) or a plain non-negative integer up to {MAX_SEQ}"),
        );
    };
    let reset = headers.contains_key(RESET_HEADER);
    let (segment, seq, generation) = match channel.for_write(seq, reset) {
        Ok(found) => found,
        Err(WriteRefused::TooOld { seq, latest }) => return missing(seq, latest),
        Err(WriteRefused::Closed) => return closed(),
    };
    let received = inner.receive(&channel, &segment, generation, body).await;
    let segments = &inner.metrics.segments;
    match received {
        Received::Complete(n) => {
            segments.with_label_values(&["complete"]).inc();
            tracing::trace!(channel = %channel.name, seq, bytes = n, "trickle segment complete");
            let mut r = StatusCode::OK.into_response();
            r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
            r
        }
        Received::Disconnected(e, n) => {
            if n > 0 {
                segments.with_label_values(&["aborted"]).inc();
            }
            tracing::debug!(channel = %channel.name, seq, bytes = n, error = %e, "trickle publisher went away mid-segment");
            error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))
        }
        Received::TooLarge(n) => {
            segments.with_label_values(&["aborted"]).inc();
            tracing::debug!(channel = %channel.name, seq, bytes = n, "trickle segment too large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "segment larger than {} bytes, this channel's limit",
                    channel.max_segment_bytes
                ),
            )
        }
        Received::NoRoom(exhausted, n) => {
            segments.with_label_values(&["aborted"]).inc();
            tracing::debug!(channel = %channel.name, seq, bytes = n, ?exhausted, "trickle buffers full");
            let message = match exhausted {
                Exhausted::Node => "the server's trickle buffers are full; try again later",
                Exhausted::Channel => {
                    "this channel's buffers are full (its subscribers are behind); try again later"
                }
            };
            error(StatusCode::SERVICE_UNAVAILABLE, message)
        }
        Received::Stopped(stop, n) => {
            if n > 0 {
                segments.with_label_values(&["aborted"]).inc();
            }
            match stop {
                Stop::Closed => closed(),
                Stop::Superseded => error(
                    StatusCode::CONFLICT,
                    &format!("segment {seq} was replaced, deleted or evicted while being written"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_long_poll_lets_go_of_its_segment() {
        let server = TrickleServer::new(TrickleConfig::default(), &prometheus::Registry::new())
            .expect("new");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = server.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let grant = server.create("abandoned", "video/mp2t").expect("create");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .expect("client");
        let url = format!("{}/-1", grant.subscribe_url(&base));
        assert!(client.get(url).send().await.is_err(), "the GET times out");
        let channel = server
            .inner
            .channels
            .read()
            .get("abandoned")
            .cloned()
            .expect("channel");
        let segment = channel.segment(0).expect("pre-created");
        // Held by the ring and by this test only, once the server dropped the handler.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&segment) > 2 {
            assert!(
                Instant::now() < deadline,
                "the handler still holds the segment"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
