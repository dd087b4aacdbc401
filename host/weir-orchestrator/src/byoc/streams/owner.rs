//! The single owner of a running stream: it holds the capacity slot, debits the balance, runs
//! the commands and tears the stream down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use weir_models::capacity::Slot;
use weir_protocol::byoc::{WorkerStreamStart, STREAM_ID_HEADER};
use weir_runtime::PipelineStream;
use weir_trickle::Publisher;

use super::pipeline::{Ended, PipelineMedia};
use super::worker::stop_worker;
use super::{Channels, Command, ControlMessage, StreamStatus, UpdateReply};
use crate::byoc::{Backend, Offered};
use crate::handler::err;
use crate::paid::{debit_time, Debited, Meter};
use crate::Orchestrator;

/// The single owner of a running stream's state.
pub(super) struct Owner {
    pub(super) o: Orchestrator,
    pub(super) stream_id: String,
    pub(super) sender: String,
    pub(super) account: String,
    pub(super) offered: Arc<Offered>,
    pub(super) channels: Channels,
    pub(super) status: Arc<Mutex<StreamStatus>>,
    pub(super) _slot: Slot,
}

impl Owner {
    /// Run the stream until it is stopped, its balance runs out or its pipeline fails, then
    /// tear it down.
    pub(super) async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        pipeline: Option<PipelineStream>,
        worker_side: WorkerStreamStart,
    ) {
        let base = self.o.service_url().to_owned();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (updates_tx, updates_rx) = mpsc::channel::<ControlMessage>(16);
        let (events, events_writer) = Events::spawn(Publisher::new(
            self.o.byoc().client.clone(),
            self.channels.events.publish_url(&base),
        ));
        let mut media = pipeline.map(|p| self.spawn_media(p, &base, &events, stop_rx, updates_rx));
        let mut clock = DebitClock::new(self.o.byoc().config().debit_interval(), self.progress());
        let mut done_reply = None;
        let mut failed = false;
        let reason = loop {
            tokio::select! {
                _ = clock.tick.tick() => {
                    if let Some(reason) = self.on_tick(&mut clock, &events).await {
                        break reason;
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
            clock.ticks += 1;
            let ms = clock.last_debit.elapsed().as_millis() as u64;
            let _ = self.debit(clock.ticks, &mut clock.meter, ms).await;
        }
        let _ = stop_tx.send(true);
        if let Some(m) = media {
            let _ = m.await;
        }
        if let Backend::Worker { url, token } = &self.offered.backend {
            stop_worker(&self.o, url, token.as_deref(), &self.stream_id).await;
        }
        self.announce_stop(&reason, failed, events, events_writer)
            .await;
        self.close(&reason).await;
        if let Some(reply) = done_reply {
            let _ = reply.send(());
        }
    }

    /// The pipeline task over the stream's channels.
    fn spawn_media(
        &self,
        p: PipelineStream,
        base: &str,
        events: &Events,
        stop: watch::Receiver<bool>,
        updates: mpsc::Receiver<ControlMessage>,
    ) -> JoinHandle<Ended> {
        let (capability, params) = {
            let s = self.status.lock();
            (s.capability.clone(), s.params.clone())
        };
        let client = self.o.byoc().client.clone();
        let m = PipelineMedia {
            component: p.component().clone(),
            capability,
            params,
            restarts: Vec::new(),
            client,
            input: self.channels.input.subscribe_url(base),
            output: self.channels.output.publish_url(base),
            control: self.channels.control.subscribe_url(base),
            events: events.clone(),
            status: self.status.clone(),
            max_segment: self.o.byoc().config().max_segment_bytes,
            stream_id: self.stream_id.clone(),
        };
        tokio::spawn(m.run(p, stop, updates))
    }

    /// One debit interval: debit the time since the last debit unless the pipeline only failed
    /// meanwhile; warn once when the balance is short, and answer why the stream must stop
    /// when it is still short at the next debit.
    async fn on_tick(&self, clock: &mut DebitClock, events: &Events) -> Option<String> {
        clock.ticks += 1;
        let ms = clock.last_debit.elapsed().as_millis() as u64;
        let now = self.progress();
        let failing = now.1 > clock.progress.1 && now.0 == clock.progress.0;
        clock.progress = now;
        if failing {
            // The pipeline only failed since the last debit: that time is free.
            tracing::debug!(stream = %self.stream_id, ms, "no output, only errors: not debited");
            clock.last_debit = Instant::now();
            return None;
        }
        match self.debit(clock.ticks, &mut clock.meter, ms).await {
            Ok(()) => {
                clock.last_debit = Instant::now();
                clock.warned = false;
            }
            Err(Some(short)) if !clock.warned => {
                clock.warned = true;
                tracing::warn!(stream = %self.stream_id, "balance exhausted; warned");
                events.publish(serde_json::json!({
                    "type": "warning",
                    "stream_id": self.stream_id,
                    "message": format!("insufficient balance: {short}; the stream stops at the next debit unless topped up"),
                })).await;
            }
            Err(Some(short)) => return Some(format!("insufficient balance: {short}")),
            Err(None) => {}
        }
        None
    }

    /// Let subscribers read the last event, then close the channels and leave the table.
    async fn close(&self, reason: &str) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for c in self.channels.all() {
            self.o.trickle().close(&c.name);
        }
        self.o.streams().map.lock().remove(&self.stream_id);
        tracing::info!(stream = %self.stream_id, %reason, "stream stopped");
    }

    /// Publish the `stopped` event, let the events writer drain, and record the outcome.
    async fn announce_stop(
        &self,
        reason: &str,
        failed: bool,
        events: Events,
        events_writer: JoinHandle<()>,
    ) {
        let restarts = self.status.lock().restarts;
        let mut stopped = serde_json::json!({"type": "stopped", "stream_id": self.stream_id, "reason": reason, "restarts": restarts});
        if failed {
            stopped["failed"] = true.into();
            stopped["error"] = reason.into();
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
        let mut s = self.status.lock();
        s.state = if failed { "failed" } else { "stopped" };
        s.stop_reason = Some(reason.to_owned());
        if failed {
            s.error = Some(reason.to_owned());
        }
    }

    /// Debit `ms` more of stream time, counted on `meter`. `Err(Some(why))` when the balance
    /// is short.
    async fn debit(&self, tick: u64, meter: &mut Meter, ms: u64) -> Result<(), Option<String>> {
        let id = format!("stream-{}-{}-{tick}", self.stream_id, self.o.boot_id());
        let payer = (self.sender.as_str(), self.account.as_str());
        let price = self.offered.price_per_ms();
        match debit_time(self.o.ledger().as_ref(), &id, payer, meter, price, ms).await {
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

/// The debit timer of a stream and what it has seen.
struct DebitClock {
    tick: tokio::time::Interval,
    last_debit: Instant,
    ticks: u64,
    /// The stream time debited so far and its cost.
    meter: Meter,
    /// The sender was warned that the balance is short.
    warned: bool,
    /// Output segments and errors at the last tick.
    progress: (u64, u64),
}

impl DebitClock {
    fn new(interval: Duration, progress: (u64, u64)) -> DebitClock {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        DebitClock {
            tick,
            last_debit: Instant::now(),
            ticks: 0,
            meter: Meter::default(),
            warned: false,
            progress,
        }
    }
}

/// The one writer of a stream's events channel. The owner and the pipeline task both send
/// here, so events keep the order they were sent in under a single seq counter (two
/// publishers on one channel would overwrite each other's segments).
#[derive(Clone)]
pub(super) struct Events(mpsc::Sender<serde_json::Value>);

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

    pub(super) async fn publish(&self, event: serde_json::Value) {
        // Fails only once the writer has gone, when nobody reads events any more.
        let _ = self.0.send(event).await;
    }
}
