//! A real `weir node` for the benchmarks that measure through one: its components, its process
//! and the line it prints once it listens.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// Copy the default router and pricing components from `components` into `dir`.
pub(crate) fn place_defaults(components: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in ["default-router", "default-pricing"] {
        for ext in ["wasm", "toml"] {
            let from = components.join(format!("{name}.{ext}"));
            std::fs::copy(&from, dir.join(format!("{name}.{ext}")))
                .with_context(|| format!("{} (run `make guests`)", from.display()))?;
        }
    }
    Ok(())
}

/// Start the running executable as `weir node` with `config` in `data` (HTTP on port 0,
/// warnings to `stderr`).
pub(crate) fn spawn(config: &Path, data: &Path, stderr: Stdio) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("node")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--http-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting weir node")
}

/// The value of `key` (`http`, `rtmp`) in the line `node` prints once it listens.
pub(crate) fn addresses(node: &mut Child, keys: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut line = String::new();
    BufReader::new(node.stdout.take().context("node stdout")?).read_line(&mut line)?;
    keys.iter()
        .map(|key| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("weir node did not start: {line:?}"))
        })
        .collect()
}

/// Wait (up to 30 s) until what the node's gateway reports at `/gateway/orchestrators`
/// satisfies `ready`; `what` names it in the error.
pub(crate) fn wait_until(
    client: &reqwest::blocking::Client,
    http: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let v: serde_json::Value = client
            .get(format!("{http}/gateway/orchestrators"))
            .send()?
            .json()?;
        if ready(&v) {
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            anyhow::bail!("{what} never happened within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
