//! Live streams of BYOC capabilities on the orchestrator.
//!
//! `POST /ai/stream/start` (or Livepeer's `POST /live-video-to-video`) creates the stream's
//! trickle channels — input video, output video, control, events and JSONL data — each with a
//! publish and a subscribe token, so the gateway and the worker each get only the side they
//! need ([`open`]). An external worker is told where they are (`POST {url}/stream/start`,
//! [`worker`]); a pipeline component is run here, reading the input channel and publishing what
//! it returns ([`pipeline`]).
//!
//! Every stream has one owner task ([`owner`]): it holds the capacity slot, debits the sender's
//! balance per elapsed time, warns on the events channel when the balance runs out and stops
//! the stream on the next debit that still finds it short. Commands (update, stop, top-up,
//! status: [`commands`]) reach it over a channel.

mod commands;
mod open;
mod owner;
mod pipeline;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::AiHttpError;
use weir_trickle::ChannelGrant;

pub(crate) use commands::{status, stop, top_up, update};
pub(crate) use open::{live_video_to_video, start};

/// The trickle channels of one stream.
struct Channels {
    input: ChannelGrant,
    output: ChannelGrant,
    control: ChannelGrant,
    events: ChannelGrant,
    data: ChannelGrant,
}

impl Channels {
    fn all(&self) -> [&ChannelGrant; 5] {
        [
            &self.input,
            &self.output,
            &self.control,
            &self.events,
            &self.data,
        ]
    }
}

/// Where the outcome of a params update goes: `Ok(true)` when the pipeline applied them,
/// `Ok(false)` when they were handed on without an answer (to be published on the control
/// channel, for external workers).
type UpdateReply = oneshot::Sender<Result<bool, AiHttpError>>;

enum Command {
    /// New params; `defer_to_control`: for an external worker, do not forward them (the
    /// gateway publishes them on the control channel) and answer `Ok(false)`.
    Update(serde_json::Value, bool, UpdateReply),
    Stop(String, oneshot::Sender<()>),
}

/// A control message for the pipeline task, with where its outcome goes (none for messages
/// read from the control channel, which nobody waits on).
type ControlMessage = (String, Option<UpdateReply>);

/// Instance replacements allowed within [`RESTART_WINDOW`] before a stream is failed.
const MAX_RESTARTS: usize = 3;
/// The window [`MAX_RESTARTS`] counts in.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// What `GET /ai/stream/{id}/status` answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamStatus {
    stream_id: String,
    capability: String,
    state: &'static str,
    started_ms_ago: u64,
    charged: u64,
    balance: u64,
    segments_in: u64,
    segments_out: u64,
    errors: u64,
    last_error: Option<String>,
    stop_reason: Option<String>,
    /// Times a failed pipeline instance was replaced by a fresh one.
    restarts: u32,
    /// Why the stream failed (state `failed`).
    error: Option<String>,
    /// The params the pipeline accepted last (start params merged with applied updates).
    params: serde_json::Value,
}

struct Live {
    sender: String,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<StreamStatus>>,
    started: Instant,
}

/// The streams running on an orchestrator.
#[derive(Default)]
pub(crate) struct StreamTable {
    map: Mutex<HashMap<String, Live>>,
}

impl StreamTable {
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

fn json_response(body: impl Serialize) -> Response {
    Json(body).into_response()
}
