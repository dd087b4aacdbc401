//! The readers of a session's output and events channels: output video listed as HLS, events
//! kept as the stream's status; both tell the owner task when the session ended there.

use std::sync::Arc;

use tokio::sync::mpsc;
use weir_trickle::{IncomingSegment, Subscriber, TrickleError};

use crate::seams::StreamOutput;

use super::{AiStream, Command};

/// How a session's readers tell the owner task that the session ended.
#[derive(Clone)]
pub(super) struct SessionEnds {
    pub(super) commands: mpsc::Sender<Command>,
    /// The session's generation, so that the owner ignores news of a session it left.
    pub(super) generation: u64,
}

impl SessionEnds {
    /// The session ended because of `why`; `failed` = move the stream elsewhere.
    async fn send(&self, failed: bool, why: String) {
        let _ = self
            .commands
            .send(Command::SessionEnded {
                generation: self.generation,
                failed,
                why,
            })
            .await;
    }
}

/// Relay the output video channel at `url` to the stream's HLS `output` (counted even when it
/// is not shown); a failed channel ends the session as failed.
pub(super) async fn relay_output(
    client: reqwest::Client,
    url: String,
    stream: Arc<AiStream>,
    ends: SessionEnds,
    output: Option<Arc<dyn StreamOutput>>,
) {
    let mut sub = Subscriber::new(client, url).starting_at(0);
    let outcome = loop {
        match sub.next().await {
            Ok(Some(seg)) => match seg.bytes(64 << 20).await {
                Ok(data) => {
                    stream.status.lock().segments_out += 1;
                    if let Some(output) = &output {
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
        ends.send(true, why).await;
    }
}

/// Relay the events channel at `url` to the stream's status; a `stopped` event ends the
/// session for good, a channel failing without one ends it as failed.
pub(super) async fn relay_events(
    client: reqwest::Client,
    url: String,
    stream: Arc<AiStream>,
    ends: SessionEnds,
) {
    let mut sub = Subscriber::new(client, url).starting_at(0);
    loop {
        let seg = match sub.next().await {
            Ok(Some(seg)) => seg,
            Ok(None) | Err(TrickleError::NotFound | TrickleError::Closed) => {
                // An orderly close (the closed marker, or gone after it): whoever writes
                // events stopped doing so; the media channels tell whether the stream is
                // still alive.
                tracing::info!(stream = %stream.id, "the events channel was closed");
                return;
            }
            Err(e) => {
                // The events channel failed without a `stopped` event: the orchestrator is
                // gone or lost the stream.
                let why = format!("the events channel failed without a stop: {e}");
                ends.send(true, why).await;
                return;
            }
        };
        let Some(event) = read_event(seg).await else {
            continue;
        };
        let stop = stop_of(&event);
        stream.status.lock().last_event = Some(event);
        if let Some(stop) = stop {
            if let Some(error) = stop.error {
                stream.status.lock().error = Some(error);
            }
            ends.send(false, stop.why).await;
            return;
        }
    }
}

/// One event segment as JSON; `None` when it cannot be read or parsed (skipped).
async fn read_event(seg: IncomingSegment) -> Option<serde_json::Value> {
    let bytes = seg.bytes(64 * 1024).await.ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()
}

/// The orchestrator stopped the stream: why, and the error when it failed.
struct Stopped {
    why: String,
    error: Option<String>,
}

/// What a `stopped` event says; `None` for any other event.
fn stop_of(event: &serde_json::Value) -> Option<Stopped> {
    // pytrickle wraps its events: `{"event": {...}, "queue_event_type": …}`.
    let inner = event
        .get("event")
        .filter(|e| e.is_object())
        .unwrap_or(event);
    if inner.get("type").and_then(|t| t.as_str()) != Some("stopped") {
        return None;
    }
    let why = inner
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("stopped by the orchestrator")
        .to_owned();
    let failed = inner.get("failed").and_then(|f| f.as_bool()) == Some(true);
    let error = failed.then(|| {
        inner
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or(&why)
            .to_owned()
    });
    Some(Stopped { why, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_events_are_read_wrapped_or_not() {
        let plain = serde_json::json!({"type": "stopped", "reason": "done"});
        let stop = stop_of(&plain).expect("a stop");
        assert_eq!((stop.why.as_str(), stop.error), ("done", None));
        let wrapped = serde_json::json!({
            "event": {"type": "stopped", "failed": true, "error": "oom"},
            "queue_event_type": "stream_event"
        });
        let stop = stop_of(&wrapped).expect("a stop");
        assert_eq!(stop.why, "stopped by the orchestrator");
        assert_eq!(stop.error.as_deref(), Some("oom"));
        let failed = serde_json::json!({"type": "stopped", "reason": "r", "failed": true});
        assert_eq!(stop_of(&failed).and_then(|s| s.error).as_deref(), Some("r"));
        assert!(stop_of(&serde_json::json!({"type": "status"})).is_none());
    }
}
