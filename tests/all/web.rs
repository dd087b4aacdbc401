//! What a web application needs from the gateway: CORS on the public media and API routes
//! (never on the admin API), a master playlist players can rank (every variant, the source
//! included, with `RESOLUTION`, `FRAME-RATE` and `AVERAGE-BANDWIDTH`), uploads accepted by
//! their bytes, Livepeer's validation answer for an empty request, and an OpenAPI document
//! whose templated paths declare their parameters.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::Value;

use crate::ai::{gateway, upscale_orchestrator, wait_discovered, CLIENT_TOKEN};
use crate::support::*;

const ORIGIN: &str = "https://app.example";

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

/// A browser's preflight for `method` with the `Authorization` and `Content-Type` headers.
fn preflight(url: &str, method: &str) -> Response {
    client()
        .request(Method::OPTIONS, url)
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .expect("OPTIONS")
}

fn assert_preflight_ok(r: &Response, method: &str) {
    assert_eq!(r.status().as_u16(), 204, "{:?}", r.headers());
    assert!(header(r, "access-control-allow-origin").is_some());
    let methods = header(r, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains(&method.to_ascii_lowercase()), "{methods}");
    let headers = header(r, "access-control-allow-headers").unwrap_or_default();
    for h in ["authorization", "content-type", "idempotency-key", "prefer"] {
        assert!(headers.contains(h), "{h} not allowed: {headers}");
    }
}

/// `ffprobe` of the first video stream of `path`: (width, height, frame rate).
fn probe_video(path: &Path) -> (u64, u64, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,r_frame_rate",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let s = &v["streams"][0];
    let rate = s["r_frame_rate"].as_str().unwrap_or("0/1");
    let (n, d) = rate.split_once('/').unwrap_or((rate, "1"));
    let fps = n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0).max(1.0);
    (
        s["width"].as_u64().expect("width"),
        s["height"].as_u64().expect("height"),
        fps,
    )
}

/// The value of attribute `name` in an `EXT-X-STREAM-INF` line.
fn attribute<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.split_once(&format!("{name}="))?.1;
    Some(rest.split(',').next().unwrap_or(rest))
}

/// Every variant of `master` carries what players rank variants by; returns the line of the
/// variant whose URI contains `uri_part`.
fn check_variants(master: &str, uri_part: &str) -> String {
    let lines: Vec<&str> = master.lines().collect();
    let mut found = None;
    let mut variants = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("#EXT-X-STREAM-INF:") {
            continue;
        }
        variants += 1;
        for attr in ["RESOLUTION", "FRAME-RATE", "AVERAGE-BANDWIDTH", "BANDWIDTH"] {
            assert!(
                attribute(line, attr).is_some(),
                "no {attr} in {line}\n{master}"
            );
        }
        let average: u64 = attribute(line, "AVERAGE-BANDWIDTH")
            .and_then(|v| v.parse().ok())
            .expect("AVERAGE-BANDWIDTH is a number");
        let peak: u64 = attribute(line, "BANDWIDTH")
            .and_then(|v| v.parse().ok())
            .expect("BANDWIDTH is a number");
        assert!(average > 0 && average <= peak, "{line}");
        if lines.get(i + 1).is_some_and(|u| u.contains(uri_part)) {
            found = Some((*line).to_owned());
        }
    }
    assert_eq!(variants, 3, "two renditions and the source:\n{master}");
    found.unwrap_or_else(|| panic!("no variant {uri_part} in\n{master}"))
}

#[test]
fn browsers_can_fetch_a_live_stream_and_rank_every_variant_the_source_included() {
    let o = Weir::start(
        "orchestrator",
        "[orchestrator.transcode]\ncapacity = 4\n",
        &[],
    );
    let gw = gateway(&[&o.url], "segment_secs = 2\nhls_window = 10");
    wait_discovered(&gw, 1);
    let rtmp = ready_field(&gw.ready, "rtmp").expect("rtmp= in the ready line");

    // The input, probed by ffprobe, then published as is.
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.flv");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=960x540:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args([
            "-t", "7", "-c:v", "libx264", "-preset", "veryfast", "-g", "25",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv"])
        .arg(&input)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let (w, h, fps) = probe_video(&input);
    let published = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(&input)
        .args(["-c", "copy", "-f", "flv"])
        .arg(format!("{rtmp}/live/web"))
        .status()
        .expect("ffmpeg publish");
    assert!(published.success());

    let base = format!("{}/stream/web", gw.url);
    let master = eventually(Duration::from_secs(120), || {
        let r = client().get(format!("{base}.m3u8")).send().ok()?;
        let text = r.text().ok()?;
        (text.matches("#EXT-X-STREAM-INF").count() == 3
            && ["P240p30fps16x9", "P360p30fps16x9", "source"]
                .iter()
                .all(|n| {
                    client()
                        .get(format!("{base}/{n}.m3u8"))
                        .send()
                        .ok()
                        .and_then(|r| r.text().ok())
                        .is_some_and(|t| t.contains("#EXT-X-ENDLIST"))
                }))
        .then_some(())
    });
    assert!(
        master.is_some(),
        "the stream never ended with three variants"
    );

    // The master playlist, read from another origin.
    let r = client()
        .get(format!("{base}.m3u8"))
        .header("Origin", ORIGIN)
        .send()
        .expect("master");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        header(&r, "access-control-allow-origin").is_some(),
        "{:?}",
        r.headers()
    );
    let master = r.text().expect("text");
    let source = check_variants(&master, "source");
    assert_eq!(attribute(&source, "RESOLUTION"), Some(&*format!("{w}x{h}")));
    let rate: f64 = attribute(&source, "FRAME-RATE")
        .and_then(|v| v.parse().ok())
        .expect("FRAME-RATE");
    assert!((rate - fps).abs() < 0.01, "{rate} vs {fps}: {source}");
    let low = check_variants(&master, "P240p30fps16x9");
    assert_eq!(attribute(&low, "RESOLUTION"), Some("426x240"));

    // The low-latency master playlist too.
    let (status, ll) = {
        let r = client().get(format!("{base}/ll.m3u8")).send().expect("ll");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    assert_eq!(status, 200);
    let ll_source = check_variants(&ll, "source/");
    assert_eq!(
        attribute(&ll_source, "RESOLUTION"),
        Some(&*format!("{w}x{h}"))
    );

    // Preflight on a playlist, and a segment read cross-origin.
    assert_preflight_ok(&preflight(&format!("{base}/source.m3u8"), "GET"), "GET");
    let media = client()
        .get(format!("{base}/source.m3u8"))
        .send()
        .expect("media")
        .text()
        .expect("text");
    let segment = media
        .lines()
        .find(|l| l.ends_with(".ts"))
        .expect("a segment")
        .to_owned();
    let r = client()
        .get(format!("{base}/{segment}"))
        .header("Origin", ORIGIN)
        .send()
        .expect("segment");
    assert_eq!(r.status().as_u16(), 200);
    assert!(header(&r, "access-control-allow-origin").is_some());
}

/// Every `{param}` of every path is declared as a path parameter (on the path or on each of its
/// operations), and no `oneOf` anywhere is empty.
fn check_openapi(doc: &Value) {
    fn no_empty_one_of(v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                if let Some(list) = m.get("oneOf") {
                    assert!(
                        list.as_array().is_some_and(|a| !a.is_empty()),
                        "empty oneOf at {at}"
                    );
                }
                for (k, x) in m {
                    no_empty_one_of(x, &format!("{at}/{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|x| no_empty_one_of(x, at)),
            _ => {}
        }
    }
    no_empty_one_of(doc, "");
    let declared = |params: &Value, name: &str| {
        params.as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true)
        })
    };
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let names: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split_once('}').map(|(n, _)| n))
            .collect();
        let operations: Vec<&Value> = ["get", "post", "put", "delete", "patch"]
            .iter()
            .filter_map(|m| item.get(*m))
            .collect();
        assert!(!operations.is_empty(), "{path} has no operation");
        for name in names {
            for op in &operations {
                assert!(
                    declared(&item["parameters"], name) || declared(&op["parameters"], name),
                    "{path}: path parameter `{name}` is not declared"
                );
            }
        }
    }
}

#[test]
fn the_ai_api_serves_browsers_and_livepeer_clients_but_the_admin_api_stays_closed() {
    let o = upscale_orchestrator(2);
    let gw = gateway(&[&o.url], "");
    wait_discovered(&gw, 1);
    let upscale = format!("{}/upscale", gw.url);

    assert_preflight_ok(&preflight(&upscale, "POST"), "POST");

    // A PNG labelled as opaque bytes is still a PNG.
    let form = reqwest::blocking::multipart::Form::new()
        .text("prompt", "sharper")
        .part(
            "image",
            crate::ai::fixture_part("fixture.bin", "application/octet-stream"),
        );
    let r = client()
        .post(&upscale)
        .header("Origin", ORIGIN)
        .bearer_auth(CLIENT_TOKEN)
        .multipart(form)
        .send()
        .expect("upscale");
    let status = r.status().as_u16();
    let acao = header(&r, "access-control-allow-origin");
    let body: Value = r.json().expect("json");
    assert_eq!(status, 200, "{body}");
    assert!(acao.is_some());
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1), "{body}");

    // No body at all: Livepeer's validation answer naming the missing fields.
    let r = client()
        .post(&upscale)
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .expect("empty");
    let status = r.status().as_u16();
    let body: Value = r.json().expect("json");
    assert!(status == 422 || status == 400, "{status} {body}");
    let fields: Vec<&str> = body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("detail is a list: {body}"))
        .iter()
        .filter_map(|e| e["loc"].as_array()?.last()?.as_str())
        .collect();
    assert!(fields.contains(&"image"), "{body}");

    // The admin API answers no cross-origin request.
    let r = client()
        .get(format!("{}/admin/components", gw.url))
        .header("Origin", ORIGIN)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .expect("admin");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = preflight(&format!("{}/admin/components", gw.url), "GET");
    assert_ne!(r.status().as_u16(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "access-control-allow-methods"), None);

    // The document describes every templated path.
    let r = client()
        .get(format!("{}/openapi.json", gw.url))
        .header("Origin", ORIGIN)
        .send()
        .expect("openapi");
    assert!(header(&r, "access-control-allow-origin").is_some());
    let doc: Value = r.json().expect("json");
    check_openapi(&doc);
    let job = &doc["paths"]["/api/v1/generate/{jobId}"]["get"]["responses"];
    assert!(job["401"].is_object(), "{job}");
}
