//! The trickle server: the host API ([`TrickleServer`]) and the HTTP handlers under
//! `/ai/trickle/`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::routing::{get, post};
use axum::Router;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::budget::Budget;
use crate::channel::{Channel, ChannelSpec};
use crate::{valid_name, TrickleError};

mod http;
mod registry;

use http::{create_channel, delete_channel, delete_segment, get_segment, post_segment};

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

/// The largest seq accepted (2^53, beyond any real stream: a segment a millisecond for
/// 285,000 years), so that seq arithmetic never comes near overflowing.
pub const MAX_SEQ: i64 = 1 << 53;

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
