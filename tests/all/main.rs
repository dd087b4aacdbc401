//! Weir's integration tests: one binary, several modules.
//!
//! They load real components built by `make artifacts` (found under `$WEIR_BUILD_DIR`, default
//! `<repo>/build`) and start the real `weir` binary on port 0.

mod ai;
mod ai_stream_faults;
mod auth_webhook;
mod byoc;
mod byoc_billing;
mod byoc_swaps;
mod cli;
mod component_models;
mod component_new;
mod component_payments;
mod component_storage;
mod components;
mod examples;
mod failover;
mod guest_faults;
mod hot_reload;
mod job_lifecycle;
mod jobs;
mod listeners;
mod live;
mod node;
mod object_store;
mod openapi_conformance;
mod recovery;
mod reload_in_flight;
mod retries;
mod s3;
mod shared_ledger;
mod support;
mod suspension;
mod trust;
mod video_frames;
mod web;
