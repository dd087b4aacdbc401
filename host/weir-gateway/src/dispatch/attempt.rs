//! One attempt with one orchestrator, phase by phase: **pay** (reserve and sign), **send**
//! (the call's request with the payment), **accept** (the call reads the answer) and
//! **settle** (or take the payment back and classify the failure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header;
use weir_protocol::info::{BALANCE_HEADER, CHARGE_HEADER, PAYMENT_HEADER};

use super::{
    err, error_message, read_capped, Answer, Attempt, Call, Choice, Dispatcher, Streaming,
};
use crate::payments::{GatewayPayments, Pending};

impl Dispatcher {
    /// One attempt of `call` with `choice`: pay, send, accept and settle. If the future is
    /// dropped midway (the client went away), the reservation is released and the payment
    /// taken back.
    pub(super) async fn attempt<C: Call>(&self, call: &C, choice: &Choice) -> Attempt<C::Output> {
        let pending = match self.pay(choice, call.capability(), call.units()).await {
            Ok(p) => p,
            Err(failed) => return failed,
        };
        let mut guard = Unsettled {
            payments: self.payments.clone(),
            pending,
            armed: true,
        };
        let outcome = self.exchange(call, choice, &guard.pending).await;
        guard.armed = false;
        outcome
    }

    /// Phase **pay**: reserve the cost of `units` with `choice` and sign a payment for what
    /// the balance there lacks.
    async fn pay<T>(&self, choice: &Choice, cap: &str, units: u64) -> Result<Pending, Attempt<T>> {
        self.payments
            .prepare(&choice.url, cap, &choice.model, units, choice.price)
            .await
            .map_err(|e| Attempt::Fail(err(500, format!("gateway ledger: {e}"))))
    }

    /// Phases **send** and **accept**: send the call's request with `pending`'s payment, then
    /// let the call take the answer as it streams or read, accept and settle it whole.
    async fn exchange<C: Call>(
        &self,
        call: &C,
        choice: &Choice,
        pending: &Pending,
    ) -> Attempt<C::Output> {
        let request = call.request(&self.client, choice);
        let started = Instant::now();
        let sent = self
            .send(
                choice,
                call.capability(),
                pending,
                request,
                call.timeout(),
                started,
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        match call.take_streaming(choice, pending, response, started) {
            Streaming::Taken(output) => {
                self.discovery
                    .record(&choice.url, &pending.account, true, started.elapsed());
                Attempt::Done {
                    body: output,
                    charge: 0,
                    paid: pending.topup,
                }
            }
            Streaming::Whole(response) => {
                self.accept(call, choice, pending, response, started).await
            }
        }
    }

    /// Phase **send**: send `request` with `pending`'s payment. A transport failure or a
    /// refusal comes back as the attempt to return, the payment already taken back and the
    /// orchestrator recorded.
    async fn send<T>(
        &self,
        choice: &Choice,
        cap: &str,
        pending: &Pending,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        started: Instant,
    ) -> Result<reqwest::Response, Attempt<T>> {
        let acct = pending.account.as_str();
        let sent = request
            .header(PAYMENT_HEADER, pending.header.as_str())
            .timeout(timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.payments.abandon(pending).await;
                return Err(self.unreachable(choice, acct, &e, timeout, started.elapsed()));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        self.payments.abandon(pending).await;
        let message = error_message(read_capped(response).await.ok(), status);
        let refusal = self.refused(
            choice,
            cap,
            acct,
            status.as_u16(),
            message,
            started.elapsed(),
        );
        Err(refusal.await)
    }

    /// Phases **accept** and **settle**: read a successful answer, let the call accept it,
    /// and settle `pending` at the charge the orchestrator reports (checked against the
    /// ledger). An answer that cannot be read or is not accepted is abandoned, the
    /// orchestrator suspended, and the next one tried.
    async fn accept<C: Call>(
        &self,
        call: &C,
        choice: &Choice,
        pending: &Pending,
        response: reqwest::Response,
        started: Instant,
    ) -> Attempt<C::Output> {
        let acct = pending.account.as_str();
        let headers = response.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let (charge, balance) = (number(CHARGE_HEADER), number(BALANCE_HEADER));
        let content_type = text(header::CONTENT_TYPE.as_str())
            .unwrap_or_default()
            .to_owned();
        let accepted = match read_capped(response).await {
            Ok(body) => {
                call.accept(Answer {
                    content_type,
                    body,
                    balance,
                })
                .await
            }
            Err(e) => Err(e),
        };
        match accepted {
            Ok(value) => {
                self.discovery
                    .record(&choice.url, acct, true, started.elapsed());
                match self
                    .payments
                    .settle(pending, call.charge(charge), balance)
                    .await
                {
                    Ok(s) => Attempt::Done {
                        body: value,
                        charge: s.charge,
                        paid: pending.topup,
                    },
                    Err(e) => Attempt::Fail(err(500, format!("gateway ledger: {e}"))),
                }
            }
            Err(e) => {
                self.payments.abandon(pending).await;
                self.discovery
                    .record(&choice.url, acct, false, started.elapsed());
                self.suspend(&choice.url, &e);
                Attempt::Next(format!("unreadable answer: {e}"))
            }
        }
    }
}

/// Abandons an attempt's payment when dropped while armed.
struct Unsettled {
    payments: Arc<GatewayPayments>,
    pending: Pending,
    armed: bool,
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if self.armed {
            let payments = self.payments.clone();
            let pending = self.pending.clone();
            tokio::spawn(async move {
                tracing::info!(job = %pending.job_id, "request dropped mid-attempt; payment taken back");
                payments.abandon(&pending).await;
            });
        }
    }
}
