//! One live AI stream's session on an orchestrator: starting it there, reading its channels,
//! paying ahead per interval, relaying updates, and moving it when the orchestrator fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::byoc::{JobRequest, StreamChannels, BYOC_MODEL, JOB_HEADER, STREAM_ID_HEADER};
use weir_protocol::info::{BALANCE_HEADER, PAYMENT_HEADER};
use weir_protocol::AiHttpError;
use weir_trickle::Publisher;

use crate::dispatch::{err, error_message, read_capped, Choice};
use crate::payments::Pending;

use super::data::relay_data;
use super::readers::{relay_events, relay_output, SessionEnds};
use super::{price_per_ms, Command, Owner, Session};

/// Why the stream did not start on one orchestrator.
enum StartFailure {
    /// The stream cannot start anywhere (the orchestrator refused the stream itself, or the
    /// ledger failed): answer the client with this.
    Final(AiHttpError),
    /// The orchestrator could not be reached: leave it out for a while, try the next.
    Unreachable(String),
    /// It did not start the stream: try the next.
    Failed(String),
}

impl Owner {
    pub(super) fn account(&self) -> String {
        weir_payments::credit::account(&self.job.capability, BYOC_MODEL)
    }

    /// Start the stream on the best orchestrator not yet tried.
    pub(super) async fn start_session(&mut self) -> Result<Session, AiHttpError> {
        let mut job = self.job.clone();
        job.sender = self.streams.dispatcher.payments().sender();
        let untried = self.untried(&job).await?;
        let mut failures = Vec::new();
        for choice in untried {
            match self.start_on(&job, &choice).await {
                Ok((channels, paid)) => return Ok(self.new_session(choice, channels, paid)),
                Err(StartFailure::Final(e)) => return Err(e),
                Err(StartFailure::Unreachable(why) | StartFailure::Failed(why)) => {
                    failures.push(format!("{}: {why}", choice.url));
                    self.tried.push(choice.url);
                }
            }
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

    /// The orchestrators offering `job`'s capability, best first, leaving out those that
    /// failed this stream.
    async fn untried(&self, job: &JobRequest) -> Result<Vec<Choice>, AiHttpError> {
        let pay_ahead = self.streams.streams_config().pay_ahead_secs;
        let queue = self
            .streams
            .dispatcher
            .choose_for_job(job, pay_ahead)
            .await?;
        Ok(queue
            .into_iter()
            .filter(|c| !self.tried.contains(&c.url))
            .collect())
    }

    /// Pay ahead and start the stream on `choice`: its channels and what was paid, the
    /// payment settled; on failure the payment is taken back.
    async fn start_on(
        &self,
        job: &JobRequest,
        choice: &Choice,
    ) -> Result<(StreamChannels, u64), StartFailure> {
        let dispatcher = &self.streams.dispatcher;
        let pending = dispatcher
            .payments()
            .prepare(
                &choice.url,
                &job.capability,
                BYOC_MODEL,
                self.streams.streams_config().pay_ahead_secs,
                choice.price,
            )
            .await
            .map_err(|e| StartFailure::Final(err(500, format!("gateway ledger: {e}"))))?;
        let (channels, balance) = match self.send_start(job, choice, &pending).await {
            Ok(started) => started,
            Err(failure) => {
                dispatcher.payments().abandon(&pending).await;
                if let StartFailure::Unreachable(why) = &failure {
                    dispatcher.suspend(&choice.url, why);
                }
                return Err(failure);
            }
        };
        if let Err(e) = dispatcher
            .payments()
            .settle(&pending, Some(0), balance)
            .await
        {
            tracing::error!(stream = %self.id, error = %e, "could not record the stream payment");
        }
        Ok((channels, pending.topup))
    }

    /// Send the start with `pending`'s payment to `choice`: the stream's channels there and
    /// the balance it reported.
    async fn send_start(
        &self,
        job: &JobRequest,
        choice: &Choice,
        pending: &Pending,
    ) -> Result<(StreamChannels, Option<u64>), StartFailure> {
        let timeout = self.streams.streams_config().start_timeout_secs.max(1);
        let response = self
            .streams
            .dispatcher
            .client()
            .post(format!("{}/ai/stream/start", choice.url))
            .header(PAYMENT_HEADER, pending.header.as_str())
            .header(JOB_HEADER, job.to_header())
            .timeout(Duration::from_secs(timeout))
            .json(&serde_json::json!({"stream_id": self.id, "params": self.params}))
            .send()
            .await
            .map_err(|e| StartFailure::Unreachable(e.to_string()))?;
        let status = response.status();
        let balance = response
            .headers()
            .get(BALANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = read_capped(response).await;
        if !status.is_success() {
            let message = error_message(body.ok(), status);
            if matches!(status.as_u16(), 400 | 422) {
                let why = format!("orchestrator {} refused the stream: {message}", choice.url);
                return Err(StartFailure::Final(err(status.as_u16(), why)));
            }
            return Err(StartFailure::Failed(format!("{status}: {message}")));
        }
        let channels = body
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<StreamChannels>(&b).map_err(|e| e.to_string()));
        match channels {
            Ok(c) if !c.publish_url.is_empty() && !c.control_url.is_empty() => Ok((c, balance)),
            Ok(_) | Err(_) => Err(StartFailure::Failed("unreadable stream answer".to_owned())),
        }
    }

    /// The stream's next session, on `choice` over `channels`, `paid` ahead.
    fn new_session(&mut self, choice: Choice, channels: StreamChannels, paid: u64) -> Session {
        self.generation += 1;
        let client = self.streams.dispatcher.client().clone();
        tracing::info!(stream = %self.id, orchestrator = %choice.url, paid, "AI stream started on an orchestrator");
        Session {
            generation: self.generation,
            input: Publisher::new(client.clone(), channels.publish_url.clone()),
            control: Publisher::new(client, channels.control_url.clone()),
            choice,
            channels,
            readers: Vec::new(),
            last_paid: Instant::now(),
            paid,
            charged: 0,
        }
    }

    /// Make `session` current and start its readers (output to HLS, events, data).
    pub(super) fn attach(&mut self, mut session: Session) {
        let (Some(stream), Some(commands)) = (self.stream.clone(), self.commands.clone()) else {
            return;
        };
        let client = self.streams.dispatcher.client().clone();
        let ends = SessionEnds {
            commands,
            generation: session.generation,
        };
        let output = Arc::clone(&self.streams.outputs).open(&self.id);
        let channels = &session.channels;
        if !channels.subscribe_url.is_empty() {
            let url = channels.subscribe_url.clone();
            let reader = relay_output(client.clone(), url, stream.clone(), ends.clone(), output);
            session.readers.push(tokio::spawn(reader));
        }
        let url = channels.events_url.clone();
        let reader = relay_events(client.clone(), url, stream.clone(), ends);
        session.readers.push(tokio::spawn(reader));
        if !channels.data_url.is_empty() {
            let reader = relay_data(client, channels.data_url.clone(), stream.clone());
            session.readers.push(tokio::spawn(reader));
        }
        stream.status.lock().orchestrator = Some(session.choice.url.clone());
        self.session = Some(session);
    }

    /// Pay for the time since the last payment and top the balance back up to the pay-ahead.
    pub(super) async fn pay(&mut self) -> Result<(), String> {
        let pay_ahead = self.streams.streams_config().pay_ahead_secs;
        let dispatcher = &self.streams.dispatcher;
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let elapsed = session.last_paid.elapsed().as_millis() as u64;
        let price = session.choice.price;
        let charge = weir_payments::cost(elapsed, price_per_ms(price)).unwrap_or(0);
        let pending = dispatcher
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
            let sent = dispatcher
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
                    dispatcher.payments().abandon(&pending).await;
                    return Err(format!("top-up refused: {}", r.status()));
                }
                Err(e) => {
                    dispatcher.payments().abandon(&pending).await;
                    return Err(format!("top-up not delivered: {e}"));
                }
            }
        }
        let charge = charge.min(pending.cost);
        dispatcher
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
        self.streams
            .dispatcher
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
            .streams
            .dispatcher
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
            .streams
            .dispatcher
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
        let max = self.streams.streams_config().max_swaps_per_minute;
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
            self.streams.dispatcher.suspend(&session.choice.url, why);
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
}
