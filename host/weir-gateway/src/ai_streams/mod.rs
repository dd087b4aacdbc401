//! Live AI streams on the gateway (BYOC streams and Livepeer's live video-to-video).
//!
//! `POST /process/stream/start` (or `POST /live/video-to-video/{stream}/start`) picks an
//! orchestrator offering the capability, pays ahead for `pay_ahead_secs` of its per-second
//! price and starts the stream there; the answer lists where to publish (RTMP, with an
//! unguessable key), where to watch (HLS), and the update, status, data and stop URLs.
//!
//! Each stream has one owner task. It publishes the ingest's MPEG-TS segments to the
//! orchestrator's input trickle channel, forwards params over the control channel, tops up the
//! balance every `payment_interval_secs` (checking what the orchestrator reports against its
//! own ledger, never adopting more than that), and moves the stream to another orchestrator
//! when the current one stops answering. Output segments are listed as HLS as they arrive;
//! events update the status; JSONL data is served as server-sent events.

mod data;
mod http;
mod session;

pub(crate) use http::routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use weir_media::packet::IngestEvent;
use weir_payments::UnitPrice;
use weir_protocol::byoc::{JobRequest, StreamChannels, StreamStart, StreamUrls};
use weir_protocol::AiHttpError;
use weir_trickle::Publisher;

use crate::dispatch::{err, Choice};
use crate::server::Gateway;

/// Settings of live AI streams (`[gateway.streams]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seconds of price paid ahead at start and kept topped up.
    pub pay_ahead_secs: u64,
    /// Seconds between top-ups.
    pub payment_interval_secs: u64,
    /// Streams at once.
    pub max_streams: usize,
    /// Moves to another orchestrator allowed per minute before the stream is given up.
    pub max_swaps_per_minute: u32,
    /// Deadline of a start call to an orchestrator, in seconds.
    pub start_timeout_secs: u64,
    /// A stream with no ingest for this long stops, in seconds.
    pub ingest_idle_secs: u64,
    /// RTMP base URL published in stream answers (`rtmp://host:port/live`); set by the node.
    pub rtmp_base: String,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            pay_ahead_secs: 120,
            payment_interval_secs: 20,
            max_streams: 50,
            max_swaps_per_minute: 3,
            start_timeout_secs: 10,
            ingest_idle_secs: 60,
            rtmp_base: "rtmp://127.0.0.1:1935/live".to_owned(),
        }
    }
}

enum Command {
    Segment(Bytes),
    IngestEnded,
    Update(serde_json::Value, oneshot::Sender<Result<(), AiHttpError>>),
    /// The orchestrator's answer to an update: `applied` by the pipeline, or to be published
    /// on the control channel (an external worker).
    Updated {
        generation: u64,
        params: serde_json::Value,
        applied: bool,
        done: oneshot::Sender<Result<(), AiHttpError>>,
    },
    Stop(String, oneshot::Sender<()>),
    /// From the session's readers: the stream ended there (`failed` = move it).
    SessionEnded {
        generation: u64,
        failed: bool,
        why: String,
    },
}

/// What `GET /process/stream/{id}/status` answers.
#[derive(Debug, Clone, Serialize)]
struct Status {
    stream_id: String,
    capability: String,
    state: &'static str,
    orchestrator: Option<String>,
    swaps: u32,
    segments_in: u64,
    segments_out: u64,
    paid: u64,
    charged: u64,
    params: serde_json::Value,
    last_event: Option<serde_json::Value>,
    stop_reason: Option<String>,
    /// Why the stream failed (state `failed`), as the orchestrator reported it.
    error: Option<String>,
}

struct AiStream {
    id: String,
    commands: mpsc::Sender<Command>,
    status: Mutex<Status>,
    data: broadcast::Sender<Arc<str>>,
}

/// The live AI streams of a gateway.
#[derive(Default)]
pub(crate) struct AiStreams {
    map: Mutex<HashMap<String, Arc<AiStream>>>,
    /// RTMP stream key → stream id.
    keys: Mutex<HashMap<String, String>>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Gateway {
    fn ai_streams(&self) -> &AiStreams {
        &self.inner.ai_streams
    }

    fn streams_config(&self) -> &StreamsConfig {
        &self.inner.config.streams
    }

    /// The ingest of the AI stream keyed `key`, if there is one: its segments (cut by the one
    /// segmenter loop) go to the stream's owner task, dropped when the stream is behind.
    pub(crate) fn ai_ingest(&self, key: &str) -> Option<mpsc::Sender<IngestEvent>> {
        let id = self.ai_streams().keys.lock().get(key).cloned()?;
        let stream = self.ai_streams().map.lock().get(&id).cloned()?;
        let (tx, rx) = mpsc::channel::<IngestEvent>(1024);
        let target = self.inner.config.live.segment;
        tokio::spawn(async move {
            weir_media::ingest::segment(rx, target, &stream.id, |seg| {
                if stream
                    .commands
                    .try_send(Command::Segment(seg.data))
                    .is_err()
                {
                    tracing::warn!(stream = %stream.id, "the stream is behind; ingest segment dropped");
                }
                std::future::ready(true)
            })
            .await;
            let _ = stream.commands.send(Command::IngestEnded).await;
        });
        Some(tx)
    }

    /// Start a stream of `job.capability`: pick, pay and start on an orchestrator, then hand
    /// it to its owner task.
    async fn start_ai_stream(
        &self,
        job: JobRequest,
        start: StreamStart,
    ) -> Result<StreamUrls, AiHttpError> {
        if !start.rtmp_output.is_empty() {
            return Err(err(
                501,
                "rtmp_output is not supported yet: watch the stream over HLS",
            ));
        }
        let id = if start.stream_id.is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else if valid_id(&start.stream_id) {
            start.stream_id.clone()
        } else {
            return Err(err(
                400,
                "stream_id must be 1 to 64 of A-Z, a-z, 0-9, `-`, `_`",
            ));
        };
        let config = self.streams_config().clone();
        {
            let map = self.ai_streams().map.lock();
            if map.contains_key(&id) {
                return Err(err(409, format!("stream `{id}` already exists")));
            }
            if map.len() >= config.max_streams {
                return Err(err(
                    503,
                    format!("{} streams are live (max_streams)", map.len()),
                ));
            }
        }
        let params = if start.params.is_null() {
            serde_json::json!({})
        } else {
            start.params.clone()
        };
        let mut owner = Owner {
            g: self.clone(),
            id: id.clone(),
            job,
            params: params.clone(),
            session: None,
            generation: 0,
            tried: Vec::new(),
            swaps: Vec::new(),
            stream: None,
            commands: None,
        };
        let session = owner.start_session().await?;
        let (commands, rx) = mpsc::channel(16);
        let (data, _) = broadcast::channel(256);
        let stream = Arc::new(AiStream {
            id: id.clone(),
            commands: commands.clone(),
            status: Mutex::new(Status {
                stream_id: id.clone(),
                capability: owner.job.capability.clone(),
                state: "running",
                orchestrator: Some(session.choice.url.clone()),
                swaps: 0,
                segments_in: 0,
                segments_out: 0,
                paid: session.paid,
                charged: 0,
                params,
                last_event: None,
                stop_reason: None,
                error: None,
            }),
            data,
        });
        let key = format!("{:032x}", rand::random::<u128>());
        let inserted = {
            let mut map = self.ai_streams().map.lock();
            if map.contains_key(&id) {
                false
            } else {
                map.insert(id.clone(), stream.clone());
                self.ai_streams()
                    .keys
                    .lock()
                    .insert(key.clone(), id.clone());
                true
            }
        };
        if !inserted {
            owner.session = Some(session);
            owner
                .stop_session("a stream with this id started meanwhile")
                .await;
            return Err(err(409, format!("stream `{id}` already exists")));
        }
        owner.stream = Some(stream);
        owner.commands = Some(commands);
        owner.attach(session);
        tokio::spawn(owner.run(rx, key.clone()));
        let public = self.inner.config.public_url.trim_end_matches('/');
        let base = format!("{public}/process/stream/{id}");
        Ok(StreamUrls {
            stream_id: id.clone(),
            rtmp_url: format!("{}/{key}", config.rtmp_base.trim_end_matches('/')),
            whip_url: String::new(),
            whep_url: String::new(),
            rtmp_output_url: String::new(),
            hls_url: format!("{public}/stream/{id}.m3u8"),
            update_url: format!("{base}/update"),
            status_url: format!("{base}/status"),
            data_url: format!("{base}/data"),
            stop_url: format!("{base}/stop"),
        })
    }
}

/// A stream running on one orchestrator.
struct Session {
    generation: u64,
    choice: Choice,
    channels: StreamChannels,
    input: Publisher,
    control: Publisher,
    readers: Vec<tokio::task::JoinHandle<()>>,
    last_paid: Instant,
    paid: u64,
    charged: u64,
}

/// The single owner of a gateway-side stream.
struct Owner {
    g: Gateway,
    id: String,
    job: JobRequest,
    params: serde_json::Value,
    session: Option<Session>,
    generation: u64,
    /// Orchestrators that failed this stream.
    tried: Vec<String>,
    /// When the stream was moved.
    swaps: Vec<Instant>,
    stream: Option<Arc<AiStream>>,
    commands: Option<mpsc::Sender<Command>>,
}

fn price_per_ms(p: UnitPrice) -> UnitPrice {
    UnitPrice {
        price_per_unit: p.price_per_unit,
        pixels_per_unit: p.pixels_per_unit.saturating_mul(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_section_has_defaults_and_refuses_typos() {
        let c: StreamsConfig = toml::from_str("").expect("defaults");
        assert_eq!(c, StreamsConfig::default());
        assert!(toml::from_str::<StreamsConfig>("pay_ahead = 3").is_err());
    }
}
