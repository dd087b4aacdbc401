//! `weir component build`: a component from Rust, JavaScript or Python source, with the SDK
//! and toolchains found (or installed) wherever the project lies.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use weir_runtime::Manifest;

use super::sdk;

/// Where the SDK's files are: `sdk/<lang>/…` under `sdk_dir`, the WIT package in `wit_dir`.
pub(super) struct SdkDirs {
    pub(super) sdk_dir: PathBuf,
    pub(super) wit_dir: PathBuf,
}

impl SdkDirs {
    /// The given directories; else the project's own copy (`DIR/.weir`, written by
    /// `weir component new`); else `sdk/` and `wit/` of the current directory (the
    /// repository); else the copy the binary carries, written to the cache.
    pub(super) fn find(
        project: &Path,
        sdk_dir: Option<PathBuf>,
        wit_dir: Option<PathBuf>,
    ) -> anyhow::Result<SdkDirs> {
        let root = [project.join(".weir"), PathBuf::from(".")]
            .into_iter()
            .find(|r| r.join("sdk").is_dir() && r.join("wit").is_dir());
        let root = match (&sdk_dir, &wit_dir, root) {
            (Some(_), Some(_), _) => PathBuf::new(),
            (_, _, Some(root)) => root,
            _ => sdk::cached()?,
        };
        Ok(SdkDirs {
            sdk_dir: sdk_dir.unwrap_or_else(|| root.join("sdk")),
            wit_dir: wit_dir.unwrap_or_else(|| root.join("wit")),
        })
    }

    /// Where toolchain `tool` (`node`, `py`) at `version` lives: the repository's `.tools/`
    /// beside `sdk/` when there is one, else the cache, one directory per version.
    fn tool_dir(&self, tool: &str, version: &str) -> PathBuf {
        let beside = self
            .sdk_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join(".tools");
        if beside.is_dir() {
            beside.join(tool)
        } else {
            sdk::cache_dir().join(format!("tools/{tool}-{version}"))
        }
    }
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Build the component in `dir` into `out` (`NAME.wasm` and `NAME.toml`) and check that it
/// satisfies its manifest's world.
pub(super) fn build(dir: &Path, out: &Path, dirs: &SdkDirs) -> anyhow::Result<()> {
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
    let world = manifest.world.as_str();
    if dir.join("Cargo.toml").is_file() {
        build_rust(dir, &wasm_out)?;
    } else if let Some(js) = js_source(dir, &manifest.name)? {
        let node_modules = componentize_js(dirs)?;
        run_tool(
            Command::new("node")
                .env("WEIR_NODE_MODULES", node_modules)
                .arg(dirs.sdk_dir.join("js/build.mjs"))
                .arg("--wit")
                .arg(&dirs.wit_dir)
                .args(["--world", world, "--source"])
                .arg(&js)
                .arg("--out")
                .arg(&wasm_out),
        )?;
    } else if dir.join("app.py").is_file() {
        let tool = componentize_py(dirs)?;
        run_tool(
            Command::new("python3")
                .env("WEIR_COMPONENTIZE_PY", tool)
                .arg(dirs.sdk_dir.join("python/build.py"))
                .arg("--wit")
                .arg(&dirs.wit_dir)
                .args(["--world", world, "--app-dir"])
                .arg(dir)
                .args(["--module", "app", "--out"])
                .arg(&wasm_out),
        )?;
    } else {
        bail!("{} has no Cargo.toml, .js file or app.py", dir.display());
    }
    std::fs::copy(&manifest_path, out.join(format!("{}.toml", manifest.name)))?;
    super::check(&wasm_out, Some(manifest.world))
}

fn build_rust(dir: &Path, wasm_out: &Path) -> anyhow::Result<()> {
    let cargo_toml = dir.join("Cargo.toml");
    run_tool(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--manifest-path")
            .arg(&cargo_toml),
    )?;
    let metadata = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .arg("--manifest-path")
        .arg(&cargo_toml)
        .output()?;
    let meta: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("cargo metadata")?;
    let target_dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata: target_directory")?;
    let built = Path::new(target_dir)
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name(&cargo_toml)?));
    std::fs::copy(&built, wasm_out).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
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

/// The JavaScript source of component `name` in `dir`: `NAME.js`, else the only `.js` file.
fn js_source(dir: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let named = dir.join(format!("{name}.js"));
    if named.is_file() {
        return Ok(Some(named));
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "js"))
        .collect();
    match all.len() {
        0 | 1 => Ok(all.pop()),
        _ => bail!(
            "{} has several .js files and no {name}.js: name the component's source {name}.js",
            dir.display()
        ),
    }
}

/// componentize-js's `node_modules`: `$WEIR_NODE_MODULES`, else the repository's or the
/// cache's, installed there with npm (once per version) when missing.
fn componentize_js(dirs: &SdkDirs) -> anyhow::Result<PathBuf> {
    if let Some(configured) = std::env::var_os("WEIR_NODE_MODULES") {
        return Ok(PathBuf::from(configured));
    }
    let version = sdk::pinned("COMPONENTIZE_JS_VERSION")?;
    let prefix = dirs.tool_dir("node", version);
    let modules = prefix.join("node_modules");
    if !modules.join("@bytecodealliance/componentize-js").is_dir() {
        eprintln!(
            "installing componentize-js {version} into {} (once)",
            prefix.display()
        );
        std::fs::create_dir_all(&prefix)?;
        run_tool(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .arg("--prefix")
                .arg(&prefix)
                .arg(format!("@bytecodealliance/componentize-js@{version}")),
        )
        .context("installing componentize-js (needs node and npm)")?;
    }
    Ok(modules)
}

/// componentize-py: `$WEIR_COMPONENTIZE_PY`, else the repository's or the cache's, installed
/// there in a venv (once per version) when missing.
fn componentize_py(dirs: &SdkDirs) -> anyhow::Result<PathBuf> {
    if let Some(configured) = std::env::var_os("WEIR_COMPONENTIZE_PY") {
        return Ok(PathBuf::from(configured));
    }
    let version = sdk::pinned("COMPONENTIZE_PY_VERSION")?;
    let venv = dirs.tool_dir("py", version);
    let tool = venv.join("bin/componentize-py");
    if !tool.is_file() {
        eprintln!(
            "installing componentize-py {version} into {} (once)",
            venv.display()
        );
        run_tool(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating a Python venv (needs python3 with venv)")?;
        run_tool(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("componentize-py=={version}")),
        )
        .context("installing componentize-py")?;
    }
    Ok(tool)
}
