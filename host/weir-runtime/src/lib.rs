//! Weir's WebAssembly component runtime.
//!
//! - [`bindings`]: the Rust side of the `wit/` contract (the only `bindgen!` in Weir).
//! - [`Runtime`]: one wasmtime engine with the pooling allocator, one linker per world,
//!   an epoch ticker for call deadlines and a compiled-code cache on disk.
//! - [`LoadedComponent`]: a component version checked against its world, with warm instances
//!   and typed calls (`select`, `quote`, `run`, streams); traps, timeouts and out-of-memory
//!   become [`CallFailure`]s, never crashes. Async callers use `select_async`, `quote_async` and
//!   `run_async`, which run the call on tokio's blocking pool within
//!   [`RuntimeConfig::max_concurrent_calls`], never on an async worker thread.
//! - [`Registry`]: components in a directory, hot-reloaded when files change.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use weir_runtime::{NoLedger, Registry, Runtime, RuntimeConfig, RuntimeMetrics};
//! let metrics = RuntimeMetrics::new(&prometheus::Registry::new())?;
//! let runtime = Runtime::new(RuntimeConfig::default(), Arc::new(NoLedger), metrics)?;
//! let registry = Registry::new(runtime, std::path::Path::new("components"))?;
//! let report = registry.scan();
//! println!("loaded {:?}, failed {:?}", report.loaded, report.failed);
//! # Ok(()) }
//! ```

pub mod bindings;
pub mod blocking;
mod cache;
mod component;
mod engine;
mod error;
mod host;
mod inspect;
pub mod jobs;
mod limits;
mod manifest;
pub mod media;
mod metrics;
pub mod models;
mod progress;
mod registry;
pub mod storage;
pub mod video;

pub use bindings::pipeline::exports::weir::host::pipeline_handler::StreamInfo;
pub use bindings::pricing::exports::weir::host::quoting::{QuoteContext, Role};
pub use bindings::types::{
    Candidate, Error as GuestError, JobRequest, OutputSize, Param, ParamValue, Price,
};
pub use component::{LoadedComponent, PipelineStream};
pub use engine::{default_max_concurrent_calls, Runtime, RuntimeConfig, MAX_WASM_BYTES};
pub use error::{describe_guest_error, CallFailure, RuntimeError};
pub use host::{MediaSource, NoLedger, PaymentsSource};
pub use inspect::{Inspection, WorldCheck};
pub use manifest::{
    DirGrant, InstanceMode, Limits, Manifest, Permissions, WorldKind, DEFAULT_STORAGE_OBJECT_KIB,
    MAX_STORAGE_OBJECT_KIB,
};
pub use metrics::RuntimeMetrics;
pub use models::ModelSource;
pub use progress::{check_component_header, LoadPhase};
pub use registry::{LoadStatus, Registry, ScanReport, WatchGuard};
pub use storage::{ComponentStorage, ObjectStorage};
