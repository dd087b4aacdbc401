//! Trickle: Livepeer's segmented publish/subscribe over plain HTTP, wire-compatible with
//! go-livepeer and pytrickle, plus per-channel tokens.
//!
//! # Wire protocol
//!
//! A *channel* carries a sequence of *segments* (for video, one MPEG-TS segment per GOP; for
//! control, one JSON message each). Everything lives under `/ai/trickle/`:
//!
//! | request | meaning |
//! |---|---|
//! | `POST {ch}/{seq}` | publish segment `seq` (`-1`: the next one); the body is streamed to subscribers as it arrives; `200` with `Lp-Trickle-Seq` |
//! | `GET {ch}/{seq}` | subscribe to `seq` (`-1`: the next segment to be written, `-2`: the latest started); held open until its first byte, then streamed |
//! | `GET {ch}/next` | the next seq, as plain text and in `Lp-Trickle-Latest` |
//! | `POST {ch}` | create: succeeds for an existing channel (channels are created by the host, [`TrickleServer::create`]) |
//! | `DELETE {ch}` | close the channel: requests for anything not written before get `404` with `Lp-Trickle-Closed: terminated` |
//! | `DELETE {ch}/{seq}` | close one segment |
//!
//! A seq is `-1`, `-2` or plain decimal digits up to [`MAX_SEQ`]; anything else is `400`.
//!
//! A closed channel keeps the segments written (or being finished) before the close readable
//! for [`TrickleConfig::closed_linger`], so a subscriber a little behind still gets every
//! byte published before the `DELETE`; only then is it told `Lp-Trickle-Closed`.
//!
//! Buffers are bounded: per segment and per channel by the channel's kind
//! ([`ChannelKind`], [`ChannelLimits`]; `413` for a segment over its cap), and node-wide by
//! [`TrickleConfig::max_buffered_bytes`] (`503` once exhausted).
//!
//! The server keeps the last [`TrickleConfig::ring`] segments of each channel. A GET for a
//! seq that fell out of the ring, or that is ahead of the next write, gets status `470` with
//! `Lp-Trickle-Latest` (the next write; clients jump there) and `Lp-Trickle-Seq`. A GET for
//! the next write pre-creates it and waits. A POST with `Lp-Trickle-Reset` (a restarted
//! publisher) closes every other segment except pre-connected ones ahead of it.
//!
//! A segment whose publisher goes away before finishing it (disconnect, too large, replaced,
//! deleted) is *aborted*: subscribers that already got bytes see the response body end with an
//! error (HTTP/1.1: no terminating chunk), never a silently short body; subscribers still
//! waiting for its first byte get `470` and move on to the live edge.
//!
//! # Authentication (a Weir extension)
//!
//! Each channel has a publish token (POST, DELETE, GET) and a subscribe token (GET only),
//! 128 random bits in hex. The `{ch}` path component is `{name}.{token}`, so the URLs handed
//! out ([`ChannelGrant::publish_url`]) work with unmodified Livepeer clients, which append
//! `/{seq}`; a request may instead use `{name}` with `Authorization: Bearer {token}`. A missing
//! or wrong token gets `403`, an unknown channel `404`. Errors are JSON:
//! `{"error":{"message":"…"}}`.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weir_trickle::{Publisher, Subscriber, TrickleConfig, TrickleServer};
//!
//! let server = TrickleServer::new(TrickleConfig::default(), &prometheus::Registry::new())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let base = format!("http://{}", listener.local_addr()?);
//! // TCP_NODELAY: without it, each small write after the first waits for a delayed ACK
//! // (40 ms on Linux), and subscribers fall behind a live stream.
//! use axum::serve::ListenerExt as _;
//! let listener = listener.tap_io(|tcp| {
//!     let _ = tcp.set_nodelay(true);
//! });
//! let router = server.router();
//! tokio::spawn(async move { axum::serve(listener, router).await });
//! server.spawn_sweeper();
//!
//! let grant = server.create("demo", "video/mp2t")?;
//! let client = reqwest::Client::new();
//! let mut subscriber = Subscriber::new(client.clone(), grant.subscribe_url(&base));
//! let mut publisher = Publisher::new(client, grant.publish_url(&base));
//! let seq = publisher.write(bytes::Bytes::from_static(b"segment")).await?;
//! while let Some(segment) = subscriber.next().await? {
//!     let data = segment.bytes(1 << 20).await?;
//!     # let _ = (seq, data);
//! }
//! # Ok(())
//! # }
//! ```

mod budget;
mod channel;
mod client;
mod segment;
mod server;

pub use client::{IncomingSegment, Publisher, SegmentWriter, Subscriber};
pub use server::{ChannelGrant, ChannelKind, ChannelLimits, TrickleConfig, TrickleServer, MAX_SEQ};

/// Response header: the seq a request was served from or written to.
pub const SEQ_HEADER: &str = "Lp-Trickle-Seq";
/// Response header: the channel's next write (the live edge), on `470` and on `next`.
pub const LATEST_HEADER: &str = "Lp-Trickle-Latest";
/// Response header (value `terminated`): the channel is closed.
pub const CLOSED_HEADER: &str = "Lp-Trickle-Closed";
/// Request header on a POST: the publisher restarted; older segments are closed.
pub const RESET_HEADER: &str = "Lp-Trickle-Reset";

/// Trickle errors, from the host API and from the client.
#[derive(Debug, thiserror::Error)]
pub enum TrickleError {
    /// No such channel (`404` without `Lp-Trickle-Closed`).
    #[error("trickle channel not found")]
    NotFound,
    /// The token is missing, wrong, or a subscribe token was used to publish (`403`).
    #[error("trickle token missing, wrong, or not allowed to do this")]
    Forbidden,
    /// The channel is closed (`Lp-Trickle-Closed`).
    #[error("trickle channel closed")]
    Closed,
    /// The segment went over the server's size limit (`413`), or over the reader's.
    #[error("trickle segment too large")]
    TooLarge,
    /// The segment's body ended before it was complete: its publisher went away, or it was
    /// replaced, deleted or closed mid-way.
    #[error("trickle segment ended before it was complete: {0}")]
    Truncated(String),
    /// Any other unexpected status.
    #[error("trickle server answered {status}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The body, shortened.
        message: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("trickle transport: {0}")]
    Transport(String),
    /// A seq from the server, or the next one after it, is out of range.
    #[error("trickle seq out of range: {0}")]
    BadSeq(String),
    /// A channel name must be 1 to 128 of `A-Z a-z 0-9 _ -`.
    #[error("invalid trickle channel name (1 to 128 of A-Z a-z 0-9 _ -)")]
    BadName,
    /// The MIME type is not a valid header value.
    #[error("invalid trickle MIME type")]
    BadMime,
    /// A channel with this name exists.
    #[error("trickle channel {0} already exists")]
    Exists(String),
    /// The server holds its maximum number of channels.
    #[error("too many trickle channels (the limit is {0})")]
    TooMany(usize),
}

/// Whether `name` is a valid channel name.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
