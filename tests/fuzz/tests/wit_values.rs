//! Values crossing the WIT boundary: arbitrary job requests, candidate lists and quote contexts
//! (extreme numbers, long and odd strings, many candidates) given to the real default router
//! and pricing components through the host runtime. The host must never panic, every answer it
//! passes on must satisfy the contract (the runtime checks rankings and prices), and the default
//! policies must answer (a ranking, a price or a guest error), never trap.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use weir_fuzz::fuzz;
use weir_runtime::{
    CallFailure, Candidate, JobRequest, NoLedger, OutputSize, Param, ParamValue, Price,
    QuoteContext, Registry, Role, Runtime, RuntimeConfig, RuntimeError, RuntimeMetrics,
};

#[derive(Debug, Arbitrary)]
struct FuzzPrice {
    price_per_unit: u64,
    pixels_per_unit: u64,
    currency: String,
}

#[derive(Debug, Arbitrary)]
struct FuzzCandidate {
    id: String,
    price: FuzzPrice,
    latency_ms: u32,
    success_bp: u32,
    region: String,
    warm_models: Vec<String>,
    capacity: u32,
    in_flight: u32,
}

#[derive(Debug, Arbitrary)]
enum FuzzParam {
    Text(String),
    Integer(i64),
    Number(f64),
    Flag(bool),
}

#[derive(Debug, Arbitrary)]
struct FuzzCall {
    capability: String,
    model: String,
    params: Vec<(String, FuzzParam)>,
    size: (u32, u32, u32, u32),
    units: u64,
    sender: String,
    candidates: Vec<FuzzCandidate>,
    in_flight: u32,
    capacity: u32,
    gateway_role: bool,
}

impl FuzzCall {
    fn request(&self) -> JobRequest {
        JobRequest {
            id: "fuzz".into(),
            capability: self.capability.clone(),
            model: self.model.clone(),
            params: self
                .params
                .iter()
                .map(|(name, v)| Param {
                    name: name.clone(),
                    value: match v {
                        FuzzParam::Text(t) => ParamValue::Text(t.clone()),
                        FuzzParam::Integer(i) => ParamValue::Integer(*i),
                        FuzzParam::Number(n) => ParamValue::Number(*n),
                        FuzzParam::Flag(f) => ParamValue::Flag(*f),
                    },
                })
                .collect(),
            output: OutputSize {
                width: self.size.0,
                height: self.size.1,
                frames: self.size.2,
                count: self.size.3,
            },
            units: self.units,
            sender: self.sender.clone(),
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.candidates
            .iter()
            .map(|c| Candidate {
                id: c.id.clone(),
                url: format!("http://{}", c.id),
                price: Price {
                    price_per_unit: c.price.price_per_unit,
                    pixels_per_unit: c.price.pixels_per_unit,
                    currency: c.price.currency.clone(),
                },
                latency_ms: c.latency_ms,
                success_bp: c.success_bp,
                region: c.region.clone(),
                gpu_class: String::new(),
                warm_models: c.warm_models.clone(),
                capacity: c.capacity,
                in_flight: c.in_flight,
            })
            .collect()
    }

    fn context(&self) -> QuoteContext {
        QuoteContext {
            role: if self.gateway_role {
                Role::Gateway
            } else {
                Role::Orchestrator
            },
            counterparty: self.sender.clone(),
            in_flight: self.in_flight,
            capacity: self.capacity,
        }
    }
}

fn build_dir() -> PathBuf {
    std::env::var_os("WEIR_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build"))
}

/// The default router and pricing components, built by `make artifacts`, in a fresh registry.
fn defaults() -> (Arc<Registry>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["default-router", "default-pricing"] {
        for ext in ["wasm", "toml"] {
            let from = build_dir().join(format!("components/{name}.{ext}"));
            assert!(
                from.is_file(),
                "{} is missing: run `make artifacts` first",
                from.display()
            );
            std::fs::copy(&from, dir.path().join(format!("{name}.{ext}"))).expect("copy");
        }
    }
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/weir-test-cache");
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(cache),
            ..Default::default()
        },
        Arc::new(NoLedger),
        metrics,
    )
    .expect("runtime");
    let registry = Registry::new(runtime, dir.path()).expect("registry");
    for name in ["default-router", "default-pricing"] {
        registry.load(name).expect("loads");
    }
    (registry, dir)
}

/// A default policy may refuse (a guest error) or, on a loaded machine, run out of time; it
/// must not trap, run out of memory or break the contract.
fn acceptable<T>(what: &str, call: &FuzzCall, r: Result<T, RuntimeError>) {
    match r {
        Ok(_) => {}
        Err(RuntimeError::Call { failure, .. }) => match failure {
            CallFailure::Guest(_) | CallFailure::Timeout { .. } => {}
            other => panic!("{what} failed on {call:?}: {other}"),
        },
        Err(other) => panic!("{what} failed on {call:?}: {other}"),
    }
}

#[test]
fn default_policies_take_any_well_typed_values() {
    let (registry, _dir) = defaults();
    let router = registry.get("default-router").expect("router");
    let pricing = registry.get("default-pricing").expect("pricing");
    let seed = vec![0x11u8; 256];
    let r = fuzz("wit-values", vec![seed], |input| {
        let mut u = Unstructured::new(input);
        let Ok(call) = FuzzCall::arbitrary(&mut u) else {
            return;
        };
        let candidates = call.candidates();
        let request = call.request();
        if let Ok(ranking) = router.select(&request, &candidates) {
            // The runtime checked the contract; check it again from the outside.
            let mut seen = std::collections::HashSet::new();
            for i in &ranking {
                assert!((*i as usize) < candidates.len() && seen.insert(*i));
            }
        } else {
            acceptable("select", &call, router.select(&request, &candidates));
        }
        match pricing.quote(&request, &call.context()) {
            Ok(price) => assert!(price.pixels_per_unit > 0, "{price:?}"),
            Err(e) => acceptable("quote", &call, Err::<(), _>(e)),
        }
    });
    assert!(r.executions > 0);
}
