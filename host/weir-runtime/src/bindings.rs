//! The one place where Rust bindings are generated from `wit/`.
//!
//! `host-imports` is generated first; the three worlds reuse its interfaces through `with`,
//! so a `JobRequest` is the same Rust type whichever world a component implements.

#![allow(
    missing_docs,
    reason = "generated code; the WIT carries the documentation"
)]

mod generated {
    wasmtime::component::bindgen!({
        world: "weir:host/host-imports",
        path: "../../wit",
        imports: { default: trappable },
        with: {
            "weir:host/media.blob": crate::media::Blob,
            "weir:host/media.segment": crate::media::Segment,
            "weir:host/video.frame": crate::video::Frame,
        },
    });
}

pub use generated::weir::host::{
    clock, config, log, media, models, payments, storage, transcode, types, video,
};

/// Bindings of the `router` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "weir:host/router",
        path: "../../wit",
        imports: { default: trappable },
        with: {
            "weir:host/types": super::types,
            "weir:host/log": super::log,
            "weir:host/config": super::config,
            "weir:host/clock": super::clock,
            "weir:host/payments": super::payments,
        },
    });
}

/// Bindings of the `pricing` world.
pub mod pricing {
    wasmtime::component::bindgen!({
        world: "weir:host/pricing",
        path: "../../wit",
        imports: { default: trappable },
        with: {
            "weir:host/types": super::types,
            "weir:host/log": super::log,
            "weir:host/config": super::config,
            "weir:host/clock": super::clock,
            "weir:host/payments": super::payments,
        },
    });
}

/// Bindings of the `pipeline` world.
pub mod pipeline {
    wasmtime::component::bindgen!({
        world: "weir:host/pipeline",
        path: "../../wit",
        imports: { default: trappable },
        with: {
            "weir:host/types": super::types,
            "weir:host/log": super::log,
            "weir:host/config": super::config,
            "weir:host/clock": super::clock,
            "weir:host/payments": super::payments,
            "weir:host/media": super::media,
            "weir:host/transcode": super::transcode,
            "weir:host/video": super::video,
            "weir:host/models": super::models,
            "weir:host/storage": super::storage,
        },
    });
}
