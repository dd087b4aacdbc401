//! One live AI stream's session on an orchestrator: starting it there, reading its channels,
//! paying ahead per interval, relaying updates, and moving it when the orchestrator fails.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::byoc::{JobRequest, StreamChannels, BYOC_MODEL, JOB_HEADER, STREAM_ID_HEADER};
use weir_protocol::info::PAYMENT_HEADER;
use weir_protocol::AiHttpError;
use weir_trickle::Publisher;

use crate::dispatch::{err, error_message, read_capped, Answer, Call, Choice, Dispatched};

use super::data::relay_data;
use super::readers::{relay_events, relay_output, SessionEnds};
use super::{price_per_ms, Command, Owner, Session};

/// A stream's start as the dispatcher sends it: the start request with the stream's job
/// and params, paid `units` seconds ahead. Nothing is charged at the start: the payment stays
/// as the stream's balance there, debited as it runs.
struct StartCall<'a> {
    job: &'a JobRequest,
    /// `{stream_id, params}`.
    body: Bytes,
    units: u64,
    timeout: Duration,
}

impl Call for StartCall<'_> {
    type Output = StreamChannels;

    fn capability(&self) -> &str {
        &self.job.capability
    }

    fn units(&self) -> u64 {
        self.units
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/ai/stream/start", choice.url))
            .header(JOB_HEADER, self.job.to_header())
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
    }

    fn charge(&self, _reported: Option<u64>) -> Option<u64> {
        Some(0)
    }

    async fn accept(&self, answer: Answer) -> Result<StreamChannels, String> {
        let channels: StreamChannels = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("unreadable stream answer: {e}"))?;
        if channels.publish_url.is_empty() || channels.control_url.is_empty() {
            return Err("the stream answer names no publish or control channel".to_owned());
        }
        Ok(channels)
    }
}

/// A running stream's payment as the dispatcher sends it: what its balance at the orchestrator
/// lacks of `units` seconds ahead, and the `charge` for the time since the last payment.
struct TopUpCall<'a> {
    capability: &'a str,
    stream_id: &'a str,
    units: u64,
    charge: u64,
}

impl Call for TopUpCall<'_> {
    type Output = ();

    fn capability(&self) -> &str {
        self.capability
    }

    fn units(&self) -> u64 {
        self.units
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/ai/stream/payment", choice.url))
            .header(STREAM_ID_HEADER, self.stream_id)
            .header(header::CONTENT_TYPE, "application/json")
            .body("{}")
    }

    fn charge(&self, _reported: Option<u64>) -> Option<u64> {
        Some(self.charge)
    }

    async fn accept(&self, _answer: Answer) -> Result<(), String> {
        Ok(())
    }
}

impl Owner {
    pub(super) fn account(&self) -> String {
        weir_payments::credit::account(&self.job.capability, BYOC_MODEL)
    }

    /// Start the stream on the best orchestrator not yet tried, through the dispatcher
    /// (pay ahead, send, retry the next one).
    pub(super) async fn start_session(&mut self) -> Result<Session, AiHttpError> {
        let mut job = self.job.clone();
        let dispatcher = &self.streams.dispatcher;
        job.sender = dispatcher.payments().sender();
        let config = self.streams.streams_config();
        let queue = self.untried(&job).await?;
        if queue.is_empty() {
            return Err(err(
                503,
                "no orchestrator started the stream: every one offering it failed this stream before",
            ));
        }
        let body =
            serde_json::to_vec(&serde_json::json!({"stream_id": self.id, "params": self.params}))
                .map_err(|e| err(500, e.to_string()))?;
        let call = StartCall {
            job: &job,
            body: Bytes::from(body),
            units: config.pay_ahead_secs,
            timeout: Duration::from_secs(config.start_timeout_secs.max(1)),
        };
        let Dispatched {
            choice,
            output: channels,
            paid,
            ..
        } = dispatcher.run(&self.id, queue, &call).await?;
        Ok(self.new_session(choice, channels, paid))
    }

    /// The orchestrators offering `job`'s capability, best first, leaving out those that
    /// failed this stream.
    async fn untried(&self, job: &JobRequest) -> Result<VecDeque<Choice>, AiHttpError> {
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

    /// Pay for the time since the last payment and top the balance back up to the pay-ahead,
    /// through the dispatcher with the session's orchestrator as the only candidate.
    pub(super) async fn pay(&mut self) -> Result<(), String> {
        let pay_ahead = self.streams.streams_config().pay_ahead_secs;
        let dispatcher = &self.streams.dispatcher;
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let elapsed = session.last_paid.elapsed().as_millis() as u64;
        let price = session.choice.price;
        let ahead = weir_payments::cost(pay_ahead, price).unwrap_or(u64::MAX);
        let call = TopUpCall {
            capability: &self.job.capability,
            stream_id: &self.id,
            units: pay_ahead,
            charge: weir_payments::cost(elapsed, price_per_ms(price))
                .unwrap_or(0)
                .min(ahead),
        };
        let queue = VecDeque::from([session.choice.clone()]);
        let Dispatched { paid, charge, .. } = dispatcher
            .run(&self.id, queue, &call)
            .await
            .map_err(|e| e.message())?;
        session.last_paid = Instant::now();
        session.paid += paid;
        session.charged += charge;
        if let Some(stream) = &self.stream {
            let mut s = stream.status.lock();
            s.paid += paid;
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
