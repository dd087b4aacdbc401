//! Phase **retry**: try the chosen orchestrators in order until one serves the call or the
//! retry budget is spent.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use weir_protocol::AiHttpError;

use super::busy::BusyQueue;
use super::{err, Attempt, Call, Choice, Dispatcher};
use crate::config::GatewayConfig;

/// A call served: by whom, what it answered, what it cost, after how many attempts.
pub(crate) struct Dispatched<T> {
    /// The orchestrator that served it, at the terms it was paid.
    pub choice: Choice,
    /// What the call's [`Call::accept`] made of the answer.
    pub output: T,
    /// What the gateway paid.
    pub charge: u64,
    /// What the serving attempt's payment credited there.
    pub paid: u64,
    /// Attempts made, this one included.
    pub attempts: u32,
}

impl Dispatcher {
    /// Send `call` to the orchestrators of `queue` in order until one serves it: failed
    /// orchestrators are skipped and repriced ones retried once at their new price, within
    /// `max_attempts` and the retry budget. Full ones ("insufficient capacity") are retried
    /// after the other candidates, with jittered exponential backoff once all are full, until
    /// `busy_wait`; those busy answers do not use up `max_attempts`.
    pub(crate) async fn run<C: Call>(
        &self,
        request_id: &str,
        queue: VecDeque<Choice>,
        call: &C,
    ) -> Result<Dispatched<C::Output>, AiHttpError> {
        let mut retries = Retries::new(&self.config, queue);
        while let Some(choice) = retries.next(&self.config).await {
            let outcome = self.attempt(call, &choice).await;
            let label = match &outcome {
                Attempt::Done { .. } => "ok",
                Attempt::Fail(_) => "refused",
                Attempt::Next(_) => "failed",
                Attempt::Busy(_) => "busy",
                Attempt::Repriced(_) => "repriced",
            };
            self.metrics
                .attempts
                .with_label_values(&[choice.url.as_str(), label])
                .inc();
            match outcome {
                Attempt::Done { body, charge, paid } => {
                    return Ok(Dispatched {
                        choice,
                        output: body,
                        charge,
                        paid,
                        attempts: retries.tried,
                    });
                }
                Attempt::Fail(e) => return Err(e),
                other => retries.failed(request_id, choice, other),
            }
        }
        Err(retries.give_up(&self.config))
    }
}

/// Where a call's retries stand.
struct Retries {
    queue: VecDeque<Choice>,
    busy: BusyQueue<Choice>,
    failures: Vec<String>,
    /// Attempts made.
    tried: u32,
    /// Attempts that count against `max_attempts` (busy answers do not).
    counted: u32,
    /// Orchestrators already retried at a new price.
    repriced: BTreeSet<String>,
    deadline: Instant,
    busy_deadline: Instant,
}

impl Retries {
    fn new(config: &GatewayConfig, queue: VecDeque<Choice>) -> Retries {
        let started = Instant::now();
        let deadline = started + config.retry_budget;
        Retries {
            queue,
            busy: BusyQueue::default(),
            failures: Vec::new(),
            tried: 0,
            counted: 0,
            repriced: BTreeSet::new(),
            deadline,
            busy_deadline: (started + config.busy_wait).min(deadline),
        }
    }

    /// The next orchestrator to try, waiting for full ones once only they are left; `None`
    /// when there is none or the budget is spent.
    async fn next(&mut self, config: &GatewayConfig) -> Option<Choice> {
        loop {
            let Some(choice) = self.queue.pop_front() else {
                // Every candidate left is full: wait a jittered moment, then ask them again.
                if self.busy.is_empty() || !self.busy.wait(self.busy_deadline).await {
                    return None;
                }
                self.queue.extend(self.busy.drain());
                continue;
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if self.counted >= config.max_attempts || left.is_zero() {
                let spent = format!("retry budget spent ({} attempts)", self.tried);
                self.failures.push(spent);
                return None;
            }
            self.tried += 1;
            return Some(choice);
        }
    }

    /// Take note of an attempt that neither served nor failed the call.
    fn failed<T>(&mut self, request_id: &str, choice: Choice, outcome: Attempt<T>) {
        match outcome {
            Attempt::Next(why) => {
                self.counted += 1;
                tracing::warn!(request = %request_id, orchestrator = %choice.url, reason = %why, "attempt failed; trying the next orchestrator");
                self.failures.push(format!("{}: {why}", choice.url));
            }
            Attempt::Busy(why) => {
                tracing::debug!(request = %request_id, orchestrator = %choice.url, reason = %why, "orchestrator full; retrying after the others");
                self.busy.push(&choice.url.clone(), choice, why);
            }
            Attempt::Repriced(price) => {
                self.counted += 1;
                // The same price back: the balance was written down to pay it again.
                let why = if price == choice.price {
                    "it held less than our ledger"
                } else {
                    "price changed"
                };
                self.failures.push(format!("{}: {why}", choice.url));
                if self.repriced.insert(choice.url.clone()) {
                    tracing::info!(orchestrator = %choice.url, ppu = price.price_per_unit, units_per = price.pixels_per_unit, "orchestrator changed its price; trying again at the new price");
                    self.queue.push_front(Choice { price, ..choice });
                }
            }
            Attempt::Done { .. } | Attempt::Fail(_) => {}
        }
    }

    /// The answer when no orchestrator served the call.
    fn give_up(mut self, config: &GatewayConfig) -> AiHttpError {
        self.failures.extend(self.busy.reasons(config.busy_wait));
        err(
            503,
            format!(
                "no orchestrator could serve the request: {}",
                self.failures.join("; ")
            ),
        )
    }
}
