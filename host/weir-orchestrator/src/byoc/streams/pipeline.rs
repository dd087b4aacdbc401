//! Pipeline components run over a stream's channels: each input segment through
//! `on-segment`, each control message through `on-control`, failed instances replaced.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use weir_protocol::AiHttpError;
use weir_runtime::{
    describe_guest_error, CallFailure, LoadedComponent, Param, ParamValue, PipelineStream,
    RuntimeError, StreamInfo, WorldKind,
};
use weir_trickle::{Publisher, Subscriber};

use super::owner::Events;
use super::{ControlMessage, StreamStatus, UpdateReply, MAX_RESTARTS, RESTART_WINDOW};
use crate::handler::err;
use crate::Orchestrator;

/// JSON start params as the pipeline's typed params (nested values as JSON text).
fn params_of(params: &serde_json::Value) -> Vec<Param> {
    let serde_json::Value::Object(map) = params else {
        return Vec::new();
    };
    map.iter()
        .map(|(k, v)| Param {
            name: k.clone(),
            value: match v {
                serde_json::Value::Bool(b) => ParamValue::Flag(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => ParamValue::Integer(i),
                    None => ParamValue::Number(n.as_f64().unwrap_or(0.0)),
                },
                serde_json::Value::String(s) => ParamValue::Text(s.clone()),
                other => ParamValue::Text(other.to_string()),
            },
        })
        .collect()
}

/// The pipeline component started (`on-start`) on stream `stream_id` with `params`.
pub(super) async fn start_pipeline(
    o: &Orchestrator,
    component: &str,
    stream_id: &str,
    capability: &str,
    params: &serde_json::Value,
) -> Result<PipelineStream, AiHttpError> {
    let loaded = o
        .registry()
        .get_world(component, WorldKind::Pipeline)
        .map_err(|e| err(503, format!("pipeline component `{component}`: {e}")))?;
    let info = StreamInfo {
        id: stream_id.to_owned(),
        capability: capability.to_owned(),
        params: params_of(params),
    };
    tokio::task::spawn_blocking(move || loaded.start_stream(info))
        .await
        .map_err(|e| err(500, format!("the pipeline crashed: {e}")))?
        .map_err(|e| err(422, format!("the pipeline refused the stream: {e}")))
}

/// Runs a pipeline component over a stream's channels.
pub(super) struct PipelineMedia {
    /// The component version the stream started on; failed instances are replaced from it.
    pub(super) component: Arc<LoadedComponent>,
    pub(super) capability: String,
    /// The start params merged with every update the pipeline accepted.
    pub(super) params: serde_json::Value,
    /// When failed instances were replaced (within [`RESTART_WINDOW`]).
    pub(super) restarts: Vec<Instant>,
    pub(super) client: reqwest::Client,
    pub(super) input: String,
    pub(super) output: String,
    pub(super) control: String,
    pub(super) events: Events,
    pub(super) status: Arc<Mutex<StreamStatus>>,
    pub(super) max_segment: usize,
    pub(super) stream_id: String,
}

/// How a pipeline task ended.
pub(super) struct Ended {
    pub(super) reason: String,
    /// The pipeline failed (as opposed to a stop or the end of the input).
    pub(super) failed: bool,
}

/// Whether a failed call discarded the stream's instance (every failure but a guest's own
/// error does).
fn instance_lost(e: &RuntimeError) -> bool {
    !matches!(
        e,
        RuntimeError::Call {
            failure: CallFailure::Guest(_),
            ..
        }
    )
}

/// Whether a control message is Livepeer's keepalive.
fn keepalive(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("keep").and_then(|k| k.as_str()) == Some("alive"))
}

/// `params` with the keys of the JSON object `update` set over them.
fn merged(params: &serde_json::Value, update: &str) -> Option<serde_json::Value> {
    let serde_json::Value::Object(update) = serde_json::from_str(update).ok()? else {
        return None;
    };
    let mut out = match params {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    out.extend(update);
    Some(serde_json::Value::Object(out))
}

/// What one message did: the stream back (`None`: its instance is gone) and the error, if any.
type Handled = (Option<PipelineStream>, Option<String>);

impl PipelineMedia {
    /// Until the input ends, `stop` is set or the pipeline fails for good: each input segment
    /// through `on-segment`, each control message through `on-control`; a failed instance is
    /// replaced up to [`MAX_RESTARTS`] times within [`RESTART_WINDOW`].
    pub(super) async fn run(
        mut self,
        stream: PipelineStream,
        mut stop: watch::Receiver<bool>,
        mut updates: mpsc::Receiver<ControlMessage>,
    ) -> Ended {
        let mut stream = Some(stream);
        let mut input = Subscriber::new(self.client.clone(), self.input.clone()).starting_at(0);
        let mut control = Subscriber::new(self.client.clone(), self.control.clone()).starting_at(0);
        let mut output = Publisher::new(self.client.clone(), self.output.clone());
        let mut failures = 0u32;
        let mut control_open = true;
        let ended = loop {
            let message = tokio::select! {
                _ = stop.changed() => break Ended { reason: "stopped".to_owned(), failed: false },
                seg = input.next() => match seg {
                    Ok(Some(seg)) => {
                        let seq = seg.seq();
                        match seg.bytes(self.max_segment).await {
                            Ok(data) => Message::Segment(seq, data),
                            Err(e) => Message::Bad(format!("input segment {seq}: {e}")),
                        }
                    }
                    Ok(None) => break Ended { reason: "the input ended".to_owned(), failed: false },
                    Err(e) => Message::Bad(format!("input: {e}")),
                },
                msg = control.next(), if control_open => match msg {
                    Ok(Some(m)) => match m.bytes(64 * 1024).await {
                        Ok(b) => Message::Control(String::from_utf8_lossy(&b).into_owned(), None),
                        Err(e) => Message::Bad(format!("control: {e}")),
                    },
                    Ok(None) | Err(_) => {
                        // Control is optional: stop reading it, keep the media going.
                        control_open = false;
                        continue;
                    }
                },
                Some((text, reply)) = updates.recv() => Message::Control(text, reply),
            };
            let Some(s) = stream.take() else {
                break Ended {
                    reason: "the pipeline instance is gone".to_owned(),
                    failed: true,
                };
            };
            let (back, outcome) = self.handle(s, message, &mut output).await;
            stream = back;
            let Some(why) = outcome else {
                failures = 0;
                self.publish_status().await;
                continue;
            };
            failures += 1;
            self.record_error(&why).await;
            if stream.is_none() {
                match self.replace(why).await {
                    Ok(fresh) => stream = Some(fresh),
                    Err(reason) => {
                        break Ended {
                            reason,
                            failed: true,
                        }
                    }
                }
            } else if failures >= 10 {
                break Ended {
                    reason: format!("10 errors in a row; last: {why}"),
                    failed: true,
                };
            }
        };
        self.wind_down(stream, output).await;
        ended
    }

    /// `on-stop` for the instance still running, and the output channel closed.
    async fn wind_down(&self, stream: Option<PipelineStream>, output: Publisher) {
        if let Some(s) = stream {
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.stop()).await {
                tracing::warn!(stream = %self.stream_id, error = %e, "on-stop failed");
            }
        }
        if let Err(e) = output.close().await {
            tracing::debug!(error = %e, "output channel already closed");
        }
    }

    async fn handle(
        &mut self,
        s: PipelineStream,
        message: Message,
        output: &mut Publisher,
    ) -> Handled {
        match message {
            Message::Segment(seq, data) => self.segment(s, seq, data, output).await,
            Message::Control(text, None) if keepalive(&text) => (Some(s), None),
            Message::Control(text, reply) => self.control(s, text, reply).await,
            Message::Bad(why) => (Some(s), Some(why)),
        }
    }

    async fn segment(
        &self,
        mut s: PipelineStream,
        seq: u64,
        data: Bytes,
        output: &mut Publisher,
    ) -> Handled {
        self.status.lock().segments_in += 1;
        let r = tokio::task::spawn_blocking(move || {
            let duration_ms = weir_media::transcode::probe(&data)
                .map(|i| u32::try_from(i.duration_ms).unwrap_or(u32::MAX))
                .unwrap_or(2000);
            let segment = weir_runtime::media::Segment {
                seq,
                duration_ms,
                content_type: "video/mp2t".to_owned(),
                data: data.to_vec().into(),
            };
            let r = s.on_segment(segment);
            (s, r)
        })
        .await;
        match r {
            Ok((s, Ok(out))) => {
                let mut sent = 0;
                let mut publish_error = None;
                for seg in out {
                    match output.write(Bytes::copy_from_slice(&seg.data)).await {
                        Ok(_) => sent += 1,
                        Err(e) => publish_error = Some(e.to_string()),
                    }
                }
                self.status.lock().segments_out += sent;
                (
                    Some(s),
                    publish_error.map(|e| format!("output segment not published: {e}")),
                )
            }
            Ok((s, Err(e))) => {
                let lost = instance_lost(&e);
                ((!lost).then_some(s), Some(format!("segment {seq}: {e}")))
            }
            Err(e) => (None, Some(format!("the pipeline crashed: {e}"))),
        }
    }

    /// `on-control`; its outcome goes to `reply` when someone waits for it. A refusal with a
    /// reply is the caller's answer, not a pipeline error.
    async fn control(
        &mut self,
        mut s: PipelineStream,
        text: String,
        reply: Option<UpdateReply>,
    ) -> Handled {
        let message = text.clone();
        let waited = reply.is_some();
        let r = tokio::task::spawn_blocking(move || {
            let r = s.on_control(&message);
            (s, r)
        })
        .await;
        let answer = |r: Result<bool, AiHttpError>| {
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        };
        match r {
            Ok((s, Ok(()))) => {
                if let Some(params) = merged(&self.params, &text) {
                    self.params = params.clone();
                    self.status.lock().params = params;
                }
                answer(Ok(true));
                self.events
                    .publish(
                        serde_json::json!({"type": "params_applied", "stream_id": self.stream_id}),
                    )
                    .await;
                (Some(s), None)
            }
            Ok((s, Err(e))) if !instance_lost(&e) => {
                let message = match &e {
                    RuntimeError::Call {
                        failure: CallFailure::Guest(g),
                        ..
                    } => describe_guest_error(g),
                    other => other.to_string(),
                };
                answer(Err(err(
                    422,
                    format!("the pipeline refused the params: {message}"),
                )));
                (Some(s), (!waited).then(|| format!("control: {e}")))
            }
            Ok((_, Err(e))) => {
                answer(Err(err(
                    500,
                    format!("the pipeline failed on the params: {e}"),
                )));
                (None, Some(format!("control: {e}")))
            }
            Err(e) => {
                answer(Err(err(500, "the pipeline crashed on the params")));
                (None, Some(format!("the pipeline crashed: {e}")))
            }
        }
    }

    async fn publish_status(&self) {
        let (i, out) = {
            let s = self.status.lock();
            (s.segments_in, s.segments_out)
        };
        self.events
            .publish(serde_json::json!({"type": "status", "stream_id": self.stream_id, "segments_in": i, "segments_out": out}))
            .await;
    }

    async fn record_error(&self, why: &str) {
        tracing::warn!(stream = %self.stream_id, error = %why, "pipeline error");
        {
            let mut s = self.status.lock();
            s.errors += 1;
            s.last_error = Some(why.to_owned());
        }
        self.events
            .publish(
                serde_json::json!({"type": "error", "stream_id": self.stream_id, "message": why}),
            )
            .await;
    }

    /// A fresh instance started (`on-start`) with the stream's info and the params accepted
    /// last, or why the stream must fail: its instances failed too often.
    async fn replace(&mut self, mut why: String) -> Result<PipelineStream, String> {
        loop {
            self.restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
            if self.restarts.len() >= MAX_RESTARTS {
                return Err(format!(
                    "the pipeline failed after {MAX_RESTARTS} instance replacements within {} s; last error: {why}",
                    RESTART_WINDOW.as_secs()
                ));
            }
            self.restarts.push(Instant::now());
            let restarts = {
                let mut s = self.status.lock();
                s.restarts += 1;
                s.restarts
            };
            tracing::warn!(stream = %self.stream_id, restarts, error = %why, "replacing the failed pipeline instance");
            let info = StreamInfo {
                id: self.stream_id.clone(),
                capability: self.capability.clone(),
                params: params_of(&self.params),
            };
            let component = self.component.clone();
            match tokio::task::spawn_blocking(move || component.start_stream(info)).await {
                Ok(Ok(fresh)) => {
                    self.events
                        .publish(serde_json::json!({"type": "restarted", "stream_id": self.stream_id, "restarts": restarts, "error": why}))
                        .await;
                    return Ok(fresh);
                }
                Ok(Err(e)) => why = format!("restart: {e}"),
                Err(e) => why = format!("restart crashed: {e}"),
            }
            self.record_error(&why).await;
        }
    }
}

enum Message {
    Segment(u64, Bytes),
    Control(String, Option<UpdateReply>),
    Bad(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_typed() {
        let p = params_of(
            &serde_json::json!({"height": 360, "mode": "fast", "on": true, "x": 1.5, "o": {"a": 1}}),
        );
        let get = |n: &str| p.iter().find(|x| x.name == n).map(|x| x.value.clone());
        assert!(matches!(get("height"), Some(ParamValue::Integer(360))));
        assert!(matches!(get("mode"), Some(ParamValue::Text(t)) if t == "fast"));
        assert!(matches!(get("on"), Some(ParamValue::Flag(true))));
        assert!(matches!(get("x"), Some(ParamValue::Number(f)) if f == 1.5));
        assert!(matches!(get("o"), Some(ParamValue::Text(t)) if t == "{\"a\":1}"));
        assert!(params_of(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn keepalives_are_recognized() {
        assert!(keepalive(r#"{"keep":"alive"}"#));
        assert!(!keepalive(r#"{"height":3}"#));
        assert!(!keepalive("nope"));
    }
}
