//! Prometheus metrics of the component runtime.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Component-runtime metrics, registered into the node's registry.
#[derive(Clone)]
pub struct RuntimeMetrics {
    /// `weir_component_loads_total{component,outcome}`.
    pub loads: IntCounterVec,
    /// `weir_component_reloads_total{component}`: a loaded component replaced by a new version.
    pub reloads: IntCounterVec,
    /// `weir_component_calls_total{component,function,outcome}`.
    pub calls: IntCounterVec,
    /// `weir_component_call_seconds{component,function}`.
    pub call_seconds: HistogramVec,
    /// `weir_component_failures_total{component,kind}`: traps, timeouts, out-of-memory ...
    pub failures: IntCounterVec,
    /// `weir_component_loaded{component,world}`: 1 while loaded.
    pub loaded: IntGaugeVec,
}

impl RuntimeMetrics {
    /// Create the metrics and register them into `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<RuntimeMetrics> {
        let m = RuntimeMetrics {
            loads: IntCounterVec::new(
                Opts::new(
                    "weir_component_loads_total",
                    "Component load attempts by outcome",
                ),
                &["component", "outcome"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "weir_component_reloads_total",
                    "Loaded components replaced by a new version",
                ),
                &["component"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "weir_component_calls_total",
                    "Calls into components by outcome",
                ),
                &["component", "function", "outcome"],
            )?,
            call_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "weir_component_call_seconds",
                    "Latency of calls into components",
                )
                .buckets(vec![
                    1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0,
                ]),
                &["component", "function"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "weir_component_failures_total",
                    "Failed calls by kind (trap, timeout, oom, fuel ...)",
                ),
                &["component", "kind"],
            )?,
            loaded: IntGaugeVec::new(
                Opts::new("weir_component_loaded", "Components currently loaded"),
                &["component", "world"],
            )?,
        };
        registry.register(Box::new(m.loads.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.call_seconds.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.loaded.clone()))?;
        Ok(m)
    }
}
