//! `weir node`: load the components, watch their directory, serve HTTP.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weir_runtime::{NoLedger, Registry, Runtime, RuntimeConfig, RuntimeMetrics};

use crate::config::NodeConfig;
use crate::server::{app, AppState};

/// Build the runtime and registry a node (or a tool) uses.
pub fn build_registry(
    config: &NodeConfig,
    metrics: &prometheus::Registry,
) -> anyhow::Result<Arc<Registry>> {
    let runtime_metrics = RuntimeMetrics::new(metrics).context("registering runtime metrics")?;
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: config.cache.then(|| config.data_dir.join("cache")),
            fuel: config.fuel,
            epoch_tick: Duration::from_millis(config.epoch_tick_ms),
            ..RuntimeConfig::default()
        },
        Arc::new(NoLedger),
        runtime_metrics,
    )?;
    Ok(Registry::new(runtime, &config.components_dir)?)
}

/// The admin token: configured, or read from / generated into `<data_dir>/admin-token`.
fn admin_token(config: &NodeConfig) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim().to_owned();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Run a node until SIGINT/SIGTERM.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let metrics = prometheus::Registry::new();
    let registry = build_registry(&config, &metrics)?;
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
    let _watch = registry.watch(Duration::from_millis(config.reload_debounce_ms))?;

    let state = AppState {
        registry,
        metrics,
        admin_token: admin_token(&config)?.into(),
        router: config.router.as_str().into(),
        pricing: config.pricing.as_str().into(),
    };
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving HTTP");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "weir ready http=http://{addr}")?;
        out.flush()?;
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server")?;
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
