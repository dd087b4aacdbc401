//! Live streams of BYOC capabilities on the orchestrator.
//!
//! `POST /ai/stream/start` (or Livepeer's `POST /live-video-to-video`) creates the stream's
//! trickle channels — input video, output video, control, events and JSONL data — each with a
//! publish and a subscribe token, so the gateway and the worker each get only the side they
//! need. An external worker is told where they are (`POST {url}/stream/start`); a pipeline
//! component is run here, reading the input channel and publishing what it returns.
//!
//! Every stream has one owner task: it holds the capacity slot, debits the sender's balance per
//! elapsed time, warns on the events channel when the balance runs out and stops the stream on
//! the next debit that still finds it short. Commands (update, stop) reach it over a channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use weir_models::capacity::Slot;
use weir_payments::credit::{self, Payment};
use weir_payments::LedgerError;
use weir_protocol::byoc::{
    JobRequest, LiveVideoToVideo, StreamChannels, WorkerStreamStart, BYOC_MODEL,
    LIVEPEER_BALANCE_HEADER, STREAM_ID_HEADER,
};
use weir_protocol::info::BALANCE_HEADER;
use weir_protocol::AiHttpError;
use weir_runtime::{
    describe_guest_error, CallFailure, LoadedComponent, Param, ParamValue, PipelineStream,
    RuntimeError, StreamInfo, WorldKind,
};
use weir_trickle::{ChannelGrant, Publisher, Subscriber};

use crate::byoc::{debit_time, Backend, Debited, Offered};
use crate::server::{agreed_charge, err, Orchestrator};

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

fn valid_stream_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn json_response(body: impl Serialize) -> Response {
    Json(body).into_response()
}

/// `POST /ai/stream/start`: the `Livepeer` job header names the capability; the body holds the
/// start parameters (`{"params": …, "stream_id": …}` or the params themselves).
pub(crate) async fn start(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let job = JobRequest::from_headers(&headers)?;
        let body: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| err(400, format!("the body is not JSON: {e}")))?
        };
        let (params, stream_id) = match &body {
            serde_json::Value::Object(m)
                if m.contains_key("params") || m.contains_key("stream_id") =>
            {
                (
                    m.get("params").cloned().unwrap_or(serde_json::Value::Null),
                    m.get("stream_id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
            other => (other.clone(), String::new()),
        };
        let stream_id = if stream_id.is_empty() {
            serde_json::from_str::<serde_json::Value>(&job.request)
                .ok()
                .and_then(|r| {
                    r.get("stream_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        } else {
            stream_id
        };
        let payment = o.payment(&headers)?;
        open(
            &o,
            &job.capability,
            stream_id,
            params,
            job.request.clone(),
            &payment,
            &job.id,
        )
        .await
    };
    match run.await {
        Ok((channels, balance)) => {
            let mut r = json_response(&channels);
            let h = r.headers_mut();
            for (name, value) in [
                ("x-publish-url", &channels.publish_url),
                ("x-subscribe-url", &channels.subscribe_url),
                ("x-control-url", &channels.control_url),
                ("x-events-url", &channels.events_url),
                ("x-data-url", &channels.data_url),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.insert(name, v);
                }
            }
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Livepeer's `POST /live-video-to-video`: `{model_id, params, gateway_request_id, stream_id}`
/// with a payment; answers `{publish_url, subscribe_url, control_url, events_url, manifest_id}`.
pub(crate) async fn live_video_to_video(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let req: LiveVideoToVideo = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("not a live-video-to-video request: {e}")))?;
        let payment = o.payment(&headers)?;
        open(
            &o,
            &req.model_id,
            req.stream_id,
            req.params,
            String::new(),
            &payment,
            &req.gateway_request_id,
        )
        .await
    };
    match run.await {
        Ok((channels, balance)) => {
            let mut r = json_response(&channels);
            r.headers_mut()
                .insert(BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Start stream `stream_id` (generated when empty) of `capability` for the payment's sender.
async fn open(
    o: &Orchestrator,
    capability: &str,
    stream_id: String,
    params: serde_json::Value,
    request: String,
    payment: &credit::Payment,
    gateway_request_id: &str,
) -> Result<(StreamChannels, u64), AiHttpError> {
    let offered = o.byoc().get(capability)?;
    let account = credit::account(capability, BYOC_MODEL);
    if payment.account != account {
        return Err(err(
            402,
            format!(
                "the payment is for account `{}` but this stream is `{account}`",
                payment.account
            ),
        ));
    }
    let stream_id = if stream_id.is_empty() {
        format!("{:016x}", rand::random::<u64>())
    } else if valid_stream_id(&stream_id) {
        stream_id
    } else {
        return Err(err(
            400,
            "stream_id must be 1 to 64 of A-Z, a-z, 0-9, `-`, `_`",
        ));
    };
    let config = o.byoc().config();
    if o.streams().len() >= config.max_streams {
        return Err(err(
            503,
            format!("{} streams are running (max_streams)", o.streams().len()),
        ));
    }
    // Pay ahead: the stream starts only with `min_balance_secs` of price in the balance.
    let needed = agreed_charge(
        capability,
        &offered.quoted(),
        payment,
        config.min_balance_secs,
    )?;
    let ledger = o.ledger();
    let balance = ledger
        .credit(&payment.id, &payment.sender, &account, payment.amount)
        .await
        .map_err(|e| match e {
            LedgerError::Conflict(id) => err(402, format!("payment id `{id}` was already used")),
            other => err(500, format!("ledger: {other}")),
        })?
        .amount;
    if balance < needed {
        return Err(err(
            402,
            format!(
                "insufficient balance: sender {} holds {balance} for {account}, a stream needs {needed} ({} s of price) to start",
                payment.sender, config.min_balance_secs
            ),
        ));
    }
    let slot = offered.slot()?;
    let prefix = format!("{stream_id}-{:08x}", rand::random::<u32>());
    let trickle = o.trickle();
    let create = |suffix: &str, mime: &str| {
        trickle
            .create(&format!("{prefix}{suffix}"), mime)
            .map_err(|e| err(503, format!("trickle channel: {e}")))
    };
    let mut made = Vec::new();
    let channels = (|| {
        let input = create("", "video/MP2T")?;
        made.push(input.name.clone());
        let output = create("-out", "video/MP2T")?;
        made.push(output.name.clone());
        let control = create("-control", "application/json")?;
        made.push(control.name.clone());
        let events = create("-events", "application/json")?;
        made.push(events.name.clone());
        let data = create("-data", "application/jsonl")?;
        made.push(data.name.clone());
        Ok::<_, AiHttpError>(Channels {
            input,
            output,
            control,
            events,
            data,
        })
    })();
    let channels = match channels {
        Ok(c) => c,
        Err(e) => {
            for name in made {
                trickle.close(&name);
            }
            return Err(e);
        }
    };
    let base = o.service_url();
    // The worker reads input and control, writes output, events and data.
    let worker_side = WorkerStreamStart {
        gateway_request_id: gateway_request_id.to_owned(),
        stream_id: stream_id.clone(),
        subscribe_url: channels.input.subscribe_url(base),
        publish_url: channels.output.publish_url(base),
        control_url: channels.control.subscribe_url(base),
        events_url: channels.events.publish_url(base),
        data_url: channels.data.publish_url(base),
        params: params.clone(),
        request,
    };
    let gateway_side = StreamChannels {
        publish_url: channels.input.publish_url(base),
        subscribe_url: channels.output.subscribe_url(base),
        control_url: channels.control.publish_url(base),
        events_url: channels.events.subscribe_url(base),
        data_url: channels.data.subscribe_url(base),
        manifest_id: prefix.clone(),
    };
    let started = match &offered.backend {
        Backend::Worker { url, token } => {
            start_worker(o, &offered, url, token.as_deref(), &worker_side)
                .await
                .map(|()| None)
        }
        Backend::Pipeline { component } => {
            start_pipeline(o, component, &stream_id, capability, &params)
                .await
                .map(Some)
        }
    };
    let pipeline = match started {
        Ok(p) => p,
        Err(e) => {
            for c in channels.all() {
                trickle.close(&c.name);
            }
            return Err(e);
        }
    };
    let status = Arc::new(Mutex::new(StreamStatus {
        stream_id: stream_id.clone(),
        capability: capability.to_owned(),
        state: "running",
        started_ms_ago: 0,
        charged: 0,
        balance,
        segments_in: 0,
        segments_out: 0,
        errors: 0,
        last_error: None,
        stop_reason: None,
        restarts: 0,
        error: None,
        params: params.clone(),
    }));
    let (commands, rx) = mpsc::channel(16);
    let inserted = {
        let mut map = o.streams().map.lock();
        if map.contains_key(&stream_id) {
            false
        } else {
            map.insert(
                stream_id.clone(),
                Live {
                    sender: payment.sender.clone(),
                    commands,
                    status: status.clone(),
                    started: Instant::now(),
                },
            );
            true
        }
    };
    if !inserted {
        for c in channels.all() {
            trickle.close(&c.name);
        }
        if let Some(p) = pipeline {
            tokio::task::spawn_blocking(move || p.stop());
        } else if let Backend::Worker { url, token } = &offered.backend {
            stop_worker(o, url, token.as_deref(), &stream_id).await;
        }
        return Err(err(409, format!("stream `{stream_id}` is already running")));
    }
    tracing::info!(stream = %stream_id, capability, sender = %payment.sender, balance, "stream started");
    let owner = Owner {
        o: o.clone(),
        stream_id,
        sender: payment.sender.clone(),
        account,
        offered,
        channels,
        status,
        _slot: slot,
    };
    tokio::spawn(owner.run(rx, pipeline, worker_side));
    Ok((gateway_side, balance))
}

async fn start_worker(
    o: &Orchestrator,
    offered: &Offered,
    url: &str,
    token: Option<&str>,
    start: &WorkerStreamStart,
) -> Result<(), AiHttpError> {
    let mut request = o
        .byoc()
        .client
        .post(format!("{url}/stream/start"))
        .header(STREAM_ID_HEADER, &start.stream_id)
        .timeout(o.byoc().config().worker_timeout())
        .json(start);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status == 401 || status == 403 {
                offered.worker_failed("the worker refused the orchestrator's token");
            }
            Err(err(
                502,
                format!(
                    "the worker refused the stream ({status}): {}",
                    &text[..text.len().min(300)]
                ),
            ))
        }
        Err(e) => {
            offered.worker_failed(&e.to_string());
            Err(err(
                502,
                format!("the worker did not start the stream: {e}"),
            ))
        }
    }
}

async fn stop_worker(o: &Orchestrator, url: &str, token: Option<&str>, stream_id: &str) {
    let mut request = o
        .byoc()
        .client
        .post(format!("{url}/stream/stop"))
        .header(STREAM_ID_HEADER, stream_id)
        .timeout(o.byoc().config().worker_timeout())
        .json(&serde_json::json!({ "stream_id": stream_id }));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            tracing::warn!(stream = %stream_id, status = %r.status(), "the worker refused to stop the stream")
        }
        Err(e) => {
            tracing::warn!(stream = %stream_id, error = %e, "could not tell the worker to stop")
        }
    }
}

/// JSON start params as the pipeline's typed params (nested values as JSON text).
fn params_of(params: &serde_json::Value) -> Vec<Param> {
    let serde_json::Value::Object(map) = params else {
        return Vec::new();
    };
    map.iter()
        .map(|(k, v)| Param {
            name: k.clone(),
            value: match v {
                serde_json::Value::Bool(b) => ParamValue::Flag(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => ParamValue::Integer(i),
                    None => ParamValue::Number(n.as_f64().unwrap_or(0.0)),
                },
                serde_json::Value::String(s) => ParamValue::Text(s.clone()),
                other => ParamValue::Text(other.to_string()),
            },
        })
        .collect()
}

async fn start_pipeline(
    o: &Orchestrator,
    component: &str,
    stream_id: &str,
    capability: &str,
    params: &serde_json::Value,
) -> Result<PipelineStream, AiHttpError> {
    let loaded = o
        .registry()
        .get_world(component, WorldKind::Pipeline)
        .map_err(|e| err(503, format!("pipeline component `{component}`: {e}")))?;
    let info = StreamInfo {
        id: stream_id.to_owned(),
        capability: capability.to_owned(),
        params: params_of(params),
    };
    tokio::task::spawn_blocking(move || loaded.start_stream(info))
        .await
        .map_err(|e| err(500, format!("the pipeline crashed: {e}")))?
        .map_err(|e| err(422, format!("the pipeline refused the stream: {e}")))
}

/// The single owner of a running stream's state.
struct Owner {
    o: Orchestrator,
    stream_id: String,
    sender: String,
    account: String,
    offered: Arc<Offered>,
    channels: Channels,
    status: Arc<Mutex<StreamStatus>>,
    _slot: Slot,
}

impl Owner {
    async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        pipeline: Option<PipelineStream>,
        worker_side: WorkerStreamStart,
    ) {
        let base = self.o.service_url().to_owned();
        let client = self.o.byoc().client.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (updates_tx, updates_rx) = mpsc::channel::<ControlMessage>(16);
        let (events, events_writer) = Events::spawn(Publisher::new(
            client.clone(),
            self.channels.events.publish_url(&base),
        ));
        let (capability, params) = {
            let s = self.status.lock();
            (s.capability.clone(), s.params.clone())
        };
        let media = pipeline.map(|p| {
            let m = PipelineMedia {
                component: p.component().clone(),
                capability,
                params,
                restarts: Vec::new(),
                client: client.clone(),
                input: self.channels.input.subscribe_url(&base),
                output: self.channels.output.publish_url(&base),
                control: self.channels.control.subscribe_url(&base),
                events: events.clone(),
                status: self.status.clone(),
                max_segment: self.o.byoc().config().max_segment_bytes,
                stream_id: self.stream_id.clone(),
            };
            tokio::spawn(m.run(p, stop_rx, updates_rx))
        });
        let interval = self.o.byoc().config().debit_interval();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_debit = Instant::now();
        let mut ticks = 0u64;
        let mut warned = false;
        let mut media = media;
        let mut done_reply = None;
        let mut failed = false;
        let mut progress = self.progress();
        let reason = loop {
            tokio::select! {
                _ = tick.tick() => {
                    ticks += 1;
                    let ms = last_debit.elapsed().as_millis() as u64;
                    let now = self.progress();
                    let failing = now.1 > progress.1 && now.0 == progress.0;
                    progress = now;
                    if failing {
                        // The pipeline only failed since the last debit: that time is free.
                        tracing::debug!(stream = %self.stream_id, ms, "no output, only errors: not debited");
                        last_debit = Instant::now();
                        continue;
                    }
                    match self.debit(ticks, ms).await {
                        Ok(()) => {
                            last_debit = Instant::now();
                            warned = false;
                        }
                        Err(Some(short)) if !warned => {
                            warned = true;
                            tracing::warn!(stream = %self.stream_id, "balance exhausted; warned");
                            events.publish(serde_json::json!({
                                "type": "warning",
                                "stream_id": self.stream_id,
                                "message": format!("insufficient balance: {short}; the stream stops at the next debit unless topped up"),
                            })).await;
                        }
                        Err(Some(short)) => break format!("insufficient balance: {short}"),
                        Err(None) => {}
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Update(params, defer, reply)) => {
                        self.update(&worker_side, params, defer, reply, &updates_tx).await;
                    }
                    Some(Command::Stop(why, reply)) => {
                        done_reply = Some(reply);
                        break why;
                    }
                    None => break "the orchestrator is shutting down".to_owned(),
                },
                ended = async { match media.as_mut() { Some(m) => m.await, None => std::future::pending().await } }, if media.is_some() => {
                    media = None;
                    failed = true;
                    match ended {
                        Ok(Ended { reason, failed: f }) => {
                            failed = f;
                            break reason;
                        }
                        Err(e) => break format!("the pipeline task failed: {e}"),
                    }
                }
            }
        };
        // Charge the time since the last debit (unless the pipeline failed: nothing came out
        // of it at the end), then tear everything down.
        if !failed {
            ticks += 1;
            let _ = self
                .debit(ticks, last_debit.elapsed().as_millis() as u64)
                .await;
        }
        let _ = stop_tx.send(true);
        if let Some(m) = media {
            let _ = m.await;
        }
        if let Backend::Worker { url, token } = &self.offered.backend {
            stop_worker(&self.o, url, token.as_deref(), &self.stream_id).await;
        }
        let restarts = self.status.lock().restarts;
        let mut stopped = serde_json::json!({"type": "stopped", "stream_id": self.stream_id, "reason": reason, "restarts": restarts});
        if failed {
            stopped["failed"] = true.into();
            stopped["error"] = reason.clone().into();
        }
        events.publish(stopped).await;
        // The pipeline task has ended, so this was the last sender: the writer drains and ends.
        drop(events);
        if tokio::time::timeout(Duration::from_secs(5), events_writer)
            .await
            .is_err()
        {
            tracing::warn!(stream = %self.stream_id, "the events writer did not finish in 5 s");
        }
        {
            let mut s = self.status.lock();
            s.state = if failed { "failed" } else { "stopped" };
            s.stop_reason = Some(reason.clone());
            if failed {
                s.error = Some(reason.clone());
            }
        }
        // Let subscribers read the last event before the channels go.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for c in self.channels.all() {
            self.o.trickle().close(&c.name);
        }
        self.o.streams().map.lock().remove(&self.stream_id);
        tracing::info!(stream = %self.stream_id, %reason, "stream stopped");
        if let Some(reply) = done_reply {
            let _ = reply.send(());
        }
    }

    /// Debit `ms` of stream time. `Err(Some(why))` when the balance is short.
    async fn debit(&self, tick: u64, ms: u64) -> Result<(), Option<String>> {
        let id = format!("stream-{}-{}-{tick}", self.stream_id, self.o.boot_id());
        match debit_time(&self.o, &id, &self.sender, &self.account, &self.offered, ms).await {
            Debited::Charged { cost, balance } => {
                let mut s = self.status.lock();
                s.charged += cost;
                s.balance = balance;
                Ok(())
            }
            Debited::Short { balance, needed } => {
                self.status.lock().balance = balance;
                Err(Some(format!(
                    "sender {} holds {balance} for {}, {ms} ms cost {needed}",
                    self.sender, self.account
                )))
            }
            Debited::Failed => Err(None),
        }
    }

    /// Output segments and errors so far (what tells a failing pipeline from a working one).
    fn progress(&self) -> (u64, u64) {
        let s = self.status.lock();
        (s.segments_out, s.errors)
    }

    /// Deliver new params and answer `reply`: a pipeline answers once `on-control` returned
    /// (its refusal is the answer); an external worker gets them over `POST /stream/params`,
    /// or not at all when `defer` (the gateway publishes them on the control channel).
    async fn update(
        &self,
        worker_side: &WorkerStreamStart,
        params: serde_json::Value,
        defer: bool,
        reply: UpdateReply,
        pipeline: &mpsc::Sender<ControlMessage>,
    ) {
        let r = match &self.offered.backend {
            Backend::Worker { .. } if defer => Ok(false),
            Backend::Worker { url, token } => {
                let mut request = self
                    .o
                    .byoc()
                    .client
                    .post(format!("{url}/stream/params"))
                    .header(STREAM_ID_HEADER, &worker_side.stream_id)
                    .timeout(self.o.byoc().config().worker_timeout())
                    .json(&params);
                if let Some(t) = token {
                    request = request.bearer_auth(t);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        self.status.lock().params = params;
                        Ok(true)
                    }
                    Ok(r) => Err(err(
                        502,
                        format!("the worker refused the params ({})", r.status()),
                    )),
                    Err(e) => Err(err(502, format!("the worker is unreachable: {e}"))),
                }
            }
            Backend::Pipeline { .. } => {
                // The pipeline task answers once `on-control` returned.
                if let Err(mpsc::error::SendError((_, Some(reply)))) =
                    pipeline.send((params.to_string(), Some(reply))).await
                {
                    let _ = reply.send(Err(err(409, "the stream's pipeline has stopped")));
                }
                return;
            }
        };
        let _ = reply.send(r);
    }
}

/// The one writer of a stream's events channel. The owner and the pipeline task both send
/// here, so events keep the order they were sent in under a single seq counter (two
/// publishers on one channel would overwrite each other's segments).
#[derive(Clone)]
struct Events(mpsc::Sender<serde_json::Value>);

impl Events {
    /// A writer task over `publisher`; it ends when every [`Events`] is dropped.
    fn spawn(mut publisher: Publisher) -> (Events, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(64);
        let writer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Err(e) = publisher.write(Bytes::from(event.to_string())).await {
                    tracing::debug!(error = %e, "event not published");
                }
            }
        });
        (Events(tx), writer)
    }

    async fn publish(&self, event: serde_json::Value) {
        // Fails only once the writer has gone, when nobody reads events any more.
        let _ = self.0.send(event).await;
    }
}

/// Runs a pipeline component over a stream's channels.
struct PipelineMedia {
    /// The component version the stream started on; failed instances are replaced from it.
    component: Arc<LoadedComponent>,
    capability: String,
    /// The start params merged with every update the pipeline accepted.
    params: serde_json::Value,
    /// When failed instances were replaced (within [`RESTART_WINDOW`]).
    restarts: Vec<Instant>,
    client: reqwest::Client,
    input: String,
    output: String,
    control: String,
    events: Events,
    status: Arc<Mutex<StreamStatus>>,
    max_segment: usize,
    stream_id: String,
}

/// How a pipeline task ended.
struct Ended {
    reason: String,
    /// The pipeline failed (as opposed to a stop or the end of the input).
    failed: bool,
}

/// Whether a failed call discarded the stream's instance (every failure but a guest's own
/// error does).
fn instance_lost(e: &RuntimeError) -> bool {
    !matches!(
        e,
        RuntimeError::Call {
            failure: CallFailure::Guest(_),
            ..
        }
    )
}

/// Whether a control message is Livepeer's keepalive.
fn keepalive(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("keep").and_then(|k| k.as_str()) == Some("alive"))
}

/// `params` with the keys of the JSON object `update` set over them.
fn merged(params: &serde_json::Value, update: &str) -> Option<serde_json::Value> {
    let serde_json::Value::Object(update) = serde_json::from_str(update).ok()? else {
        return None;
    };
    let mut out = match params {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    out.extend(update);
    Some(serde_json::Value::Object(out))
}

/// What one message did: the stream back (`None`: its instance is gone) and the error, if any.
type Handled = (Option<PipelineStream>, Option<String>);

impl PipelineMedia {
    /// Until the input ends, `stop` is set or the pipeline fails for good: each input segment
    /// through `on-segment`, each control message through `on-control`; a failed instance is
    /// replaced up to [`MAX_RESTARTS`] times within [`RESTART_WINDOW`].
    async fn run(
        mut self,
        stream: PipelineStream,
        mut stop: watch::Receiver<bool>,
        mut updates: mpsc::Receiver<ControlMessage>,
    ) -> Ended {
        let mut stream = Some(stream);
        let mut input = Subscriber::new(self.client.clone(), self.input.clone()).starting_at(0);
        let mut control = Subscriber::new(self.client.clone(), self.control.clone()).starting_at(0);
        let mut output = Publisher::new(self.client.clone(), self.output.clone());
        let mut failures = 0u32;
        let mut control_open = true;
        let ended = loop {
            let message = tokio::select! {
                _ = stop.changed() => break Ended { reason: "stopped".to_owned(), failed: false },
                seg = input.next() => match seg {
                    Ok(Some(seg)) => {
                        let seq = seg.seq();
                        match seg.bytes(self.max_segment).await {
                            Ok(data) => Message::Segment(seq, data),
                            Err(e) => Message::Bad(format!("input segment {seq}: {e}")),
                        }
                    }
                    Ok(None) => break Ended { reason: "the input ended".to_owned(), failed: false },
                    Err(e) => Message::Bad(format!("input: {e}")),
                },
                msg = control.next(), if control_open => match msg {
                    Ok(Some(m)) => match m.bytes(64 * 1024).await {
                        Ok(b) => Message::Control(String::from_utf8_lossy(&b).into_owned(), None),
                        Err(e) => Message::Bad(format!("control: {e}")),
                    },
                    Ok(None) | Err(_) => {
                        // Control is optional: stop reading it, keep the media going.
                        control_open = false;
                        continue;
                    }
                },
                Some((text, reply)) = updates.recv() => Message::Control(text, reply),
            };
            let Some(s) = stream.take() else {
                break Ended {
                    reason: "the pipeline instance is gone".to_owned(),
                    failed: true,
                };
            };
            let (back, outcome) = self.handle(s, message, &mut output).await;
            stream = back;
            let Some(why) = outcome else {
                failures = 0;
                self.publish_status().await;
                continue;
            };
            failures += 1;
            self.record_error(&why).await;
            if stream.is_none() {
                match self.replace(why).await {
                    Ok(fresh) => stream = Some(fresh),
                    Err(reason) => {
                        break Ended {
                            reason,
                            failed: true,
                        }
                    }
                }
            } else if failures >= 10 {
                break Ended {
                    reason: format!("10 errors in a row; last: {why}"),
                    failed: true,
                };
            }
        };
        if let Some(s) = stream {
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.stop()).await {
                tracing::warn!(stream = %self.stream_id, error = %e, "on-stop failed");
            }
        }
        if let Err(e) = output.close().await {
            tracing::debug!(error = %e, "output channel already closed");
        }
        ended
    }

    async fn handle(
        &mut self,
        s: PipelineStream,
        message: Message,
        output: &mut Publisher,
    ) -> Handled {
        match message {
            Message::Segment(seq, data) => self.segment(s, seq, data, output).await,
            Message::Control(text, None) if keepalive(&text) => (Some(s), None),
            Message::Control(text, reply) => self.control(s, text, reply).await,
            Message::Bad(why) => (Some(s), Some(why)),
        }
    }

    async fn segment(
        &self,
        mut s: PipelineStream,
        seq: u64,
        data: Bytes,
        output: &mut Publisher,
    ) -> Handled {
        self.status.lock().segments_in += 1;
        let r = tokio::task::spawn_blocking(move || {
            let duration_ms = weir_media::transcode::probe(&data)
                .map(|i| u32::try_from(i.duration_ms).unwrap_or(u32::MAX))
                .unwrap_or(2000);
            let segment = weir_runtime::media::Segment {
                seq,
                duration_ms,
                content_type: "video/mp2t".to_owned(),
                data: data.to_vec().into(),
            };
            let r = s.on_segment(segment);
            (s, r)
        })
        .await;
        match r {
            Ok((s, Ok(out))) => {
                let mut sent = 0;
                let mut publish_error = None;
                for seg in out {
                    match output.write(Bytes::copy_from_slice(&seg.data)).await {
                        Ok(_) => sent += 1,
                        Err(e) => publish_error = Some(e.to_string()),
                    }
                }
                self.status.lock().segments_out += sent;
                (
                    Some(s),
                    publish_error.map(|e| format!("output segment not published: {e}")),
                )
            }
            Ok((s, Err(e))) => {
                let lost = instance_lost(&e);
                ((!lost).then_some(s), Some(format!("segment {seq}: {e}")))
            }
            Err(e) => (None, Some(format!("the pipeline crashed: {e}"))),
        }
    }

    /// `on-control`; its outcome goes to `reply` when someone waits for it. A refusal with a
    /// reply is the caller's answer, not a pipeline error.
    async fn control(
        &mut self,
        mut s: PipelineStream,
        text: String,
        reply: Option<UpdateReply>,
    ) -> Handled {
        let message = text.clone();
        let waited = reply.is_some();
        let r = tokio::task::spawn_blocking(move || {
            let r = s.on_control(&message);
            (s, r)
        })
        .await;
        let answer = |r: Result<bool, AiHttpError>| {
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        };
        match r {
            Ok((s, Ok(()))) => {
                if let Some(params) = merged(&self.params, &text) {
                    self.params = params.clone();
                    self.status.lock().params = params;
                }
                answer(Ok(true));
                self.events
                    .publish(
                        serde_json::json!({"type": "params_applied", "stream_id": self.stream_id}),
                    )
                    .await;
                (Some(s), None)
            }
            Ok((s, Err(e))) if !instance_lost(&e) => {
                let message = match &e {
                    RuntimeError::Call {
                        failure: CallFailure::Guest(g),
                        ..
                    } => describe_guest_error(g),
                    other => other.to_string(),
                };
                answer(Err(err(
                    422,
                    format!("the pipeline refused the params: {message}"),
                )));
                (Some(s), (!waited).then(|| format!("control: {e}")))
            }
            Ok((_, Err(e))) => {
                answer(Err(err(
                    500,
                    format!("the pipeline failed on the params: {e}"),
                )));
                (None, Some(format!("control: {e}")))
            }
            Err(e) => {
                answer(Err(err(500, "the pipeline crashed on the params")));
                (None, Some(format!("the pipeline crashed: {e}")))
            }
        }
    }

    async fn publish_status(&self) {
        let (i, out) = {
            let s = self.status.lock();
            (s.segments_in, s.segments_out)
        };
        self.events
            .publish(serde_json::json!({"type": "status", "stream_id": self.stream_id, "segments_in": i, "segments_out": out}))
            .await;
    }

    async fn record_error(&self, why: &str) {
        tracing::warn!(stream = %self.stream_id, error = %why, "pipeline error");
        {
            let mut s = self.status.lock();
            s.errors += 1;
            s.last_error = Some(why.to_owned());
        }
        self.events
            .publish(
                serde_json::json!({"type": "error", "stream_id": self.stream_id, "message": why}),
            )
            .await;
    }

    /// A fresh instance started (`on-start`) with the stream's info and the params accepted
    /// last, or why the stream must fail: its instances failed too often.
    async fn replace(&mut self, mut why: String) -> Result<PipelineStream, String> {
        loop {
            self.restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
            if self.restarts.len() >= MAX_RESTARTS {
                return Err(format!(
                    "the pipeline failed after {MAX_RESTARTS} instance replacements within {} s; last error: {why}",
                    RESTART_WINDOW.as_secs()
                ));
            }
            self.restarts.push(Instant::now());
            let restarts = {
                let mut s = self.status.lock();
                s.restarts += 1;
                s.restarts
            };
            tracing::warn!(stream = %self.stream_id, restarts, error = %why, "replacing the failed pipeline instance");
            let info = StreamInfo {
                id: self.stream_id.clone(),
                capability: self.capability.clone(),
                params: params_of(&self.params),
            };
            let component = self.component.clone();
            match tokio::task::spawn_blocking(move || component.start_stream(info)).await {
                Ok(Ok(fresh)) => {
                    self.events
                        .publish(serde_json::json!({"type": "restarted", "stream_id": self.stream_id, "restarts": restarts, "error": why}))
                        .await;
                    return Ok(fresh);
                }
                Ok(Err(e)) => why = format!("restart: {e}"),
                Err(e) => why = format!("restart crashed: {e}"),
            }
            self.record_error(&why).await;
        }
    }
}

enum Message {
    Segment(u64, Bytes),
    Control(String, Option<UpdateReply>),
    Bad(String),
}

fn stream_id_of(headers: &HeaderMap, body: &[u8]) -> Result<String, AiHttpError> {
    if let Some(id) = headers.get(STREAM_ID_HEADER).and_then(|v| v.to_str().ok()) {
        return Ok(id.to_owned());
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("stream_id")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            err(
                400,
                "name the stream: X-Stream-Id header or `stream_id` in the body",
            )
        })
}

/// A running stream a command names (by `X-Stream-Id` or `stream_id` in the body), checked to
/// belong to the sender of the request's payment.
struct Named {
    payment: Payment,
    commands: mpsc::Sender<Command>,
    capability: String,
}

fn named_stream(o: &Orchestrator, headers: &HeaderMap, body: &[u8]) -> Result<Named, AiHttpError> {
    let id = stream_id_of(headers, body)?;
    let map = o.streams().map.lock();
    let live = map
        .get(&id)
        .ok_or_else(|| err(404, format!("no stream `{id}` runs here")))?;
    let payment = o.payment(headers)?;
    if payment.sender != live.sender {
        return Err(err(403, "the stream belongs to another sender"));
    }
    let capability = live.status.lock().capability.clone();
    Ok(Named {
        payment,
        commands: live.commands.clone(),
        capability,
    })
}

/// `ok`, or the error in the AI error shape.
fn ok_or_error(r: Result<(), AiHttpError>) -> Response {
    match r {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ai/stream/update`: new params for a running stream (a payment header authenticates
/// the sender). A pipeline's `on-control` answers: `{"ok":true,"applied":true}` once it
/// accepted them, its refusal (422) otherwise. With `"defer_to_control": true` in the body, an
/// external worker's params are not forwarded (`"applied":false`): the caller publishes them on
/// the control channel.
pub(crate) async fn update(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let body_json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("the params are not JSON: {e}")))?;
        let named = named_stream(&o, &headers, &body)?;
        let defer = body_json
            .get("defer_to_control")
            .and_then(|d| d.as_bool())
            .unwrap_or(false);
        let params = body_json.get("params").cloned().unwrap_or(body_json);
        let (tx, rx) = oneshot::channel();
        named
            .commands
            .send(Command::Update(params, defer, tx))
            .await
            .map_err(|_| err(409, "the stream is stopping"))?;
        rx.await.map_err(|_| err(409, "the stream is stopping"))?
    };
    match run.await {
        Ok(applied) => json_response(serde_json::json!({"ok": true, "applied": applied})),
        Err(e) => e.into_response(),
    }
}

/// `POST /ai/stream/stop`.
pub(crate) async fn stop(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ok_or_error(
        async {
            let named = named_stream(&o, &headers, &body)?;
            let (tx, rx) = oneshot::channel();
            if named
                .commands
                .send(Command::Stop("stopped by the gateway".to_owned(), tx))
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
            }
            Ok(())
        }
        .await,
    )
}

/// `POST /ai/stream/payment`: a top-up for a running stream's balance.
pub(crate) async fn top_up(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let Named {
            payment: p,
            capability,
            ..
        } = named_stream(&o, &headers, &body)?;
        let account = credit::account(&capability, BYOC_MODEL);
        if p.account != account {
            return Err(err(
                402,
                format!(
                    "the payment is for `{}`, the stream is `{account}`",
                    p.account
                ),
            ));
        }
        let balance = o
            .ledger()
            .credit(&p.id, &p.sender, &account, p.amount)
            .await
            .map_err(|e| err(402, format!("payment refused: {e}")))?
            .amount;
        Ok(balance)
    };
    match run.await {
        Ok(balance) => {
            let mut r = json_response(serde_json::json!({ "balance": balance }));
            r.headers_mut()
                .insert(BALANCE_HEADER, HeaderValue::from(balance));
            r.headers_mut()
                .insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /ai/stream/{id}/status`, for the stream's sender only: a `Weir-Payment` header (any
/// amount, 0 included; nothing is credited) proves who asks, as on update and stop.
pub(crate) async fn status(
    State(o): State<Orchestrator>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let asker = match o.payment(&headers) {
        Ok(p) => p.sender,
        Err(e) => return e.into_response(),
    };
    let map = o.streams().map.lock();
    match map.get(&id) {
        Some(live) if live.sender != asker => {
            err(403, "the stream belongs to another sender").into_response()
        }
        Some(live) => {
            let mut s = live.status.lock().clone();
            s.started_ms_ago = live.started.elapsed().as_millis() as u64;
            json_response(s)
        }
        None => err(404, format!("no stream `{id}` runs here")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_typed() {
        let p = params_of(
            &serde_json::json!({"height": 360, "mode": "fast", "on": true, "x": 1.5, "o": {"a": 1}}),
        );
        let get = |n: &str| p.iter().find(|x| x.name == n).map(|x| x.value.clone());
        assert!(matches!(get("height"), Some(ParamValue::Integer(360))));
        assert!(matches!(get("mode"), Some(ParamValue::Text(t)) if t == "fast"));
        assert!(matches!(get("on"), Some(ParamValue::Flag(true))));
        assert!(matches!(get("x"), Some(ParamValue::Number(f)) if f == 1.5));
        assert!(matches!(get("o"), Some(ParamValue::Text(t)) if t == "{\"a\":1}"));
        assert!(params_of(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn keepalives_are_recognized() {
        assert!(keepalive(r#"{"keep":"alive"}"#));
        assert!(!keepalive(r#"{"height":3}"#));
        assert!(!keepalive("nope"));
    }

    #[test]
    fn stream_ids_are_checked() {
        assert!(valid_stream_id("abc-123_X"));
        assert!(!valid_stream_id(""));
        assert!(!valid_stream_id("a/b"));
        assert!(!valid_stream_id(&"x".repeat(65)));
    }
}
