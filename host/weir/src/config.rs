//! `weir.toml`, overridden by flags and environment variables. Unknown keys are an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[node]`: addresses, directories, admin access, logs.
    pub node: NodeSection,
    /// `[runtime]`: the component runtime.
    pub runtime: RuntimeSection,
    /// `[policies]`: which components make decisions.
    pub policies: PoliciesSection,
    /// `[gateway]`: the gateway role.
    pub gateway: GatewaySection,
    /// `[orchestrator]`: the orchestrator role.
    pub orchestrator: OrchestratorSection,
}

/// `[gateway]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Orchestrator addresses (`--orchAddr`).
    pub orchestrators: Vec<String>,
    /// URL answering `[{"address": ...}]` with more orchestrators (`--orchWebhookUrl`).
    pub orch_webhook_url: Option<String>,
    /// Seconds between `/info` refreshes (default 10).
    pub refresh_secs: Option<u64>,
    /// Seconds a webhook answer is used (default 60).
    pub webhook_secs: Option<u64>,
    /// Bearer tokens clients must present.
    pub auth_tokens: Vec<String>,
    /// Accept requests without a token (local development).
    pub open: Option<bool>,
    /// Most orchestrators tried per request (default 5).
    pub max_attempts: Option<u32>,
    /// Seconds during which new attempts may start (default 30).
    pub retry_budget_secs: Option<u64>,
    /// Seconds a request waits, backing off with jitter, for orchestrators that answer
    /// "insufficient capacity" (default 10; within the retry budget).
    pub busy_wait_secs: Option<u64>,
    /// Deadline of one attempt in seconds (default 300).
    pub attempt_timeout_secs: Option<u64>,
    /// Seconds a failing orchestrator is left out (default 30).
    pub suspend_secs: Option<u64>,
    /// Base URL of result links (default: the HTTP listen address).
    pub public_url: Option<String>,
    /// Largest uploaded file in MiB (default 32).
    pub max_upload_mib: Option<usize>,
    /// Most paid per capability or `capability/model`: `"PPU"` or `"PPU/UNITS"`.
    pub max_price: std::collections::BTreeMap<String, String>,
    /// RTMP listen address (`--rtmpAddr`; default `127.0.0.1:1935`).
    pub rtmp_addr: Option<SocketAddr>,
    /// The ladder: preset names (`P240p30fps16x9,P360p30fps16x9`, the default) or the JSON
    /// array form (`--transcodingOptions`).
    pub transcoding_options: Option<String>,
    /// Target segment length in seconds (default 2).
    pub segment_secs: Option<f64>,
    /// Segments listed per media playlist (default 6).
    pub hls_window: Option<usize>,
    /// Live streams at once (`--maxSessions`; default 10).
    pub max_sessions: Option<usize>,
    /// URL asked to accept each new stream (`--authWebhookUrl`).
    pub auth_webhook_url: Option<String>,
    /// Largest HTTP-pushed segment in MiB (default 64).
    pub max_push_mib: Option<usize>,
    /// Target length of a low-latency HLS part in milliseconds (default 500).
    pub ll_part_ms: Option<u64>,
    /// Record every stream (source and renditions) under `<data_dir>/recordings`, served at
    /// `/recordings/{stream}/index.m3u8` (default false).
    pub record: Option<bool>,
    /// Async generation jobs (`[gateway.jobs]`): database, models, limits.
    pub jobs: weir_gateway::JobsConfig,
    /// The gateway's object store (`[gateway.storage]`) for AI results, job inputs and job
    /// outputs: `type = "local"` with `dir` (default `<data_dir>/objects`) or `type = "s3"`.
    /// `[gateway.jobs.storage]`, its older spelling, is used when this is absent.
    pub storage: Option<weir_storage::StorageConfig>,
    /// The gateway's ledger (what it holds with and spent at each orchestrator):
    /// `sqlite://PATH` (default `<data_dir>/gateway-ledger.db`) or `postgres://…`, shared by
    /// every gateway pointed at it (tables in schema `weir_ledger_gateway`).
    pub ledger_url: Option<String>,
    /// Seconds an RTMP client has to complete its handshake (default 10).
    pub rtmp_handshake_timeout_secs: Option<u64>,
    /// Seconds an RTMP connection may send nothing (default 30).
    pub rtmp_idle_timeout_secs: Option<u64>,
    /// RTMP connections at once; more are closed at once (default 256).
    pub rtmp_max_connections: Option<usize>,
    /// Live AI streams (`[gateway.streams]`): pay-ahead, top-up interval, limits.
    pub streams: weir_gateway::StreamsConfig,
    /// Origins whose pages may call the public routes from a browser (CORS; default `["*"]`,
    /// `[]` turns CORS off). Never applies to the admin API.
    pub cors_origins: Option<Vec<String>>,
}

/// `[orchestrator]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorSection {
    /// Listen address of the orchestrator API in a combined node (default `127.0.0.1:0`);
    /// `weir orchestrator` serves it on `http_addr`.
    pub service_addr: Option<SocketAddr>,
    /// The orchestrator's ledger (what each sender holds here): `sqlite://PATH` (default
    /// `<data_dir>/orchestrator-ledger.db`) or `postgres://…`, shared by every orchestrator
    /// pointed at it (tables in schema `weir_ledger_orchestrator`).
    pub ledger_url: Option<String>,
    /// URL gateways use (default: `http://` + the listen address).
    pub service_url: Option<String>,
    /// Region label advertised.
    pub region: Option<String>,
    /// GPU class advertised (default `cpu`).
    pub gpu_class: Option<String>,
    /// Seconds of clock skew accepted on payments (default 300).
    pub max_payment_skew_secs: Option<u64>,
    /// Public keys (hex, as gateways print them, or base64) of the gateways whose credits are
    /// accepted. A combined node adds its own gateway. Empty: every payment is refused.
    pub trusted_senders: Vec<String>,
    /// Accept credits from ANY sender (local development only: strangers get free work).
    pub accept_any_sender: Option<bool>,
    /// Seconds between runner health checks (default 10).
    pub health_secs: Option<u64>,
    /// Largest uploaded file in MiB (default 32).
    pub max_upload_mib: Option<usize>,
    /// What is served.
    pub models: Vec<weir_orchestrator::ModelEntry>,
    /// Live transcoding (`[orchestrator.transcode]`; on by default).
    pub transcode: Option<weir_orchestrator::TranscodeConfig>,
    /// Bring-your-own-compute: the registration secret, `[[orchestrator.byoc.pipelines]]`,
    /// stream debits (`[orchestrator.byoc]`).
    pub byoc: Option<weir_orchestrator::ByocConfig>,
    /// The object store of the node's components (`[orchestrator.storage]`, what their
    /// `weir:host/storage` calls reach): `type = "local"` with `dir` or `type = "s3"`.
    /// Default: the gateway's on a node with one, else local disk under `<data_dir>/objects`,
    /// its links served at the orchestrator's `/objects/{key}`.
    pub storage: Option<weir_storage::StorageConfig>,
}

/// `[node]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// HTTP listen address (port 0 picks a free port).
    pub http_addr: Option<SocketAddr>,
    /// Where the node keeps its state.
    pub data_dir: Option<PathBuf>,
    /// The component registry directory (default `<data_dir>/components`).
    pub components_dir: Option<PathBuf>,
    /// Bearer token for `/admin` (default: generated into `<data_dir>/admin-token`).
    pub admin_token: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Ledger commits survive a `process` crash (default) or also a `power` loss (one fsync
    /// per commit).
    pub ledger_durability: Option<weir_payments::Durability>,
    /// Seconds an HTTP client has to send a request's headers (default 10), on every HTTP
    /// listener.
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a kept-alive HTTP connection may wait for its next request (default 60); a
    /// streamed answer is never cut by it.
    pub idle_timeout_secs: Option<u64>,
    /// HTTP connections at once per listener (default 4096); more are answered `503`.
    pub max_connections: Option<usize>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Count instructions so manifests' `limits.fuel` applies.
    pub fuel: Option<bool>,
    /// Deadline resolution in milliseconds.
    pub epoch_tick_ms: Option<u64>,
    /// Cache compiled code under `<data_dir>/cache`.
    pub cache: Option<bool>,
    /// Debounce of the components-directory watcher, in milliseconds.
    pub reload_debounce_ms: Option<u64>,
    /// Milliseconds between refreshes of the ledger snapshot components read through
    /// `weir:host/payments` (default 1000).
    pub payments_refresh_ms: Option<u64>,
}

/// `[policies]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesSection {
    /// Router component name.
    pub router: Option<String>,
    /// Pricing component name.
    pub pricing: Option<String>,
}

/// Values from flags or the environment; each one wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Configuration file (TOML).
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state.
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address, HOST:PORT (port 0 picks a free port).
    #[arg(long, alias = "httpAddr", env = "WEIR_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Component registry directory.
    #[arg(long, env = "WEIR_COMPONENTS_DIR")]
    pub components_dir: Option<PathBuf>,
    /// Bearer token for the admin API.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "WEIR_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Orchestrator addresses, comma separated (gateway).
    #[arg(
        long,
        alias = "orchAddr",
        env = "WEIR_ORCH_ADDR",
        value_delimiter = ','
    )]
    pub orch_addr: Vec<String>,
    /// Webhook listing orchestrators (gateway).
    #[arg(long, alias = "orchWebhookUrl", env = "WEIR_ORCH_WEBHOOK_URL")]
    pub orch_webhook_url: Option<String>,
    /// Listen address of the orchestrator API in a combined node.
    #[arg(long, alias = "serviceAddr", env = "WEIR_SERVICE_ADDR")]
    pub service_addr: Option<SocketAddr>,
    /// RTMP listen address (gateway).
    #[arg(long, alias = "rtmpAddr", env = "WEIR_RTMP_ADDR")]
    pub rtmp_addr: Option<SocketAddr>,
    /// The transcoding ladder: preset names or a JSON array (gateway).
    #[arg(long, alias = "transcodingOptions", env = "WEIR_TRANSCODING_OPTIONS")]
    pub transcoding_options: Option<String>,
    /// Live streams at once (gateway).
    #[arg(long, alias = "maxSessions", env = "WEIR_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// URL asked to accept each new stream (gateway).
    #[arg(long, alias = "authWebhookUrl", env = "WEIR_AUTH_WEBHOOK_URL")]
    pub auth_webhook_url: Option<String>,
}

/// The effective settings of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// State directory.
    pub data_dir: PathBuf,
    /// Component registry directory.
    pub components_dir: PathBuf,
    /// Admin token, when configured (else one is generated).
    pub admin_token: Option<String>,
    /// Emit JSON logs.
    pub json_logs: bool,
    /// Fuel metering on.
    pub fuel: bool,
    /// Epoch tick in milliseconds.
    pub epoch_tick_ms: u64,
    /// Compiled-code cache on.
    pub cache: bool,
    /// Watcher debounce in milliseconds.
    pub reload_debounce_ms: u64,
    /// Milliseconds between refreshes of components' ledger snapshot.
    pub payments_refresh_ms: u64,
    /// Router component.
    pub router: String,
    /// Pricing component.
    pub pricing: String,
    /// How durable ledger commits are.
    pub ledger_durability: weir_payments::Durability,
    /// Timeouts and connection cap of every HTTP listener.
    pub listeners: crate::listen::ListenerLimits,
    /// The gateway role's settings (flags merged in).
    pub gateway: GatewaySection,
    /// The orchestrator role's settings (flags merged in).
    pub orchestrator: OrchestratorSection,
}

/// Default HTTP address of a node.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8935";

/// A configuration problem, with the key or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid (syntax, unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

impl FileConfig {
    /// Parse configuration text; `path` is named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = FileConfig::parse(&text, path)?;
        file.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(file)
    }

    /// Make the file's relative paths relative to `base`, the file's folder, so a config
    /// file means the same wherever the node is started from.
    pub fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut self.node.data_dir {
            join(dir);
        }
        if let Some(dir) = &mut self.node.components_dir {
            join(dir);
        }
        for model in &mut self.orchestrator.models {
            if let weir_orchestrator::RunnerSpec::Onnx {
                model_path,
                onnxruntime,
                ..
            } = &mut model.runner
            {
                join(model_path);
                if let Some(lib) = onnxruntime {
                    join(lib);
                }
            }
        }
        for storage in [
            &mut self.gateway.storage,
            &mut self.gateway.jobs.storage,
            &mut self.orchestrator.storage,
        ] {
            if let Some(weir_storage::StorageConfig::Local { dir }) = storage {
                join(dir);
            }
        }
        for db in [
            &mut self.gateway.jobs.database,
            &mut self.gateway.ledger_url,
            &mut self.orchestrator.ledger_url,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(file) = db.strip_prefix("sqlite://") {
                let path = Path::new(file);
                if path.is_relative() && !file.starts_with(':') && !file.is_empty() {
                    *db = format!("sqlite://{}", base.join(path).display());
                }
            }
        }
    }
}

impl NodeConfig {
    /// Merge defaults, the file named by `--config` (if any) and the overrides.
    pub fn resolve(overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let file = match &overrides.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        NodeConfig::merge(file, overrides)
    }

    /// Merge a parsed file with overrides.
    pub fn merge(file: FileConfig, o: &Overrides) -> Result<NodeConfig, ConfigError> {
        let listeners = listener_limits(&file.node)?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.node.data_dir)
            .unwrap_or_else(|| PathBuf::from("weir-data"));
        let components_dir = o
            .components_dir
            .clone()
            .or(file.node.components_dir)
            .unwrap_or_else(|| data_dir.join("components"));
        let http_addr = match o.http_addr.or(file.node.http_addr) {
            Some(a) => a,
            None => DEFAULT_HTTP_ADDR
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("default http address: {e}")))?,
        };
        let json_logs = json_logs(o.log_format.clone().or(file.node.log_format))?;
        let admin_token = admin_token(o.admin_token.clone().or(file.node.admin_token))?;
        let (epoch_tick_ms, reload_debounce_ms, payments_refresh_ms) =
            runtime_timings(&file.runtime)?;
        let gateway = merge_gateway(file.gateway, o)?;
        let mut orchestrator = file.orchestrator;
        if o.service_addr.is_some() {
            orchestrator.service_addr = o.service_addr;
        }
        Ok(NodeConfig {
            ledger_durability: file.node.ledger_durability.unwrap_or_default(),
            listeners,
            gateway,
            orchestrator,
            http_addr,
            data_dir,
            components_dir,
            admin_token,
            json_logs,
            fuel: file.runtime.fuel.unwrap_or(false),
            epoch_tick_ms,
            cache: file.runtime.cache.unwrap_or(true),
            reload_debounce_ms,
            payments_refresh_ms,
            router: file
                .policies
                .router
                .unwrap_or_else(|| "default-router".into()),
            pricing: file
                .policies
                .pricing
                .unwrap_or_else(|| "default-pricing".into()),
        })
    }
}

/// Whether logs are JSON, from the merged `log_format` (`text`, the default, or `json`).
fn json_logs(log_format: Option<String>) -> Result<bool, ConfigError> {
    let log_format = log_format.unwrap_or_else(|| "text".into());
    match log_format.as_str() {
        "text" => Ok(false),
        "json" => Ok(true),
        other => Err(ConfigError::Invalid(format!(
            "log_format `{other}` must be `text` or `json`"
        ))),
    }
}

/// The merged admin token, checked to be long enough when given.
fn admin_token(admin_token: Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(t) = &admin_token {
        if t.len() < 16 {
            return Err(ConfigError::Invalid(
                "admin_token must be at least 16 characters".into(),
            ));
        }
    }
    Ok(admin_token)
}

/// `[runtime]`'s epoch tick, reload debounce and payments refresh (milliseconds), defaulted
/// and checked.
fn runtime_timings(runtime: &RuntimeSection) -> Result<(u64, u64, u64), ConfigError> {
    let epoch_tick_ms = runtime.epoch_tick_ms.unwrap_or(2);
    if !(1..=100).contains(&epoch_tick_ms) {
        return Err(ConfigError::Invalid(format!(
            "runtime.epoch_tick_ms = {epoch_tick_ms} must be within 1..=100"
        )));
    }
    let reload_debounce_ms = runtime.reload_debounce_ms.unwrap_or(20);
    if reload_debounce_ms > 10_000 {
        return Err(ConfigError::Invalid(
            "runtime.reload_debounce_ms must be at most 10000".into(),
        ));
    }
    let payments_refresh_ms = runtime.payments_refresh_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&payments_refresh_ms) {
        return Err(ConfigError::Invalid(format!(
            "runtime.payments_refresh_ms = {payments_refresh_ms} must be within 100..=60000"
        )));
    }
    Ok((epoch_tick_ms, reload_debounce_ms, payments_refresh_ms))
}

/// `[gateway]` with the command-line overrides applied, checked.
fn merge_gateway(
    mut gateway: GatewaySection,
    o: &Overrides,
) -> Result<GatewaySection, ConfigError> {
    if !o.orch_addr.is_empty() {
        gateway.orchestrators = o.orch_addr.clone();
    }
    if o.orch_webhook_url.is_some() {
        gateway.orch_webhook_url = o.orch_webhook_url.clone();
    }
    if o.rtmp_addr.is_some() {
        gateway.rtmp_addr = o.rtmp_addr;
    }
    if o.transcoding_options.is_some() {
        gateway.transcoding_options = o.transcoding_options.clone();
    }
    if o.max_sessions.is_some() {
        gateway.max_sessions = o.max_sessions;
    }
    if o.auth_webhook_url.is_some() {
        gateway.auth_webhook_url = o.auth_webhook_url.clone();
    }
    check_gateway(&gateway)?;
    Ok(gateway)
}

/// Check the merged `[gateway]`: its ladder, media timings, prices and attempts.
fn check_gateway(gateway: &GatewaySection) -> Result<(), ConfigError> {
    if let Some(ladder) = &gateway.transcoding_options {
        weir_media::profile::parse_profiles(ladder)
            .map_err(|e| ConfigError::Invalid(format!("gateway.transcoding_options: {e}")))?;
    }
    if gateway
        .segment_secs
        .is_some_and(|s| !(0.5..=30.0).contains(&s))
    {
        return Err(ConfigError::Invalid(
            "gateway.segment_secs must be between 0.5 and 30".into(),
        ));
    }
    if gateway
        .ll_part_ms
        .is_some_and(|p| !(100..=2000).contains(&p))
    {
        return Err(ConfigError::Invalid(
            "gateway.ll_part_ms must be between 100 and 2000".into(),
        ));
    }
    if gateway.hls_window.is_some_and(|w| !(2..=100).contains(&w)) {
        return Err(ConfigError::Invalid(
            "gateway.hls_window must be between 2 and 100".into(),
        ));
    }
    for (key, raw) in &gateway.max_price {
        weir_gateway::parse_price(raw)
            .map_err(|e| ConfigError::Invalid(format!("gateway.max_price.{key}: {e}")))?;
    }
    if gateway.max_attempts == Some(0) {
        return Err(ConfigError::Invalid(
            "gateway.max_attempts must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The HTTP listener limits of `[node]`, checked.
fn listener_limits(node: &NodeSection) -> Result<crate::listen::ListenerLimits, ConfigError> {
    let default = crate::listen::ListenerLimits::default();
    let secs = |value: Option<u64>, key: &str, default: std::time::Duration| match value {
        Some(0) => Err(ConfigError::Invalid(format!(
            "node.{key} must be at least 1"
        ))),
        Some(s) => Ok(std::time::Duration::from_secs(s)),
        None => Ok(default),
    };
    let max_connections = node.max_connections.unwrap_or(default.max_connections);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::Invalid(
            "node.max_connections must be between 1 and 1000000".into(),
        ));
    }
    Ok(crate::listen::ListenerLimits {
        header_read_timeout: secs(
            node.header_read_timeout_secs,
            "header_read_timeout_secs",
            default.header_read_timeout,
        )?,
        idle_timeout: secs(
            node.idle_timeout_secs,
            "idle_timeout_secs",
            default.idle_timeout,
        )?,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let file = FileConfig::parse(
            "[node]\nhttp_addr = \"127.0.0.1:9000\"\ndata_dir = \"/var/weir\"\n[policies]\nrouter = \"mine\"\n",
            Path::new("weir.toml"),
        )
        .expect("valid");
        let o = Overrides {
            http_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..Overrides::default()
        };
        let c = NodeConfig::merge(file, &o).expect("valid");
        assert_eq!(c.http_addr.port(), 0);
        assert_eq!(c.components_dir, PathBuf::from("/var/weir/components"));
        assert_eq!(c.router, "mine");
        assert_eq!(c.pricing, "default-pricing");
    }

    #[test]
    fn the_shipped_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/configs") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let file = FileConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                NodeConfig::merge(file, &Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "[node]\ndata_dir = \"state\"\ncomponents_dir = \"/abs/comps\"\nheader_read_timeout_secs = 3\n\
             [gateway]\nledger_url = \"sqlite://gw.db\"\n\
             [gateway.jobs]\ndatabase = \"sqlite://jobs.db\"\n\
             [orchestrator]\nledger_url = \"postgres://db.example/weir\"\n",
        )
        .expect("write");
        let c = NodeConfig::merge(
            FileConfig::load(&path).expect("load"),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(c.data_dir, dir.path().join("state"));
        assert_eq!(c.components_dir, PathBuf::from("/abs/comps"));
        let db = format!("sqlite://{}", dir.path().join("jobs.db").display());
        assert_eq!(c.gateway.jobs.database.as_deref(), Some(db.as_str()));
        let gw = format!("sqlite://{}", dir.path().join("gw.db").display());
        assert_eq!(c.gateway.ledger_url.as_deref(), Some(gw.as_str()));
        assert_eq!(
            c.orchestrator.ledger_url.as_deref(),
            Some("postgres://db.example/weir")
        );
        assert_eq!(c.listeners.header_read_timeout.as_secs(), 3);
        // Flags stay relative to the working directory.
        let o = Overrides {
            data_dir: Some(PathBuf::from("here")),
            ..Overrides::default()
        };
        let c = NodeConfig::merge(FileConfig::load(&path).expect("load"), &o).expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("here"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = FileConfig::parse("[node]\nhttp_adr = \"x\"\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("http_adr"), "{err}");
        let err = FileConfig::parse("[nodes]\n", Path::new("w.toml")).unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
        let file = FileConfig::parse("[node]\nadmin_token = \"short\"\n", Path::new("w.toml"))
            .expect("parses");
        assert!(NodeConfig::merge(file, &Overrides::default()).is_err());
        let file = FileConfig::parse("[runtime]\nepoch_tick_ms = 0\n", Path::new("w.toml"))
            .expect("parses");
        assert!(NodeConfig::merge(file, &Overrides::default()).is_err());
        let file = FileConfig::parse("[node]\nmax_connections = 0\n", Path::new("w.toml"))
            .expect("parses");
        assert!(NodeConfig::merge(file, &Overrides::default()).is_err());
    }
}
