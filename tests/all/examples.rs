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

#[test]
fn the_rust_chain_pipeline_upscales_twice_through_the_ai_api_and_stores_the_result() {
    let config = format!(
        "[gateway]\nopen = true\nrefresh_secs = 1\n[[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"{}\"\nrunner = \"onnx\"\nmodel_path = \"{}\"\nonnxruntime = \"{}\"\ncapacity = 1\n[[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"chain\"\nrunner = \"wasm\"\ncomponent = \"pipeline-chain-rs\"\n",
        crate::ai::UPSCALE_MODEL,
        artifact("models/upscale-2x.onnx").display(),
        crate::ai::onnxruntime()
    );
    let node = Weir::start_with("node", &config, &[], |dir| {
        let manifest =
            std::fs::read_to_string(artifact("examples/pipeline-chain-rs.toml")).expect("manifest");
        place(
            dir,
            "pipeline-chain-rs",
            &artifact("examples/pipeline-chain-rs.wasm"),
            &manifest,
        );
    });
    let offered = eventually(std::time::Duration::from_secs(30), || {
        (offered_models(&node).len() >= 2).then_some(())
    });
    assert!(offered.is_some(), "the gateway never saw the models");
    let (status, body, png) =
        crate::component_storage::image_to_image(&node, "chain", "a sharper photo");
    assert_eq!(status, 200, "{body}");
    let url = body["images"][0]["url"].as_str().expect("url");
    let (status, out) = crate::component_storage::get_bytes(url);
    assert_eq!(status, 200);
    // The 2x upscaler twice.
    let (w, h) = crate::ai::png_size(&png);
    assert_eq!(crate::ai::png_size(&out), (4 * w, 4 * h));
    // The result is stored in the component's namespace, as answered.
    let stored = node
        .data
        .path()
        .join("objects/components/pipeline-chain-rs/outputs");
    let files: Vec<_> = std::fs::read_dir(&stored)
        .expect("outputs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // (The local store keeps the content type in a line before the bytes.)
    let stored = std::fs::read(&files[0]).expect("stored");
    assert!(
        files[0].extension().is_some_and(|e| e == "png") && stored.ends_with(&out),
        "{}",
        files[0].display()
    );
}
