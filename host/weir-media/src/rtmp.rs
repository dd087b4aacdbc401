//! RTMP ingest: accepts publishers (OBS, FFmpeg, GStreamer, …) on a TCP listener and turns the
//! FLV-tagged audio/video they send into [`IngestEvent`]s.
//!
//! The RTMP protocol itself (handshake, including the digest handshake, chunk streams and the
//! command flow) is handled by the sans-IO `rml_rtmp` crate; this module drives it on tokio,
//! asks a [`PublishHandler`] (the [`crate::ingest`] seam) where a publish goes, and parses the FLV tag payloads.
//!
//! Only H.264/AVC video and AAC audio are accepted. A publisher that sends any other codec is
//! disconnected as soon as the first such tag arrives; nothing of that codec is forwarded.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

pub use crate::ingest::PublishHandler;
use crate::ingest::{Protocol, Publish};
use crate::packet::{CodecConfig, IngestEvent, MediaPacket, Track};

/// Resource limits of the RTMP server.
#[derive(Debug, Clone)]
pub struct RtmpLimits {
    /// Time a client has to complete the RTMP handshake after connecting.
    pub handshake_timeout: Duration,
    /// A connection is closed when the client sends nothing for this long, when a write to it
    /// does not complete in this time, or when the event consumer does not accept an event
    /// for this long.
    pub idle_timeout: Duration,
    /// Connections handled at the same time; connections beyond this are closed at once.
    pub max_connections: usize,
    /// A connection that sends more than this many bytes (plus chunk framing overhead)
    /// without completing an RTMP message is closed.
    pub max_message_bytes: usize,
}

impl Default for RtmpLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Accepts RTMP connections on `listener` until accepting fails with an error that is not
/// about a single connection. Each connection runs in its own task; dropping the returned
/// future aborts all of them.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn PublishHandler>,
    limits: RtmpLimits,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    // Refusals are logged at most once every ten seconds, with how many there were.
    let mut refused: u64 = 0;
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) if is_per_connection_error(&e) => {
                        tracing::debug!(error = %e, "rtmp: accept failed for one connection");
                        continue;
                    }
                    Err(e) if is_resource_exhaustion(&e) => {
                        tracing::warn!(error = %e, "rtmp: accept failed, out of resources; pausing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rtmp: listener failed");
                        return Err(e);
                    }
                };
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(connection_task(
                            stream,
                            peer,
                            Arc::clone(&handler),
                            Arc::clone(&limits),
                            permit,
                        ));
                    }
                    Err(_) => {
                        refused += 1;
                        let now = tokio::time::Instant::now();
                        if last_refusal_log
                            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                        {
                            last_refusal_log = Some(now);
                            tracing::warn!(
                                %peer,
                                max_connections = limits.max_connections,
                                refused,
                                "rtmp: connection limit reached, closing new connections"
                            );
                            refused = 0;
                        }
                        drop(stream);
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "rtmp: connection task failed");
                }
            }
        }
    }
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // ENOMEM, ENFILE, EMFILE, ENOBUFS on Linux.
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105)) || e.kind() == io::ErrorKind::OutOfMemory
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("write did not complete within {0:?}")]
    WriteStalled(Duration),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("more than {0} bytes received without a complete RTMP message")]
    MessageTooLarge(usize),
    #[error("publish refused: {0}")]
    Refused(String),
    #[error("unsupported video codec {0}")]
    UnsupportedVideo(String),
    #[error("unsupported audio codec {0}")]
    UnsupportedAudio(String),
    #[error("malformed media tag: {0}")]
    Malformed(&'static str),
    #[error("event consumer accepted nothing for {0:?}")]
    ConsumerStalled(Duration),
    #[error("event consumer is gone")]
    ConsumerGone,
}

/// Per-connection counters for the final log line.
#[derive(Debug, Default)]
struct Counters {
    video_packets: u64,
    audio_packets: u64,
    configs: u64,
    bytes_in: u64,
}

async fn connection_task(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<dyn PublishHandler>,
    limits: Arc<RtmpLimits>,
    _permit: OwnedSemaphorePermit,
) {
    tracing::info!(%peer, "rtmp: connection opened");
    let mut conn = Connection {
        stream,
        peer,
        handler,
        limits,
        counters: Counters::default(),
        publishing: None,
        clock: TimestampUnwrapper::default(),
        video_config_seen: false,
        audio_config_seen: false,
        dropped_before_config: 0,
        metadata_seen: false,
    };
    let result = conn.run().await;
    let c = &conn.counters;
    let stream_name = conn
        .publishing
        .as_ref()
        .map(|p| format!("{}/{}", p.app, p.key));
    match result {
        Ok(()) => tracing::info!(
            %peer,
            stream = stream_name.as_deref().unwrap_or("-"),
            video_packets = c.video_packets,
            audio_packets = c.audio_packets,
            configs = c.configs,
            bytes_in = c.bytes_in,
            "rtmp: connection closed by peer"
        ),
        Err(e) => tracing::warn!(
            %peer,
            stream = stream_name.as_deref().unwrap_or("-"),
            video_packets = c.video_packets,
            audio_packets = c.audio_packets,
            configs = c.configs,
            bytes_in = c.bytes_in,
            reason = %e,
            "rtmp: connection ended"
        ),
    }
    // Dropping `conn` drops the event sender, which tells the consumer that the stream ended.
}

/// The accepted publish of a connection.
struct Publishing {
    app: String,
    key: String,
    /// `None` once the publisher finished the stream.
    sender: Option<mpsc::Sender<IngestEvent>>,
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<dyn PublishHandler>,
    limits: Arc<RtmpLimits>,
    counters: Counters,
    publishing: Option<Publishing>,
    clock: TimestampUnwrapper,
    video_config_seen: bool,
    audio_config_seen: bool,
    dropped_before_config: u64,
    metadata_seen: bool,
}

/// Runs a call into `rml_rtmp`, which does arithmetic on peer-controlled values that can
/// overflow (a panic in builds with overflow checks). Such a panic only ends this connection.
fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, ConnError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        ConnError::Protocol(format!("RTMP library rejected malformed input in {what}"))
    })
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnError> {
        let hs_timeout = self.limits.handshake_timeout;
        let leftover = match timeout(hs_timeout, self.handshake()).await {
            Ok(Ok(Some(leftover))) => leftover,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ConnError::HandshakeTimeout(hs_timeout)),
        };
        tracing::debug!(peer = %self.peer, "rtmp: handshake completed");

        let (mut session, initial) = contained("session setup", || {
            ServerSession::new(ServerSessionConfig::new())
        })?
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
        let mut queue: VecDeque<ServerSessionResult> = initial.into();
        let mut pending_input = leftover;
        let mut buf = vec![0_u8; 64 * 1024];
        let allowance = self
            .limits
            .max_message_bytes
            .saturating_add(self.limits.max_message_bytes / 8)
            .saturating_add(64 * 1024);
        let mut bytes_without_message: usize = 0;

        loop {
            if !pending_input.is_empty() {
                bytes_without_message = bytes_without_message.saturating_add(pending_input.len());
                let input = std::mem::take(&mut pending_input);
                let results = contained("chunk parsing", || session.handle_input(&input))?
                    .map_err(|e| ConnError::Protocol(e.to_string()))?;
                if !results.is_empty() {
                    bytes_without_message = 0;
                }
                queue.extend(results);
                if bytes_without_message > allowance {
                    return Err(ConnError::MessageTooLarge(self.limits.max_message_bytes));
                }
            }
            self.process(&mut session, &mut queue).await?;

            let idle = self.limits.idle_timeout;
            let n = match timeout(idle, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError::Idle(idle)),
            };
            self.counters.bytes_in += n as u64;
            pending_input.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
    }

    /// Completes the handshake; returns the bytes received after it, or `None` when the peer
    /// closed the connection first.
    async fn handshake(&mut self) -> Result<Option<Vec<u8>>, ConnError> {
        let mut handshake = Handshake::new(PeerType::Server);
        let mut buf = vec![0_u8; 8 * 1024];
        loop {
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.counters.bytes_in += n as u64;
            let input = buf.get(..n).unwrap_or_default();
            let result = contained("handshake", || handshake.process_bytes(input))?
                .map_err(|e| ConnError::Handshake(e.to_string()))?;
            match result {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    if !response_bytes.is_empty() {
                        self.stream.write_all(&response_bytes).await?;
                    }
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    if !response_bytes.is_empty() {
                        self.stream.write_all(&response_bytes).await?;
                    }
                    return Ok(Some(remaining_bytes));
                }
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let limit = self.limits.idle_timeout;
        match timeout(limit, self.stream.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::WriteStalled(limit)),
        }
    }

    /// Sends the queued responses and acts on the queued events, in order. Packets are sent in
    /// the order the session produced them, which the chunk header compression requires.
    async fn process(
        &mut self,
        session: &mut ServerSession,
        queue: &mut VecDeque<ServerSessionResult>,
    ) -> Result<(), ConnError> {
        let mut out: Vec<u8> = Vec::new();
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    out.extend_from_slice(&packet.bytes);
                }
                ServerSessionResult::RaisedEvent(event) => {
                    if !out.is_empty() {
                        self.write(&out).await?;
                        out.clear();
                    }
                    let more = self.on_event(session, event).await?;
                    queue.extend(more);
                }
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::trace!(
                        peer = %self.peer,
                        type_id = payload.type_id,
                        "rtmp: ignoring unhandled message"
                    );
                }
            }
        }
        if !out.is_empty() {
            self.write(&out).await?;
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        session: &mut ServerSession,
        event: ServerSessionEvent,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                tracing::debug!(peer = %self.peer, app = %app_name, "rtmp: connect");
                contained("accept connection", || session.accept_request(request_id))?
                    .map_err(|e| ConnError::Protocol(e.to_string()))
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                mode,
            } => {
                self.on_publish(session, request_id, app_name, stream_key, mode)
                    .await
            }
            ServerSessionEvent::PublishStreamFinished {
                app_name,
                stream_key,
            } => {
                tracing::info!(peer = %self.peer, app = %app_name, key = %stream_key, "rtmp: publish finished");
                if let Some(p) = &mut self.publishing {
                    // Ends the event stream; the connection itself stays until the peer closes.
                    p.sender = None;
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.media(&data, timestamp.value, parse_video_tag).await,
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.media(&data, timestamp.value, parse_audio_tag).await,
            ServerSessionEvent::StreamMetadataChanged {
                app_name,
                stream_key,
                metadata,
            } => {
                self.on_metadata(&app_name, &stream_key, &metadata);
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                tracing::info!(peer = %self.peer, app = %app_name, key = %stream_key, "rtmp: refusing play request (ingest only)");
                contained("reject play", || {
                    session.reject_request(
                        request_id,
                        "NetStream.Play.Failed",
                        "this server only accepts publishers",
                    )
                })?
                .map_err(|e| ConnError::Protocol(e.to_string()))
            }
            other => {
                tracing::trace!(peer = %self.peer, event = ?other, "rtmp: session event");
                Ok(Vec::new())
            }
        }
    }

    /// Logs the stream's metadata: at debug level the first time, at trace level after.
    fn on_metadata(&mut self, app_name: &str, stream_key: &str, metadata: &StreamMetadata) {
        if self.metadata_seen {
            tracing::trace!(peer = %self.peer, ?metadata, "rtmp: stream metadata");
        } else {
            self.metadata_seen = true;
            tracing::debug!(
                peer = %self.peer,
                app = %app_name,
                key = %stream_key,
                ?metadata,
                "rtmp: stream metadata"
            );
        }
    }

    async fn on_publish(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
        app: String,
        key: String,
        mode: rml_rtmp::sessions::PublishMode,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        tracing::info!(peer = %self.peer, app = %app, key = %key, ?mode, "rtmp: publish requested");
        let decision = if self.publishing.is_some() {
            Err("this connection already published a stream".to_string())
        } else {
            let fut = self.handler.publish(Publish {
                protocol: Protocol::Rtmp,
                path: app.clone(),
                key: key.clone(),
                peer: self.peer,
            });
            match timeout(self.limits.idle_timeout, fut).await {
                Ok(d) => d,
                Err(_) => Err("publish decision timed out".to_string()),
            }
        };
        match decision {
            Ok(sender) => {
                let results = contained("accept publish", || session.accept_request(request_id))?
                    .map_err(|e| ConnError::Protocol(e.to_string()))?;
                self.publishing = Some(Publishing {
                    app,
                    key,
                    sender: Some(sender),
                });
                Ok(results)
            }
            Err(reason) => {
                tracing::warn!(peer = %self.peer, app = %app, key = %key, %reason, "rtmp: publish refused");
                let results = contained("reject publish", || {
                    session.reject_request(request_id, "NetStream.Publish.BadName", &reason)
                })?
                .map_err(|e| ConnError::Protocol(e.to_string()))?;
                // Tell the client why before closing; failures here do not matter any more.
                let mut out = Vec::new();
                for r in results {
                    if let ServerSessionResult::OutboundResponse(p) = r {
                        out.extend_from_slice(&p.bytes);
                    }
                }
                let _ = self.write(&out).await;
                let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
                Err(ConnError::Refused(reason))
            }
        }
    }

    /// An FLV audio or video tag received at RTMP time `timestamp`: parsed with `parse` on the
    /// connection's clock and forwarded.
    async fn media(
        &mut self,
        data: &Bytes,
        timestamp: u32,
        parse: fn(&Bytes, i64) -> Result<Option<IngestEvent>, ConnError>,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        let dts = self.clock.extend(timestamp);
        let event = parse(data, dts)?;
        self.forward(event).await?;
        Ok(Vec::new())
    }

    /// Hands one parsed tag to the consumer, waiting up to the idle timeout for channel room.
    async fn forward(&mut self, event: Option<IngestEvent>) -> Result<(), ConnError> {
        let Some(event) = event else {
            return Ok(());
        };
        let Some(sender) = self.publishing.as_ref().and_then(|p| p.sender.clone()) else {
            return Ok(());
        };
        match &event {
            IngestEvent::Config(CodecConfig::Avc(_)) => self.video_config_seen = true,
            IngestEvent::Config(CodecConfig::Aac(_)) => self.audio_config_seen = true,
            IngestEvent::Packet(p) => {
                let configured = match p.track {
                    Track::Video => self.video_config_seen,
                    Track::Audio => self.audio_config_seen,
                };
                if !configured {
                    if self.dropped_before_config == 0 {
                        tracing::warn!(peer = %self.peer, track = ?p.track, "rtmp: media before its codec configuration, dropping");
                    }
                    self.dropped_before_config += 1;
                    return Ok(());
                }
            }
        }
        let counters = &mut self.counters;
        match &event {
            IngestEvent::Config(_) => counters.configs += 1,
            IngestEvent::Packet(p) if p.track == Track::Video => counters.video_packets += 1,
            IngestEvent::Packet(_) => counters.audio_packets += 1,
        }
        match sender.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ConnError::ConsumerGone),
            Err(mpsc::error::TrySendError::Full(event)) => {
                let limit = self.limits.idle_timeout;
                match timeout(limit, sender.send(event)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(ConnError::ConsumerGone),
                    Err(_) => Err(ConnError::ConsumerStalled(limit)),
                }
            }
        }
    }
}

/// Extends 32-bit RTMP millisecond timestamps to i64, following wraparound: each timestamp is
/// taken as the nearest value (forwards or backwards) to the previous one.
#[derive(Debug, Default)]
struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    fn extend(&mut self, ts: u32) -> i64 {
        let extended = match self.last {
            None => i64::from(ts),
            // Reinterpreting the wrapped difference as signed picks the nearest candidate.
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
        };
        self.last = Some((ts, extended));
        extended
    }
}

const FLV_CODEC_AVC: u8 = 7;
const FLV_SOUND_AAC: u8 = 10;

fn video_codec_name(id: u8) -> &'static str {
    match id {
        1 => "JPEG",
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        12 => "HEVC",
        13 => "AV1",
        _ => "unknown",
    }
}

fn audio_codec_name(id: u8) -> &'static str {
    match id {
        0 => "linear PCM (platform endian)",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (little endian)",
        4..=6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "enhanced RTMP audio",
        11 => "Speex",
        13 => "Opus",
        14 => "MP3 8 kHz",
        15 => "device-specific",
        _ => "unknown",
    }
}

/// Parses an FLV video tag body (the RTMP video message payload) with decode time `dts`.
fn parse_video_tag(data: &Bytes, dts: i64) -> Result<Option<IngestEvent>, ConnError> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    if first & 0x80 != 0 {
        // Enhanced RTMP: a FourCC follows the header byte.
        let fourcc = data
            .get(1..5)
            .map(|b| {
                b.iter()
                    .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
                    .collect::<String>()
            })
            .unwrap_or_else(|| "(truncated)".to_string());
        return Err(ConnError::UnsupportedVideo(format!(
            "enhanced RTMP FourCC '{fourcc}'"
        )));
    }
    let frame_type = first >> 4;
    let codec = first & 0x0f;
    if codec != FLV_CODEC_AVC {
        return Err(ConnError::UnsupportedVideo(format!(
            "{} (FLV codec id {codec})",
            video_codec_name(codec)
        )));
    }
    if frame_type == 5 {
        // Video info/command frame: carries no picture.
        return Ok(None);
    }
    let [_, packet_type, c0, c1, c2] = match data.get(..5) {
        Some(&[a, b, c, d, e]) => [a, b, c, d, e],
        _ => return Err(ConnError::Malformed("AVC video tag shorter than 5 bytes")),
    };
    match packet_type {
        0 => {
            if data.len() == 5 {
                return Err(ConnError::Malformed("empty AVC sequence header"));
            }
            Ok(Some(IngestEvent::Config(CodecConfig::Avc(data.slice(5..)))))
        }
        1 => {
            if data.len() == 5 {
                return Ok(None);
            }
            let composition = composition_time_ms([c0, c1, c2]);
            Ok(Some(IngestEvent::Packet(MediaPacket {
                track: Track::Video,
                dts_ms: dts,
                pts_ms: dts + i64::from(composition),
                keyframe: frame_type == 1,
                data: data.slice(5..),
            })))
        }
        2 => Ok(None),
        _ => Err(ConnError::Malformed("unknown AVCPacketType")),
    }
}

/// The signed 24-bit big-endian composition time offset of an AVC video tag.
fn composition_time_ms(b: [u8; 3]) -> i32 {
    let raw = i32::from_be_bytes([b[0], b[1], b[2], 0]);
    raw >> 8
}

/// Parses an FLV audio tag body (the RTMP audio message payload) with decode time `dts`.
fn parse_audio_tag(data: &Bytes, dts: i64) -> Result<Option<IngestEvent>, ConnError> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    let format = first >> 4;
    if format != FLV_SOUND_AAC {
        return Err(ConnError::UnsupportedAudio(format!(
            "{} (FLV sound format {format})",
            audio_codec_name(format)
        )));
    }
    let Some(&packet_type) = data.get(1) else {
        return Err(ConnError::Malformed("AAC audio tag shorter than 2 bytes"));
    };
    match packet_type {
        0 => {
            if data.len() == 2 {
                return Err(ConnError::Malformed("empty AAC sequence header"));
            }
            Ok(Some(IngestEvent::Config(CodecConfig::Aac(data.slice(2..)))))
        }
        1 => {
            if data.len() == 2 {
                return Ok(None);
            }
            Ok(Some(IngestEvent::Packet(MediaPacket {
                track: Track::Audio,
                dts_ms: dts,
                pts_ms: dts,
                keyframe: true,
                data: data.slice(2..),
            })))
        }
        _ => Err(ConnError::Malformed("unknown AACPacketType")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composition_time_is_signed_24_bit() {
        assert_eq!(composition_time_ms([0, 0, 0]), 0);
        assert_eq!(composition_time_ms([0, 0, 66]), 66);
        assert_eq!(composition_time_ms([0xff, 0xff, 0xff]), -1);
        assert_eq!(composition_time_ms([0x80, 0, 0]), -(1 << 23));
        assert_eq!(composition_time_ms([0x7f, 0xff, 0xff]), (1 << 23) - 1);
    }

    #[test]
    fn timestamps_unwrap_across_32_bit_wrap_and_allow_small_backsteps() {
        let mut u = TimestampUnwrapper::default();
        assert_eq!(u.extend(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(u.extend(u32::MAX - 20), i64::from(u32::MAX) - 20);
        assert_eq!(u.extend(5), (1_i64 << 32) + 5);
        assert_eq!(u.extend(u32::MAX - 1), (1_i64 << 32) - 2);
        assert_eq!(u.extend(40), (1_i64 << 32) + 40);
    }

    #[test]
    fn avc_tags_parse() {
        let cfg = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f]);
        match parse_video_tag(&cfg, 0).expect("config parses") {
            Some(IngestEvent::Config(CodecConfig::Avc(b))) => {
                assert_eq!(&b[..], &[1, 0x64, 0, 0x1f])
            }
            other => panic!("unexpected {other:?}"),
        }
        let inter = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xdf, 0, 0, 0, 1, 0x41]);
        match parse_video_tag(&inter, 1000).expect("packet parses") {
            Some(IngestEvent::Packet(p)) => {
                assert_eq!(p.track, Track::Video);
                assert!(!p.keyframe);
                assert_eq!(p.dts_ms, 1000);
                assert_eq!(p.pts_ms, 1000 - 33);
                assert_eq!(&p.data[..], &[0, 0, 0, 1, 0x41]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let eos = Bytes::from_static(&[0x17, 2, 0, 0, 0]);
        assert!(parse_video_tag(&eos, 0).expect("eos parses").is_none());
        let short = Bytes::from_static(&[0x17, 1, 0]);
        assert!(matches!(
            parse_video_tag(&short, 0),
            Err(ConnError::Malformed(_))
        ));
    }

    #[test]
    fn non_avc_video_is_refused() {
        let hevc = Bytes::from_static(&[0x1c, 0, 0, 0, 0, 1]);
        assert!(
            matches!(parse_video_tag(&hevc, 0), Err(ConnError::UnsupportedVideo(s)) if s.contains("HEVC"))
        );
        let ex = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1', 1, 2]);
        assert!(
            matches!(parse_video_tag(&ex, 0), Err(ConnError::UnsupportedVideo(s)) if s.contains("hvc1"))
        );
        let vp6 = Bytes::from_static(&[0x14, 0]);
        assert!(matches!(
            parse_video_tag(&vp6, 0),
            Err(ConnError::UnsupportedVideo(_))
        ));
    }

    #[test]
    fn aac_tags_parse_and_others_are_refused() {
        let cfg = Bytes::from_static(&[0xaf, 0, 0x11, 0x90]);
        match parse_audio_tag(&cfg, 0).expect("config parses") {
            Some(IngestEvent::Config(CodecConfig::Aac(b))) => assert_eq!(&b[..], &[0x11, 0x90]),
            other => panic!("unexpected {other:?}"),
        }
        let raw = Bytes::from_static(&[0xaf, 1, 0x21, 0x10]);
        match parse_audio_tag(&raw, 23).expect("packet parses") {
            Some(IngestEvent::Packet(p)) => {
                assert_eq!(p.track, Track::Audio);
                assert!(p.keyframe);
                assert_eq!((p.dts_ms, p.pts_ms), (23, 23));
                assert_eq!(&p.data[..], &[0x21, 0x10]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mp3 = Bytes::from_static(&[0x2f, 0xff, 0xfb]);
        assert!(
            matches!(parse_audio_tag(&mp3, 0), Err(ConnError::UnsupportedAudio(s)) if s.contains("MP3"))
        );
    }
}
