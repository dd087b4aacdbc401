//! `weir node`: load the components, watch their directory, serve HTTP.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weir_runtime::{PaymentsSource, Registry, Runtime, RuntimeConfig, RuntimeMetrics};

use crate::config::NodeConfig;
use crate::server::{app, AppState};

/// Build the runtime and registry a node (or a tool) uses.
pub fn build_registry(
    config: &NodeConfig,
    metrics: &prometheus::Registry,
    payments: Arc<dyn PaymentsSource>,
) -> anyhow::Result<Arc<Registry>> {
    let runtime_metrics = RuntimeMetrics::new(metrics).context("registering runtime metrics")?;
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: config.cache.then(|| config.data_dir.join("cache")),
            fuel: config.fuel,
            epoch_tick: Duration::from_millis(config.epoch_tick_ms),
            ..RuntimeConfig::default()
        },
        payments,
        runtime_metrics,
    )?;
    Ok(Registry::new(runtime, &config.components_dir)?)
}

/// The admin token: configured, or read from / generated into `<data_dir>/admin-token`.
fn admin_token(config: &NodeConfig) -> anyhow::Result<String> {
    match &config.admin_token {
        Some(t) => Ok(t.clone()),
        None => token_file(&config.data_dir.join("admin-token"), "an admin token"),
    }
}

/// A secret read from `path`, or generated into it (mode 0600) when absent or too short.
pub(crate) fn token_file(path: &Path, what: &str) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let t = existing.trim().to_owned();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_private(path, &token).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated {what}");
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Which roles a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway and orchestrator in one process (talking HTTP on loopback).
    Node,
    /// Gateway only.
    Gateway,
    /// Orchestrator only.
    Orchestrator,
}

impl Role {
    fn gateway(self) -> bool {
        matches!(self, Role::Node | Role::Gateway)
    }

    fn orchestrator(self) -> bool {
        matches!(self, Role::Node | Role::Orchestrator)
    }
}

fn secs(value: Option<u64>, default: u64) -> Duration {
    Duration::from_secs(value.unwrap_or(default))
}

fn mib(value: Option<usize>) -> usize {
    value.unwrap_or(32).clamp(1, 1024) << 20
}

/// The gateway settings of `config`; `public_url` is the default result base URL and
/// `local_orchestrator` the combined node's own orchestrator.
pub fn gateway_config(
    config: &NodeConfig,
    public_url: &str,
    local_orchestrator: Option<String>,
) -> anyhow::Result<weir_gateway::GatewayConfig> {
    let g = &config.gateway;
    let mut orchestrators = g.orchestrators.clone();
    orchestrators.extend(local_orchestrator);
    let mut max_prices = std::collections::BTreeMap::new();
    for (key, raw) in &g.max_price {
        let price = weir_gateway::parse_price(raw)
            .map_err(|e| anyhow::anyhow!("gateway.max_price.{key}: {e}"))?;
        max_prices.insert(key.clone(), price);
    }
    let open = g.open.unwrap_or(false);
    let mut auth_tokens = g.auth_tokens.clone();
    if !open && auth_tokens.is_empty() {
        // No tokens configured and not open: one is generated for the operator to hand out.
        auth_tokens.push(token_file(
            &config.data_dir.join("api-token"),
            "a client API token",
        )?);
    }
    let upload = mib(g.max_upload_mib);
    Ok(weir_gateway::GatewayConfig {
        orchestrators,
        orch_webhook_url: g.orch_webhook_url.clone(),
        refresh_interval: secs(g.refresh_secs, 10).max(Duration::from_millis(100)),
        webhook_interval: secs(g.webhook_secs, 60),
        router: config.router.clone(),
        max_prices,
        auth_tokens,
        open,
        max_attempts: g.max_attempts.unwrap_or(5),
        retry_budget: secs(g.retry_budget_secs, 30),
        busy_wait: secs(g.busy_wait_secs, 10),
        attempt_timeout: secs(g.attempt_timeout_secs, 300),
        suspend_for: secs(g.suspend_secs, 30),
        public_url: g
            .public_url
            .clone()
            .unwrap_or_else(|| public_url.to_owned()),
        storage: g.storage.clone().or_else(|| g.jobs.storage.clone()),
        max_file_bytes: upload,
        max_body_bytes: upload + (1 << 20),
        live: weir_gateway::LiveConfig {
            profiles: match &g.transcoding_options {
                Some(ladder) => weir_media::profile::parse_profiles(ladder)
                    .map_err(|e| anyhow::anyhow!("gateway.transcoding_options: {e}"))?,
                None => weir_media::profile::default_ladder(),
            },
            segment: Duration::from_secs_f64(g.segment_secs.unwrap_or(2.0)),
            window: g.hls_window.unwrap_or(6),
            max_sessions: g.max_sessions.unwrap_or(10),
            auth_webhook_url: g.auth_webhook_url.clone(),
            max_push_bytes: mib(Some(g.max_push_mib.unwrap_or(64))),
            part: Duration::from_millis(g.ll_part_ms.unwrap_or(500)),
            record_dir: g
                .record
                .unwrap_or(false)
                .then(|| config.data_dir.join("recordings")),
            ..weir_gateway::LiveConfig::default()
        },
        jobs: g.jobs.clone(),
        streams: g.streams.clone(),
        data_dir: config.data_dir.clone(),
        cors_origins: g
            .cors_origins
            .clone()
            .unwrap_or_else(|| vec!["*".to_owned()]),
    })
}

/// The orchestrator settings of `config`, advertised at `service_url` unless configured.
pub fn orchestrator_config(
    config: &NodeConfig,
    service_url: &str,
) -> weir_orchestrator::OrchestratorConfig {
    let o = &config.orchestrator;
    let upload = mib(o.max_upload_mib);
    weir_orchestrator::OrchestratorConfig {
        service_url: o
            .service_url
            .clone()
            .unwrap_or_else(|| service_url.to_owned()),
        pricing: config.pricing.clone(),
        region: o.region.clone().unwrap_or_default(),
        gpu_class: o.gpu_class.clone().unwrap_or_else(|| "cpu".to_owned()),
        models: o.models.clone(),
        max_payment_skew: secs(o.max_payment_skew_secs, 300),
        trusted_senders: o.trusted_senders.clone(),
        accept_any_sender: o.accept_any_sender.unwrap_or(false),
        max_file_bytes: upload,
        max_body_bytes: upload + (1 << 20),
        health_interval: secs(o.health_secs, 10).max(Duration::from_millis(100)),
        transcode: o.transcode.clone().unwrap_or_default(),
        byoc: o.byoc.clone().unwrap_or_default(),
        trickle: weir_trickle::TrickleConfig::default(),
    }
}

/// This node's name on shared ledgers, kept in `<data_dir>/ledger-owner` (made on first start):
/// a restart releases the reservations it left open, never those of the other nodes.
fn ledger_owner(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("ledger-owner");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("node-{:032x}", rand::random::<u128>());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Open `role`'s ledger at `url`, by default the SQLite file `<data_dir>/{role}-ledger.db`; on
/// PostgreSQL its tables live in schema `weir_ledger_{role}`.
async fn open_ledger(
    config: &NodeConfig,
    url: Option<&str>,
    role: &str,
) -> anyhow::Result<Arc<dyn weir_payments::Ledger>> {
    let url = url.map_or_else(
        || {
            let path = config.data_dir.join(format!("{role}-ledger.db"));
            format!("sqlite://{}", path.display())
        },
        str::to_owned,
    );
    let options = weir_payments::LedgerOptions {
        durability: config.ledger_durability,
        schema: format!("weir_ledger_{role}"),
        owner: ledger_owner(&config.data_dir)?,
        ..weir_payments::LedgerOptions::default()
    };
    let ledger = weir_payments::open_ledger(&url, &options)
        .await
        .with_context(|| {
            format!(
                "opening the {role} ledger {}",
                weir_payments::redact_url(&url)
            )
        })?;
    tracing::info!(role, backend = ledger.backend(), "ledger open");
    Ok(ledger)
}

/// Run a node (or one role) until SIGINT/SIGTERM.
pub async fn run(config: NodeConfig, role: Role) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Held until the process exits: a second node on this directory is refused.
    let _lock = lock_data_dir(&config.data_dir)?;
    raise_open_file_limit();
    let metrics = prometheus::Registry::new();
    let payments = crate::policy_payments::PolicyPayments::new();
    let (registry, _watch) = load_components(&config, &metrics, payments.clone()).await?;

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let addr = listener.local_addr()?;
    let http_url = format!("http://{addr}");
    let mut started = Started {
        extra: axum::Router::new(),
        ledgers: Vec::new(),
        ready_line: format!("weir ready http={http_url}"),
        tasks: Vec::new(),
        orchestrator_server: None,
        payments: payments.clone(),
    };
    let mut local_orchestrator = None;
    if role.orchestrator() {
        local_orchestrator =
            start_orchestrator(&config, role, &registry, &metrics, &http_url, &mut started).await?;
    }
    if role.gateway() {
        start_gateway(
            &config,
            &registry,
            &metrics,
            &http_url,
            local_orchestrator,
            &mut started,
        )
        .await?;
    }
    let refresh = Duration::from_millis(config.payments_refresh_ms);
    started.tasks.extend(payments.start(refresh).await);
    serve_until_shutdown(&config, role, listener, registry, metrics, started).await
}

/// What starting the roles adds to the node: routes, ledgers, background tasks, and the
/// parts of the ready line.
struct Started {
    /// Routes served next to the node's own on the main listener.
    extra: axum::Router,
    /// The ledgers of the roles started, by role name.
    ledgers: Vec<(&'static str, Arc<dyn weir_payments::Ledger>)>,
    /// The line printed on stdout once the node serves.
    ready_line: String,
    /// Tasks aborted when the node stops.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// A combined node's orchestrator, served on its own listener.
    orchestrator_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The payments view of the node's components (each role attaches its ledger).
    payments: Arc<crate::policy_payments::PolicyPayments>,
}

/// Build the registry, load the components once (logging those that fail), and watch
/// their directory; the watch lasts as long as the returned guard.
async fn load_components(
    config: &NodeConfig,
    metrics: &prometheus::Registry,
    payments: Arc<dyn PaymentsSource>,
) -> anyhow::Result<(Arc<Registry>, weir_runtime::WatchGuard)> {
    let registry = build_registry(config, metrics, payments)?;
    let scan_registry = registry.clone();
    let report = tokio::task::spawn_blocking(move || scan_registry.scan()).await?;
    for (name, reason) in &report.failed {
        tracing::error!(component = %name, %reason, "component not loaded");
    }
    tracing::info!(
        dir = %config.components_dir.display(),
        loaded = ?report.loaded,
        failed = report.failed.len(),
        "components scanned"
    );
    let watch = registry.watch(Duration::from_millis(config.reload_debounce_ms))?;
    Ok((registry, watch))
}

/// Start the orchestrator: on its own listener in a combined node, on the main one
/// otherwise. Returns its URL when the node's gateway should use it directly.
async fn start_orchestrator(
    config: &NodeConfig,
    role: Role,
    registry: &Arc<Registry>,
    metrics: &prometheus::Registry,
    http_url: &str,
    started: &mut Started,
) -> anyhow::Result<Option<String>> {
    let (service_listener, service_url) = orchestrator_listener(config, role, http_url).await?;
    let mut orch_config = orchestrator_config(config, &service_url);
    if role.gateway() {
        // A combined node trusts its own gateway (whose key lives in the data dir).
        let key = config.data_dir.join("wallet.key");
        let wallet = weir_payments::credit::Wallet::load_or_create(&key)
            .with_context(|| format!("gateway wallet {}", key.display()))?;
        orch_config.trusted_senders.push(wallet.sender());
    }
    let orchestrator = weir_orchestrator::Orchestrator::new(
        orch_config,
        registry.clone(),
        open_ledger(
            config,
            config.orchestrator.ledger_url.as_deref(),
            "orchestrator",
        )
        .await?,
        metrics,
    )
    .await
    .context("starting the orchestrator")?;
    started.tasks.push(orchestrator.spawn_health_checks());
    started.tasks.extend(orchestrator.spawn_byoc_tasks());
    if let Some(media) = orchestrator.guest_media() {
        registry.runtime().provide_media(media);
    }
    registry
        .runtime()
        .provide_models(orchestrator.guest_models());
    let objects = crate::objects::ObjectSlot::default();
    if crate::objects::own_store(config, role.gateway()) {
        let storage = crate::objects::open(config, &service_url).await?;
        let _ = objects.set(storage.clone());
        crate::objects::provide(registry, storage);
    }
    let orchestrator_routes = orchestrator.router().merge(crate::objects::route(objects));
    started
        .ledgers
        .push(("orchestrator", orchestrator.ledger().clone()));
    started
        .payments
        .attach("orchestrator", orchestrator.ledger().clone());
    let Some(l) = service_listener else {
        started.extra = std::mem::take(&mut started.extra)
            .merge(orchestrator_routes)
            .route("/openapi.json", orchestrator_openapi(true));
        return Ok(None);
    };
    started
        .ready_line
        .push_str(&format!(" orchestrator={service_url}"));
    let router = orchestrator_routes
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/openapi.json", orchestrator_openapi(false));
    let limits = config.listeners;
    started.orchestrator_server = Some(tokio::spawn(async move {
        crate::listen::serve(l, router, limits, shutdown_signal()).await
    }));
    Ok(Some(service_url))
}

/// The orchestrator's own listener and URL in a combined node; in an orchestrator-only
/// node, no listener and the main URL.
async fn orchestrator_listener(
    config: &NodeConfig,
    role: Role,
    http_url: &str,
) -> anyhow::Result<(Option<tokio::net::TcpListener>, String)> {
    if role != Role::Node {
        return Ok((None, http_url.to_owned()));
    }
    let service_addr = config
        .orchestrator
        .service_addr
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let l = tokio::net::TcpListener::bind(service_addr)
        .await
        .with_context(|| format!("binding the orchestrator at {service_addr}"))?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((Some(l), url))
}

/// Start the gateway and its RTMP listener; its orchestrators are refreshed in the
/// background.
async fn start_gateway(
    config: &NodeConfig,
    registry: &Arc<Registry>,
    metrics: &prometheus::Registry,
    http_url: &str,
    local_orchestrator: Option<String>,
    started: &mut Started,
) -> anyhow::Result<()> {
    let rtmp_addr = config
        .gateway
        .rtmp_addr
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 1935)));
    let rtmp = tokio::net::TcpListener::bind(rtmp_addr)
        .await
        .with_context(|| format!("binding RTMP at {rtmp_addr}"))?;
    let rtmp_bound = rtmp.local_addr()?;
    let mut gw_config = gateway_config(config, http_url, local_orchestrator)?;
    if config.gateway.streams.rtmp_base == weir_gateway::StreamsConfig::default().rtmp_base {
        gw_config.streams.rtmp_base = format!("rtmp://{rtmp_bound}/live");
    }
    let gateway = weir_gateway::Gateway::new(
        gw_config,
        registry.clone(),
        open_ledger(config, config.gateway.ledger_url.as_deref(), "gateway").await?,
        &config.data_dir.join("wallet.key"),
        metrics,
    )
    .await
    .context("starting the gateway")?;
    started.ledgers.push(("gateway", gateway.ledger().clone()));
    started.payments.attach("gateway", gateway.ledger().clone());
    started.payments.use_discovery(gateway.discovery().clone());
    // Components use the gateway's object store unless the orchestrator opened its own.
    crate::objects::provide(registry, gateway.storage().clone());
    started.extra = std::mem::take(&mut started.extra).merge(gateway.router());
    started
        .ready_line
        .push_str(&format!(" rtmp=rtmp://{rtmp_bound}"));
    let handler = gateway.rtmp_handler();
    let rtmp_limits = rtmp_limits(&config.gateway);
    started.tasks.push(tokio::spawn(async move {
        if let Err(e) = weir_media::rtmp::serve(rtmp, handler, rtmp_limits).await {
            tracing::error!(error = %e, "RTMP server stopped");
        }
    }));
    // Serve first, refresh in the background: orchestrators may start after us.
    let g = gateway.clone();
    started.tasks.push(tokio::spawn(async move {
        let _refresh = g.start().await;
        std::future::pending::<()>().await;
    }));
    Ok(())
}

/// Print the ready line and serve HTTP until SIGINT/SIGTERM, then stop the role tasks.
async fn serve_until_shutdown(
    config: &NodeConfig,
    role: Role,
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    metrics: prometheus::Registry,
    started: Started,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let state = AppState {
        registry,
        metrics,
        admin_token: admin_token(config)?.into(),
        router: config.router.as_str().into(),
        pricing: config.pricing.as_str().into(),
        ledgers: started.ledgers.into(),
        installs: Default::default(),
    };
    tracing::info!(%addr, ?role, "serving HTTP");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", started.ready_line)?;
        out.flush()?;
    }
    crate::listen::serve(
        listener,
        app(state, started.extra),
        config.listeners,
        shutdown_signal(),
    )
    .await
    .context("HTTP server")?;
    if let Some(s) = started.orchestrator_server {
        s.abort();
    }
    for t in started.tasks {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// The RTMP listener's limits: `[gateway]` settings over [`weir_media::rtmp::RtmpLimits`]'s
/// defaults.
fn rtmp_limits(g: &crate::config::GatewaySection) -> weir_media::rtmp::RtmpLimits {
    let default = weir_media::rtmp::RtmpLimits::default();
    weir_media::rtmp::RtmpLimits {
        handshake_timeout: g
            .rtmp_handshake_timeout_secs
            .map_or(default.handshake_timeout, |s| Duration::from_secs(s.max(1))),
        idle_timeout: g
            .rtmp_idle_timeout_secs
            .map_or(default.idle_timeout, |s| Duration::from_secs(s.max(1))),
        max_connections: g
            .rtmp_max_connections
            .map_or(default.max_connections, |n| n.max(1)),
        ..default
    }
}

/// An exclusive lock on `{data_dir}/weir.lock`, holding this process's id; it is released
/// when the returned file is closed (at exit at the latest).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _};
    let path = data_dir.join("weir.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "the data directory {} is in use by another weir process{holder}: {} is locked",
                data_dir.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Raise the soft limit on open files to the hard limit: every connection is a descriptor.
#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        if before >= limit.rlim_max {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0).then_some(before)
    };
    match raised {
        Some(before) => {
            tracing::debug!(before, after = limit.rlim_cur, "raised the open file limit")
        }
        None => tracing::debug!("could not raise the open file limit"),
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit() {}

/// `GET /openapi.json` on an orchestrator's listener: its routes, and the node's admin routes
/// where they share the listener (`admin`).
fn orchestrator_openapi(admin: bool) -> axum::routing::MethodRouter {
    axum::routing::get(move || async move {
        axum::Json(weir_protocol::openapi::orchestrator_document(admin))
    })
}
