//! Pipeline components run the node's models through `weir:host/models.invoke`: only the
//! models their manifest grants, on the node's own runners (here the in-process ONNX
//! upscaler), and their outputs come back to the component.

use std::time::Duration;

use crate::ai::{onnxruntime, png_size, T2I_MODEL, UPSCALE_MODEL};
use crate::component_storage::{get_bytes, image_to_image};
use crate::support::*;

/// A combined node with the ONNX upscaler and two copies of the echo pipeline serving
/// `image-to-image`: model `granted` may run the upscaler, model `denied` may not.
fn node() -> Weir {
    let pipeline = |id: &str, component: &str| {
        format!("[[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"{id}\"\nrunner = \"wasm\"\ncomponent = \"{component}\"\n")
    };
    let config = format!(
        "[gateway]\nopen = true\nrefresh_secs = 1\n[[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"{UPSCALE_MODEL}\"\nrunner = \"onnx\"\nmodel_path = \"{}\"\nonnxruntime = \"{}\"\ncapacity = 1\n{}{}",
        artifact("models/upscale-2x.onnx").display(),
        onnxruntime(),
        pipeline("granted", "with-models"),
        pipeline("denied", "without-models"),
    );
    let node = Weir::start_with("node", &config, &[], |dir| {
        let wasm = artifact("test-programs/echo-pipeline.wasm");
        let grant =
            format!("[permissions]\nmodels = [\"upscale/{UPSCALE_MODEL}\", \"text-to-image/*\"]");
        place(
            dir,
            "with-models",
            &wasm,
            &manifest("with-models", "pipeline", &grant),
        );
        let none = manifest("without-models", "pipeline", "");
        place(dir, "without-models", &wasm, &none);
    });
    let offered = eventually(Duration::from_secs(30), || {
        (offered_models(&node).len() >= 3).then_some(())
    });
    assert!(offered.is_some(), "the gateway never saw the models");
    node
}

#[test]
fn a_pipeline_runs_a_granted_model_and_is_refused_one_it_was_not_granted() {
    let node = node();
    let prompt = format!("model:upscale/{UPSCALE_MODEL}");
    let (status, body, png) = image_to_image(&node, "granted", &prompt);
    assert_eq!(status, 200, "{body}");
    // What the pipeline answers is the upscaler's output: the fixture at twice its size.
    let url = body["images"][0]["url"].as_str().expect("url");
    let (status, out) = get_bytes(url);
    assert_eq!(status, 200);
    let (w, h) = png_size(&png);
    assert_eq!(png_size(&out), (2 * w, 2 * h));

    // The same component without the grant is refused, with the reason: the node's own
    // configuration is at fault (a server error, another orchestrator may serve it).
    let (status, body, _) = image_to_image(&node, "denied", &prompt);
    assert!((500..600).contains(&status), "{status}: {body}");
    let text = body.to_string();
    assert!(
        text.contains("may not run model upscale/")
            && text.contains("without-models")
            && text.contains("[permissions] models"),
        "{text}"
    );

    // A model the grant covers but the node does not serve is a clear error too.
    let (status, body, _) = image_to_image(&node, "granted", "model:text-to-image/missing");
    assert!((400..500).contains(&status), "{status}: {body}");
    assert!(
        body.to_string()
            .contains("model text-to-image/missing: not served by this node"),
        "{body}"
    );
}

#[test]
fn a_frame_goes_through_a_model_and_back_as_handles() {
    let node = node();
    let prompt = format!("framemodel:upscale/{UPSCALE_MODEL}");
    let (status, body, png) = image_to_image(&node, "granted", &prompt);
    assert_eq!(status, 200, "{body}");
    let (w, h) = png_size(&png);
    // The frame made from the model's output is the input upscaled, and comes back as a PNG.
    let (status, text) = get_bytes(body["images"][1]["url"].as_str().expect("text url"));
    assert_eq!(status, 200);
    let sizes = String::from_utf8(text).expect("utf-8");
    assert_eq!(sizes, format!("{w}x{h} -> {}x{}", 2 * w, 2 * h));
    let (status, out) = get_bytes(body["images"][0]["url"].as_str().expect("image url"));
    assert_eq!(status, 200);
    assert_eq!(png_size(&out), (2 * w, 2 * h));
    // A component without the grant cannot reach the model through a frame either.
    let (status, body, _) = image_to_image(&node, "denied", &prompt);
    assert!((500..600).contains(&status), "{status}: {body}");
    assert!(
        body.to_string().contains("may not run model upscale/"),
        "{body}"
    );
}

#[test]
fn a_model_that_does_not_answer_in_its_timeout_fails_the_pipelines_call_with_the_cause() {
    // A remote text-to-image runner that holds every request, configured with a 1 s timeout.
    let script = crate::failover::Script::holding();
    let runner = crate::failover::scripted_runner(script.clone());
    let config = format!(
        "[gateway]\nopen = true\nrefresh_secs = 1\n[[orchestrator.models]]\npipeline = \"text-to-image\"\nmodel_id = \"{T2I_MODEL}\"\nrunner = \"http\"\nurl = \"{}\"\ncapacity = 1\ntimeout_secs = 1\n[[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"granted\"\nrunner = \"wasm\"\ncomponent = \"with-models\"\n",
        runner.url
    );
    let node = Weir::start_with("node", &config, &[], |dir| {
        let wasm = artifact("test-programs/echo-pipeline.wasm");
        let grant = "[permissions]\nmodels = [\"text-to-image/*\"]";
        place(
            dir,
            "with-models",
            &wasm,
            &manifest("with-models", "pipeline", grant),
        );
    });
    let offered = eventually(Duration::from_secs(30), || {
        (offered_models(&node).len() >= 2).then_some(())
    });
    assert!(offered.is_some(), "the gateway never saw the models");
    let started = std::time::Instant::now();
    let (status, body, _) = image_to_image(
        &node,
        "granted",
        &format!("model:text-to-image/{T2I_MODEL}"),
    );
    assert!((500..600).contains(&status), "{status}: {body}");
    let text = body.to_string();
    assert!(
        text.contains(&format!("model text-to-image/{T2I_MODEL}"))
            && (text.contains("within 1s") || text.contains("its 1 s timeout")),
        "{text}"
    );
    assert!(script.hits() >= 1, "the runner was never asked");
    // Cut at the model's timeout, well before the runner would have answered (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
