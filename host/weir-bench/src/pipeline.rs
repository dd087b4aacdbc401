//! `weir bench pipeline`: what running a model through a pipeline component costs. One node
//! serves the ONNX upscaler as `upscale` and the `pipeline-chain-rs` example (one step: that
//! upscaler, through `weir:host/models.invoke`, result not stored) as `image-to-image`; the
//! same image goes through both, alternately, over the same AI API, so the difference is the
//! component's instance, its host calls and the objects it hands on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The upscaler the node serves, and the one step the pipeline runs.
const MODEL: &str = "upscalerjs/default-model";

/// Arguments of `weir bench pipeline`.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Directory with the default components (`default-router`, `default-pricing`).
    #[arg(long, default_value = "build/components")]
    components: PathBuf,
    /// Directory with the built examples (`pipeline-chain-rs`).
    #[arg(long, default_value = "build/examples")]
    examples: PathBuf,
    /// The upscaler model (ONNX).
    #[arg(long, default_value = "build/models/upscale-2x.onnx")]
    model: PathBuf,
    /// Input width and height.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Input height.
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Runs measured on each path (after 3 warm-up runs each).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
}

/// Run the benchmark and print its report.
pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = prepare(&args, data.path())?;
    let mut node = crate::node::spawn(&config, data.path(), Stdio::inherit())?;
    let result = measure(&mut node, &args);
    let _ = node.kill();
    let _ = node.wait();
    println!("{}", result?);
    Ok(())
}

/// Place the components and write the node's config in `data`; the config's path.
fn prepare(args: &PipelineArgs, data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("components");
    crate::node::place_defaults(&args.components, &dir)?;
    let wasm = args.examples.join("pipeline-chain-rs.wasm");
    std::fs::copy(&wasm, dir.join("pipeline-chain-rs.wasm"))
        .with_context(|| format!("{} (run `make examples`)", wasm.display()))?;
    std::fs::write(
        dir.join("pipeline-chain-rs.toml"),
        format!("name = \"pipeline-chain-rs\"\nworld = \"pipeline\"\nversion = \"0.1.0\"\n[limits]\ntimeout_ms = 60000\n[permissions]\nmodels = [\"upscale/{MODEL}\"]\n[config]\nsteps = \"upscale/{MODEL}\"\nstore = \"false\"\n"),
    )?;
    let model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("{} (run `make models`)", args.model.display()))?;
    let onnxruntime = std::env::var("ORT_DYLIB_PATH")
        .ok()
        .map(PathBuf::from)
        .or_else(|| weir_models::onnx::find_onnxruntime(Path::new(".tools/py")))
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| format!("onnxruntime = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    let config = data.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nopen = true\nrefresh_secs = 1\nrtmp_addr = \"127.0.0.1:0\"\n\
             [[orchestrator.models]]\npipeline = \"upscale\"\nmodel_id = \"{MODEL}\"\nrunner = \"onnx\"\nmodel_path = {:?}\n{onnxruntime}capacity = 4\ntimeout_secs = 120\n\
             [[orchestrator.models]]\npipeline = \"image-to-image\"\nmodel_id = \"chain\"\nrunner = \"wasm\"\ncomponent = \"pipeline-chain-rs\"\ncapacity = 4\n",
            model.display().to_string()
        ),
    )?;
    Ok(config)
}

/// A PNG of `width` x `height` with a gradient (something to upscale).
fn input(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// The node's HTTP address, then both paths measured alternately; the report.
fn measure(node: &mut std::process::Child, args: &PipelineArgs) -> anyhow::Result<String> {
    let http = crate::node::addresses(node, &["http"])?.remove(0);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    crate::node::wait_until(&client, &http, "discovering both models", |v| {
        let models = v["orchestrators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["info"]["models"].as_array())
            .map(Vec::len)
            .sum::<usize>();
        models >= 2
    })?;
    let png = input(args.width, args.height)?;
    let call = |path: &str, model: &str| -> anyhow::Result<Duration> {
        let form = reqwest::blocking::multipart::Form::new()
            .text("prompt", "bench")
            .text("model_id", model.to_owned())
            .part(
                "image",
                reqwest::blocking::multipart::Part::bytes(png.clone())
                    .file_name("input.png")
                    .mime_str("image/png")?,
            );
        let started = Instant::now();
        let r = client
            .post(format!("{http}/{path}"))
            .multipart(form)
            .send()?;
        let status = r.status();
        let body = r.bytes()?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(started.elapsed())
    };
    for _ in 0..3 {
        call("upscale", MODEL)?;
        call("image-to-image", "chain")?;
    }
    let (mut native, mut piped) = (Vec::new(), Vec::new());
    for _ in 0..args.iterations.max(1) {
        native.push(call("upscale", MODEL)?);
        piped.push(call("image-to-image", "chain")?);
    }
    let (n, p) = (p50(native), p50(piped));
    Ok(format!(
        "pipeline {}x{} -> {}x{} ({} runs each): the upscaler through the AI API p50 {:.1} ms; through pipeline-chain-rs (weir:host/models.invoke) p50 {:.1} ms; ratio {:.3}x, {:+.1} ms per call",
        args.width,
        args.height,
        2 * args.width,
        2 * args.height,
        args.iterations.max(1),
        ms(n),
        ms(p),
        p.as_secs_f64() / n.as_secs_f64().max(1e-9),
        ms(p) - ms(n)
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
