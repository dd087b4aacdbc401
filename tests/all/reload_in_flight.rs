//! A hot reload while a long call is in flight: a pipeline's `on-segment` is held inside the
//! host's transcoder while the watcher swaps in a new version; the held call then completes on
//! the old version, and calls made meanwhile already run the new one.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use weir_runtime::bindings::{media::VideoInfo, transcode::Rendition};
use weir_runtime::media::Segment;
use weir_runtime::{GuestError, MediaSource, StreamInfo};

use crate::support::*;

/// A host transcoder that holds every ladder until released, counting the calls.
#[derive(Default)]
struct HeldTranscoder {
    /// (ladder calls so far, released).
    state: Mutex<(u32, bool)>,
    changed: Condvar,
}

impl HeldTranscoder {
    /// Wait (at most `limit`) until `n` ladder calls have arrived.
    fn wait_calls(&self, n: u32, limit: Duration) -> bool {
        let guard = self.state.lock().expect("lock");
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, limit, |s| s.0 < n)
            .expect("lock");
        guard.0 >= n
    }

    fn calls(&self) -> u32 {
        self.state.lock().expect("lock").0
    }

    fn release(&self) {
        self.state.lock().expect("lock").1 = true;
        self.changed.notify_all();
    }
}

impl MediaSource for HeldTranscoder {
    fn probe(&self, _segment: &Segment) -> Result<VideoInfo, GuestError> {
        Ok(VideoInfo {
            codec: "h264".into(),
            width: 640,
            height: 360,
            fps_num: 30,
            fps_den: 1,
        })
    }

    /// Each rendition comes back as a segment whose bytes are the rendition's name.
    fn ladder(
        &self,
        segment: &Segment,
        renditions: &[Rendition],
    ) -> Result<Vec<Segment>, GuestError> {
        let mut guard = self.state.lock().expect("lock");
        guard.0 += 1;
        self.changed.notify_all();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, Duration::from_secs(60), |s| !s.1)
            .expect("lock");
        if !guard.1 {
            return Err(GuestError::Internal("never released".into()));
        }
        Ok(renditions
            .iter()
            .map(|r| Segment {
                seq: segment.seq,
                duration_ms: segment.duration_ms,
                content_type: "video/mp2t".into(),
                data: r.name.as_bytes().to_vec().into(),
            })
            .collect())
    }
}

fn info(id: &str) -> StreamInfo {
    StreamInfo {
        id: id.into(),
        capability: "live".into(),
        params: vec![],
    }
}

fn segment() -> Segment {
    Segment {
        seq: 7,
        duration_ms: 2000,
        content_type: "video/mp2t".into(),
        data: b"a segment".to_vec().into(),
    }
}

/// Land version 2.0.0 of `live` in `dir`: the echo pipeline, manifest replaced atomically.
fn land_echo_version(dir: &std::path::Path) {
    std::fs::copy(
        artifact("test-programs/echo-pipeline.wasm"),
        dir.join("live-v2.wasm"),
    )
    .expect("copy");
    let v2_manifest = "name = \"live\"\nworld = \"pipeline\"\nversion = \"2.0.0\"\nwasm = \"live-v2.wasm\"\n[limits]\ntimeout_ms = 60000\n";
    let tmp = dir.join(".live.toml.new");
    std::fs::write(&tmp, v2_manifest).expect("write");
    std::fs::rename(&tmp, dir.join("live.toml")).expect("rename");
}

/// The text exposition of `metrics`.
fn exposition(metrics: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&metrics.gather(), &mut buf)
        .expect("encode");
    String::from_utf8(buf).expect("utf8")
}

#[test]
fn a_call_in_flight_finishes_on_the_old_version_while_new_calls_use_the_new_one() {
    let (registry, dir, metrics) = registry();
    // Version 1: the ladder pipeline, which hands each segment to the host transcoder.
    place(
        dir.path(),
        "live",
        &artifact("test-programs/ladder-pipeline.wasm"),
        &manifest("live", "pipeline", "[limits]\ntimeout_ms = 60000"),
    );
    let v1 = registry.load("live").expect("v1 loads");
    let transcoder = Arc::new(HeldTranscoder::default());
    assert!(registry.runtime().provide_media(transcoder.clone()));
    let _watch = registry.watch(Duration::from_millis(20)).expect("watch");

    // A call on version 1 is in flight: held inside the host's transcoder.
    let mut old = v1.start_stream(info("old")).expect("start on v1");
    let call = std::thread::spawn(move || {
        let out = old.on_segment(segment());
        (out, old)
    });
    assert!(
        transcoder.wait_calls(1, Duration::from_secs(30)),
        "the call never reached the transcoder"
    );

    // Version 2 (the echo pipeline, which never transcodes) lands in the directory.
    land_echo_version(dir.path());
    let swapped = eventually(Duration::from_secs(60), || {
        let c = registry.get("live").ok()?;
        (c.manifest.version == "2.0.0").then_some(c)
    });
    let v2 = swapped.expect("version 2 never became visible");

    // New calls run version 2 while the old call is still held.
    let mut new = v2.start_stream(info("new")).expect("start on v2");
    let out = new.on_segment(segment()).expect("v2 answers");
    assert_eq!(out.len(), 1, "the echo pipeline hands the segment back");
    assert_eq!(&*out[0].data, b"a segment");
    new.stop().expect("stop v2");
    assert!(
        !call.is_finished(),
        "the old call ended before it was released"
    );
    assert_eq!(transcoder.calls(), 1, "version 2 called the transcoder");

    // Released, the old call completes on version 1, with version 1's answer.
    transcoder.release();
    let (out, old) = call.join().expect("old call");
    let out = out.expect("the in-flight call failed across the reload");
    let names: Vec<&[u8]> = out.iter().map(|s| &*s.data).collect();
    assert_eq!(
        names,
        [&b"P240p30fps16x9"[..], &b"P360p30fps16x9"[..]],
        "not the ladder pipeline's answer"
    );
    assert_eq!(old.component().manifest.version, "1.0.0");
    old.stop().expect("stop v1");

    let text = exposition(&metrics);
    assert_eq!(
        metric(&text, "weir_component_reloads_total{component=\"live\"}"),
        Some(1.0),
        "{text}"
    );
}
