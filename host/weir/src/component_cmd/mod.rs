//! `weir component build|check|list`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use weir_runtime::{Manifest, NoLedger, Runtime, RuntimeConfig, RuntimeMetrics, WorldKind};

/// `weir component …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ComponentCmd {
    /// Build a component from source (Rust crate, JavaScript or Python) and check it.
    Build {
        /// Source directory holding `NAME.toml` and a `Cargo.toml`, a `.js` or an `app.py`.
        dir: PathBuf,
        /// Where `NAME.wasm` and `NAME.toml` are written.
        #[arg(long, default_value = "build/components")]
        out: PathBuf,
        /// The repository's `sdk/` directory (build scripts for JS and Python).
        #[arg(long, env = "WEIR_SDK_DIR", default_value = "sdk")]
        sdk_dir: PathBuf,
        /// The `wit/` directory.
        #[arg(long, env = "WEIR_WIT_DIR", default_value = "wit")]
        wit_dir: PathBuf,
    },
    /// Print a component's imports and exports and the worlds it satisfies.
    Check {
        /// The `.wasm` file.
        wasm: PathBuf,
        /// Fail unless it satisfies this world.
        #[arg(long)]
        world: Option<WorldKind>,
    },
    /// List the components of a directory and whether each one loads.
    List {
        /// Component registry directory.
        #[arg(long, default_value = "weir-data/components")]
        dir: PathBuf,
    },
}

fn offline_runtime() -> anyhow::Result<std::sync::Arc<Runtime>> {
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new())?;
    Ok(Runtime::new(
        RuntimeConfig::default(),
        std::sync::Arc::new(NoLedger),
        metrics,
    )?)
}

/// Run a `weir component` subcommand.
pub fn run(cmd: ComponentCmd) -> anyhow::Result<()> {
    match cmd {
        ComponentCmd::Check { wasm, world } => check(&wasm, world),
        ComponentCmd::List { dir } => list(&dir),
        ComponentCmd::Build {
            dir,
            out,
            sdk_dir,
            wit_dir,
        } => build(&dir, &out, &sdk_dir, &wit_dir),
    }
}

fn check(path: &Path, world: Option<WorldKind>) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let runtime = offline_runtime()?;
    let inspection = runtime
        .inspect(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}  sha256:{}", path.display(), inspection.hash);
    println!("imports:");
    for i in &inspection.imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &inspection.exports {
        println!("  {e}");
    }
    println!("worlds:");
    for w in &inspection.worlds {
        match &w.error {
            None => println!("  {:<9} ok", w.world.as_str()),
            Some(e) => println!("  {:<9} no: {e}", w.world.as_str()),
        }
    }
    let satisfied: Vec<WorldKind> = inspection
        .worlds
        .iter()
        .filter(|w| w.error.is_none())
        .map(|w| w.world)
        .collect();
    match world {
        Some(wanted) if !satisfied.contains(&wanted) => {
            bail!("{} does not satisfy the `{wanted}` world", path.display())
        }
        None if satisfied.is_empty() => bail!("{} satisfies none of Weir's worlds", path.display()),
        _ => Ok(()),
    }
}

fn list(dir: &Path) -> anyhow::Result<()> {
    let runtime = offline_runtime()?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    let mut failures = 0;
    for path in entries {
        let outcome = Manifest::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                runtime
                    .load(m.clone(), dir)
                    .map(|c| (m, c.hash.clone()))
                    .map_err(|e| e.to_string())
            });
        match outcome {
            Ok((m, hash)) => println!(
                "{:<24} {:<9} {:<10} {}  ok",
                m.name,
                m.world.as_str(),
                m.version,
                &hash[..12]
            ),
            Err(e) => {
                failures += 1;
                println!(
                    "{:<24} error: {e}",
                    path.file_stem().and_then(|s| s.to_str()).unwrap_or("?")
                );
            }
        }
    }
    if failures > 0 {
        bail!("{failures} component(s) failed to load");
    }
    Ok(())
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn build(dir: &Path, out: &Path, sdk_dir: &Path, wit_dir: &Path) -> anyhow::Result<()> {
    let manifest_path = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n != "Cargo.toml")
        })
        .with_context(|| format!("{} has no component manifest (NAME.toml)", dir.display()))?;
    let manifest = Manifest::load(&manifest_path)?;
    std::fs::create_dir_all(out)?;
    let wasm_out = manifest.wasm_path(out);
    if dir.join("Cargo.toml").is_file() {
        run_tool(
            Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(dir.join("Cargo.toml")),
        )?;
        let metadata = Command::new("cargo")
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .output()?;
        let meta: serde_json::Value =
            serde_json::from_slice(&metadata.stdout).context("cargo metadata")?;
        let target_dir = meta["target_directory"]
            .as_str()
            .context("cargo metadata: target_directory")?;
        let crate_name = crate_name(&dir.join("Cargo.toml"))?;
        let built = Path::new(target_dir)
            .join("wasm32-wasip2/release")
            .join(format!("{crate_name}.wasm"));
        std::fs::copy(&built, &wasm_out).with_context(|| format!("copying {}", built.display()))?;
    } else if let Some(js) = find_ext(dir, "js")? {
        run_tool(
            Command::new("node")
                .arg(sdk_dir.join("js/build.mjs"))
                .arg("--wit")
                .arg(wit_dir)
                .args(["--world", manifest.world.as_str(), "--source"])
                .arg(&js)
                .arg("--out")
                .arg(&wasm_out),
        )?;
    } else if dir.join("app.py").is_file() {
        run_tool(
            Command::new("python3")
                .arg(sdk_dir.join("python/build.py"))
                .arg("--wit")
                .arg(wit_dir)
                .args(["--world", manifest.world.as_str(), "--app-dir"])
                .arg(dir)
                .args(["--module", "app", "--out"])
                .arg(&wasm_out),
        )?;
    } else {
        bail!("{} has no Cargo.toml, .js file or app.py", dir.display());
    }
    std::fs::copy(&manifest_path, out.join(format!("{}.toml", manifest.name)))?;
    check(&wasm_out, Some(manifest.world))
}

fn crate_name(cargo_toml: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(cargo_toml)?;
    let value: toml::Value = toml::from_str(&text)?;
    let name = value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no package.name")?;
    Ok(name.replace('-', "_"))
}

fn find_ext(dir: &Path, ext: &str) -> anyhow::Result<Option<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == ext)))
}
