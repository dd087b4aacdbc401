//! A pipeline that echoes: batch jobs return their inputs with a byte count; streams pass each
//! segment through and count control messages; `on-control` with `"count"` reports the count
//! as an error (so tests can see instance state survive between calls).
//!
//! Failure modes for tests: a stream started with the flag param `fail` traps in every
//! `on-segment`; a control message holding `"reject"` is refused with an invalid-request error
//! naming the rejected value.
//!
//! Storage: a batch job whose `prompt` is `store:KEY` puts its first input under `KEY` with
//! `weir:host/storage`, reads it back, and answers the object read back, then a `text/plain`
//! object holding the URL `put` answered; `fetch:KEY` answers the object stored under `KEY`.
//! A storage error is the job's error.
//!
//! Payments: `ledger` answers one `text/plain` object, `balance=B earned=E`: what the job's
//! sender holds for the job's capability and what this node earned from it, as
//! `weir:host/payments` reports them; `price:URL` answers `price=P/U CURRENCY`, the current
//! price of orchestrator URL for the job's capability and model.
//!
//! Frames: `hoard:WxH` makes `W`×`H` RGB frames with `weir:host/video` and keeps them until
//! the host refuses one, then answers `text/plain` `made N frames: ERROR` (the frames are
//! dropped as the call returns).
//!
//! Frames through a model: `framemodel:CAPABILITY/MODEL` makes a frame from the first input
//! (`frame.from-image`), sends it to that model as an image (`frame.to-image`, `models.invoke`)
//! and makes a frame of its first output; it answers that frame as an image, then `text/plain`
//! `WxH -> WxH` (the two frames' sizes). The guest only holds handles.
//!
//! Models: `model:CAPABILITY/MODEL` runs that model of the node (`weir:host/models.invoke`)
//! on the job's inputs with the prompt `weir` and answers its outputs; a model error is the
//! job's error.

use std::cell::Cell;

use weir_sdk::pipeline::{
    Blob, Error, Guest, Job, JobOutput, Param, ParamValue, Segment, StreamInfo,
};

struct Echo;

thread_local! {
    static CONTROLS: Cell<i64> = const { Cell::new(0) };
    static FAIL: Cell<bool> = const { Cell::new(false) };
}

/// `store:KEY`: put the first input under KEY, read it back, answer it and its URL.
fn store(key: &str, job: Job) -> Result<JobOutput, Error> {
    let Some(first) = job.inputs.first() else {
        return Err(Error::InvalidRequest("store: no input to store".into()));
    };
    let url = weir_sdk::storage::put(key, first)?;
    let back = weir_sdk::storage::get(key)?;
    Ok(JobOutput {
        blobs: vec![back, Blob::new("text/plain", url.as_bytes())],
        params: Vec::new(),
    })
}

/// `framemodel:CAPABILITY/MODEL`: the first input as a frame, through the model and back.
fn frame_model(target: &str, job: &Job) -> Result<JobOutput, Error> {
    use weir_sdk::video::Frame;
    let (capability, model) = target.split_once('/').unwrap_or((target, ""));
    let Some(first) = job.inputs.first() else {
        return Err(Error::InvalidRequest("framemodel: no input image".into()));
    };
    let frame = Frame::from_image(first)?;
    let image = frame.to_image()?;
    let prompt = Param {
        name: "prompt".into(),
        value: ParamValue::Text("weir".into()),
    };
    let out = weir_sdk::models::invoke(capability, model, &[prompt], &[&image])?;
    let Some(result) = out.blobs.first() else {
        return Err(Error::Internal(format!("{target} answered no image")));
    };
    let back = Frame::from_image(result)?;
    let text = format!(
        "{}x{} -> {}x{}",
        frame.width(),
        frame.height(),
        back.width(),
        back.height()
    );
    Ok(JobOutput {
        blobs: vec![back.to_image()?, Blob::new("text/plain", text.as_bytes())],
        params: Vec::new(),
    })
}

/// `hoard:WxH`: make frames until the host refuses one; say how many and why.
fn hoard(size: &str) -> Result<JobOutput, Error> {
    use weir_sdk::video::{Color, Frame, PixelFormat};
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| Error::InvalidRequest(format!("hoard: {size:?} is not WxH")))?;
    let black = Color { r: 0, g: 0, b: 0 };
    let mut held = Vec::new();
    let refused = loop {
        match Frame::filled(w, h, PixelFormat::Rgb24, black) {
            Ok(frame) => held.push(frame),
            Err(e) => break e,
        }
    };
    let text = format!("made {} frames: {refused:?}", held.len());
    Ok(JobOutput {
        blobs: vec![Blob::new("text/plain", text.as_bytes())],
        params: Vec::new(),
    })
}

impl Guest for Echo {
    fn run(job: Job) -> Result<JobOutput, Error> {
        let prompt = job.request.params.iter().find_map(|p| match &p.value {
            ParamValue::Text(t) if p.name == "prompt" => Some(t.clone()),
            _ => None,
        });
        if let Some(key) = prompt.as_deref().and_then(|p| p.strip_prefix("store:")) {
            return store(key, job);
        }
        if prompt.as_deref() == Some("ledger") {
            let (sender, capability) = (&job.request.sender, &job.request.capability);
            let balance = weir_sdk::payments::balance(sender, capability)?;
            let earned = weir_sdk::payments::spent(sender, capability, "")?;
            let text = format!("balance={balance} earned={earned}");
            return Ok(JobOutput {
                blobs: vec![Blob::new("text/plain", text.as_bytes())],
                params: Vec::new(),
            });
        }
        if let Some(url) = prompt.as_deref().and_then(|p| p.strip_prefix("price:")) {
            let (capability, model) = (&job.request.capability, &job.request.model);
            let p = weir_sdk::payments::current_price(url, capability, model)?;
            let text = format!(
                "price={}/{} {}",
                p.price_per_unit, p.pixels_per_unit, p.currency
            );
            return Ok(JobOutput {
                blobs: vec![Blob::new("text/plain", text.as_bytes())],
                params: Vec::new(),
            });
        }
        if let Some(target) = prompt.as_deref().and_then(|p| p.strip_prefix("model:")) {
            let (capability, model) = target.split_once('/').unwrap_or((target, ""));
            let inputs: Vec<&Blob> = job.inputs.iter().collect();
            let prompt = Param {
                name: "prompt".into(),
                value: ParamValue::Text("weir".into()),
            };
            let out = weir_sdk::models::invoke(capability, model, &[prompt], &inputs)?;
            return Ok(JobOutput {
                blobs: out.blobs,
                params: out.params,
            });
        }
        if let Some(target) = prompt
            .as_deref()
            .and_then(|p| p.strip_prefix("framemodel:"))
        {
            return frame_model(target, &job);
        }
        if let Some(size) = prompt.as_deref().and_then(|p| p.strip_prefix("hoard:")) {
            return hoard(size);
        }
        if let Some(key) = prompt.as_deref().and_then(|p| p.strip_prefix("fetch:")) {
            return Ok(JobOutput {
                blobs: vec![weir_sdk::storage::get(key)?],
                params: Vec::new(),
            });
        }
        let total: u64 = job.inputs.iter().map(|b| b.len()).sum();
        let first = match job.inputs.first() {
            Some(b) => b.read(0, 16)?,
            None => Vec::new(),
        };
        Ok(JobOutput {
            blobs: job.inputs,
            params: vec![
                Param {
                    name: "bytes".into(),
                    value: ParamValue::Integer(total as i64),
                },
                Param {
                    name: "head".into(),
                    value: ParamValue::Text(String::from_utf8_lossy(&first).into_owned()),
                },
                Param {
                    name: "capability".into(),
                    value: ParamValue::Text(job.request.capability),
                },
            ],
        })
    }

    fn on_start(info: StreamInfo) -> Result<(), Error> {
        weir_sdk::logging::info(&format!("stream {} started", info.id));
        let fail = info
            .params
            .iter()
            .any(|p| p.name == "fail" && matches!(p.value, ParamValue::Flag(true)));
        FAIL.with(|f| f.set(fail));
        Ok(())
    }

    fn on_segment(segment: Segment) -> Result<Vec<Segment>, Error> {
        if FAIL.with(|f| f.get()) {
            panic!("segment {} failed on purpose", segment.seq());
        }
        if segment.len() == 0 {
            return Err(Error::InvalidRequest(format!(
                "segment {} is empty",
                segment.seq()
            )));
        }
        Ok(vec![segment])
    }

    fn on_control(message: String) -> Result<(), Error> {
        CONTROLS.with(|c| c.set(c.get() + 1));
        if let Some(at) = message.find("\"reject\"") {
            return Err(Error::InvalidRequest(format!(
                "rejected on purpose: {}",
                &message[at..]
            )));
        }
        if message == "\"count\"" {
            return Err(Error::Internal(format!(
                "controls={}",
                CONTROLS.with(|c| c.get())
            )));
        }
        Ok(())
    }

    fn on_stop() {}
}

weir_sdk::pipeline::export_pipeline!(Echo);
