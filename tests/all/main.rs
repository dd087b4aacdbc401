//! Weir's integration tests: one binary, several modules.
//!
//! They load real components built by `make artifacts` (found under `$WEIR_BUILD_DIR`, default
//! `<repo>/build`) and start the real `weir` binary on port 0.

mod ai;
mod ai_stream_faults;
mod byoc;
mod cli;
mod components;
mod examples;
mod guest_faults;
mod hot_reload;
mod jobs;
mod listeners;
mod live;
mod node;
mod openapi_conformance;
mod retries;
mod s3;
mod support;
mod trust;
mod web;
