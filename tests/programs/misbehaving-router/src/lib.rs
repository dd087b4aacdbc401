//! A router that misbehaves on purpose, chosen by its `mode` config value:
//! `ok` (ranks in input order), `loop` (never returns), `alloc` (allocates without bound),
//! `trap` (panics), `garbage` (returns an out-of-range index), `error` (returns a guest error),
//! `empty` (ranks no candidate), `calls` (returns a guest error carrying this instance's call
//! count).
//!
//! Probes of what the sandbox allows answer with a guest error `internal("ok: …")` or
//! `internal("denied: …")`: `env:NAME`, `read:PATH`, `write:PATH`, `connect:IP:PORT`.

use std::cell::Cell;

use weir_sdk::router::{Candidate, Error, Guest, JobRequest};

struct Misbehaving;

thread_local! {
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

impl Guest for Misbehaving {
    fn select(request: JobRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>, Error> {
        let calls = CALLS.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let mode = weir_sdk::config::get("mode").unwrap_or_else(|| "ok".to_owned());
        // A request id of the form `mode:X` overrides the configured mode.
        let mode = request
            .id
            .strip_prefix("mode:")
            .map(str::to_owned)
            .unwrap_or(mode);
        match mode.as_str() {
            "ok" => Ok((0..candidates.len() as u32).collect()),
            "loop" => {
                let mut x: u64 = calls;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("misbehaving router: asked to trap"),
            "calls" => Err(Error::Internal(format!("calls={calls}"))),
            "garbage" => Ok(vec![candidates.len() as u32 + 7]),
            "error" => Err(Error::InvalidRequest("asked to fail".to_owned())),
            "empty" => Ok(Vec::new()),
            other => match probe(other) {
                Some(outcome) => Err(Error::Internal(outcome)),
                None => Err(Error::Config(format!("unknown mode {other}"))),
            },
        }
    }
}

/// Try what a probe mode asks; `None` when `mode` is no probe.
fn probe(mode: &str) -> Option<String> {
    let report = |r: Result<String, String>| match r {
        Ok(v) => format!("ok: {v}"),
        Err(e) => format!("denied: {e}"),
    };
    let (kind, arg) = mode.split_once(':')?;
    Some(report(match kind {
        "env" => std::env::var(arg).map_err(|e| e.to_string()),
        "read" => std::fs::read_to_string(arg).map_err(|e| e.to_string()),
        "write" => std::fs::write(arg, b"written by a guest")
            .map(|()| "written".to_owned())
            .map_err(|e| e.to_string()),
        "connect" => std::net::TcpStream::connect(arg)
            .map(|_| "connected".to_owned())
            .map_err(|e| e.to_string()),
        _ => return None,
    }))
}

weir_sdk::router::export_router!(Misbehaving);
