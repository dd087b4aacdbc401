//! `weir component install`: upload a built component to a running node and follow its
//! background compilation until it serves or fails.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use weir_runtime::Manifest;

/// Where to install and how to authenticate.
pub(super) struct Target {
    /// The node's base URL, e.g. `http://127.0.0.1:8935`.
    pub(super) node: String,
    /// The admin token, if given; else `weir-data/admin-token` is read.
    pub(super) token: Option<String>,
    /// Give up following the install after this long (it keeps compiling on the node).
    pub(super) timeout: Duration,
}

/// Upload the manifest at `manifest_path` and the wasm it names, then print the install's
/// progress until it ends.
pub(super) fn install(manifest_path: &Path, target: &Target) -> anyhow::Result<()> {
    let manifest_path = manifest_file(manifest_path)?;
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&text, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let wasm_path = manifest.wasm_path(dir);
    let wasm = std::fs::read(&wasm_path).with_context(|| {
        format!(
            "reading {} (build it first: weir component build)",
            wasm_path.display()
        )
    })?;
    let token = match &target.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string("weir-data/admin-token")
            .map(|t| t.trim().to_owned())
            .context("no --token given (or WEIR_ADMIN_TOKEN) and no weir-data/admin-token here")?,
    };
    let base = target.node.trim_end_matches('/');
    let name = &manifest.name;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    check_access(&client, base, &token)?;
    eprintln!(
        "uploading {name} ({:.1} MB) to {base}",
        wasm.len() as f64 / 1e6
    );
    let started = Instant::now();
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", text)
        .part(
            "wasm",
            reqwest::blocking::multipart::Part::bytes(wasm).file_name(format!("{name}.wasm")),
        );
    let resp = client
        .put(format!("{base}/admin/components/{name}"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .with_context(|| format!("uploading to {base}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .with_context(|| format!("reading the node's answer ({status})"))?;
    match status.as_u16() {
        200 | 201 => return report_loaded(name, &body, started),
        202 => {}
        _ => bail!("the node refused {name} ({status}): {}", error_text(&body)),
    }
    follow(&client, base, &token, name, started, target.timeout)
}

/// Ask the admin API for its components first, so a wrong token or address is told before
/// megabytes are sent (a node refuses an unauthorised upload without reading it).
fn check_access(client: &reqwest::blocking::Client, base: &str, token: &str) -> anyhow::Result<()> {
    let resp = client
        .get(format!("{base}/admin/components"))
        .bearer_auth(token)
        .send()
        .with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().unwrap_or_default();
    bail!(
        "{base} refused the admin API ({status}): {}",
        error_text(&body)
    )
}

/// The manifest named by `path`: the file itself, or `NAME.toml` in a directory holding one.
fn manifest_file(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_owned());
    }
    let tomls: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("Cargo.toml"))
        .collect();
    match tomls.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{} holds no component manifest; give the built NAME.toml (weir component build writes build/components/NAME.toml)",
            path.display()
        ),
        _ => bail!(
            "{} holds several manifests; name one of them",
            path.display()
        ),
    }
}

/// Poll the install until it ends, one line per phase (a live line on a terminal).
fn follow(
    client: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    name: &str,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let live = std::io::stderr().is_terminal();
    let mut last_state = String::new();
    let mut last_line = Instant::now();
    loop {
        let resp = client
            .get(format!("{base}/admin/components/{name}/install"))
            .bearer_auth(token)
            .send()
            .with_context(|| format!("asking {base} about the install"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().context("reading the install's state")?;
        if !status.is_success() {
            bail!(
                "the node lost track of the install ({status}): {}",
                error_text(&body)
            );
        }
        let state = body["state"].as_str().unwrap_or("unknown").to_owned();
        match state.as_str() {
            "loaded" => {
                if live {
                    eprintln!();
                }
                let component = &body["component"];
                return report_loaded(name, component, started);
            }
            "failed" => {
                if live {
                    eprintln!();
                }
                bail!("{name} did not load: {}", error_text(&body));
            }
            _ => {}
        }
        let line = progress_line(&body);
        if live {
            eprint!("\r{line:<60}");
            let _ = std::io::stderr().flush();
        } else if state != last_state || last_line.elapsed() >= Duration::from_secs(2) {
            // Into a log: each new phase, and every two seconds while one lasts.
            eprintln!("{line}");
            last_line = Instant::now();
        }
        last_state = state;
        if started.elapsed() > timeout {
            bail!(
                "{name} is still {last_state} after {} s; it goes on on the node (GET {base}/admin/components/{name}/install)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `compiling 12.3 MB: 4.2 s (~35 %)`.
fn progress_line(body: &serde_json::Value) -> String {
    let state = body["state"].as_str().unwrap_or("unknown");
    let mb = body["bytes"].as_u64().unwrap_or(0) as f64 / 1e6;
    let secs = body["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    match body["progress"].as_f64() {
        Some(p) => format!("{state} {mb:.1} MB: {secs:.1} s (~{:.0} %)", p * 100.0),
        None => format!("{state} {mb:.1} MB: {secs:.1} s"),
    }
}

fn report_loaded(
    name: &str,
    component: &serde_json::Value,
    started: Instant,
) -> anyhow::Result<()> {
    let hash = component["hash"].as_str().unwrap_or("");
    println!(
        "installed {name}: world {}, version {}, sha256 {}…, in {:.1} s",
        component["world"].as_str().unwrap_or("?"),
        component["version"].as_str().unwrap_or("?"),
        hash.get(..12).unwrap_or(hash),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The message of an `{"error": {…}}` answer (or of an install's `error`), else the body.
fn error_text(body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}
