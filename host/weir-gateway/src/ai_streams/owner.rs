//! A live AI stream's owner task: the one loop that pays on time, keeps the control channel
//! alive, stops an idle stream and handles the stream's commands, then the stream's end.

use std::ops::ControlFlow::{self, Break, Continue};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};

use super::{Command, Owner, StreamsConfig};

/// The owner task's clocks.
struct Clocks {
    /// Top-ups, every `payment_interval_secs`.
    payment: Interval,
    /// Livepeer's control keepalive: workers that long-poll control without a timeout see
    /// traffic at least this often.
    keepalive: Interval,
    /// Checks for a silent ingest, every second.
    idle_check: Interval,
    /// How long the ingest may stay silent before the stream stops.
    idle: Duration,
    /// When the ingest last sent a segment (or the stream started).
    last_ingest: Instant,
}

impl Clocks {
    fn new(config: &StreamsConfig) -> Clocks {
        let interval = Duration::from_secs(config.payment_interval_secs.max(1));
        let mut payment =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        payment.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Clocks {
            payment,
            keepalive: tokio::time::interval(Duration::from_secs(10)),
            idle_check: tokio::time::interval(Duration::from_secs(1)),
            idle: Duration::from_secs(config.ingest_idle_secs.max(1)),
            last_ingest: Instant::now(),
        }
    }

    /// Stop the stream when its ingest has been silent too long.
    fn idle_stop(&self) -> ControlFlow<Stop> {
        if self.last_ingest.elapsed() >= self.idle {
            Break(Stop::because(format!(
                "no ingest for {}s",
                self.idle.as_secs()
            )))
        } else {
            Continue(())
        }
    }
}

/// Why the owner's loop ends, and the client waiting for it to (one that asked to stop).
struct Stop {
    reason: String,
    reply: Option<oneshot::Sender<()>>,
}

impl Stop {
    /// A stop for `reason` that no client waits for.
    fn because(reason: impl Into<String>) -> Stop {
        Stop {
            reason: reason.into(),
            reply: None,
        }
    }
}

impl Owner {
    /// The owner task: runs the stream until it stops, then ends it (see [`Owner::finish`]).
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, key: String) {
        let mut clocks = Clocks::new(self.streams.streams_config());
        let stop = loop {
            let next = tokio::select! {
                _ = clocks.payment.tick() => {
                    self.pay_due().await;
                    Continue(())
                }
                _ = clocks.keepalive.tick() => {
                    self.keep_alive().await;
                    Continue(())
                }
                _ = clocks.idle_check.tick() => clocks.idle_stop(),
                cmd = commands.recv() => self.on_command(cmd, &mut clocks).await,
            };
            if let Break(stop) = next {
                break stop;
            }
        };
        self.finish(stop, &key).await;
    }

    /// Top the balance up; a failure is retried at the next interval.
    async fn pay_due(&mut self) {
        if let Err(e) = self.pay().await {
            tracing::warn!(stream = %self.id, error = %e, "stream payment failed; retrying at the next interval");
        }
    }

    /// Write a keepalive on the control channel.
    async fn keep_alive(&mut self) {
        if let Some(s) = self.session.as_mut() {
            let keep = Bytes::from_static(b"{\"keep\":\"alive\"}");
            if let Err(e) = s.control.write(keep).await {
                tracing::debug!(stream = %self.id, error = %e, "keepalive not delivered");
            }
        }
    }

    /// Handle one command (`None`: every sender is gone, the gateway is shutting down).
    async fn on_command(&mut self, cmd: Option<Command>, clocks: &mut Clocks) -> ControlFlow<Stop> {
        let Some(cmd) = cmd else {
            return Break(Stop::because("the gateway is shutting down"));
        };
        match cmd {
            Command::Segment(data) => {
                clocks.last_ingest = Instant::now();
                self.on_segment(data).await.map_break(Stop::because)
            }
            Command::IngestEnded => {
                tracing::info!(stream = %self.id, "ingest ended; the stream stops unless it resumes");
                Continue(())
            }
            Command::Update(params, done) => {
                self.update(params, done);
                Continue(())
            }
            Command::Updated {
                generation,
                params,
                applied,
                done,
            } => {
                let r = self.updated(generation, params, applied).await;
                let _ = done.send(r);
                Continue(())
            }
            Command::Stop(reason, done) => Break(Stop {
                reason,
                reply: Some(done),
            }),
            Command::SessionEnded {
                generation,
                failed,
                why,
            } => self
                .on_session_ended(generation, failed, why)
                .await
                .map_break(Stop::because),
        }
    }

    /// Publish an ingest segment on the input channel; move the stream when it is refused.
    async fn on_segment(&mut self, data: Bytes) -> ControlFlow<String> {
        if let Some(stream) = &self.stream {
            stream.status.lock().segments_in += 1;
        }
        let published = match self.session.as_mut() {
            Some(s) => s
                .input
                .write(data)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err("no session".to_owned()),
        };
        match published {
            Ok(()) => Continue(()),
            Err(e) => self.move_or_stop(&format!("input not accepted: {e}")).await,
        }
    }

    /// Session `generation` ended: move the stream when it `failed`, else (the orchestrator
    /// ended it: balance, pipeline failure) stop for good. News of an earlier session is
    /// ignored.
    async fn on_session_ended(
        &mut self,
        generation: u64,
        failed: bool,
        why: String,
    ) -> ControlFlow<String> {
        if self.session.as_ref().map(|s| s.generation) != Some(generation) {
            return Continue(());
        }
        if !failed {
            return Break(why);
        }
        self.move_or_stop(&why).await
    }

    /// Move the stream because of `why`; stop it (with the reason) when it cannot move.
    async fn move_or_stop(&mut self, why: &str) -> ControlFlow<String> {
        match self.swap(why).await {
            Ok(()) => Continue(()),
            Err(e) => Break(e),
        }
    }

    /// The stream's end: stop it on its orchestrator, record the final status, forget its
    /// RTMP `key`, end its output, answer the client that asked to stop, and keep the status
    /// readable for a while.
    async fn finish(mut self, stop: Stop, key: &str) {
        let Stop { reason, reply } = stop;
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
        self.streams.keys.lock().remove(key);
        self.streams.outputs.end(&self.id);
        tracing::info!(stream = %self.id, %reason, "AI stream stopped");
        if let Some(done) = reply {
            let _ = done.send(());
        }
        // Keep the final status readable for a while.
        tokio::time::sleep(Duration::from_secs(120)).await;
        self.streams.map.lock().remove(&self.id);
    }
}
