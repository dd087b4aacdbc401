//! Demuxing gives back every packet it reads: packaging the same real segment many times must
//! not grow the process (a packet read into again without being released leaked its buffer,
//! about the segment's size per packaging). Its own test binary, so nothing else allocates.

mod support;

use std::time::Duration;

use weir_media::llhls::ts_to_fmp4;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn packaging_a_segment_again_and_again_does_not_grow_the_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let clip = support::make_h264_clip(dir.path(), "seg.ts", "1280x720", 2.0);
    let ts = std::fs::read(&clip).expect("segment");
    let part = Duration::from_millis(500);
    // Warm up: FFmpeg's and the allocator's one-time state.
    for _ in 0..10 {
        ts_to_fmp4(&ts, part).expect("packaged");
    }
    let before = rss();
    let rounds = 150u64;
    for _ in 0..rounds {
        ts_to_fmp4(&ts, part).expect("packaged");
    }
    let grown = rss().saturating_sub(before);
    let leak_if_any = rounds * ts.len() as u64;
    assert!(
        grown < leak_if_any / 3,
        "RSS grew {} KiB over {rounds} packagings of a {} KiB segment",
        grown / 1024,
        ts.len() / 1024
    );
}
