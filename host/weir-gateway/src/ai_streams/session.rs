//! One live AI stream's owner task: starting it on an orchestrator, paying ahead per
//! interval, relaying updates, and moving it when the orchestrator fails.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::byoc::{StreamChannels, BYOC_MODEL, JOB_HEADER, STREAM_ID_HEADER};
use weir_protocol::info::{BALANCE_HEADER, PAYMENT_HEADER};
use weir_protocol::AiHttpError;
use weir_trickle::{Publisher, Subscriber, TrickleError};

use crate::dispatch::{err, error_message, read_capped, Choice};

use super::data::relay_data;
use super::{price_per_ms, Command, Owner, Session};

impl Owner {
    pub(super) fn account(&self) -> String {
        weir_payments::credit::account(&self.job.capability, BYOC_MODEL)
    }

    /// Start the stream on the best orchestrator not yet tried.
    pub(super) async fn start_session(&mut self) -> Result<Session, AiHttpError> {
        let g = self.g.clone();
        let config = g.streams_config().clone();
        let mut job = self.job.clone();
        job.sender = g.dispatcher().payments().sender();
        let queue = g
            .dispatcher()
            .choose_for_job(&job, config.pay_ahead_secs)
            .await?;
        let mut failures = Vec::new();
        let untried: Vec<Choice> = queue
            .into_iter()
            .filter(|c| !self.tried.contains(&c.url))
            .collect();
        for choice in untried {
            let pending = g
                .dispatcher()
                .payments()
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
                .dispatcher()
                .client()
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
                    g.dispatcher().payments().abandon(&pending).await;
                    g.dispatcher().suspend(&choice.url, &e.to_string());
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
            let body = read_capped(response).await;
            if !status.is_success() {
                g.dispatcher().payments().abandon(&pending).await;
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
                    g.dispatcher().payments().abandon(&pending).await;
                    failures.push(format!("{}: unreadable stream answer", choice.url));
                    self.tried.push(choice.url.clone());
                    continue;
                }
            };
            let paid = pending.topup;
            if let Err(e) = g
                .dispatcher()
                .payments()
                .settle(&pending, Some(0), balance)
                .await
            {
                tracing::error!(stream = %self.id, error = %e, "could not record the stream payment");
            }
            self.generation += 1;
            let client = g.dispatcher().client().clone();
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
    pub(super) fn attach(&mut self, mut session: Session) {
        let (Some(stream), Some(commands)) = (self.stream.clone(), self.commands.clone()) else {
            return;
        };
        let g = self.g.clone();
        let client = g.dispatcher().client().clone();
        let generation = session.generation;
        let hls = g.open_ai_output(&self.id);
        // Output video → HLS.
        if !session.channels.subscribe_url.is_empty() {
            let (stream, commands, url) = (
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
                                if let Some(output) = &hls {
                                    output.list(data).await;
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
            let client = g.dispatcher().client().clone();
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
            let client = g.dispatcher().client().clone();
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
    pub(super) async fn pay(&mut self) -> Result<(), String> {
        let g = self.g.clone();
        let pay_ahead = g.streams_config().pay_ahead_secs;
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let elapsed = session.last_paid.elapsed().as_millis() as u64;
        let price = session.choice.price;
        let charge = weir_payments::cost(elapsed, price_per_ms(price)).unwrap_or(0);
        let pending = g
            .dispatcher()
            .payments()
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
                .dispatcher()
                .client()
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
                    g.dispatcher().payments().abandon(&pending).await;
                    return Err(format!("top-up refused: {}", r.status()));
                }
                Err(e) => {
                    g.dispatcher().payments().abandon(&pending).await;
                    return Err(format!("top-up not delivered: {e}"));
                }
            }
        }
        let charge = charge.min(pending.cost);
        g.dispatcher()
            .payments()
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
    pub(super) fn credentials(&self, session: &Session) -> String {
        self.g
            .dispatcher()
            .payments()
            .authenticate(&self.account(), session.choice.price)
    }

    /// Pay what is due, stop the stream on the current orchestrator and drop the session.
    pub(super) async fn stop_session(&mut self, why: &str) {
        if let Err(e) = self.pay().await {
            tracing::warn!(stream = %self.id, error = %e, "last stream payment not made");
        }
        let Some(session) = self.session.take() else {
            return;
        };
        let sent = self
            .g
            .dispatcher()
            .client()
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
    pub(super) fn update(
        &self,
        params: serde_json::Value,
        done: oneshot::Sender<Result<(), AiHttpError>>,
    ) {
        let (Some(session), Some(commands)) = (self.session.as_ref(), self.commands.clone()) else {
            let _ = done.send(Err(err(409, "the stream has no orchestrator right now")));
            return;
        };
        let request = self
            .g
            .dispatcher()
            .client()
            .post(format!("{}/ai/stream/update", session.choice.url))
            .header(PAYMENT_HEADER, self.credentials(session))
            .header(STREAM_ID_HEADER, self.id.as_str())
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({"stream_id": self.id, "params": params, "defer_to_control": true}));
        let generation = session.generation;
        tokio::spawn(async move {
            let applied = match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let body = read_capped(r).await.unwrap_or_default();
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|b| b.get("applied").and_then(|a| a.as_bool()))
                        .unwrap_or(false)
                }
                Ok(r) => {
                    let status = r.status();
                    let message = error_message(read_capped(r).await.ok(), status);
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
    pub(super) async fn updated(
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
    pub(super) async fn swap(&mut self, why: &str) -> Result<(), String> {
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
            g.dispatcher().suspend(&session.choice.url, why);
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

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, key: String) {
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
