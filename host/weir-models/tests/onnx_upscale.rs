//! The ONNX upscaler on the real model, against UpscalerJS's own 2x result.
//!
//! Needs `$WEIR_BUILD_DIR/models/{upscale-2x.onnx,fixture.png,result.png}` (default
//! `<repo>/build/models`, made by `make models`) and ONNX Runtime from `ORT_DYLIB_PATH` or the
//! venv `<repo>/.tools/py`.
#![cfg(feature = "onnx")]

use std::path::{Path, PathBuf};

use image::{imageops, RgbImage};
use weir_models::onnx::{find_onnxruntime, OnnxConfig, OnnxUpscaler, Provider};
use weir_models::{InputFile, ModelRunner, RunnerError, RunnerInput, RunnerOutput};
use weir_protocol::ai::{AiRequest, FilePart, FormInput};
use weir_protocol::Capability;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models_dir() -> PathBuf {
    std::env::var_os("WEIR_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build"))
        .join("models")
}

fn need(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: run `make models` (or set WEIR_BUILD_DIR)",
        path.display()
    );
    path
}

fn config() -> OnnxConfig {
    let mut config = OnnxConfig::new(need(models_dir().join("upscale-2x.onnx")));
    config.dylib_path = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(
            find_onnxruntime(&repo().join(".tools/py")).unwrap_or_else(|| {
                panic!("no onnxruntime in .tools/py: run `make models` or set ORT_DYLIB_PATH")
            }),
        ),
    };
    config
}

fn rgb(name: &str) -> RgbImage {
    image::open(need(models_dir().join(name)))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

fn upscale_request(seed: Option<&str>) -> AiRequest {
    let mut fields = vec![("prompt".to_owned(), "sharpen".to_owned())];
    if let Some(seed) = seed {
        fields.push(("seed".to_owned(), seed.to_owned()));
    }
    let form = FormInput {
        fields: fields.into_iter().collect(),
        files: [(
            "image".to_owned(),
            FilePart {
                filename: "in.png".into(),
                content_type: "image/png".into(),
                len: 1,
            },
        )]
        .into(),
        repeated: Default::default(),
    };
    AiRequest::from_form(Capability::Upscale, &form).expect("valid request")
}

fn image_file(data: Vec<u8>) -> Vec<InputFile> {
    vec![InputFile {
        field: "image".into(),
        filename: "in.png".into(),
        content_type: "image/png".into(),
        data: data.into(),
    }]
}

#[tokio::test]
async fn upscales_like_upscalerjs_and_beats_bicubic() {
    let runner = OnnxUpscaler::load(config()).expect("load");
    assert_eq!((runner.scale(), runner.provider()), (2, Provider::Cpu));
    let fixture = std::fs::read(need(models_dir().join("fixture.png"))).expect("fixture");
    let out = runner
        .run(RunnerInput {
            request: upscale_request(Some("7")),
            files: image_file(fixture),
            sender: String::new(),
            units: 0,
        })
        .await
        .expect("run");
    let RunnerOutput::Media(media) = out else {
        panic!("expected media, got {out:?}")
    };
    assert_eq!(media.len(), 1);
    assert_eq!(
        (media[0].content_type.as_str(), media[0].seed, media[0].nsfw),
        ("image/png", 7, false)
    );
    let got = image::load_from_memory_with_format(&media[0].data, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8();
    assert_eq!(got.dimensions(), (256, 256));

    let expected = rgb("result.png");
    let input = rgb("fixture.png");
    let bicubic = imageops::resize(&input, 256, 256, imageops::FilterType::CatmullRom);
    let (model_db, bicubic_db) = (psnr(&got, &expected), psnr(&bicubic, &expected));
    println!("PSNR vs UpscalerJS: model {model_db:.2} dB, bicubic {bicubic_db:.2} dB");
    assert!(model_db >= 35.0, "model PSNR {model_db:.2} dB < 35 dB");
    assert!(
        model_db > bicubic_db,
        "model {model_db:.2} dB is not better than bicubic {bicubic_db:.2} dB"
    );
}

#[tokio::test]
async fn tiles_join_without_seams() {
    let input = rgb("fixture.png");
    let whole = OnnxUpscaler::load(config())
        .expect("load")
        .upscale_rgb(&input)
        .expect("whole");
    let mut tiled = config();
    tiled.tile = 48;
    let tiled = OnnxUpscaler::load(tiled)
        .expect("load")
        .upscale_rgb(&input)
        .expect("tiled");
    let db = psnr(&whole, &tiled);
    println!("tiled vs whole: {db:.2} dB");
    assert!(db > 60.0, "tiled output differs from whole: {db:.2} dB");
}

#[tokio::test]
async fn rejects_what_it_cannot_serve() {
    let runner = OnnxUpscaler::load(config()).expect("load");

    let err = runner
        .run(RunnerInput {
            request: upscale_request(None),
            files: image_file(b"%PDF-1.7 not an image".to_vec()),
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::Rejected { status: 415, .. }),
        "{err:?}"
    );

    let mut big = Vec::new();
    RgbImage::new(2049, 8)
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .expect("encode");
    let err = runner
        .run(RunnerInput {
            request: upscale_request(None),
            files: image_file(big),
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::Rejected { status: 413, .. }),
        "{err:?}"
    );

    let err = runner
        .run(RunnerInput {
            request: upscale_request(None),
            files: vec![],
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::Rejected { status: 400, .. }),
        "{err:?}"
    );

    let t2i = serde_json::json!({"prompt": "a cat"});
    let err = runner
        .run(RunnerInput {
            request: AiRequest::from_json(Capability::TextToImage, &t2i).expect("valid"),
            files: vec![],
            sender: String::new(),
            units: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RunnerError::Unsupported(m) if m.contains("text-to-image")),
        "{err:?}"
    );
}

#[test]
fn cuda_falls_back_to_cpu_cleanly() {
    let mut config = config();
    config.cuda = true;
    let runner = OnnxUpscaler::load(config).expect("load");
    let out = runner.upscale_rgb(&RgbImage::new(8, 8)).expect("upscale");
    assert_eq!(out.dimensions(), (16, 16));
    // The CPU-only wheel has no CUDA provider; a GPU build may use it.
    println!("provider: {:?}", runner.provider());
}
