//! The JavaScript and Python examples load and answer as their READMEs say.

use weir_runtime::{Candidate, Manifest, Price};

use crate::support::*;

fn load(name: &str) -> std::sync::Arc<weir_runtime::LoadedComponent> {
    let (runtime, _m) = runtime_with(false);
    let manifest = Manifest::load(&artifact(&format!("examples/{name}.toml"))).expect("manifest");
    runtime
        .load(manifest, &build_dir().join("examples"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn javascript_surge_pricing_rises_with_load() {
    let surge = load("pricing-surge-js");
    let at = |in_flight: u32| {
        surge
            .quote(&request("q"), &context(in_flight, 10))
            .expect("quote")
            .price_per_unit
    };
    // Base 1000 up to 50% load, then linear to +200% at full load (capped there).
    assert_eq!(at(0), 1000);
    assert_eq!(at(5), 1000);
    assert_eq!(at(8), 2200);
    assert_eq!(at(10), 3000);
    assert_eq!(at(20), 3000);
    let err = surge
        .quote(&request("q"), &context(0, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid-request"), "{err}");
}

#[test]
fn python_router_prefers_its_region_then_latency() {
    let router = load("router-region-py");
    let region = router
        .manifest
        .config
        .get("region")
        .cloned()
        .unwrap_or_default();
    assert!(
        !region.is_empty(),
        "the example manifest sets a preferred region"
    );
    let mk = |id: &str, region: &str, latency: u32| Candidate {
        id: id.into(),
        url: String::new(),
        price: Price {
            price_per_unit: 10,
            pixels_per_unit: 1,
            currency: "WEI".into(),
        },
        latency_ms: latency,
        success_bp: 10_000,
        region: region.into(),
        gpu_class: String::new(),
        warm_models: vec![],
        capacity: 1,
        in_flight: 0,
    };
    let ranking = router
        .select(
            &request("r"),
            &[
                mk("far-fast", "elsewhere", 5),
                mk("near-slow", &region, 90),
                mk("near-fast", &region, 10),
            ],
        )
        .expect("select");
    assert_eq!(ranking, vec![2, 1, 0]);
    let err = router.select(&request("r"), &[]).unwrap_err().to_string();
    assert!(err.contains("no-candidates"), "{err}");
}
