//! `weir bench gateway`: what the gateway hop costs. A trivial runner, an orchestrator and a
//! gateway run in this process on loopback; the same client calls the orchestrator directly
//! (signing its own payments) and through the gateway, in one run. Also the ONNX upscaler
//! against the `onnxruntime` Python package on the same model and input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use weir_payments::credit::{account, Wallet};
use weir_payments::UnitPrice;
use weir_runtime::{NoLedger, Registry, Runtime, RuntimeConfig, RuntimeMetrics};

/// Settings of `weir bench gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayBench {
    /// Directory with the default components (`default-router`, `default-pricing`).
    #[arg(long, default_value = "build/components")]
    components: PathBuf,
    /// Sequential requests per path for latency.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Concurrent clients for throughput.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of load per path for throughput.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The upscale model (skipped when absent).
    #[arg(long, default_value = "build/models/upscale-2x.onnx")]
    model: PathBuf,
    /// Python with `onnxruntime` for the reference (default: the tools venv).
    #[arg(long, default_value = ".tools/py/bin/python")]
    python: PathBuf,
    /// Timed upscales per side.
    #[arg(long, default_value_t = 20)]
    upscales: usize,
    /// Ledger durability on both sides: `process` or `power`.
    #[arg(long, default_value = "process", value_parser = parse_durability)]
    durability: weir_payments::Durability,
}

fn parse_durability(s: &str) -> Result<weir_payments::Durability, String> {
    match s {
        "process" => Ok(weir_payments::Durability::Process),
        "power" => Ok(weir_payments::Durability::Power),
        other => Err(format!("`{other}`: expected process or power")),
    }
}

async fn serve(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

/// A runner that answers every `/llm` request at once with a fixed completion.
fn trivial_runner() -> axum::Router {
    axum::Router::new()
        .route(
            "/llm",
            post(|| async {
                Json(json!({
                    "id": "bench", "model": "bench/llm", "created": 0,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                }))
            }),
        )
        .route(
            "/health",
            axum::routing::get(|| async { Json(json!({"status": "OK"})) }),
        )
}

struct Sample {
    p50_us: f64,
    p99_us: f64,
}

fn percentiles(mut v: Vec<Duration>) -> Sample {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    Sample {
        p50_us: at(0.5),
        p99_us: at(0.99),
    }
}

/// How one path sends a request.
#[derive(Clone)]
enum Path2 {
    Direct {
        url: String,
        wallet: Arc<Wallet>,
        price: UnitPrice,
        cost: u64,
    },
    Gateway {
        url: String,
    },
}

const BODY: &str =
    r#"{"messages":[{"role":"user","content":"hi"}],"model":"bench/llm","max_tokens":16}"#;

impl Path2 {
    async fn call(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let request = match self {
            Path2::Direct {
                url,
                wallet,
                price,
                cost,
            } => {
                let id = format!("bench-{:032x}", rand::random::<u128>());
                let header = wallet.pay(&id, &account("llm", "bench/llm"), *cost, *price);
                client
                    .post(format!("{url}/llm"))
                    .header("weir-payment", header)
            }
            Path2::Gateway { url } => client.post(format!("{url}/llm")),
        };
        let response = request
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

async fn latency(path: &Path2, client: &reqwest::Client, n: usize) -> anyhow::Result<Sample> {
    for _ in 0..(n / 10).max(20) {
        path.call(client).await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        path.call(client).await?;
        samples.push(t.elapsed());
    }
    Ok(percentiles(samples))
}

async fn throughput(
    path: &Path2,
    client: &reqwest::Client,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let path = path.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                path.call(&client).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Run the benchmark.
pub fn run(args: GatewayBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(hop(&args))?;
    upscale(&args)
}

async fn hop(args: &GatewayBench) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let metrics = prometheus::Registry::new();
    let registry = default_policies(&args.components, data.path(), &metrics)?;

    let runner_url = serve(trivial_runner()).await?;
    // The orchestrator trusts the bench's gateway and its direct client, nobody else.
    let gateway_wallet = Wallet::load_or_create(&data.path().join("wallet.key"))?;
    let direct_wallet = Arc::new(Wallet::generate());
    let trusted = vec![gateway_wallet.sender(), direct_wallet.sender()];
    let orch_config = orchestrator_config(runner_url, trusted);
    let orchestrator = weir_orchestrator::Orchestrator::new(
        orch_config,
        registry.clone(),
        std::sync::Arc::new(
            weir_payments::SqliteLedger::open_with(
                &data.path().join("orchestrator.db"),
                args.durability,
            )
            .await?,
        ),
        &metrics,
    )
    .await?;
    let orch_url = serve(orchestrator.router()).await?;
    // Bound before the gateway is built: its result store needs its public URL.
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw_url = format!("http://{}", gw_listener.local_addr()?);
    let gw_config = gateway_config(orch_url.clone(), gw_url.clone(), data.path());
    let gateway = weir_gateway::Gateway::new(
        gw_config,
        registry.clone(),
        std::sync::Arc::new(
            weir_payments::SqliteLedger::open_with(
                &data.path().join("gateway.db"),
                args.durability,
            )
            .await?,
        ),
        &data.path().join("wallet.key"),
        &metrics,
    )
    .await?;
    let _refresh = gateway.start().await;
    let gw_router = gateway.router();
    tokio::spawn(async move { axum::serve(gw_listener, gw_router).await });

    let info = orchestrator.info().await;
    let m = info
        .models
        .first()
        .context("the orchestrator advertises no model")?;
    let price = UnitPrice {
        price_per_unit: m.price.price_per_unit,
        pixels_per_unit: m.price.pixels_per_unit,
    };
    let cost = weir_payments::cost(16, price).context("cost overflow")?;
    let direct = Path2::Direct {
        url: orch_url,
        wallet: direct_wallet,
        price,
        cost,
    };
    let via = Path2::Gateway { url: gw_url };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;

    compare(args, &direct, &via, &client).await
}

/// A registry holding copies of the default router and pricing from `from`, under `data`.
fn default_policies(
    from: &Path,
    data: &Path,
    metrics: &prometheus::Registry,
) -> anyhow::Result<Arc<Registry>> {
    let runtime = Runtime::new(
        RuntimeConfig::default(),
        Arc::new(NoLedger),
        RuntimeMetrics::new(metrics)?,
    )?;
    let components = data.join("components");
    std::fs::create_dir_all(&components)?;
    for name in ["default-router", "default-pricing"] {
        for ext in ["wasm", "toml"] {
            let src = from.join(format!("{name}.{ext}"));
            std::fs::copy(&src, components.join(format!("{name}.{ext}")))
                .with_context(|| format!("{} (run `make guests`)", src.display()))?;
        }
    }
    let registry = Registry::new(runtime, &components)?;
    let report = registry.scan();
    if !report.failed.is_empty() {
        bail!("components failed to load: {:?}", report.failed);
    }
    Ok(registry)
}

/// The orchestrator under test: one `llm` model served by the runner at `runner_url`, trusting
/// only `trusted` senders.
fn orchestrator_config(
    runner_url: String,
    trusted: Vec<String>,
) -> weir_orchestrator::OrchestratorConfig {
    weir_orchestrator::OrchestratorConfig {
        service_url: String::new(),
        pricing: "default-pricing".into(),
        region: String::new(),
        gpu_class: "cpu".into(),
        models: vec![weir_orchestrator::ModelEntry {
            pipeline: "llm".into(),
            model_id: "bench/llm".into(),
            warm: true,
            capacity: 4096,
            timeout_secs: 30,
            runner: weir_orchestrator::RunnerSpec::Http {
                url: runner_url,
                token: None,
            },
        }],
        max_payment_skew: Duration::from_secs(300),
        trusted_senders: trusted,
        accept_any_sender: false,
        max_file_bytes: 1 << 20,
        max_body_bytes: 2 << 20,
        transcode: weir_orchestrator::TranscodeConfig {
            enabled: false,
            ..Default::default()
        },
        health_interval: Duration::from_secs(3600),
        byoc: Default::default(),
        trickle: Default::default(),
    }
}

/// The gateway under test: in front of the one orchestrator at `orch_url`, open to any client.
fn gateway_config(orch_url: String, gw_url: String, data: &Path) -> weir_gateway::GatewayConfig {
    weir_gateway::GatewayConfig {
        streams: Default::default(),
        orchestrators: vec![orch_url],
        orch_webhook_url: None,
        refresh_interval: Duration::from_secs(3600),
        webhook_interval: Duration::from_secs(3600),
        router: "default-router".into(),
        max_prices: Default::default(),
        auth_tokens: Vec::new(),
        open: true,
        max_attempts: 3,
        retry_budget: Duration::from_secs(10),
        busy_wait: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(30),
        suspend_for: Duration::from_secs(1),
        public_url: gw_url,
        storage: None,
        max_file_bytes: 1 << 20,
        max_body_bytes: 2 << 20,
        live: weir_gateway::LiveConfig::default(),
        jobs: weir_gateway::JobsConfig::default(),
        data_dir: data.to_owned(),
        cors_origins: Vec::new(),
    }
}

/// Measure both paths (latency, then throughput) and print them side by side.
async fn compare(
    args: &GatewayBench,
    direct: &Path2,
    via: &Path2,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    println!(
        "gateway hop: client -> gateway -> orchestrator -> trivial runner (POST /llm), loopback, {} sequential requests, {} clients x {} s, ledger durability {:?}",
        args.requests, args.concurrency, args.seconds, args.durability
    );
    let d = latency(direct, client, args.requests).await?;
    let g = latency(via, client, args.requests).await?;
    println!(
        "latency  direct  p50 {:>8.1} µs  p99 {:>8.1} µs",
        d.p50_us, d.p99_us
    );
    println!(
        "latency  gateway p50 {:>8.1} µs  p99 {:>8.1} µs   added p50 {:>8.1} µs ({:.2}x)",
        g.p50_us,
        g.p99_us,
        g.p50_us - d.p50_us,
        g.p50_us / d.p50_us.max(1e-3)
    );
    let dt = throughput(direct, client, args.concurrency, args.seconds).await?;
    let gt = throughput(via, client, args.concurrency, args.seconds).await?;
    println!("throughput direct  {dt:>8.0} req/s");
    println!(
        "throughput gateway {gt:>8.0} req/s   {:.0}% of direct",
        100.0 * gt / dt.max(1e-9)
    );
    println!(
        "targets: added p50 <= 500 µs: {}; throughput >= 70% of direct: {}",
        if g.p50_us - d.p50_us <= 500.0 {
            "met"
        } else {
            "MISSED"
        },
        if gt >= dt * 0.7 { "met" } else { "MISSED" }
    );
    Ok(())
}

fn upscale(args: &GatewayBench) -> anyhow::Result<()> {
    if !args.model.is_file() {
        println!(
            "upscale: {} not found (run `make models`); skipped",
            args.model.display()
        );
        return Ok(());
    }
    let n = args.upscales.max(3);
    let mut config = weir_models::onnx::OnnxConfig::new(&args.model);
    config.dylib_path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| weir_models::onnx::find_onnxruntime(Path::new(".tools/py")));
    let upscaler = weir_models::onnx::OnnxUpscaler::load(config)?;
    // The same pseudo-random kind of input as the Python side (values do not change the cost).
    let mut img = image::RgbImage::new(256, 256);
    for (i, p) in img.pixels_mut().enumerate() {
        let v = (i as u32).wrapping_mul(2_654_435_761);
        *p = image::Rgb([(v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8]);
    }
    upscaler.upscale_rgb(&img)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        upscaler.upscale_rgb(&img)?;
        samples.push(t.elapsed());
    }
    let rust = percentiles(samples);
    let output = std::process::Command::new(&args.python)
        .arg("host/weir-models/assets/upscale/bench.py")
        .arg(&args.model)
        .arg(n.to_string())
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    if !output.status.success() {
        bail!(
            "the onnxruntime reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let reference: Value = serde_json::from_slice(&output.stdout)?;
    let py_p50_ms = reference["p50_ms"].as_f64().context("p50_ms")?;
    println!(
        "upscale 256x256 -> 512x512 ({} provider, {n} runs): weir p50 {:.1} ms  onnxruntime-python {} p50 {:.1} ms  ratio {:.2}x",
        upscaler.provider().name(),
        rust.p50_us / 1000.0,
        reference["onnxruntime"].as_str().unwrap_or("?"),
        py_p50_ms,
        rust.p50_us / 1000.0 / py_p50_ms.max(1e-6)
    );
    Ok(())
}
