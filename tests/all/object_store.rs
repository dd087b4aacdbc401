//! One object store for the gateway: with `[gateway.storage]` on S3, the synchronous AI API's
//! results and the jobs API's outputs both land in the bucket, and a job's output is the very
//! object its AI request stored (no second copy).

use std::time::Duration;

use serde_json::{json, Value};

use crate::ai::{gateway, png_size, post_upscale, upscale_orchestrator, wait_discovered};
use crate::jobs::{image_server, jobs_section, submit, wait_final};
use crate::s3::{open, server_or_skip};
use crate::support::client;

#[test]
fn synchronous_results_and_job_outputs_share_the_s3_store() {
    let Some(s3) = server_or_skip("synchronous_results_and_job_outputs_share_the_s3_store") else {
        return;
    };
    let prefix = format!("gw-{:08x}", rand::random::<u32>());
    let storage = format!(
        "\n[gateway.storage]\ntype = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"us-east-1\"\n\
         access_key = \"{}\"\nsecret_key = \"{}\"\nprefix = \"{prefix}\"\nallow_http = true\n",
        s3.endpoint, s3.bucket, s3.access_key, s3.secret_key
    );
    let orch = upscale_orchestrator(2);
    let images = image_server();
    let gw = gateway(&[&orch.url], &format!("{}{storage}", jobs_section("")));
    wait_discovered(&gw, 1);
    let bucket = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let objects = bucket.block_on(open(&s3.storage_config(Some(&prefix))));

    // A synchronous result: served at the gateway's URL, kept in the bucket.
    let response = post_upscale(&gw);
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("json");
    let url = body["images"][0]["url"].as_str().expect("url");
    let name = url
        .strip_prefix(&format!("{}/results/", gw.url))
        .unwrap_or_else(|| panic!("{url} is not the gateway's"));
    let served = client().get(url).send().expect("result");
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    let served = served.bytes().expect("bytes");
    let kept = bucket
        .block_on(objects.get(&format!("results/{name}")))
        .expect("get")
        .expect("the result is in the bucket");
    assert_eq!(kept.content_type, "image/png");
    assert_eq!(kept.data, served);
    assert_eq!(png_size(&served), (256, 256));

    // A job's output: a presigned link into the bucket, to the object its AI request stored.
    let (status, _, job) = submit(
        &gw,
        &json!({"model": "upscale-2x", "imageUrl": format!("{}/fixture.png", images.url)}),
        &[],
    );
    assert_eq!(status, 202, "{job}");
    let id = job["jobId"].as_str().expect("jobId");
    let done = wait_final(&gw, id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let link = done["result"]["url"].as_str().expect("url");
    assert!(link.starts_with(&s3.endpoint), "{link} is not the bucket's");
    let key_at = link.find("/results/").expect("a results/ key");
    let key = link[key_at + 1..].split('?').next().expect("path");
    let key = key
        .rsplit_once(&format!("{prefix}/"))
        .map_or(key, |(_, k)| k);
    let output = client().get(link).send().expect("output");
    assert_eq!(output.status(), 200);
    let output = output.bytes().expect("bytes");
    assert_eq!(png_size(&output), (256, 256));
    let kept = bucket
        .block_on(objects.get(key))
        .expect("get")
        .expect("the job's output is the AI result in the bucket");
    assert_eq!(kept.data, output);
    assert_eq!(
        done["result"]["fileSizeBytes"].as_u64(),
        Some(output.len() as u64)
    );
}
