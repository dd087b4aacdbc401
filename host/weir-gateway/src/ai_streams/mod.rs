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
mod owner;
mod readers;
mod session;
mod start;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use weir_media::packet::IngestEvent;
use weir_payments::UnitPrice;
use weir_protocol::byoc::{JobRequest, StreamChannels};
use weir_protocol::AiHttpError;
use weir_trickle::Publisher;

use crate::config::GatewayConfig;
pub use crate::config::StreamsConfig;
use crate::dispatch::{Choice, Dispatcher};
use crate::seams::StreamOutputs;

/// What a stream's owner task is told: by the ingest, the HTTP routes and the session's
/// readers.
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

/// One live AI stream as the routes and the ingest see it: its owner task's commands, its
/// status and its data records.
struct AiStream {
    id: String,
    commands: mpsc::Sender<Command>,
    status: Mutex<Status>,
    data: broadcast::Sender<Arc<str>>,
}

/// The live AI streams of a gateway: the service that starts them, owns them while they run
/// and serves their routes.
pub(crate) struct AiStreams {
    config: Arc<GatewayConfig>,
    /// The shared path to orchestrators: selection, payments, the HTTP client.
    dispatcher: Arc<Dispatcher>,
    /// Where the streams' output is shown as HLS.
    outputs: Arc<dyn StreamOutputs>,
    map: Mutex<HashMap<String, Arc<AiStream>>>,
    /// RTMP stream key → stream id.
    keys: Mutex<HashMap<String, String>>,
}

impl AiStreams {
    /// The live AI streams of the gateway configured by `config`, reaching orchestrators
    /// through `dispatcher` and showing their output through `outputs`.
    pub(crate) fn new(
        config: Arc<GatewayConfig>,
        dispatcher: Arc<Dispatcher>,
        outputs: Arc<dyn StreamOutputs>,
    ) -> Arc<AiStreams> {
        Arc::new(AiStreams {
            config,
            dispatcher,
            outputs,
            map: Mutex::default(),
            keys: Mutex::default(),
        })
    }

    fn streams_config(&self) -> &StreamsConfig {
        &self.config.streams
    }

    /// The ingest of the AI stream keyed `key`, if there is one: its segments (cut by the one
    /// segmenter loop) go to the stream's owner task, dropped when the stream is behind.
    pub(crate) fn ai_ingest(&self, key: &str) -> Option<mpsc::Sender<IngestEvent>> {
        let id = self.keys.lock().get(key).cloned()?;
        let stream = self.map.lock().get(&id).cloned()?;
        let (tx, rx) = mpsc::channel::<IngestEvent>(1024);
        let target = self.config.live.segment;
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
    streams: Arc<AiStreams>,
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
