//! Weir's integration tests: one binary, several modules.
//!
//! They load real components built by `make artifacts` (found under `$WEIR_BUILD_DIR`, default
//! `<repo>/build`) and start the real `weir` binary on port 0.

mod ai;
mod byoc;
mod cli;
mod components;
mod examples;
mod hot_reload;
mod jobs;
mod live;
mod node;
mod s3;
mod support;
