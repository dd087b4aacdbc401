//! What a load or install is doing, for callers that show progress (the admin API compiles
//! uploads in the background), and a header check that refuses what can never load before any
//! work is queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One step of installing or loading a component, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadPhase {
    /// Waiting for another load or install to finish (loads of one registry run one at a time).
    Queued,
    /// Writing the manifest and wasm into the components directory.
    Writing,
    /// Compiling to native code, or reading the compiled-code cache.
    Compiling,
    /// Linking against the world, checking the exports and instantiating once.
    Linking,
}

impl LoadPhase {
    /// The phase's name as the admin API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadPhase::Queued => "queued",
            LoadPhase::Writing => "writing",
            LoadPhase::Compiling => "compiling",
            LoadPhase::Linking => "linking",
        }
    }
}

/// The speed of this node's latest compilations (cache misses only), to estimate how long the
/// next one takes. Starts unknown.
#[derive(Debug, Default)]
pub(crate) struct CompileRate {
    /// Wasm bytes per second, smoothed; 0 while nothing has been compiled.
    bytes_per_sec: AtomicU64,
}

impl CompileRate {
    /// Record that `bytes` took `took` to compile.
    pub(crate) fn record(&self, bytes: usize, took: Duration) {
        let secs = took.as_secs_f64();
        if secs <= 0.0 || bytes == 0 {
            return;
        }
        let measured = bytes as f64 / secs;
        let old = self.bytes_per_sec.load(Ordering::Relaxed) as f64;
        // Half the old estimate, half the new one: one odd compile does not swing it far.
        let next = if old == 0.0 {
            measured
        } else {
            (old + measured) / 2.0
        };
        self.bytes_per_sec.store(next as u64, Ordering::Relaxed);
    }

    /// How long compiling `bytes` is expected to take, once one compilation was measured.
    pub(crate) fn expected(&self, bytes: usize) -> Option<Duration> {
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        (rate > 0).then(|| Duration::from_secs_f64(bytes as f64 / rate as f64))
    }
}

/// Refuse bytes that are not a WebAssembly component from their first eight bytes, in the
/// words a failed compilation would use, so an upload that can never load is refused at once.
pub fn check_component_header(wasm: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(
            "not a WebAssembly binary: it does not start with the `\\0asm` magic header".into(),
        );
    }
    match [wasm[4], wasm[5], wasm[6], wasm[7]] {
        COMPONENT => Ok(()),
        CORE_MODULE => Err(
            "not a WebAssembly component (a core module? wrap it with `wasm-tools component new`)"
                .into(),
        ),
        other => Err(format!(
            "not a WebAssembly component: unknown version and layer {other:02x?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(check_component_header(b"\0asm\x0d\x00\x01\x00rest").is_ok());
        let core = check_component_header(b"\0asm\x01\x00\x00\x00").unwrap_err();
        assert!(core.contains("core module"), "{core}");
        let junk = check_component_header(b"not wasm").unwrap_err();
        assert!(junk.starts_with("not a WebAssembly binary"), "{junk}");
        assert!(check_component_header(b"\0as").is_err());
        let odd = check_component_header(b"\0asm\x02\x00\x00\x00").unwrap_err();
        assert!(odd.contains("unknown version"), "{odd}");
    }

    #[test]
    fn the_compile_estimate_follows_measurements() {
        let rate = CompileRate::default();
        assert_eq!(rate.expected(1000), None);
        rate.record(1000, Duration::from_secs(1));
        assert_eq!(rate.expected(2000), Some(Duration::from_secs(2)));
        rate.record(3000, Duration::from_secs(1));
        // (1000 + 3000) / 2 bytes per second.
        assert_eq!(rate.expected(4000), Some(Duration::from_secs(2)));
        rate.record(0, Duration::from_secs(1));
        assert_eq!(rate.expected(4000), Some(Duration::from_secs(2)));
    }
}
