//! Starting a stream: `POST /ai/stream/start` and Livepeer's `POST /live-video-to-video`. The
//! stream is paid ahead ([`Payer::prepay`]), takes a capacity slot, gets its trickle channels,
//! starts on its worker or pipeline and is handed to its [`Owner`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use weir_models::capacity::Slot;
use weir_payments::credit::Payment;
use weir_protocol::byoc::{
    JobRequest, LiveVideoToVideo, StreamChannels, WorkerStreamStart, BYOC_MODEL,
    LIVEPEER_BALANCE_HEADER,
};
use weir_protocol::info::BALANCE_HEADER;
use weir_protocol::AiHttpError;
use weir_runtime::PipelineStream;

use super::owner::Owner;
use super::pipeline::start_pipeline;
use super::worker::{start_worker, stop_worker};
use super::{json_response, Channels, Live, StreamStatus};
use crate::byoc::{Backend, Offered};
use crate::handler::err;
use crate::paid::Payer;
use crate::Orchestrator;

/// `POST /ai/stream/start`: the `Livepeer` job header names the capability; the body holds the
/// start parameters (`{"params": …, "stream_id": …}` or the params themselves).
pub(crate) async fn start(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let job = JobRequest::from_headers(&headers)?;
        let body: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| err(400, format!("the body is not JSON: {e}")))?
        };
        let (params, stream_id) = match &body {
            serde_json::Value::Object(m)
                if m.contains_key("params") || m.contains_key("stream_id") =>
            {
                (
                    m.get("params").cloned().unwrap_or(serde_json::Value::Null),
                    m.get("stream_id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
            other => (other.clone(), String::new()),
        };
        let stream_id = if stream_id.is_empty() {
            serde_json::from_str::<serde_json::Value>(&job.request)
                .ok()
                .and_then(|r| {
                    r.get("stream_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        } else {
            stream_id
        };
        let payment = o.payment(&headers)?;
        let asked = Asked {
            capability: job.capability,
            stream_id,
            params,
            request: job.request,
            gateway_request_id: job.id,
        };
        open(&o, asked, payment).await
    };
    match run.await {
        Ok((channels, balance)) => {
            let mut r = json_response(&channels);
            let h = r.headers_mut();
            for (name, value) in [
                ("x-publish-url", &channels.publish_url),
                ("x-subscribe-url", &channels.subscribe_url),
                ("x-control-url", &channels.control_url),
                ("x-events-url", &channels.events_url),
                ("x-data-url", &channels.data_url),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.insert(name, v);
                }
            }
            h.insert(BALANCE_HEADER, HeaderValue::from(balance));
            h.insert(LIVEPEER_BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Livepeer's `POST /live-video-to-video`: `{model_id, params, gateway_request_id, stream_id}`
/// with a payment; answers `{publish_url, subscribe_url, control_url, events_url, manifest_id}`.
pub(crate) async fn live_video_to_video(
    State(o): State<Orchestrator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let req: LiveVideoToVideo = serde_json::from_slice(&body)
            .map_err(|e| err(400, format!("not a live-video-to-video request: {e}")))?;
        let payment = o.payment(&headers)?;
        let asked = Asked {
            capability: req.model_id,
            stream_id: req.stream_id,
            params: req.params,
            request: String::new(),
            gateway_request_id: req.gateway_request_id,
        };
        open(&o, asked, payment).await
    };
    match run.await {
        Ok((channels, balance)) => {
            let mut r = json_response(&channels);
            r.headers_mut()
                .insert(BALANCE_HEADER, HeaderValue::from(balance));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// What a stream is asked to start with.
struct Asked {
    /// The BYOC capability.
    capability: String,
    /// Generated when empty.
    stream_id: String,
    params: serde_json::Value,
    /// The job request, handed to an external worker as is.
    request: String,
    gateway_request_id: String,
}

/// Start the stream `asked` names for the payment's sender; answers the gateway's side of its
/// channels and the sender's balance.
async fn open(
    o: &Orchestrator,
    asked: Asked,
    payment: Payment,
) -> Result<(StreamChannels, u64), AiHttpError> {
    let capability = asked.capability.as_str();
    let offered = o.byoc().get(capability)?;
    let payer = Payer::for_account(payment, capability, BYOC_MODEL, "stream")?;
    let stream_id =
        weir_protocol::ids::stream_id_or_new(&asked.stream_id).map_err(|e| err(400, e))?;
    let config = o.byoc().config();
    if o.streams().len() >= config.max_streams {
        return Err(err(
            503,
            format!("{} streams are running (max_streams)", o.streams().len()),
        ));
    }
    // Pay ahead: the stream starts only with `min_balance_secs` of price in the balance.
    let balance = payer
        .prepay(
            o.ledger(),
            capability,
            &offered.quoted(),
            config.min_balance_secs,
        )
        .await?;
    let slot = offered.slot()?;
    let prefix = format!("{stream_id}-{:08x}", rand::random::<u32>());
    let channels = create_channels(o, &prefix)?;
    let base = o.service_url();
    // The worker reads input and control, writes output, events and data.
    let worker_side = WorkerStreamStart {
        gateway_request_id: asked.gateway_request_id.clone(),
        stream_id: stream_id.clone(),
        subscribe_url: channels.input.subscribe_url(base),
        publish_url: channels.output.publish_url(base),
        control_url: channels.control.subscribe_url(base),
        events_url: channels.events.publish_url(base),
        data_url: channels.data.publish_url(base),
        params: asked.params.clone(),
        request: asked.request.clone(),
    };
    let gateway_side = StreamChannels {
        publish_url: channels.input.publish_url(base),
        subscribe_url: channels.output.subscribe_url(base),
        control_url: channels.control.publish_url(base),
        events_url: channels.events.subscribe_url(base),
        data_url: channels.data.subscribe_url(base),
        manifest_id: prefix,
    };
    let pipeline = match start_backend(o, &offered, &worker_side, &stream_id, &asked).await {
        Ok(p) => p,
        Err(e) => {
            close_channels(o, &channels);
            return Err(e);
        }
    };
    let started = Started {
        stream_id,
        offered,
        channels,
        pipeline,
        worker_side,
        slot,
    };
    run_owned(o, started, &asked, payer, balance).await?;
    Ok((gateway_side, balance))
}

/// The stream's five trickle channels, named from `prefix`; none is left behind on a failure.
fn create_channels(o: &Orchestrator, prefix: &str) -> Result<Channels, AiHttpError> {
    let trickle = o.trickle();
    let create = |suffix: &str, mime: &str| {
        trickle
            .create(&format!("{prefix}{suffix}"), mime)
            .map_err(|e| err(503, format!("trickle channel: {e}")))
    };
    let mut made = Vec::new();
    let channels = (|| {
        let input = create("", "video/MP2T")?;
        made.push(input.name.clone());
        let output = create("-out", "video/MP2T")?;
        made.push(output.name.clone());
        let control = create("-control", "application/json")?;
        made.push(control.name.clone());
        let events = create("-events", "application/json")?;
        made.push(events.name.clone());
        let data = create("-data", "application/jsonl")?;
        made.push(data.name.clone());
        Ok::<_, AiHttpError>(Channels {
            input,
            output,
            control,
            events,
            data,
        })
    })();
    if channels.is_err() {
        for name in made {
            trickle.close(&name);
        }
    }
    channels
}

fn close_channels(o: &Orchestrator, channels: &Channels) {
    for c in channels.all() {
        o.trickle().close(&c.name);
    }
}

/// Tell the external worker where the channels are, or start the pipeline component here.
async fn start_backend(
    o: &Orchestrator,
    offered: &Offered,
    worker_side: &WorkerStreamStart,
    stream_id: &str,
    asked: &Asked,
) -> Result<Option<PipelineStream>, AiHttpError> {
    match &offered.backend {
        Backend::Worker { url, token } => {
            start_worker(o, offered, url, token.as_deref(), worker_side)
                .await
                .map(|()| None)
        }
        Backend::Pipeline { component } => {
            start_pipeline(o, component, stream_id, &asked.capability, &asked.params)
                .await
                .map(Some)
        }
    }
}

/// A stream started on its backend, not yet in the table.
struct Started {
    stream_id: String,
    offered: Arc<Offered>,
    channels: Channels,
    pipeline: Option<PipelineStream>,
    worker_side: WorkerStreamStart,
    slot: Slot,
}

/// Enter the stream in the table and hand it to its owner task; a stream id already running is
/// refused (409) and the new stream torn down.
async fn run_owned(
    o: &Orchestrator,
    s: Started,
    asked: &Asked,
    payer: Payer,
    balance: u64,
) -> Result<(), AiHttpError> {
    let status = Arc::new(Mutex::new(StreamStatus {
        stream_id: s.stream_id.clone(),
        capability: asked.capability.clone(),
        state: "running",
        started_ms_ago: 0,
        charged: 0,
        balance,
        segments_in: 0,
        segments_out: 0,
        errors: 0,
        last_error: None,
        stop_reason: None,
        restarts: 0,
        error: None,
        params: asked.params.clone(),
    }));
    let (commands, rx) = mpsc::channel(16);
    let inserted = {
        let mut map = o.streams().map.lock();
        if map.contains_key(&s.stream_id) {
            false
        } else {
            map.insert(
                s.stream_id.clone(),
                Live {
                    sender: payer.payment.sender.clone(),
                    commands,
                    status: status.clone(),
                    started: Instant::now(),
                },
            );
            true
        }
    };
    if !inserted {
        close_channels(o, &s.channels);
        if let Some(p) = s.pipeline {
            tokio::task::spawn_blocking(move || p.stop());
        } else if let Backend::Worker { url, token } = &s.offered.backend {
            stop_worker(o, url, token.as_deref(), &s.stream_id).await;
        }
        let stream_id = s.stream_id;
        return Err(err(409, format!("stream `{stream_id}` is already running")));
    }
    tracing::info!(stream = %s.stream_id, capability = %asked.capability, sender = %payer.payment.sender, balance, "stream started");
    let owner = Owner {
        o: o.clone(),
        stream_id: s.stream_id,
        sender: payer.payment.sender,
        account: payer.account,
        offered: s.offered,
        channels: s.channels,
        status,
        _slot: s.slot,
    };
    tokio::spawn(owner.run(rx, s.pipeline, s.worker_side));
    Ok(())
}
