//! Run-time detection of an NVIDIA GPU usable for decoding.
//!
//! The CUDA driver library is loaded dynamically, so Weir builds and runs on machines without
//! one; [`gpu_available`] says whether this machine has a driver and at least one device.
// The one unsafe call below probes for the CUDA driver library; cudarc exposes that probe only
// as an `unsafe fn`, and every later CUDA call would panic without it.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// What the GPU probe found, computed once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuStatus {
    /// A CUDA driver and this many devices.
    Available {
        /// Number of CUDA devices.
        devices: u32,
    },
    /// No usable GPU, with the reason.
    Unavailable(String),
}

/// Probes (once) for a CUDA driver and devices.
pub fn gpu_status() -> &'static GpuStatus {
    static STATUS: OnceLock<GpuStatus> = OnceLock::new();
    STATUS.get_or_init(probe)
}

/// Whether a CUDA driver with at least one device is present at run time.
pub fn gpu_available() -> bool {
    matches!(gpu_status(), GpuStatus::Available { .. })
}

fn probe() -> GpuStatus {
    // SAFETY: this only tries to dlopen the CUDA driver library by its usual names and closes
    // it again; it touches no other state.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return GpuStatus::Unavailable("the CUDA driver library (libcuda) is not installed".into());
    }
    if let Err(e) = cudarc::driver::result::init() {
        return GpuStatus::Unavailable(format!("cuInit failed: {e:?}"));
    }
    match cudarc::driver::result::device::get_count() {
        Ok(n) if n > 0 => GpuStatus::Available {
            devices: u32::try_from(n).unwrap_or(0),
        },
        Ok(_) => GpuStatus::Unavailable("the CUDA driver reports no devices".into()),
        Err(e) => GpuStatus::Unavailable(format!("cuDeviceGetCount failed: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA device nodes (`/dev/nvidia0`, `/dev/nvidia1`, …) this machine has: what the
    /// kernel driver exposes, found without CUDA.
    fn device_nodes() -> usize {
        std::fs::read_dir("/dev")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn probe_is_stable_and_consistent() {
        // Two real probes (not the cached value) agree with each other and with the cache.
        let first = probe();
        let second = probe();
        assert_eq!(first, second, "two probes disagree");
        assert_eq!(&first, gpu_status());
        assert_eq!(
            gpu_available(),
            matches!(first, GpuStatus::Available { .. })
        );
        // And with the machine: devices only where the driver exposes device nodes, and a
        // machine without any says so, with a reason.
        let nodes = device_nodes();
        match &first {
            GpuStatus::Available { devices } => {
                assert!(*devices > 0, "available with no device");
                assert!(
                    nodes > 0,
                    "the probe found {devices} CUDA device(s) but /dev has no nvidiaN node"
                );
            }
            GpuStatus::Unavailable(reason) => {
                assert!(!reason.is_empty(), "unavailable without a reason");
                assert!(
                    reason.contains("not installed")
                        || reason.contains("no devices")
                        || reason.contains("failed"),
                    "unexpected reason: {reason}"
                );
            }
        }
        if nodes == 0 {
            assert!(
                matches!(first, GpuStatus::Unavailable(_)),
                "no NVIDIA device node, yet the probe says {first:?}"
            );
        }
    }
}
