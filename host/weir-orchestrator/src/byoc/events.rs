//! Batch answers streamed as server-sent events: relayed as they arrive and paid as they run,
//! debited from the sender's balance every interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use weir_models::capacity::Slot;

use super::Offered;
use crate::paid::{debit_time, Debited, Meter};
use crate::Orchestrator;

/// The debits of a batch job whose answer is a stream of server-sent events: every interval
/// the time since the last debit is charged to the sender's balance.
pub(super) struct JobDebits {
    pub(super) o: Orchestrator,
    pub(super) job_id: String,
    pub(super) sender: String,
    pub(super) account: String,
    pub(super) offered: Arc<Offered>,
    pub(super) started: Instant,
    /// The job time charged so far and its cost.
    pub(super) meter: Meter,
    /// The job time paid for up front (its `timeout_seconds`): never charged beyond.
    pub(super) max_ms: u64,
    pub(super) seq: u64,
    /// Everything is charged.
    pub(super) finished: bool,
}

impl JobDebits {
    /// Charge the time since the last debit, never beyond `max_ms` in all; `Err` says why
    /// the balance cannot pay it.
    async fn charge_to_now(&mut self) -> Result<(), String> {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ms = elapsed.min(self.max_ms).saturating_sub(self.meter.ms);
        if ms == 0 {
            return Ok(());
        }
        self.seq += 1;
        let id = format!("{}-{}", self.job_id, self.seq);
        let payer = (self.sender.as_str(), self.account.as_str());
        let price = self.offered.price_per_ms();
        let ledger = self.o.ledger().clone();
        match debit_time(ledger.as_ref(), &id, payer, &mut self.meter, price, ms).await {
            Debited::Charged { .. } => Ok(()),
            Debited::Short { balance, needed } => Err(format!(
                "insufficient balance: sender {} holds {balance} for {}, {ms} ms cost {needed}",
                self.sender, self.account
            )),
            // A ledger failure is logged; the time is charged at the next debit.
            Debited::Failed => Ok(()),
        }
    }

    /// The final debit, once the answer has ended.
    async fn finish(&mut self, why: &str) {
        if self.finished {
            return;
        }
        if let Err(e) = self.charge_to_now().await {
            tracing::warn!(job = %self.job_id, error = %e, "the last part of a streamed answer went unpaid");
        }
        self.finished = true;
        tracing::info!(capability = %self.offered.name, job = %self.job_id, charge = self.meter.charged, ms = self.meter.ms, why, "BYOC job done (events)");
    }
}

impl Drop for JobDebits {
    fn drop(&mut self) {
        // The client went away mid-stream: charge the time it used.
        if !self.finished {
            let mut rest = JobDebits {
                o: self.o.clone(),
                job_id: std::mem::take(&mut self.job_id),
                sender: std::mem::take(&mut self.sender),
                account: std::mem::take(&mut self.account),
                offered: self.offered.clone(),
                started: self.started,
                meter: self.meter,
                max_ms: self.max_ms,
                seq: self.seq,
                finished: false,
            };
            self.finished = true;
            tokio::spawn(async move { rest.finish("the client went away").await });
        }
    }
}

/// One server-sent event carrying an error, for an answer that has to end early.
fn error_event(message: &str) -> Bytes {
    let data = serde_json::json!({ "error": message });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The worker's event stream relayed as it arrives, debited every `interval`; a balance that
/// runs out ends it with an error event. `slot` is held until the stream ends.
pub(super) fn events_body(
    response: reqwest::Response,
    debits: JobDebits,
    slot: Option<Slot>,
    interval: Duration,
) -> axum::body::Body {
    struct Relay {
        response: Option<reqwest::Response>,
        debits: JobDebits,
        next: tokio::time::Instant,
        interval: Duration,
        _slot: Option<Slot>,
    }
    let relay = Relay {
        response: Some(response),
        debits,
        next: tokio::time::Instant::now() + interval,
        interval,
        _slot: slot,
    };
    enum Step {
        Chunk(Result<Option<Bytes>, reqwest::Error>),
        Debit,
    }
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        loop {
            let step = {
                let response = r.response.as_mut()?;
                tokio::select! {
                    chunk = response.chunk() => Step::Chunk(chunk),
                    _ = tokio::time::sleep_until(r.next) => Step::Debit,
                }
            };
            match step {
                Step::Chunk(Ok(Some(bytes))) => return Some((Ok::<_, std::io::Error>(bytes), r)),
                Step::Chunk(Ok(None)) => {
                    r.response = None;
                    r.debits.finish("the worker ended the stream").await;
                    return None;
                }
                Step::Chunk(Err(e)) => {
                    r.response = None;
                    let why = if e.is_timeout() {
                        "the job's timeout_seconds ran out".to_owned()
                    } else {
                        format!("the worker's stream broke: {e}")
                    };
                    r.debits.finish(&why).await;
                    return Some((Ok(error_event(&why)), r));
                }
                Step::Debit => {
                    r.next += r.interval;
                    if let Err(why) = r.debits.charge_to_now().await {
                        r.response = None;
                        r.debits.finished = true;
                        tracing::warn!(job = %r.debits.job_id, error = %why, "streamed answer stopped");
                        return Some((Ok(error_event(&why)), r));
                    }
                }
            }
        }
    });
    axum::body::Body::from_stream(stream)
}
