//! Waiting, on a guest call's blocking thread, for async host work (object storage, model
//! runners) — never past the call's deadline.

use std::future::Future;
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Instant;

use crate::bindings::types::Error as GuestError;

/// Run `work` on `handle`'s runtime and wait for it on this thread until `deadline`; work
/// still running then is aborted. `what` names the work in the errors (e.g. `storage put`).
pub fn run_until<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    what: &str,
    deadline: Instant,
    work: impl Future<Output = Result<T, GuestError>> + Send + 'static,
) -> Result<T, GuestError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(GuestError::Internal(format!(
            "{what}: the call's deadline has passed"
        )));
    }
    let (tx, rx) = sync_channel(1);
    let task = handle.spawn(async move {
        let _ = tx.send(work.await);
    });
    match rx.recv_timeout(left) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => {
            task.abort();
            Err(GuestError::Internal(format!(
                "{what}: no answer within the {} ms the call had left",
                left.as_millis()
            )))
        }
        Err(RecvTimeoutError::Disconnected) => Err(GuestError::Internal(format!(
            "{what}: the task ended without an answer"
        ))),
    }
}
