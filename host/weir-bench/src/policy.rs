//! `weir bench policy`: the cost of one route + price decision through the default WASM
//! policies (and the JS and Python examples) against the same logic compiled natively, and
//! hot-reload latency.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use weir_policy::cmp_unit_price;
use weir_policy::pricing::PriceTable;
use weir_policy::router::{rank, Offer, RouterConfig};
use weir_runtime::{
    Candidate, InstanceMode, JobRequest, LoadedComponent, Manifest, NoLedger, OutputSize, Price,
    QuoteContext, Registry, Role, Runtime, RuntimeConfig, RuntimeMetrics,
};

/// Latency percentiles of a sample, in microseconds.
struct Stats {
    p50: f64,
    p99: f64,
}

fn measure(iterations: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Stats> {
    for _ in 0..(iterations / 10).max(10) {
        f()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6
    };
    Ok(Stats {
        p50: at(0.50),
        p99: at(0.99),
    })
}

fn row(label: &str, s: &Stats, reference: Option<&Stats>) {
    match reference {
        Some(r) => println!(
            "{label:<44} p50 {:>9.2} µs  p99 {:>9.2} µs  ratio p50 {:>7.2}x  p99 {:>7.2}x",
            s.p50,
            s.p99,
            s.p50 / r.p50.max(1e-3),
            s.p99 / r.p99.max(1e-3)
        ),
        None => println!(
            "{label:<44} p50 {:>9.2} µs  p99 {:>9.2} µs  (reference)",
            s.p50, s.p99
        ),
    }
}

/// Deterministic synthetic candidates: varied prices, latencies, regions and load.
fn candidates(n: usize) -> Vec<Candidate> {
    let regions = ["eu-west", "us-east", "ap-south", "us-west"];
    (0..n)
        .map(|i| {
            let k = i as u64;
            Candidate {
                id: format!("0x{:040x}", k * 7919 + 13),
                url: format!("https://orch-{i}.example:8935"),
                price: Price {
                    price_per_unit: 1_000 + (k * 7_717) % 5_000,
                    pixels_per_unit: 1 + (k % 3),
                    currency: "WEI".into(),
                },
                latency_ms: 20 + ((k * 37) % 400) as u32,
                success_bp: 9_000 + ((k * 131) % 1_000) as u32,
                region: regions[i % regions.len()].into(),
                gpu_class: if i % 2 == 0 {
                    "h100".into()
                } else {
                    "rtx4090".into()
                },
                warm_models: if i % 3 == 0 {
                    vec!["sdxl".into()]
                } else {
                    vec![]
                },
                capacity: 8,
                in_flight: (i % 5) as u32,
            }
        })
        .collect()
}

fn request() -> JobRequest {
    let output = OutputSize::new(1024, 1024, 1, 1);
    JobRequest::priced("text-to-image", "sdxl", output, 1024 * 1024, "0xbench").with("bench", &[])
}

fn context() -> QuoteContext {
    QuoteContext {
        role: Role::Orchestrator,
        counterparty: "0xbench".into(),
        in_flight: 6,
        capacity: 8,
    }
}

fn settings(m: &Manifest) -> impl Iterator<Item = (&str, &str)> {
    m.config.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Native decision: the same `weir-policy` code the guests run, with the same conversions.
fn native_decision(
    router: &RouterConfig,
    prices: &PriceTable,
    req: &JobRequest,
    cands: &[Candidate],
) -> anyhow::Result<(Vec<u32>, Price)> {
    let offers: Vec<Offer<'_>> = cands
        .iter()
        .map(|c| Offer {
            id: &c.id,
            price_per_unit: c.price.price_per_unit,
            pixels_per_unit: c.price.pixels_per_unit,
            latency_ms: c.latency_ms,
            success_bp: c.success_bp,
            warm: !req.model.is_empty() && c.warm_models.contains(&req.model),
            capacity: c.capacity,
            in_flight: c.in_flight,
        })
        .collect();
    let ranking = rank(&offers, router).map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = prices
        .quote(&req.capability, &req.model)
        .map_err(anyhow::Error::msg)?;
    Ok((
        ranking,
        Price {
            price_per_unit: p.price_per_unit,
            pixels_per_unit: p.pixels_per_unit,
            currency: prices.currency.clone(),
        },
    ))
}

fn same_price(a: &Price, b: &Price) -> bool {
    (a.price_per_unit, a.pixels_per_unit, &a.currency)
        == (b.price_per_unit, b.pixels_per_unit, &b.currency)
}

/// Native port of `examples/pricing-surge-js` (reference for the JS measurement).
fn native_surge(m: &Manifest, ctx: &QuoteContext) -> anyhow::Result<Price> {
    let get = |k: &str, d: u128| -> anyhow::Result<u128> {
        m.config
            .get(k)
            .map(|v| v.trim().parse::<u128>())
            .transpose()
            .map(|v| v.unwrap_or(d))
            .map_err(Into::into)
    };
    let (base, units) = (
        get("base_price_per_unit", 1000)?,
        get("pixels_per_unit", 1)?,
    );
    let (threshold, max) = (get("surge_threshold_pct", 50)?, get("surge_max_pct", 200)?);
    if ctx.capacity == 0 {
        bail!("capacity is 0");
    }
    let load = u128::from(ctx.in_flight) * 100 / u128::from(ctx.capacity);
    let price = if load <= threshold || threshold >= 100 {
        base
    } else {
        base + base * max * (load.min(100) - threshold) / ((100 - threshold) * 100)
    };
    Ok(Price {
        price_per_unit: u64::try_from(price)?,
        pixels_per_unit: u64::try_from(units)?,
        currency: m
            .config
            .get("currency")
            .cloned()
            .unwrap_or_else(|| "WEI".into()),
    })
}

/// Native port of `examples/router-region-py` (reference for the Python measurement).
fn native_region(m: &Manifest, cands: &[Candidate]) -> Vec<u32> {
    let region = m.config.get("region").cloned().unwrap_or_default();
    let max: Option<u64> = m
        .config
        .get("max_price_per_unit")
        .and_then(|v| v.trim().parse().ok());
    let mut idx: Vec<u32> = (0..cands.len() as u32)
        .filter(|&i| {
            let p = &cands[i as usize].price;
            max.is_none_or(|mx| {
                u128::from(p.price_per_unit) <= u128::from(mx) * u128::from(p.pixels_per_unit)
            })
        })
        .collect();
    idx.sort_by(|&a, &b| {
        let (ca, cb) = (&cands[a as usize], &cands[b as usize]);
        let lat = |c: &Candidate| {
            if c.latency_ms == 0 {
                u32::MAX
            } else {
                c.latency_ms
            }
        };
        (ca.region != region)
            .cmp(&(cb.region != region))
            .then(lat(ca).cmp(&lat(cb)))
            .then(cmp_unit_price(
                ca.price.price_per_unit,
                ca.price.pixels_per_unit,
                cb.price.price_per_unit,
                cb.price.pixels_per_unit,
            ))
            .then(ca.id.cmp(&cb.id))
    });
    idx
}

fn load(
    runtime: &Arc<Runtime>,
    dir: &Path,
    name: &str,
    mode: Option<InstanceMode>,
) -> anyhow::Result<Arc<LoadedComponent>> {
    let mut manifest = Manifest::load(&dir.join(format!("{name}.toml")))
        .with_context(|| format!("{name} (build it with `make guests`)"))?;
    if mode.is_some() {
        manifest.instance = mode;
    }
    Ok(runtime.load(manifest, dir)?)
}

/// One decision's inputs, shared by every row, and the decisions measured per warm row.
struct Workload {
    req: JobRequest,
    cands: Vec<Candidate>,
    ctx: QuoteContext,
    iterations: usize,
}

/// Run `weir bench policy`: `iterations` decisions per row over `n` candidates.
pub(crate) fn run(
    components: &Path,
    examples: &Path,
    iterations: usize,
    n: usize,
) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new())?;
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(work.path().join("cache")),
            ..RuntimeConfig::default()
        },
        Arc::new(NoLedger),
        metrics,
    )?;
    let workload = Workload {
        req: request(),
        cands: candidates(n),
        ctx: context(),
        iterations,
    };
    println!("weir bench policy: route ({n} candidates) + price per decision; {iterations} decisions per row");
    println!(
        "host: {} cores; wasmtime 48.0.8, pooling allocator, epoch deadlines on\n",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
    rust_guests(&runtime, components, &workload)?;
    js_example(&runtime, examples, &workload)?;
    python_example(&runtime, examples, &workload)?;
    hot_reload(&runtime, components, work.path())
}

/// The default Rust guests (route + price) against the same `weir-policy` code run natively.
fn rust_guests(runtime: &Arc<Runtime>, components: &Path, w: &Workload) -> anyhow::Result<()> {
    let (req, cands, ctx, iterations) = (&w.req, &w.cands, &w.ctx, w.iterations);
    let router_manifest = Manifest::load(&components.join("default-router.toml"))?;
    let pricing_manifest = Manifest::load(&components.join("default-pricing.toml"))?;
    let router_cfg =
        RouterConfig::from_settings(settings(&router_manifest)).map_err(anyhow::Error::msg)?;
    let price_table =
        PriceTable::from_settings(settings(&pricing_manifest)).map_err(anyhow::Error::msg)?;
    let native = measure(iterations, || {
        native_decision(&router_cfg, &price_table, req, cands).map(drop)
    })?;
    let expected = native_decision(&router_cfg, &price_table, req, cands)?;

    let router = load(
        runtime,
        components,
        "default-router",
        Some(InstanceMode::Warm),
    )?;
    let pricing = load(
        runtime,
        components,
        "default-pricing",
        Some(InstanceMode::Warm),
    )?;
    let got = (router.select(req, cands)?, pricing.quote(req, ctx)?);
    if got.0 != expected.0 || !same_price(&got.1, &expected.1) {
        bail!("the WASM and native policies disagree: {got:?} vs {expected:?}");
    }
    let warm = measure(iterations, || {
        router.select(req, cands)?;
        pricing.quote(req, ctx)?;
        Ok(())
    })?;
    let router_fresh = load(
        runtime,
        components,
        "default-router",
        Some(InstanceMode::Fresh),
    )?;
    let pricing_fresh = load(
        runtime,
        components,
        "default-pricing",
        Some(InstanceMode::Fresh),
    )?;
    let fresh = measure(iterations / 5, || {
        router_fresh.select(req, cands)?;
        pricing_fresh.quote(req, ctx)?;
        Ok(())
    })?;
    println!("default Rust guests (route + price):");
    row(
        "  native (same logic compiled into the host)",
        &native,
        None,
    );
    row("  wasm, warm instances", &warm, Some(&native));
    row("  wasm, fresh instance per call", &fresh, Some(&native));
    Ok(())
}

/// The JavaScript example (`pricing-surge-js`, quote) against its native port, when built.
fn js_example(runtime: &Arc<Runtime>, examples: &Path, w: &Workload) -> anyhow::Result<()> {
    let (req, ctx, iterations) = (&w.req, &w.ctx, w.iterations);
    if !examples.join("pricing-surge-js.toml").is_file() {
        println!(
            "(JavaScript example not built: {} missing)",
            examples.join("pricing-surge-js.toml").display()
        );
        return Ok(());
    }
    let m = Manifest::load(&examples.join("pricing-surge-js.toml"))?;
    let js = load(
        runtime,
        examples,
        "pricing-surge-js",
        Some(InstanceMode::Warm),
    )?;
    if !same_price(&js.quote(req, ctx)?, &native_surge(&m, ctx)?) {
        bail!("the JS example and its native port disagree");
    }
    let native = measure(iterations, || native_surge(&m, ctx).map(drop))?;
    let warm = measure(iterations / 4, || {
        js.quote(req, ctx).map(drop).map_err(Into::into)
    })?;
    let js_fresh = load(
        runtime,
        examples,
        "pricing-surge-js",
        Some(InstanceMode::Fresh),
    )?;
    let fresh = measure(200, || {
        js_fresh.quote(req, ctx).map(drop).map_err(Into::into)
    })?;
    println!("JavaScript example (pricing-surge-js, quote):");
    row("  native port", &native, None);
    row("  wasm, warm instances", &warm, Some(&native));
    row("  wasm, fresh instance per call", &fresh, Some(&native));
    Ok(())
}

/// The Python example (`router-region-py`, select) against its native port, when built.
fn python_example(runtime: &Arc<Runtime>, examples: &Path, w: &Workload) -> anyhow::Result<()> {
    let (req, cands, iterations) = (&w.req, &w.cands, w.iterations);
    if !examples.join("router-region-py.toml").is_file() {
        println!(
            "(Python example not built: {} missing)",
            examples.join("router-region-py.toml").display()
        );
        return Ok(());
    }
    let m = Manifest::load(&examples.join("router-region-py.toml"))?;
    let py = load(
        runtime,
        examples,
        "router-region-py",
        Some(InstanceMode::Warm),
    )?;
    if py.select(req, cands)? != native_region(&m, cands) {
        bail!("the Python example and its native port disagree");
    }
    let native = measure(iterations, || {
        native_region(&m, cands);
        Ok(())
    })?;
    let warm = measure(iterations / 4, || {
        py.select(req, cands).map(drop).map_err(Into::into)
    })?;
    let py_fresh = load(
        runtime,
        examples,
        "router-region-py",
        Some(InstanceMode::Fresh),
    )?;
    let fresh = measure(200, || {
        py_fresh.select(req, cands).map(drop).map_err(Into::into)
    })?;
    println!("Python example (router-region-py, select):");
    row("  native port", &native, None);
    row("  wasm, warm instances", &warm, Some(&native));
    row("  wasm, fresh instance per call", &fresh, Some(&native));
    Ok(())
}

/// Time from a changed manifest landing (atomic rename) to the new version answering, with the
/// compiled code already cached.
fn hot_reload(runtime: &Arc<Runtime>, components: &Path, work: &Path) -> anyhow::Result<()> {
    let dir = work.join("components");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        components.join("default-pricing.wasm"),
        dir.join("default-pricing.wasm"),
    )?;
    let original = std::fs::read_to_string(components.join("default-pricing.toml"))?;
    std::fs::write(dir.join("default-pricing.toml"), &original)?;
    let registry = Registry::new(runtime.clone(), &dir)?;
    registry.scan();
    let _watch = registry.watch(Duration::from_millis(20))?;
    let (req, ctx) = (request(), context());
    let mut samples = Vec::new();
    for i in 0..10u64 {
        let price = 9_000_000 + i;
        let text = original.replace(
            "\"price.text-to-image\" = \"4768371/1000000\"",
            &format!("\"price.text-to-image\" = \"{price}/1000000\""),
        );
        let tmp = work.join("next.toml");
        std::fs::write(&tmp, text)?;
        let landed = Instant::now();
        std::fs::rename(&tmp, dir.join("default-pricing.toml"))?;
        loop {
            let current = registry.get("default-pricing")?.quote(&req, &ctx)?;
            if current.price_per_unit == price {
                samples.push(landed.elapsed());
                break;
            }
            if landed.elapsed() > Duration::from_secs(10) {
                bail!("the new version was not visible after 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    samples.sort_unstable();
    println!("hot reload (manifest change, compiled code cached, 20 ms debounce):");
    println!(
        "  file landed -> new version answering      p50 {:>7.1} ms  max {:>7.1} ms  (10 swaps)",
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
