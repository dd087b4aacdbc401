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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use weir_media::packet::IngestEvent;
use weir_media::segmenter::Segmenter;
use weir_payments::UnitPrice;
use weir_protocol::byoc::{
    JobRequest, StreamChannels, StreamStart, StreamUrls, BYOC_MODEL, JOB_HEADER, STREAM_ID_HEADER,
};
use weir_protocol::info::{BALANCE_HEADER, PAYMENT_HEADER};
use weir_protocol::AiHttpError;
use weir_trickle::{Publisher, Subscriber, TrickleError};

use crate::server::{err, error_message, Choice, Gateway};

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

    /// The RTMP ingest of AI stream keyed `key`, if there is one.
    pub(crate) fn ai_ingest(&self, key: &str) -> Option<mpsc::Sender<IngestEvent>> {
        let id = self.ai_streams().keys.lock().get(key).cloned()?;
        let stream = self.ai_streams().map.lock().get(&id).cloned()?;
        let (tx, mut rx) = mpsc::channel::<IngestEvent>(1024);
        let target = self.inner.config.live.segment;
        tokio::spawn(async move {
            let mut segmenter = Segmenter::new(target);
            while let Some(event) = rx.recv().await {
                match segmenter.push(event) {
                    Ok(Some(seg)) => {
                        if stream
                            .commands
                            .try_send(Command::Segment(seg.data))
                            .is_err()
                        {
                            tracing::warn!(stream = %stream.id, "the stream is behind; ingest segment dropped");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(stream = %stream.id, error = %e, "bad media from the publisher; packet dropped")
                    }
                }
            }
            if let Ok(Some(seg)) = segmenter.finish() {
                let _ = stream.commands.send(Command::Segment(seg.data)).await;
            }
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

impl Owner {
    fn account(&self) -> String {
        weir_payments::credit::account(&self.job.capability, BYOC_MODEL)
    }

    /// Start the stream on the best orchestrator not yet tried.
    async fn start_session(&mut self) -> Result<Session, AiHttpError> {
        let g = self.g.clone();
        let config = g.streams_config().clone();
        let mut job = self.job.clone();
        job.sender = g.inner.payments.sender();
        let queue = g.choose_byoc(&job, config.pay_ahead_secs).await?;
        let mut failures = Vec::new();
        let untried: Vec<Choice> = queue
            .into_iter()
            .filter(|c| !self.tried.contains(&c.url))
            .collect();
        for choice in untried {
            let pending = g
                .inner
                .payments
                .prepare(
                    &choice.url,
                    &job.capability,
                    BYOC_MODEL,
                    config.pay_ahead_secs,
                    choice.price,
                )
                .await
                .map_err(|e| err(500, format!("gateway ledger: {e}")))?;
            let sent = g
                .inner
                .client
                .post(format!("{}/ai/stream/start", choice.url))
                .header(PAYMENT_HEADER, pending.header.as_str())
                .header(JOB_HEADER, job.to_header())
                .timeout(Duration::from_secs(config.start_timeout_secs.max(1)))
                .json(&serde_json::json!({"stream_id": self.id, "params": self.params}))
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    g.inner.payments.abandon(&pending).await;
                    g.inner.discovery.suspend(
                        &choice.url,
                        g.inner.config.suspend_for,
                        &e.to_string(),
                    );
                    failures.push(format!("{}: {e}", choice.url));
                    self.tried.push(choice.url.clone());
                    continue;
                }
            };
            let status = response.status();
            let balance = response
                .headers()
                .get(BALANCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = crate::server::read_capped(response).await;
            if !status.is_success() {
                g.inner.payments.abandon(&pending).await;
                let message = error_message(body.ok(), status);
                if matches!(status.as_u16(), 400 | 422) {
                    return Err(err(
                        status.as_u16(),
                        format!("orchestrator {} refused the stream: {message}", choice.url),
                    ));
                }
                failures.push(format!("{}: {status}: {message}", choice.url));
                self.tried.push(choice.url.clone());
                continue;
            }
            let channels = match body.map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<StreamChannels>(&b).map_err(|e| e.to_string())
            }) {
                Ok(c) if !c.publish_url.is_empty() && !c.control_url.is_empty() => c,
                Ok(_) | Err(_) => {
                    g.inner.payments.abandon(&pending).await;
                    failures.push(format!("{}: unreadable stream answer", choice.url));
                    self.tried.push(choice.url.clone());
                    continue;
                }
            };
            let paid = pending.topup;
            if let Err(e) = g.inner.payments.settle(&pending, Some(0), balance).await {
                tracing::error!(stream = %self.id, error = %e, "could not record the stream payment");
            }
            self.generation += 1;
            let client = g.inner.client.clone();
            tracing::info!(stream = %self.id, orchestrator = %choice.url, paid, "AI stream started on an orchestrator");
            return Ok(Session {
                generation: self.generation,
                input: Publisher::new(client.clone(), channels.publish_url.clone()),
                control: Publisher::new(client, channels.control_url.clone()),
                choice,
                channels,
                readers: Vec::new(),
                last_paid: Instant::now(),
                paid,
                charged: 0,
            });
        }
        Err(err(
            503,
            format!(
                "no orchestrator started the stream: {}",
                if failures.is_empty() {
                    "every one offering it failed this stream before".to_owned()
                } else {
                    failures.join("; ")
                }
            ),
        ))
    }

    /// Make `session` current and start its readers (output to HLS, events, data).
    fn attach(&mut self, mut session: Session) {
        let (Some(stream), Some(commands)) = (self.stream.clone(), self.commands.clone()) else {
            return;
        };
        let g = self.g.clone();
        let client = g.inner.client.clone();
        let generation = session.generation;
        let hls = g.open_ai_output(&self.id);
        // Output video → HLS.
        if !session.channels.subscribe_url.is_empty() {
            let (g, stream, commands, url) = (
                g.clone(),
                stream.clone(),
                commands.clone(),
                session.channels.subscribe_url.clone(),
            );
            let hls = hls.clone();
            session.readers.push(tokio::spawn(async move {
                let mut sub = Subscriber::new(client, url).starting_at(0);
                let outcome = loop {
                    match sub.next().await {
                        Ok(Some(seg)) => match seg.bytes(64 << 20).await {
                            Ok(data) => {
                                stream.status.lock().segments_out += 1;
                                if let Some((live, gen)) = &hls {
                                    g.list_ai_output(live, *gen, data).await;
                                }
                            }
                            Err(e) => tracing::warn!(stream = %stream.id, error = %e, "output segment lost"),
                        },
                        // A normal end: the events channel says why.
                        Ok(None) => break None,
                        Err(e) => break Some(format!("output: {e}")),
                    }
                };
                if let Some(why) = outcome {
                    let _ = commands
                        .send(Command::SessionEnded {
                            generation,
                            failed: true,
                            why,
                        })
                        .await;
                }
            }));
        }
        // Events → status; a `stopped` event ends the stream.
        {
            let (stream, commands, url) = (
                stream.clone(),
                commands.clone(),
                session.channels.events_url.clone(),
            );
            let client = g.inner.client.clone();
            session.readers.push(tokio::spawn(async move {
                let mut sub = Subscriber::new(client, url).starting_at(0);
                let ended = loop {
                    let seg = match sub.next().await {
                        Ok(Some(seg)) => seg,
                        Ok(None) | Err(TrickleError::NotFound | TrickleError::Closed) => {
                            break None
                        }
                        Err(e) => break Some(e),
                    };
                    let Ok(bytes) = seg.bytes(64 * 1024).await else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                        continue;
                    };
                    // pytrickle wraps its events: `{"event": {...}, "queue_event_type": …}`.
                    let inner = event
                        .get("event")
                        .filter(|e| e.is_object())
                        .unwrap_or(&event);
                    let kind = inner
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("")
                        .to_owned();
                    stream.status.lock().last_event = Some(event.clone());
                    if kind == "stopped" {
                        let why = inner
                            .get("reason")
                            .and_then(|r| r.as_str())
                            .unwrap_or("stopped by the orchestrator")
                            .to_owned();
                        if inner.get("failed").and_then(|f| f.as_bool()) == Some(true) {
                            let error = inner
                                .get("error")
                                .and_then(|e| e.as_str())
                                .unwrap_or(&why)
                                .to_owned();
                            stream.status.lock().error = Some(error);
                        }
                        let _ = commands
                            .send(Command::SessionEnded {
                                generation,
                                failed: false,
                                why,
                            })
                            .await;
                        return;
                    }
                };
                let Some(e) = ended else {
                    // An orderly close (the closed marker, or gone after it): whoever writes
                    // events stopped doing so; the media channels tell whether the stream is
                    // still alive.
                    tracing::info!(stream = %stream.id, "the events channel was closed");
                    return;
                };
                // The events channel failed without a `stopped` event: the orchestrator is
                // gone or lost the stream.
                let _ = commands
                    .send(Command::SessionEnded {
                        generation,
                        failed: true,
                        why: format!("the events channel failed without a stop: {e}"),
                    })
                    .await;
            }));
        }
        // JSONL data → server-sent events.
        if !session.channels.data_url.is_empty() {
            let (stream, url) = (stream.clone(), session.channels.data_url.clone());
            let client = g.inner.client.clone();
            session
                .readers
                .push(tokio::spawn(relay_data(client, url, stream)));
        }
        if let Some(stream) = &self.stream {
            let mut s = stream.status.lock();
            s.orchestrator = Some(session.choice.url.clone());
        }
        self.session = Some(session);
    }

    /// Pay for the time since the last payment and top the balance back up to the pay-ahead.
    async fn pay(&mut self) -> Result<(), String> {
        let g = self.g.clone();
        let pay_ahead = g.streams_config().pay_ahead_secs;
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let elapsed = session.last_paid.elapsed().as_millis() as u64;
        let price = session.choice.price;
        let charge = weir_payments::cost(elapsed, price_per_ms(price)).unwrap_or(0);
        let pending = g
            .inner
            .payments
            .prepare(
                &session.choice.url,
                &self.job.capability,
                BYOC_MODEL,
                pay_ahead,
                price,
            )
            .await?;
        let mut reported = None;
        if pending.topup > 0 {
            let sent = g
                .inner
                .client
                .post(format!("{}/ai/stream/payment", session.choice.url))
                .header(PAYMENT_HEADER, pending.header.as_str())
                .header(STREAM_ID_HEADER, self.id.as_str())
                .timeout(Duration::from_secs(5))
                .body("{}")
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    reported = r
                        .headers()
                        .get(BALANCE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                }
                Ok(r) => {
                    g.inner.payments.abandon(&pending).await;
                    return Err(format!("top-up refused: {}", r.status()));
                }
                Err(e) => {
                    g.inner.payments.abandon(&pending).await;
                    return Err(format!("top-up not delivered: {e}"));
                }
            }
        }
        let charge = charge.min(pending.cost);
        g.inner
            .payments
            .settle(&pending, Some(charge), reported)
            .await
            .map_err(|e| e.to_string())?;
        session.last_paid = Instant::now();
        session.paid += pending.topup;
        session.charged += charge;
        if let Some(stream) = &self.stream {
            let mut s = stream.status.lock();
            s.paid += pending.topup;
            s.charged += charge;
        }
        Ok(())
    }

    /// A zero payment signed by this gateway: how the orchestrator knows who asks.
    fn credentials(&self, session: &Session) -> String {
        self.g
            .inner
            .payments
            .authenticate(&self.account(), session.choice.price)
    }

    /// Pay what is due, stop the stream on the current orchestrator and drop the session.
    async fn stop_session(&mut self, why: &str) {
        if let Err(e) = self.pay().await {
            tracing::warn!(stream = %self.id, error = %e, "last stream payment not made");
        }
        let Some(session) = self.session.take() else {
            return;
        };
        let sent = self
            .g
            .inner
            .client
            .post(format!("{}/ai/stream/stop", session.choice.url))
            .header(PAYMENT_HEADER, self.credentials(&session))
            .header(STREAM_ID_HEADER, self.id.as_str())
            .timeout(Duration::from_secs(5))
            .body("{}")
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(stream = %self.id, error = %e, "stop not delivered");
        }
        for r in session.readers {
            r.abort();
        }
        tracing::info!(stream = %self.id, orchestrator = %session.choice.url, why, "AI stream left an orchestrator");
    }

    /// Hand `params` to the orchestrator (off this task: a pipeline answers once its
    /// `on-control` returned); its answer comes back as [`Command::Updated`], a refusal goes
    /// straight to `done`.
    fn update(&self, params: serde_json::Value, done: oneshot::Sender<Result<(), AiHttpError>>) {
        let (Some(session), Some(commands)) = (self.session.as_ref(), self.commands.clone()) else {
            let _ = done.send(Err(err(409, "the stream has no orchestrator right now")));
            return;
        };
        let request = self
            .g
            .inner
            .client
            .post(format!("{}/ai/stream/update", session.choice.url))
            .header(PAYMENT_HEADER, self.credentials(session))
            .header(STREAM_ID_HEADER, self.id.as_str())
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({"stream_id": self.id, "params": params, "defer_to_control": true}));
        let generation = session.generation;
        tokio::spawn(async move {
            let applied = match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let body = crate::server::read_capped(r).await.unwrap_or_default();
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|b| b.get("applied").and_then(|a| a.as_bool()))
                        .unwrap_or(false)
                }
                Ok(r) => {
                    let status = r.status();
                    let message = error_message(crate::server::read_capped(r).await.ok(), status);
                    let code = match status.as_u16() {
                        c @ (400 | 404 | 409 | 422) => c,
                        _ => 502,
                    };
                    let _ = done.send(Err(err(code, message)));
                    return;
                }
                Err(e) => {
                    let _ = done.send(Err(err(502, format!("params not delivered: {e}"))));
                    return;
                }
            };
            let updated = Command::Updated {
                generation,
                params,
                applied,
                done,
            };
            if let Err(mpsc::error::SendError(Command::Updated { done, .. })) =
                commands.send(updated).await
            {
                let _ = done.send(Err(err(409, "the stream has stopped")));
            }
        });
    }

    /// Record params the orchestrator took; publish them on the control channel first when it
    /// did not apply them itself (an external worker reads them there).
    async fn updated(
        &mut self,
        generation: u64,
        params: serde_json::Value,
        applied: bool,
    ) -> Result<(), AiHttpError> {
        let Some(session) = self.session.as_mut().filter(|s| s.generation == generation) else {
            return Err(err(
                409,
                "the stream moved to another orchestrator; send the params again",
            ));
        };
        if !applied {
            session
                .control
                .write(Bytes::from(params.to_string()))
                .await
                .map_err(|e| err(502, format!("params not delivered: {e}")))?;
        }
        self.params = params.clone();
        if let Some(stream) = &self.stream {
            stream.status.lock().params = params;
        }
        Ok(())
    }

    /// Move the stream to another orchestrator; `Err` when none takes it or it moved too often.
    async fn swap(&mut self, why: &str) -> Result<(), String> {
        let g = self.g.clone();
        let max = g.streams_config().max_swaps_per_minute;
        self.swaps.retain(|t| t.elapsed() < Duration::from_secs(60));
        if self.swaps.len() as u32 >= max {
            return Err(format!(
                "moved {max} times within a minute; last failure: {why}"
            ));
        }
        self.swaps.push(Instant::now());
        if let Some(session) = self.session.take() {
            for r in session.readers {
                r.abort();
            }
            g.inner
                .discovery
                .suspend(&session.choice.url, g.inner.config.suspend_for, why);
            self.tried.push(session.choice.url);
        }
        tracing::warn!(stream = %self.id, why, "moving the stream to another orchestrator");
        let session = self.start_session().await.map_err(|e| e.message())?;
        if let Some(stream) = &self.stream {
            stream.status.lock().swaps += 1;
        }
        self.attach(session);
        Ok(())
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, key: String) {
        let config = self.g.streams_config().clone();
        let interval = Duration::from_secs(config.payment_interval_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle = Duration::from_secs(config.ingest_idle_secs.max(1));
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        // Livepeer's control keepalive: workers that long-poll control without a timeout see
        // traffic at least this often.
        let mut keepalive = tokio::time::interval(Duration::from_secs(10));
        let mut last_ingest = Instant::now();
        let mut reply = None;
        let reason: String = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.pay().await {
                        tracing::warn!(stream = %self.id, error = %e, "stream payment failed; retrying at the next interval");
                    }
                }
                _ = keepalive.tick() => {
                    if let Some(s) = self.session.as_mut() {
                        if let Err(e) = s.control.write(Bytes::from_static(b"{\"keep\":\"alive\"}")).await {
                            tracing::debug!(stream = %self.id, error = %e, "keepalive not delivered");
                        }
                    }
                }
                _ = idle_check.tick() => {
                    if last_ingest.elapsed() >= idle {
                        break format!("no ingest for {}s", idle.as_secs());
                    }
                }
                cmd = commands.recv() => match cmd {
                    None => break "the gateway is shutting down".to_owned(),
                    Some(Command::Segment(data)) => {
                        last_ingest = Instant::now();
                        if let Some(stream) = &self.stream {
                            stream.status.lock().segments_in += 1;
                        }
                        let published = match self.session.as_mut() {
                            Some(s) => s.input.write(data).await.map(drop).map_err(|e| e.to_string()),
                            None => Err("no session".to_owned()),
                        };
                        if let Err(e) = published {
                            if let Err(e) = self.swap(&format!("input not accepted: {e}")).await {
                                break e;
                            }
                        }
                    }
                    Some(Command::IngestEnded) => {
                        tracing::info!(stream = %self.id, "ingest ended; the stream stops unless it resumes");
                    }
                    Some(Command::Update(params, done)) => self.update(params, done),
                    Some(Command::Updated { generation, params, applied, done }) => {
                        let r = self.updated(generation, params, applied).await;
                        let _ = done.send(r);
                    }
                    Some(Command::Stop(why, done)) => {
                        reply = Some(done);
                        break why;
                    }
                    Some(Command::SessionEnded { generation, failed, why }) => {
                        if self.session.as_ref().map(|s| s.generation) != Some(generation) {
                            continue;
                        }
                        if !failed {
                            // The orchestrator ended it (balance, pipeline failure): final.
                            break why;
                        }
                        if let Err(e) = self.swap(&why).await {
                            break e;
                        }
                    }
                },
            }
        };
        self.stop_session(&reason).await;
        if let Some(stream) = &self.stream {
            let mut s = stream.status.lock();
            s.state = if s.error.is_some() {
                "failed"
            } else {
                "stopped"
            };
            s.stop_reason = Some(reason.clone());
        }
        self.g.ai_streams().keys.lock().remove(&key);
        self.g.end_ai_output(&self.id);
        tracing::info!(stream = %self.id, %reason, "AI stream stopped");
        if let Some(done) = reply {
            let _ = done.send(());
        }
        // Keep the final status readable for a while.
        tokio::time::sleep(Duration::from_secs(120)).await;
        self.g.ai_streams().map.lock().remove(&self.id);
    }
}

/// Longest data record relayed, in bytes; a longer line is dropped.
const MAX_DATA_LINE: usize = 1 << 20;

/// Splits a data segment's body into lines as its chunks arrive, carrying a partial line over
/// to the next chunk; a line longer than [`MAX_DATA_LINE`] is dropped whole.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
    /// Inside a line that went over the cap: skip to its end.
    skipping: bool,
}

impl LineSplitter {
    /// The lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(at);
            rest = &tail[1..];
            if !self.skipping && self.partial.len() + line.len() <= MAX_DATA_LINE {
                self.partial.extend_from_slice(line);
                out.push(String::from_utf8_lossy(&self.partial).into_owned());
            }
            self.partial.clear();
            self.skipping = false;
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > MAX_DATA_LINE {
                tracing::warn!(limit = MAX_DATA_LINE, "data record too long; dropped");
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        out
    }

    /// The unterminated last line of a segment that ended.
    fn finish(&mut self) -> Option<String> {
        let skipped = std::mem::take(&mut self.skipping);
        let line = std::mem::take(&mut self.partial);
        (!skipped && !line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned())
    }
}

/// Relay the JSONL data channel at `url` to the stream's server-sent events, each record as
/// soon as its line is complete (not when its segment ends).
async fn relay_data(client: reqwest::Client, url: String, stream: Arc<AiStream>) {
    let mut sub = Subscriber::new(client, url).starting_at(0);
    while let Ok(Some(mut seg)) = sub.next().await {
        let mut lines = LineSplitter::default();
        let complete = loop {
            let chunk = match seg.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break true,
                Err(e) => {
                    // Its unterminated last line may be cut: dropped.
                    tracing::debug!(stream = %stream.id, error = %e, "data segment cut short");
                    break false;
                }
            };
            for line in lines.push(&chunk) {
                send_records(&stream, &line);
            }
        };
        if let Some(line) = lines.finish().filter(|_| complete) {
            send_records(&stream, &line);
        }
    }
}

fn send_records(stream: &AiStream, line: &str) {
    for record in data_records(line) {
        let _ = stream.data.send(Arc::from(record.as_str()));
    }
}

/// The records of a data segment: JSON lines, where a line holding a JSON array of strings
/// (pytrickle's batches) counts as one record per string.
fn data_records(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Vec<String>>(line) {
            Ok(batch) => out.extend(batch),
            Err(_) => out.push(line.to_owned()),
        }
    }
    out
}

fn urls_response(urls: StreamUrls) -> Response {
    Json(urls).into_response()
}

/// `POST /process/stream/start`: `Livepeer` header + `{stream_name, rtmp_output, stream_id, params}`.
pub(crate) async fn start(State(g): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let job = weir_protocol::byoc::JobRequest::from_headers(&headers)?;
        let start: StreamStart = if body.is_empty() {
            StreamStart::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| err(400, format!("not a stream start: {e}")))?
        };
        g.start_ai_stream(job, start).await
    };
    match run.await {
        Ok(urls) => urls_response(urls),
        Err(e) => e.into_response(),
    }
}

/// Livepeer's live video-to-video start, `POST /live/video-to-video/{stream}/start`: the
/// pipeline (capability) and params come as JSON `{pipeline, params}`, or as the `query`
/// field (`pipeline=…&params=…`) Livepeer's media server sends.
pub(crate) async fn live_start(
    State(g): State<Gateway>,
    UrlPath(stream): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct LiveStart {
        #[serde(default)]
        pipeline: String,
        #[serde(default)]
        params: serde_json::Value,
        #[serde(default)]
        query: String,
    }
    let run = async {
        let mut req: LiveStart = if body.is_empty() {
            LiveStart {
                pipeline: String::new(),
                params: serde_json::Value::Null,
                query: String::new(),
            }
        } else {
            serde_json::from_slice(&body).map_err(|e| err(400, format!("not a live start: {e}")))?
        };
        for pair in req.query.clone().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "pipeline" if req.pipeline.is_empty() => req.pipeline = v,
                "params" if req.params.is_null() => {
                    req.params = serde_json::from_str(&v)
                        .map_err(|e| err(400, format!("params in query are not JSON: {e}")))?;
                }
                _ => {}
            }
        }
        if req.pipeline.is_empty() {
            return Err(err(
                400,
                "name the pipeline: `pipeline` in the body or query",
            ));
        }
        let job = match headers.get(JOB_HEADER) {
            Some(_) => weir_protocol::byoc::JobRequest::from_headers(&headers)?,
            None => JobRequest {
                id: stream.clone(),
                request: String::new(),
                parameters: String::new(),
                capability: req.pipeline.clone(),
                timeout_seconds: 30,
                sender: String::new(),
                sig: String::new(),
            },
        };
        job.validate().map_err(|e| err(400, e))?;
        g.start_ai_stream(
            job,
            StreamStart {
                stream_name: stream.clone(),
                rtmp_output: String::new(),
                stream_id: stream,
                params: req.params,
            },
        )
        .await
    };
    match run.await {
        Ok(urls) => urls_response(urls),
        Err(e) => e.into_response(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn stream_of(g: &Gateway, id: &str) -> Result<Arc<AiStream>, AiHttpError> {
    g.ai_streams()
        .map
        .lock()
        .get(id)
        .cloned()
        .ok_or_else(|| err(404, format!("no stream `{id}`")))
}

/// `POST /process/stream/{id}/update`: new params, forwarded over the control channel.
pub(crate) async fn update(
    State(g): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let run = async {
        let params: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("the params are not JSON: {e}")))?;
        if !params.is_object() {
            return Err(err(400, "the params must be a JSON object"));
        }
        let stream = stream_of(&g, &id)?;
        let (tx, rx) = oneshot::channel();
        stream
            .commands
            .send(Command::Update(params, tx))
            .await
            .map_err(|_| err(409, "the stream has stopped"))?;
        rx.await.map_err(|_| err(409, "the stream has stopped"))?
    };
    match run.await {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /process/stream/{id}/status`.
pub(crate) async fn status(State(g): State<Gateway>, UrlPath(id): UrlPath<String>) -> Response {
    match stream_of(&g, &id) {
        Ok(s) => Json(s.status.lock().clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /process/stream/{id}/stop`.
pub(crate) async fn stop(State(g): State<Gateway>, UrlPath(id): UrlPath<String>) -> Response {
    let run = async {
        let stream = stream_of(&g, &id)?;
        let (tx, rx) = oneshot::channel();
        if stream
            .commands
            .send(Command::Stop("stopped by the client".to_owned(), tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(15), rx).await;
        }
        let status = stream.status.lock().clone();
        Ok::<_, AiHttpError>(status)
    };
    match run.await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /process/stream/{id}/data`: the worker's JSONL data as server-sent events.
pub(crate) async fn data(State(g): State<Gateway>, UrlPath(id): UrlPath<String>) -> Response {
    let stream = match stream_of(&g, &id) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let rx = stream.data.subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(line.as_ref())),
                        rx,
                    ))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_batches_are_split_into_records() {
        assert_eq!(
            data_records("{\"a\":1}\n\n[\"x\",\"{\\\"b\\\":2}\"]\n[]\n"),
            vec![
                "{\"a\":1}".to_owned(),
                "x".to_owned(),
                "{\"b\":2}".to_owned()
            ]
        );
    }

    #[test]
    fn data_lines_are_split_as_chunks_arrive_and_capped() {
        let mut lines = LineSplitter::default();
        assert_eq!(
            lines.push(b"{\"a\":1}\n{\"b\""),
            vec!["{\"a\":1}".to_owned()]
        );
        assert!(lines.push(b":2").is_empty());
        assert_eq!(lines.push(b"}\n"), vec!["{\"b\":2}".to_owned()]);
        assert_eq!(lines.push(b"tail"), Vec::<String>::new());
        assert_eq!(lines.finish(), Some("tail".to_owned()));
        assert_eq!(lines.finish(), None);
        // A line over the cap is dropped whole, the next one comes through.
        let long = vec![b'x'; MAX_DATA_LINE];
        assert!(lines.push(&long).is_empty());
        assert!(lines.push(b"xx").is_empty());
        assert_eq!(lines.push(b"x\nok\n"), vec!["ok".to_owned()]);
        assert!(lines.push(&long).is_empty());
        assert!(lines.push(b"x").is_empty());
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%7B%22h%22%3A1%7D"), "{\"h\":1}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn the_config_section_has_defaults_and_refuses_typos() {
        let c: StreamsConfig = toml::from_str("").expect("defaults");
        assert_eq!(c, StreamsConfig::default());
        assert!(toml::from_str::<StreamsConfig>("pay_ahead = 3").is_err());
    }
}
