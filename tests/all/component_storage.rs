//! Pipeline components store and read objects through `weir:host/storage`: in their own
//! namespace of the node's object store (the gateway's on a combined node, the orchestrator's
//! own on an orchestrator-only one: local disk or S3), within their manifest's size limit,
//! served back by signed links.

use std::time::Duration;

use serde_json::Value;

use crate::ai::CLIENT_TOKEN;
use crate::support::*;

/// A combined node serving `image-to-image` with two copies of the echo pipeline: model `echo`
/// with the default storage limit, model `tiny` allowed objects of 1 KiB.
fn node() -> Weir {
    node_with("")
}

/// [`node`] with `extra` config before its models.
pub(crate) fn node_with(extra: &str) -> Weir {
    let config = format!("{extra}[gateway]\nopen = true\nrefresh_secs = 1\n");
    let node = with_pipelines("node", &config);
    let offered = eventually(Duration::from_secs(30), || {
        (offered_models(&node).len() >= 2).then_some(())
    });
    assert!(offered.is_some(), "the gateway never saw the pipelines");
    node
}

/// `weir ROLE` with `config`, serving the two echo pipelines.
fn with_pipelines(role: &str, config: &str) -> Weir {
    let model = |id: &str, component: &str| {
        format!("[[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"{id}\"\nrunner = \"wasm\"\ncomponent = \"{component}\"\n")
    };
    let config = format!(
        "{config}{}{}",
        model("echo", "echo-pipeline"),
        model("tiny", "tiny-store")
    );
    Weir::start_with(role, &config, &[], |dir| {
        let wasm = artifact("test-programs/echo-pipeline.wasm");
        place(
            dir,
            "echo-pipeline",
            &wasm,
            &manifest("echo-pipeline", "pipeline", ""),
        );
        let tiny = manifest("tiny-store", "pipeline", "[limits]\nstorage_object_kib = 1");
        place(dir, "tiny-store", &wasm, &tiny);
    })
}

/// `POST /image-to-image` with the fixture image and `prompt`; (status, body, image bytes).
pub(crate) fn image_to_image(node: &Weir, model: &str, prompt: &str) -> (u16, Value, Vec<u8>) {
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let form = reqwest::blocking::multipart::Form::new()
        .text("prompt", prompt.to_owned())
        .text("model_id", model.to_owned())
        .part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png.clone())
                .file_name("fixture.png")
                .mime_str("image/png")
                .expect("mime"),
        );
    let r = client()
        .post(format!("{}/image-to-image", node.url))
        .bearer_auth(CLIENT_TOKEN)
        .multipart(form)
        .send()
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null), png)
}

pub(crate) fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().expect("get");
    (r.status().as_u16(), r.bytes().expect("bytes").to_vec())
}

#[test]
fn a_pipeline_stores_an_object_in_its_namespace_and_reads_it_back() {
    let node = node();
    let (status, body, png) = image_to_image(&node, "echo", "store:frames/first.png");
    assert_eq!(status, 200, "{body}");
    // The first output is the object `get` read back: the uploaded image.
    let read_back = body["images"][0]["url"].as_str().expect("read-back url");
    assert_eq!(get_bytes(read_back), (200, png.clone()));
    // The second holds the link `put` answered: a signed link into the component's namespace
    // that serves the stored object to anyone holding it.
    let link_holder = body["images"][1]["url"].as_str().expect("link url");
    let (status, link) = get_bytes(link_holder);
    assert_eq!(status, 200);
    let link = String::from_utf8(link).expect("utf-8 link");
    assert!(
        link.starts_with(&format!(
            "{}/objects/components/echo-pipeline/frames/first.png?expires=",
            node.url
        )),
        "{link}"
    );
    let served = client().get(&link).send().expect("get link");
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().expect("bytes").as_ref(), png.as_slice());
    let unsigned = link.split('?').next().expect("path");
    assert_eq!(get_bytes(unsigned).0, 403, "a link without its signature");
    // On disk the object sits under the component's namespace of the node's object store.
    let file = node
        .data
        .path()
        .join("objects/components/echo-pipeline/frames/first.png");
    assert!(file.is_file(), "{} missing", file.display());
}

#[test]
fn keys_that_leave_the_namespace_and_objects_over_the_limit_are_refused_with_the_cause() {
    let node = node();
    for key in ["../tiny-store/x.png", "/etc/passwd", "a//b"] {
        let (status, body, _) = image_to_image(&node, "echo", &format!("store:{key}"));
        assert_eq!(status, 400, "{key}: {body}");
        assert!(
            body.to_string().contains("invalid object key"),
            "{key}: {body}"
        );
    }
    // The same component with a 1 KiB limit cannot store the fixture.
    let (status, body, png) = image_to_image(&node, "tiny", "store:big.png");
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains(&format!("{} bytes", png.len()))
            && text.contains("tiny-store")
            && text.contains("limits.storage_object_kib"),
        "{text}"
    );
    let objects = node.data.path().join("objects/components");
    assert!(
        !objects.join("tiny-store").exists(),
        "nothing was stored for tiny-store"
    );
    assert!(
        !node.data.path().join("objects/etc").exists() && !objects.join("echo-pipeline").exists(),
        "a refused key stored nothing"
    );
}

#[test]
fn a_component_reads_only_its_own_namespace() {
    let node = node();
    let (status, body, png) = image_to_image(&node, "echo", "store:shared.png");
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = image_to_image(&node, "echo", "fetch:shared.png");
    assert_eq!(status, 200, "{body}");
    let url = body["images"][0]["url"].as_str().expect("url");
    assert_eq!(get_bytes(url), (200, png));
    // Another component asking for the same key finds nothing: its namespace is its own.
    let (status, body, _) = image_to_image(&node, "tiny", "fetch:shared.png");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("component `tiny-store` has no object under \\\"shared.png\\\""),
        "{body}"
    );
}

/// An orchestrator-only node with the echo pipelines and `storage` as its config, behind a
/// gateway; the link the pipeline's `put` answered for `key`, and the uploaded image.
fn store_on_an_orchestrator(storage: &str, key: &str) -> (Weir, String, Vec<u8>) {
    let orch = with_pipelines("orchestrator", storage);
    let gw = crate::ai::gateway(&[&orch.url], "");
    crate::ai::wait_discovered(&gw, 1);
    let (status, body, png) = image_to_image(&gw, "echo", &format!("store:{key}"));
    assert_eq!(status, 200, "{body}");
    let link_holder = body["images"][1]["url"].as_str().expect("link url");
    let (status, link) = get_bytes(link_holder);
    assert_eq!(status, 200);
    let link = String::from_utf8(link).expect("utf-8 link");
    let served = client().get(&link).send().expect("get link");
    assert_eq!(served.status(), 200, "{link}");
    assert_eq!(served.bytes().expect("bytes").as_ref(), png.as_slice());
    (orch, link, png)
}

#[test]
fn an_orchestrator_only_node_keeps_its_components_objects_and_serves_their_links() {
    let (orch, link, _) = store_on_an_orchestrator("", "out/a.png");
    assert!(
        link.starts_with(&format!(
            "{}/objects/components/echo-pipeline/out/a.png?expires=",
            orch.url
        )),
        "{link}"
    );
    let file = orch
        .data
        .path()
        .join("objects/components/echo-pipeline/out/a.png");
    assert!(file.is_file(), "{} missing", file.display());
    // The orchestrator's route checks the signature like the gateway's.
    let forged = format!("{}&sig=00", link.split("&sig=").next().expect("expires"));
    let refused = client().get(&forged).send().expect("get");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().expect("json");
    assert!(body["detail"]["msg"].is_string(), "{body}");
}

#[test]
fn an_orchestrator_keeps_its_components_objects_on_s3_when_configured() {
    let test = "an_orchestrator_keeps_its_components_objects_on_s3_when_configured";
    let Some(s3) = crate::s3::server_or_skip(test) else {
        return;
    };
    let prefix = format!("orch-{:08x}", rand::random::<u32>());
    let storage = format!(
        "[orchestrator.storage]\ntype = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"us-east-1\"\n\
         access_key = \"{}\"\nsecret_key = \"{}\"\nprefix = \"{prefix}\"\nallow_http = true\n",
        s3.endpoint, s3.bucket, s3.access_key, s3.secret_key
    );
    let (orch, link, png) = store_on_an_orchestrator(&storage, "out/b.png");
    // A presigned link straight into the bucket, under the component's namespace.
    assert!(
        link.starts_with(&format!(
            "{}/{}/{prefix}/components/echo-pipeline/out/b.png?",
            s3.endpoint, s3.bucket
        )),
        "{link}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let objects = rt.block_on(crate::s3::open(&s3.storage_config(Some(&prefix))));
    let kept = rt
        .block_on(objects.get("components/echo-pipeline/out/b.png"))
        .expect("get")
        .expect("in the bucket");
    assert_eq!(
        (kept.content_type.as_str(), kept.data.as_ref()),
        ("image/png", png.as_slice())
    );
    assert!(!orch.data.path().join("objects/components").exists());
}
