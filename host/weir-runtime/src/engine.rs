//! The wasmtime engine, its linkers (one per world), the epoch ticker and component loading.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{pipeline, pricing, router};
use crate::cache::CodeCache;
use crate::component::{ComponentSpec, LoadedComponent};
use crate::error::RuntimeError;
use crate::host::{ComponentScope, HostState, PaymentsSource};
use crate::limits::Limiter;
use crate::manifest::{Limits, Manifest, Permissions, WorldKind};
use crate::metrics::RuntimeMetrics;
use crate::progress::{CompileRate, LoadPhase};

/// Largest `.wasm` file accepted, in bytes.
pub const MAX_WASM_BYTES: u64 = 128 << 20;

/// Settings of the component runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled code is cached (none = compile on every load).
    pub cache_dir: Option<PathBuf>,
    /// Count instructions, so manifests' `limits.fuel` applies (costs a few percent per call).
    pub fuel: bool,
    /// Epoch tick: the resolution of call deadlines.
    pub epoch_tick: Duration,
    /// Instances the pooling allocator holds at most (all components together).
    pub max_instances: u32,
    /// Largest linear memory any instance may reserve, in MiB (per-component limits are lower).
    pub max_memory_mib: u32,
    /// Component calls that may run at once through the async entry points
    /// ([`LoadedComponent::select_async`] ...); later ones wait for a slot. Guest code never
    /// runs on an async worker thread: these calls run on tokio's blocking pool, and this bound
    /// keeps looping guests from taking more than that many threads.
    pub max_concurrent_calls: usize,
}

/// The default bound on concurrent component calls: 4 per core, at least 4.
pub fn default_max_concurrent_calls() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(4)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            fuel: false,
            epoch_tick: Duration::from_millis(2),
            max_instances: 512,
            max_memory_mib: 1024,
            max_concurrent_calls: default_max_concurrent_calls(),
        }
    }
}

/// The component runtime: one engine, one linker per world, shared by every component.
pub struct Runtime {
    engine: Engine,
    router_linker: Linker<HostState>,
    pricing_linker: Linker<HostState>,
    pipeline_linker: Linker<HostState>,
    cache: Option<CodeCache>,
    compile_rate: CompileRate,
    config: RuntimeConfig,
    payments: Arc<dyn PaymentsSource>,
    media: crate::host::MediaSlot,
    storage: crate::storage::StorageSlot,
    models: crate::models::ModelSlot,
    metrics: RuntimeMetrics,
    ticker_stop: Arc<AtomicBool>,
    call_slots: Arc<tokio::sync::Semaphore>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Engine(e.to_string())
}

impl Runtime {
    /// Give components host media work (`segment.probe`, `transcode.ladder`), also those
    /// already loaded. Only the first call counts; returns whether this one did.
    pub fn provide_media(&self, media: Arc<dyn crate::host::MediaSource>) -> bool {
        self.media.set(media).is_ok()
    }

    /// Give components the node's object store (`weir:host/storage`), also those already
    /// loaded. Only the first call counts; returns whether this one did.
    pub fn provide_storage(&self, storage: Arc<dyn crate::storage::ComponentStorage>) -> bool {
        self.storage.set(storage).is_ok()
    }

    /// Give components the node's model runners (`weir:host/models.invoke`), also those
    /// already loaded. Only the first call counts; returns whether this one did.
    pub fn provide_models(&self, models: Arc<dyn crate::models::ModelSource>) -> bool {
        self.models.set(models).is_ok()
    }

    /// Build the engine and linkers and start the epoch ticker.
    pub fn new(
        config: RuntimeConfig,
        payments: Arc<dyn PaymentsSource>,
        metrics: RuntimeMetrics,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size((config.max_memory_mib as usize) << 20)
            .max_component_instance_size(16 << 20)
            .max_core_instance_size(16 << 20)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .table_elements(1 << 20);
        let mut wasm_config = Config::new();
        wasm_config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm_config).map_err(engine_error)?;

        let router_linker = world_linker(&engine, |l| {
            router::Router::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)
        })?;
        let pricing_linker = world_linker(&engine, |l| {
            pricing::Pricing::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)
        })?;
        let pipeline_linker = world_linker(&engine, |l| {
            pipeline::Pipeline::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)
        })?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(CodeCache::new(dir, &engine).map_err(|e| {
                RuntimeError::Engine(format!("compiled-code cache {}: {e}", dir.display()))
            })?),
            None => None,
        };

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), config.epoch_tick, ticker_stop.clone())?;

        let call_slots = Arc::new(tokio::sync::Semaphore::new(
            config
                .max_concurrent_calls
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(Arc::new(Runtime {
            engine,
            router_linker,
            pricing_linker,
            pipeline_linker,
            cache,
            compile_rate: CompileRate::default(),
            config,
            payments,
            media: Default::default(),
            storage: Default::default(),
            models: Default::default(),
            metrics,
            ticker_stop,
            call_slots,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The metrics this runtime records into.
    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// Slots for component calls off the async workers (see
    /// [`RuntimeConfig::max_concurrent_calls`]).
    pub(crate) fn call_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.call_slots
    }

    pub(crate) fn linker(&self, world: WorldKind) -> &Linker<HostState> {
        match world {
            WorldKind::Router => &self.router_linker,
            WorldKind::Pricing => &self.pricing_linker,
            WorldKind::Pipeline => &self.pipeline_linker,
        }
    }

    /// Epoch ticks that cover `timeout_ms` (rounded up, plus the tick in progress).
    pub(crate) fn ticks_for(&self, timeout_ms: u32) -> u64 {
        let tick_us = self.config.epoch_tick.as_micros().max(1) as u64;
        (u64::from(timeout_ms) * 1000).div_ceil(tick_us) + 1
    }

    pub(crate) fn fuel_enabled(&self) -> bool {
        self.config.fuel
    }

    /// Compile `wasm` (through the cache when one is configured).
    pub fn compile(&self, wasm: &[u8]) -> wasmtime::Result<(Component, String)> {
        let hash = hex::encode(Sha256::digest(wasm));
        let started = Instant::now();
        let (component, compiled) = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, wasm, &hash)?,
            None => (Component::new(&self.engine, wasm)?, true),
        };
        if compiled {
            self.compile_rate.record(wasm.len(), started.elapsed());
        }
        Ok((component, hash))
    }

    /// How long compiling `bytes` of wasm is expected to take on this node, from the
    /// compilations it measured (`None` before the first one). A cached component loads faster.
    pub fn expected_compile_time(&self, bytes: usize) -> Option<Duration> {
        self.compile_rate.expected(bytes)
    }

    /// Load the component a manifest describes (its wasm is read relative to `dir`): read,
    /// compile, link against the manifest's world, check the exports, and instantiate once.
    pub fn load(
        self: &Arc<Self>,
        manifest: Manifest,
        dir: &Path,
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        self.load_observed(manifest, dir, &|_| {})
    }

    /// [`Runtime::load`], telling `observe` as it reaches each [`LoadPhase`].
    pub fn load_observed(
        self: &Arc<Self>,
        manifest: Manifest,
        dir: &Path,
        observe: &dyn Fn(LoadPhase),
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        let started = Instant::now();
        let name = manifest.name.clone();
        let fail = |reason: String| RuntimeError::Load {
            component: name.clone(),
            reason,
        };
        let wasm_path = manifest.wasm_path(dir);
        let wasm = read_wasm(&wasm_path).map_err(fail)?;
        let permissions = resolve_permissions(&manifest.permissions, dir).map_err(fail)?;
        observe(LoadPhase::Compiling);
        let (component, hash) = self
            .compile(&wasm)
            .map_err(|e| fail(describe_compile_error(&e)))?;
        let spec = ComponentSpec {
            runtime: self.clone(),
            scope: ComponentScope {
                name: manifest.name.as_str().into(),
                config: Arc::new(manifest.config.clone()),
                payments: self.payments.clone(),
                media: self.media.clone(),
                storage: self.storage.clone(),
                models: self.models.clone(),
                model_grants: manifest.permissions.models.clone().into(),
                storage_object_bytes: u64::from(manifest.limits.storage_object_kib) * 1024,
            },
            permissions,
            limits: manifest.limits.clone(),
        };
        observe(LoadPhase::Linking);
        let loaded = LoadedComponent::link(spec, manifest, component, hash).map_err(fail)?;
        tracing::info!(
            component = %loaded.manifest.name,
            world = %loaded.manifest.world,
            version = %loaded.manifest.version,
            hash = &loaded.hash[..12],
            elapsed_ms = started.elapsed().as_millis() as u64,
            "component loaded"
        );
        Ok(loaded)
    }

    /// A new store for one instance of a component.
    pub(crate) fn new_store(
        &self,
        scope: &ComponentScope,
        permissions: &ResolvedPermissions,
        limits: &Limits,
    ) -> wasmtime::Result<Store<HostState>> {
        let mut wasi = WasiCtxBuilder::new();
        for (host, guest, writable) in &permissions.dirs {
            let perms = if *writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(host, guest, perms)?;
        }
        for (key, value) in &permissions.env {
            wasi.env(key, value);
        }
        if !permissions.network.is_empty() {
            let allowed: Arc<[std::net::SocketAddr]> = permissions.network.clone().into();
            wasi.allow_tcp(true);
            wasi.socket_addr_check(move |addr, usage| {
                let ok = match usage {
                    // Outbound TCP to the granted addresses only.
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // The implicit local bind a connect performs: wildcard address, ephemeral port.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    // Never listen, never UDP.
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        if permissions.stdio {
            wasi.inherit_stderr();
            wasi.stdout(wasmtime_wasi::cli::stderr());
        }
        let state = HostState {
            wasi: wasi.build(),
            table: Default::default(),
            limiter: Limiter {
                memory_mib: limits.memory_mib,
            },
            scope: scope.clone(),
            deadline: Instant::now() + Duration::from_millis(u64::from(limits.timeout_ms)),
            frames: Default::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.ticks_for(limits.timeout_ms));
        if self.config.fuel {
            store.set_fuel(if limits.fuel == 0 {
                u64::MAX
            } else {
                limits.fuel
            })?;
        }
        Ok(store)
    }
}

fn world_linker(
    engine: &Engine,
    add_world: impl FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
) -> Result<Linker<HostState>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
    add_world(&mut linker).map_err(engine_error)?;
    Ok(linker)
}

fn spawn_epoch_ticker(
    engine: Engine,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("weir-epoch".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))
}

fn read_wasm(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_WASM_BYTES {
        return Err(format!(
            "{} is {} bytes; the limit is {MAX_WASM_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Explain why bytes did not compile, in the terms an operator uses.
fn describe_compile_error(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("component parser")
        || (text.contains("unknown binary version") && text.contains("0x1"))
    {
        format!("not a WebAssembly component (a core module? wrap it with `wasm-tools component new`): {text}")
    } else if text.contains("magic header") || text.contains("unexpected end") {
        format!("not a WebAssembly binary: {text}")
    } else {
        format!("does not compile: {text}")
    }
}

/// Permissions with host paths resolved and environment values read.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedPermissions {
    pub dirs: Vec<(PathBuf, String, bool)>,
    pub env: Vec<(String, String)>,
    pub network: Vec<std::net::SocketAddr>,
    pub stdio: bool,
}

fn resolve_permissions(p: &Permissions, dir: &Path) -> Result<ResolvedPermissions, String> {
    let mut dirs = Vec::new();
    for grant in &p.dirs {
        let host = if grant.host.is_absolute() {
            grant.host.clone()
        } else {
            dir.join(&grant.host)
        };
        if !host.is_dir() {
            return Err(format!(
                "permissions.dirs: {} is not a directory",
                host.display()
            ));
        }
        dirs.push((host, grant.guest.clone(), grant.writable));
    }
    let env = p
        .env
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
        .collect();
    Ok(ResolvedPermissions {
        dirs,
        env,
        network: p.network.clone(),
        stdio: p.stdio,
    })
}
