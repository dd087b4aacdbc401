//! Errors of the runtime. Every variant names the component it concerns.

use crate::bindings::types::Error as GuestError;

/// Why a call into a component did not produce a usable answer.
#[derive(Debug, Clone)]
pub enum CallFailure {
    /// The guest trapped (panic, `unreachable`, bad memory access ...).
    Trap(String),
    /// The call ran past its wall-clock deadline.
    Timeout {
        /// The deadline that was exceeded.
        timeout_ms: u32,
    },
    /// The guest tried to grow its memory past its limit.
    OutOfMemory {
        /// The limit, in MiB.
        limit_mib: u32,
    },
    /// The guest used up its instruction budget.
    OutOfFuel,
    /// The guest returned one of the contract's error variants.
    Guest(GuestError),
    /// The guest returned something the contract does not allow (e.g. an index out of range).
    BadOutput(String),
    /// A fresh instance could not be created.
    Instantiate(String),
    /// The host could not run the call to its end (its worker panicked, or the runtime is
    /// shutting down); the guest may not be at fault.
    Host(String),
}

impl CallFailure {
    /// Short label for metrics: `trap`, `timeout`, `oom`, `fuel`, `guest_error`, `bad_output`, `instantiate`, `host`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Trap(_) => "trap",
            CallFailure::Timeout { .. } => "timeout",
            CallFailure::OutOfMemory { .. } => "oom",
            CallFailure::OutOfFuel => "fuel",
            CallFailure::Guest(_) => "guest_error",
            CallFailure::BadOutput(_) => "bad_output",
            CallFailure::Instantiate(_) => "instantiate",
            CallFailure::Host(_) => "host",
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Trap(msg) => write!(f, "trapped: {msg}"),
            CallFailure::Timeout { timeout_ms } => {
                write!(f, "ran past its {timeout_ms} ms deadline")
            }
            CallFailure::OutOfMemory { limit_mib } => {
                write!(f, "exceeded its memory limit of {limit_mib} MiB")
            }
            CallFailure::OutOfFuel => f.write_str("used up its instruction budget (fuel)"),
            CallFailure::Guest(e) => write!(f, "returned an error: {}", describe_guest_error(e)),
            CallFailure::BadOutput(msg) => write!(f, "returned an invalid answer: {msg}"),
            CallFailure::Instantiate(msg) => write!(f, "could not be instantiated: {msg}"),
            CallFailure::Host(msg) => write!(f, "could not be run by the host: {msg}"),
        }
    }
}

/// `kind: message` for a guest-visible error variant.
pub fn describe_guest_error(e: &GuestError) -> String {
    let (kind, msg) = match e {
        GuestError::InvalidRequest(m) => ("invalid-request", m),
        GuestError::NoCandidates(m) => ("no-candidates", m),
        GuestError::Unsupported(m) => ("unsupported", m),
        GuestError::Config(m) => ("config", m),
        GuestError::Denied(m) => ("denied", m),
        GuestError::Internal(m) => ("internal", m),
    };
    format!("{kind}: {msg}")
}

/// Errors of the runtime and the component registry.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The manifest could not be read or is invalid.
    #[error("component `{component}`: invalid manifest: {reason}")]
    InvalidManifest {
        /// Component (or manifest file stem).
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// The component failed to load: not a component, wrong world, missing imports, failed self-check ...
    #[error("component `{component}`: failed to load: {reason}")]
    Load {
        /// Component name.
        component: String,
        /// What went wrong.
        reason: String,
    },
    /// A call into the component failed.
    #[error("component `{component}`: `{function}` {failure}")]
    Call {
        /// Component name.
        component: String,
        /// Exported function called.
        function: &'static str,
        /// What went wrong.
        failure: CallFailure,
    },
    /// No component of that name is loaded.
    #[error("no component named `{0}` is loaded")]
    NotFound(String),
    /// The component exists but implements another world.
    #[error("component `{component}` implements the `{actual}` world, not `{expected}`")]
    WrongWorld {
        /// Component name.
        component: String,
        /// World the caller needs.
        expected: crate::WorldKind,
        /// World the component implements.
        actual: crate::WorldKind,
    },
    /// Engine setup or I/O outside any one component.
    #[error("runtime: {0}")]
    Engine(String),
}
