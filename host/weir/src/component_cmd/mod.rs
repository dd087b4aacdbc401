//! `weir component new|build|install|check|list`.

mod build;
mod install;
mod new;
mod sdk;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use weir_runtime::{Manifest, NoLedger, Runtime, RuntimeConfig, RuntimeMetrics, WorldKind};

/// `weir component …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ComponentCmd {
    /// Start a component project that builds with `weir component build` and loads as is.
    New {
        /// The component's name (a-z, 0-9, '-', '_'; starting with a letter).
        name: String,
        /// The world it implements.
        #[arg(long)]
        world: WorldKind,
        /// The language it is written in.
        #[arg(long)]
        lang: new::Lang,
        /// Where the project's directory (NAME) is created.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a component from source (Rust crate, JavaScript or Python) and check it.
    Build {
        /// Source directory holding `NAME.toml` and a `Cargo.toml`, a `.js` or an `app.py`.
        dir: PathBuf,
        /// Where `NAME.wasm` and `NAME.toml` are written.
        #[arg(long, default_value = "build/components")]
        out: PathBuf,
        /// The SDK's `sdk/` directory (default: the project's `.weir/sdk`, else `./sdk`, else
        /// the copy this binary carries).
        #[arg(long, env = "WEIR_SDK_DIR")]
        sdk_dir: Option<PathBuf>,
        /// The `wit/` directory (found like `--sdk-dir`).
        #[arg(long, env = "WEIR_WIT_DIR")]
        wit_dir: Option<PathBuf>,
    },
    /// Install a built component into a running node and follow its compilation.
    Install {
        /// The built manifest (`build/components/NAME.toml`; its wasm lies beside it), or a
        /// directory holding one.
        manifest: PathBuf,
        /// The node's HTTP address.
        #[arg(long, env = "WEIR_NODE_URL", default_value = "http://127.0.0.1:8935")]
        node: String,
        /// The node's admin token (default: `weir-data/admin-token` of the current directory).
        #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Stop following after this many seconds (the node goes on compiling).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
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
        ComponentCmd::Install {
            manifest,
            node,
            token,
            timeout_secs,
        } => install::install(
            &manifest,
            &install::Target {
                node,
                token,
                timeout: std::time::Duration::from_secs(timeout_secs),
            },
        ),
        ComponentCmd::List { dir } => list(&dir),
        ComponentCmd::New {
            name,
            world,
            lang,
            dir,
        } => new::scaffold(&name, world, lang, &dir),
        ComponentCmd::Build {
            dir,
            out,
            sdk_dir,
            wit_dir,
        } => build::build(&dir, &out, &build::SdkDirs::find(&dir, sdk_dir, wit_dir)?),
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
