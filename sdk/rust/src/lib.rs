//! Write Weir components in Rust.
//!
//! Pick the world, implement its `Guest` trait, export it:
//!
//! ```ignore
//! use weir_sdk::router::{Candidate, Error, Guest, JobRequest};
//!
//! struct Cheapest;
//! impl Guest for Cheapest {
//!     fn select(_req: JobRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>, Error> {
//!         let mut idx: Vec<u32> = (0..candidates.len() as u32).collect();
//!         idx.sort_by_key(|&i| candidates[i as usize].price.price_per_unit);
//!         Ok(idx)
//!     }
//! }
//! weir_sdk::router::export_router!(Cheapest);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! result is a component the host loads as is.

/// Bindings of every host interface, shared by the world modules.
pub mod host {
    wit_bindgen::generate!({
        world: "weir:host/host-imports",
        path: "../../wit",
        generate_all,
    });
}

pub use host::weir::host::{clock, log, media, models, payments, storage, transcode, types, video};

/// The `router` world: export `weir:host/routing.select(request, candidates) -> ranked indices`.
pub mod router {
    wit_bindgen::generate!({
        world: "weir:host/router",
        path: "../../wit",
        with: {
            "weir:host/types@0.1.0": crate::host::weir::host::types,
            "weir:host/log@0.1.0": crate::host::weir::host::log,
            "weir:host/config@0.1.0": crate::host::weir::host::config,
            "weir:host/clock@0.1.0": crate::host::weir::host::clock,
            "weir:host/payments@0.1.0": crate::host::weir::host::payments,
        },
        pub_export_macro: true,
        export_macro_name: "export_router",
        default_bindings_module: "weir_sdk::router",
    });
    pub use self::exports::weir::host::routing::Guest;
    pub use crate::types::{Candidate, Error, JobRequest, Param, ParamValue, Price};
}

/// The `pricing` world: export `weir:host/quoting.quote(request, context) -> price`.
pub mod pricing {
    wit_bindgen::generate!({
        world: "weir:host/pricing",
        path: "../../wit",
        with: {
            "weir:host/types@0.1.0": crate::host::weir::host::types,
            "weir:host/log@0.1.0": crate::host::weir::host::log,
            "weir:host/config@0.1.0": crate::host::weir::host::config,
            "weir:host/clock@0.1.0": crate::host::weir::host::clock,
            "weir:host/payments@0.1.0": crate::host::weir::host::payments,
        },
        pub_export_macro: true,
        export_macro_name: "export_pricing",
        default_bindings_module: "weir_sdk::pricing",
    });
    pub use self::exports::weir::host::quoting::{Guest, QuoteContext, Role};
    pub use crate::types::{Error, JobRequest, Param, ParamValue, Price};
}

/// The `pipeline` world: batch `run` and the stream callbacks.
pub mod pipeline {
    wit_bindgen::generate!({
        world: "weir:host/pipeline",
        path: "../../wit",
        with: {
            "weir:host/types@0.1.0": crate::host::weir::host::types,
            "weir:host/log@0.1.0": crate::host::weir::host::log,
            "weir:host/config@0.1.0": crate::host::weir::host::config,
            "weir:host/clock@0.1.0": crate::host::weir::host::clock,
            "weir:host/payments@0.1.0": crate::host::weir::host::payments,
            "weir:host/media@0.1.0": crate::host::weir::host::media,
            "weir:host/transcode@0.1.0": crate::host::weir::host::transcode,
            "weir:host/video@0.1.0": crate::host::weir::host::video,
            "weir:host/models@0.1.0": crate::host::weir::host::models,
            "weir:host/storage@0.1.0": crate::host::weir::host::storage,
        },
        pub_export_macro: true,
        export_macro_name: "export_pipeline",
        default_bindings_module: "weir_sdk::pipeline",
    });
    pub use self::exports::weir::host::pipeline_handler::{Guest, Job, JobOutput, StreamInfo};
    pub use crate::media::{Blob, Segment};
    pub use crate::types::{Error, JobRequest, Param, ParamValue};
}

/// The component's settings from its manifest's `[config]` table.
pub mod config {
    use std::str::FromStr;

    use crate::types::Error;

    /// The raw value of `key`.
    pub fn get(key: &str) -> Option<String> {
        crate::host::weir::host::config::get(key)
    }

    /// Every key and value, sorted by key.
    pub fn all() -> Vec<(String, String)> {
        crate::host::weir::host::config::get_all()
    }

    /// `key` parsed as `T`, or `default` when unset; a value that does not parse is a config error.
    pub fn parse_or<T: FromStr>(key: &str, default: T) -> Result<T, Error> {
        match get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| {
                Error::Config(format!("config `{key}` = {raw:?} is not a valid value"))
            }),
        }
    }
}

/// Log through the host, tagged with the component's name.
pub mod logging {
    use crate::host::weir::host::log::{log, Level};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
