//! Per-store resource limits and the classification of failed calls.

use wasmtime::{ResourceLimiter, Trap};

use crate::error::CallFailure;

/// The error a refused memory growth raises inside the guest; found again by [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit_mib} MiB exceeded (asked for {desired} bytes)")]
pub(crate) struct MemoryLimitExceeded {
    limit_mib: u32,
    desired: usize,
}

/// Caps linear memory, tables and instance counts of one store.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    pub memory_mib: u32,
}

/// Table elements one store may hold (large enough for interpreted JS and Python guests).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = (self.memory_mib as usize) << 20;
        if desired > limit {
            return Err(MemoryLimitExceeded {
                limit_mib: self.memory_mib,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Turn a wasmtime error from a call or instantiation into a [`CallFailure`].
pub(crate) fn classify(err: &wasmtime::Error, timeout_ms: u32, memory_mib: u32) -> CallFailure {
    if err.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return CallFailure::OutOfMemory {
            limit_mib: memory_mib,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout { timeout_ms },
        Some(Trap::OutOfFuel) => CallFailure::OutOfFuel,
        _ => {
            tracing::debug!(error = ?err, "guest trap details");
            CallFailure::Trap(err.root_cause().to_string())
        }
    }
}
