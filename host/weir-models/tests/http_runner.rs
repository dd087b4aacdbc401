//! The HTTP runner against a small runner server speaking Livepeer's AI runner API.

use std::time::Duration;

use axum::extract::Multipart;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use weir_models::http::{HttpRunner, HttpRunnerConfig};
use weir_models::{Health, InputFile, ModelRunner, RunnerError, RunnerInput, RunnerOutput};
use weir_protocol::ai::{AiRequest, FilePart, FormInput};
use weir_protocol::Capability;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nfake image bytes";

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A runner: text-to-image returns `num_images_per_prompt` images seeded from `seed` (and needs
/// the bearer token); upscale returns the uploaded image with a suffix; the prompts `fail`,
/// `reject`, `slow` and `garbage` make text-to-image misbehave in those ways.
fn runner_app() -> Router {
    async fn t2i(headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
        let prompt = body["prompt"].as_str().unwrap_or_default().to_owned();
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer runner-token")
        {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"detail": {"msg": "bad token"}})),
            );
        }
        match prompt.as_str() {
            "fail" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"detail": {"msg": "CUDA out of memory"}})),
            ),
            "reject" => (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"detail": [{"loc": ["body", "prompt"], "msg": "prompt rejected", "type": "value_error"}]}),
                ),
            ),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (StatusCode::OK, Json(json!({})))
            }
            "garbage" => (StatusCode::OK, Json(json!({"pictures": []}))),
            _ => {
                let n = body["num_images_per_prompt"].as_u64().unwrap_or(1);
                let images: Vec<Value> = (0..n)
                    .map(|i| json!({"url": data_url(PNG), "seed": body["seed"].as_u64().unwrap_or(0) + i, "nsfw": false}))
                    .collect();
                (StatusCode::OK, Json(json!({"images": images})))
            }
        }
    }
    async fn upscale(mut form: Multipart) -> (StatusCode, Json<Value>) {
        let (mut image, mut prompt) = (None, None);
        while let Ok(Some(field)) = form.next_field().await {
            match field.name() {
                Some("image") => image = field.bytes().await.ok(),
                Some("prompt") => prompt = field.text().await.ok(),
                _ => {}
            }
        }
        match (image, prompt) {
            (Some(image), Some(p)) if p == "sharpen" => {
                let mut out = image.to_vec();
                out.extend_from_slice(b"+upscaled");
                (
                    StatusCode::OK,
                    Json(json!({"images": [{"url": data_url(&out), "seed": 1, "nsfw": false}]})),
                )
            }
            _ => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"detail": [{"msg": "image and prompt required"}]})),
            ),
        }
    }
    Router::new()
        .route("/text-to-image", post(t2i))
        .route("/upscale", post(upscale))
        .route("/health", get(|| async { Json(json!({"status": "OK"})) }))
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn runner(url: &str, timeout: Duration) -> HttpRunner {
    HttpRunner::new(HttpRunnerConfig {
        url: url.to_owned(),
        token: Some("runner-token".into()),
        timeout,
        health_timeout: Duration::from_secs(2),
    })
    .expect("runner")
}

fn t2i(prompt: &str) -> RunnerInput {
    RunnerInput {
        request: AiRequest::from_json(
            Capability::TextToImage,
            &json!({"prompt": prompt, "num_images_per_prompt": 2, "seed": 40}),
        )
        .expect("valid"),
        files: vec![],
        sender: String::new(),
        units: 0,
    }
}

#[tokio::test]
async fn text_to_image_returns_decoded_images() {
    let url = serve(runner_app()).await;
    let out = runner(&url, Duration::from_secs(10))
        .run(t2i("a weir"))
        .await
        .expect("run");
    let RunnerOutput::Media(images) = out else {
        panic!("expected media")
    };
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].data, PNG);
    assert_eq!(images[0].content_type, "image/png");
    assert_eq!((images[0].seed, images[1].seed), (40, 41));
}

#[tokio::test]
async fn upscale_sends_the_file_and_fields_as_multipart() {
    let url = serve(runner_app()).await;
    let form = FormInput {
        fields: [("prompt".to_owned(), "sharpen".to_owned())].into(),
        files: [(
            "image".to_owned(),
            FilePart {
                filename: "in.png".into(),
                content_type: "image/png".into(),
                len: 3,
            },
        )]
        .into(),
        repeated: Default::default(),
    };
    let input = RunnerInput {
        request: AiRequest::from_form(Capability::Upscale, &form).expect("valid"),
        files: vec![InputFile {
            field: "image".into(),
            filename: "in.png".into(),
            content_type: "image/png".into(),
            data: bytes::Bytes::from_static(b"abc"),
        }],
        sender: String::new(),
        units: 0,
    };
    let RunnerOutput::Media(images) = runner(&url, Duration::from_secs(10))
        .run(input)
        .await
        .expect("run")
    else {
        panic!("expected media")
    };
    assert_eq!(images[0].data, b"abc+upscaled");
}

#[tokio::test]
async fn failures_are_mapped_to_what_a_caller_can_do_about_them() {
    let url = serve(runner_app()).await;
    let r = runner(&url, Duration::from_millis(500));

    let err = r.run(t2i("fail")).await.unwrap_err();
    assert_eq!(
        err,
        RunnerError::Failed {
            status: 500,
            message: "CUDA out of memory".into()
        }
    );
    assert!(err.retryable());

    let err = r.run(t2i("reject")).await.unwrap_err();
    assert_eq!(
        err,
        RunnerError::Rejected {
            status: 400,
            message: "prompt rejected".into()
        }
    );
    assert!(!err.retryable());

    let err = r.run(t2i("slow")).await.unwrap_err();
    assert_eq!(err, RunnerError::Timeout(Duration::from_millis(500)));
    assert!(err.retryable());

    let err = r.run(t2i("garbage")).await.unwrap_err();
    assert!(matches!(err, RunnerError::BadResponse(_)), "{err}");

    let unauthorized = HttpRunner::new(HttpRunnerConfig {
        url: url.clone(),
        token: None,
        timeout: Duration::from_secs(5),
        health_timeout: Duration::from_secs(1),
    })
    .expect("runner");
    let err = unauthorized.run(t2i("x")).await.unwrap_err();
    assert!(
        matches!(err, RunnerError::Rejected { status: 401, .. }),
        "{err}"
    );

    let mut llm = AiRequest::from_json(
        Capability::Llm,
        &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
    )
    .expect("valid");
    let err = r
        .run(RunnerInput {
            request: llm.clone(),
            files: vec![],
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::Unsupported(_)), "{err}");
    if let AiRequest::Llm(l) = &mut llm {
        l.stream = false;
    }
    // No /llm route on this runner: a 404 is a rejection naming the path.
    let err = r
        .run(RunnerInput {
            request: llm,
            files: vec![],
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::Rejected { status: 404, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_runners_are_unavailable_and_unhealthy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let r = runner(&url, Duration::from_secs(2));
    let err = r.run(t2i("x")).await.unwrap_err();
    assert!(matches!(err, RunnerError::Unavailable(_)), "{err}");
    assert!(err.retryable());
    assert!(matches!(r.health().await, Health::Unhealthy(_)));

    let up = serve(runner_app()).await;
    assert_eq!(
        runner(&up, Duration::from_secs(2)).health().await,
        Health::Ready
    );
    let loading = serve(Router::new().route(
        "/health",
        get(|| async { Json(json!({"status": "LOADING"})) }),
    ))
    .await;
    assert_eq!(
        runner(&loading, Duration::from_secs(2)).health().await,
        Health::Loading
    );
}
