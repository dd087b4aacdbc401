//! Shared helpers: artifact paths, a runtime with a shared compiled-code cache, a running node.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use weir_runtime::{
    JobRequest, NoLedger, OutputSize, QuoteContext, Registry, Role, Runtime, RuntimeConfig,
    RuntimeMetrics,
};

/// The directory `make artifacts` fills.
pub fn build_dir() -> PathBuf {
    std::env::var_os("WEIR_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build"))
}

/// Path of a built artifact; panics with the command that builds it when missing.
pub fn artifact(rel: &str) -> PathBuf {
    let path = build_dir().join(rel);
    assert!(
        path.is_file(),
        "{} is missing: run `make artifacts` (or `make test`) first",
        path.display()
    );
    path
}

/// Compiled code shared by every test in this run (JS and Python take seconds to compile).
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/weir-test-cache")
}

/// A runtime with a fresh metrics registry and the shared code cache.
pub fn runtime_with(fuel: bool) -> (Arc<Runtime>, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = RuntimeMetrics::new(&registry).expect("metrics");
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: Some(cache_dir()),
            fuel,
            ..RuntimeConfig::default()
        },
        Arc::new(NoLedger),
        metrics,
    )
    .expect("runtime");
    (runtime, registry)
}

/// A registry over a new temporary components directory.
pub fn registry() -> (Arc<Registry>, tempfile::TempDir, prometheus::Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, metrics) = runtime_with(false);
    let registry = Registry::new(runtime, dir.path()).expect("registry");
    (registry, dir, metrics)
}

/// Put a built default component (`default-router`, `default-pricing`) into `dir`.
pub fn place_default(dir: &Path, name: &str) {
    place(
        dir,
        name,
        &artifact(&format!("components/{name}.wasm")),
        &built_manifest(&format!("components/{name}.toml")),
    );
}

/// Names listed under `key` (`components` or `failed`) of an admin listing.
pub fn names<'a>(list: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    list[key]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// Put `wasm` and a manifest into `dir` as component `name`.
pub fn place(dir: &Path, name: &str, wasm: &Path, manifest: &str) {
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy wasm");
    std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write manifest");
}

/// A manifest for `name` in `world` with extra TOML appended.
pub fn manifest(name: &str, world: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nworld = \"{world}\"\nversion = \"1.0.0\"\n{extra}\n")
}

/// The text of a built manifest.
pub fn built_manifest(rel: &str) -> String {
    std::fs::read_to_string(artifact(rel)).expect("manifest")
}

/// A text-to-image request.
pub fn request(id: &str) -> JobRequest {
    JobRequest {
        id: id.into(),
        capability: "text-to-image".into(),
        model: "sdxl".into(),
        params: vec![],
        output: OutputSize {
            width: 512,
            height: 512,
            frames: 1,
            count: 1,
        },
        units: 512 * 512,
        sender: "tester".into(),
    }
}

/// A quote context at `in_flight` of `capacity`.
pub fn context(in_flight: u32, capacity: u32) -> QuoteContext {
    QuoteContext {
        role: Role::Orchestrator,
        counterparty: "tester".into(),
        in_flight,
        capacity,
    }
}

/// Every model the node's gateway sees its orchestrators offer (`/gateway/orchestrators`);
/// empty while it sees none.
pub fn offered_models(node: &Weir) -> Vec<Value> {
    let seen: Option<Value> = client()
        .get(format!("{}/gateway/orchestrators", node.url))
        .send()
        .ok()
        .and_then(|r| r.json().ok());
    seen.as_ref()
        .and_then(|v| v["orchestrators"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o["info"]["models"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// Poll `f` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of a Prometheus sample `name{labels}` in a text exposition, if present.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A `key=value` field of the `weir ready ...` line.
pub fn ready_field(line: &str, key: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("weir ready ")?;
    rest.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// A `weir node` process on port 0, killed on drop.
pub struct Node {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token it was started with.
    pub token: String,
    /// Its data directory.
    pub data: tempfile::TempDir,
}

impl Node {
    /// Start a node whose components directory holds the default components.
    pub fn start() -> Node {
        let data = tempfile::tempdir().expect("tempdir");
        let components = data.path().join("components");
        std::fs::create_dir_all(&components).expect("mkdir");
        for name in ["default-router", "default-pricing"] {
            place_default(&components, name);
        }
        Node::start_in(data, &[])
    }

    /// Start a node on `data` with extra arguments.
    pub fn start_in(data: tempfile::TempDir, extra: &[&str]) -> Node {
        let token = ADMIN_TOKEN.to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("node")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--http-addr", "127.0.0.1:0", "--admin-token", &token])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("WEIR_RTMP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready line");
        let url = ready_field(&line, "http")
            .unwrap_or_else(|| panic!("unexpected first line from weir node: {line:?}"));
        Node {
            child,
            url,
            token,
            data,
        }
    }

    /// The components directory.
    pub fn components(&self) -> PathBuf {
        self.data.path().join("components")
    }

    /// A blocking client.
    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    /// The `/metrics` exposition text.
    pub fn metrics(&self) -> String {
        self.client()
            .get(format!("{}/metrics", self.url))
            .send()
            .expect("metrics")
            .text()
            .expect("text")
    }

    /// `GET /admin/components`.
    pub fn admin_list(&self) -> serde_json::Value {
        self.client()
            .get(format!("{}/admin/components", self.url))
            .bearer_auth(&self.token)
            .send()
            .expect("list")
            .json()
            .expect("json")
    }

    /// `POST /admin/components/{name}/call` with `body`; (status, JSON).
    pub fn call(&self, name: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client()
            .post(format!("{}/admin/components/{name}/call", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .expect("call");
        let status = resp.status().as_u16();
        (status, resp.json().expect("json body"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin token test processes are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The secret key of every test gateway's wallet: [`Weir`] writes it (hex) to `wallet.key`.
pub const TEST_WALLET_SECRET: [u8; 32] = [0x7e; 32];

/// The wallet test gateways sign payments with; test orchestrators trust it.
pub fn test_wallet() -> weir_payments::credit::Wallet {
    weir_payments::credit::Wallet::from_secret(TEST_WALLET_SECRET)
}

/// `config` with the test wallet in `[orchestrator] trusted_senders`, unless it sets the
/// senders itself (`trusted_senders` or `accept_any_sender`).
pub fn trusting_test_gateway(config: &str) -> String {
    if config.contains("trusted_senders") || config.contains("accept_any_sender") {
        return config.to_owned();
    }
    let line = format!("trusted_senders = [\"{}\"]\n", test_wallet().sender());
    match config.find("[orchestrator]\n") {
        Some(at) => {
            let end = at + "[orchestrator]\n".len();
            format!("{}{line}{}", &config[..end], &config[end..])
        }
        None => format!("[orchestrator]\n{line}{config}"),
    }
}

/// A `weir` process (gateway, orchestrator or node), killed on drop.
pub struct Weir {
    child: Child,
    /// Its HTTP base URL.
    pub url: String,
    /// The first line it printed (`weir ready …`).
    pub ready: String,
    /// Its data directory.
    pub data: tempfile::TempDir,
}

impl Weir {
    /// Start `weir ROLE` with `config` as its config file and extra `args`.
    pub fn start(role: &str, config: &str, args: &[&str]) -> Weir {
        Weir::start_with(role, config, args, |_| {})
    }

    /// Start with the default components plus whatever `prepare` puts into the components
    /// directory.
    pub fn start_with(
        role: &str,
        config: &str,
        args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Weir {
        let data = tempfile::tempdir().expect("tempdir");
        Weir::start_in(role, config, args, data, prepare)
    }

    /// Start in an existing data directory (a restart after [`Weir::crash`] keeps its state).
    pub fn start_in(
        role: &str,
        config: &str,
        args: &[&str],
        data: tempfile::TempDir,
        prepare: impl FnOnce(&Path),
    ) -> Weir {
        let components = data.path().join("components");
        std::fs::create_dir_all(&components).expect("mkdir");
        for name in ["default-router", "default-pricing"] {
            place_default(&components, name);
        }
        prepare(&components);
        // Every test gateway signs with the test wallet, and orchestrators trust it.
        let wallet = data.path().join("wallet.key");
        if !wallet.exists() {
            let hex: String = TEST_WALLET_SECRET
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            std::fs::write(&wallet, hex).expect("wallet");
        }
        let config = if role == "orchestrator" {
            trusting_test_gateway(config)
        } else {
            config.to_owned()
        };
        let config_path = data.path().join("weir.toml");
        std::fs::write(&config_path, config).expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg(role)
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data.path())
            .args(["--http-addr", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
            .args(args)
            .env("RUST_LOG", "info")
            .env("WEIR_RTMP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let url = ready_field(&line, "http")
            .unwrap_or_else(|| panic!("weir {role} did not start: {line:?}"));
        Weir {
            child,
            url,
            ready: line,
            data,
        }
    }

    /// Kill the process now (SIGKILL: no shutdown code runs) and hand back its data directory.
    pub fn crash(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.data, placeholder)
    }

    /// Kill the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its components directory.
    pub fn components(&self) -> PathBuf {
        self.data.path().join("components")
    }

    /// `/admin/ledger`.
    pub fn ledger(&self) -> Value {
        client()
            .get(format!("{}/admin/ledger", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .expect("ledger")
            .json()
            .expect("json")
    }

    /// `/info` (orchestrators).
    pub fn info(&self) -> Value {
        client()
            .get(format!("{}/info", self.url))
            .send()
            .expect("info")
            .json()
            .expect("json")
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.url))
            .send()
            .expect("metrics")
            .text()
            .expect("text")
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}
/// `ffprobe -v error -of json ARGS TARGET` (a file or URL) as JSON; panics with its stderr when
/// it fails.
pub fn ffprobe_json(target: &str, args: &[&str]) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(target)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// `ffmpeg` publishing a 640x360 test pattern with a 1 kHz tone as FLV to `url` for `seconds`,
/// in real time (`-re`) when `realtime`.
pub fn ffmpeg_publish(url: &str, seconds: u32, realtime: bool) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    if realtime {
        cmd.arg("-re");
    }
    cmd.args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "30"])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv"])
        .arg(url)
        .stdin(Stdio::null());
    cmd
}
