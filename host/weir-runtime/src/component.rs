//! A loaded component version: its compiled code, linked and checked against its world,
//! a pool of warm instances, and typed calls with deadlines and memory limits.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use prometheus::{Histogram, IntCounter};
use wasmtime::component::Component;
use wasmtime::Store;

use crate::bindings::pipeline::exports::weir::host::pipeline_handler::{Job, StreamInfo};
use crate::bindings::pricing::exports::weir::host::quoting::QuoteContext;
use crate::bindings::types::{Candidate, Error as GuestError, JobRequest, Param, Price};
use crate::bindings::{pipeline, pricing, router};
use crate::engine::{ResolvedPermissions, Runtime};
use crate::error::{CallFailure, RuntimeError};
use crate::host::{ComponentScope, HostState};
use crate::limits::classify;
use crate::manifest::{InstanceMode, Limits, Manifest, WorldKind};
use crate::media::{Blob, Segment};

/// Everything a component needs to make stores, besides its code.
pub(crate) struct ComponentSpec {
    pub runtime: Arc<Runtime>,
    pub scope: ComponentScope,
    pub permissions: ResolvedPermissions,
    pub limits: Limits,
}

/// A world's generated bindings, as the pool needs them.
pub(crate) trait WorldBindings: Sized + Send + 'static {
    type Pre: Send + Sync;
    const WORLD: WorldKind;
    fn pre(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
}

impl WorldBindings for router::Router {
    type Pre = router::RouterPre<HostState>;
    const WORLD: WorldKind = WorldKind::Router;
    fn pre(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        router::RouterPre::new(pre)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
}

impl WorldBindings for pricing::Pricing {
    type Pre = pricing::PricingPre<HostState>;
    const WORLD: WorldKind = WorldKind::Pricing;
    fn pre(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        pricing::PricingPre::new(pre)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
}

impl WorldBindings for pipeline::Pipeline {
    type Pre = pipeline::PipelinePre<HostState>;
    const WORLD: WorldKind = WorldKind::Pipeline;
    fn pre(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        pipeline::PipelinePre::new(pre)
    }
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }
}

/// One live instance and its store.
pub(crate) struct Instance<W> {
    store: Store<HostState>,
    bindings: W,
    calls: u32,
}

/// Per-function metric handles, resolved once at load time.
struct CallMetrics {
    ok: IntCounter,
    err: IntCounter,
    latency: Histogram,
}

/// Compiled code plus a pool of warm instances of one world.
pub(crate) struct Pool<W: WorldBindings> {
    pre: W::Pre,
    warm: Mutex<Vec<Instance<W>>>,
    metrics: CallMetrics,
}

enum Kind {
    Router(Pool<router::Router>),
    Pricing(Pool<pricing::Pricing>),
    Pipeline(Pool<pipeline::Pipeline>),
}

/// A loaded, checked component version. Calls on it use its own code even after the
/// registry has swapped in a newer version.
pub struct LoadedComponent {
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of its wasm, hex.
    pub hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Names of its imports.
    pub imports: Vec<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
    spec: ComponentSpec,
    kind: Kind,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("name", &self.manifest.name)
            .field("world", &self.manifest.world)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Names of a component's imports and exports.
pub(crate) fn interface_names(
    component: &Component,
    engine: &wasmtime::Engine,
) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    (imports, exports)
}

/// Explain a failed link or export check.
fn describe_link_error(e: &wasmtime::Error, world: WorldKind, exports: &[String]) -> String {
    let text = format!("{e:#}");
    if let Some(rest) = text.split("component imports ").nth(1) {
        let what = rest.split(", but").next().unwrap_or(rest);
        return format!(
            "imports {what}, which the `{world}` world does not grant (only weir:host interfaces of that world and WASI are available)"
        );
    }
    let other = [
        ("weir:host/routing@0.1.0", WorldKind::Router),
        ("weir:host/quoting@0.1.0", WorldKind::Pricing),
        ("weir:host/pipeline-handler@0.1.0", WorldKind::Pipeline),
    ]
    .into_iter()
    .find(|(export, kind)| *kind != world && exports.iter().any(|e| e == export));
    match other {
        Some((export, kind)) => format!(
            "does not export the `{world}` world (it exports `{export}`, which belongs to the `{kind}` world): {text}"
        ),
        None => format!("does not export the `{world}` world: {text}"),
    }
}

/// Link `component` against `W`'s linker and look up the world's exports.
fn link<W: WorldBindings>(runtime: &Runtime, component: &Component) -> Result<W::Pre, String> {
    let (_, exports) = interface_names(component, runtime.engine());
    let instance_pre = runtime
        .linker(W::WORLD)
        .instantiate_pre(component)
        .map_err(|e| describe_link_error(&e, W::WORLD, &exports))?;
    W::pre(instance_pre).map_err(|e| describe_link_error(&e, W::WORLD, &exports))
}

/// Whether `component` links as `world` (imports satisfied, exports present).
pub(crate) fn check_world(
    runtime: &Runtime,
    component: &Component,
    world: WorldKind,
) -> Result<(), String> {
    match world {
        WorldKind::Router => link::<router::Router>(runtime, component).map(drop),
        WorldKind::Pricing => link::<pricing::Pricing>(runtime, component).map(drop),
        WorldKind::Pipeline => link::<pipeline::Pipeline>(runtime, component).map(drop),
    }
}

impl<W: WorldBindings> Pool<W> {
    fn new(spec: &ComponentSpec, component: &Component, function: &str) -> Result<Self, String> {
        let pre = link::<W>(&spec.runtime, component)?;
        let name = &*spec.scope.name;
        let metrics = spec.runtime.metrics();
        Ok(Pool {
            pre,
            warm: Mutex::new(Vec::new()),
            metrics: CallMetrics {
                ok: metrics.calls.with_label_values(&[name, function, "ok"]),
                err: metrics.calls.with_label_values(&[name, function, "error"]),
                latency: metrics.call_seconds.with_label_values(&[name, function]),
            },
        })
    }

    fn instantiate(&self, spec: &ComponentSpec) -> Result<Instance<W>, CallFailure> {
        let limits = &spec.limits;
        let mut store = spec
            .runtime
            .new_store(&spec.scope, &spec.permissions, limits)
            .map_err(|e| CallFailure::Instantiate(format!("{e:#}")))?;
        match W::instantiate(&self.pre, &mut store) {
            Ok(bindings) => Ok(Instance {
                store,
                bindings,
                calls: 0,
            }),
            Err(e) => Err(match classify(&e, limits.timeout_ms, limits.memory_mib) {
                CallFailure::Trap(msg) => CallFailure::Instantiate(msg),
                other => other,
            }),
        }
    }

    /// Run `f` on a warm or fresh instance under the component's deadline and budget, then
    /// `check` its answer against the contract.
    fn call<T>(
        &self,
        spec: &ComponentSpec,
        mode: InstanceMode,
        function: &'static str,
        f: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<Result<T, GuestError>>,
        check: impl FnOnce(&T) -> Result<(), CallFailure>,
    ) -> Result<T, RuntimeError> {
        let started = Instant::now();
        let result = self
            .call_inner(spec, mode, f)
            .and_then(|answer| check(&answer).map(|()| answer));
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                self.metrics.ok.inc();
                Ok(v)
            }
            Err(failure) => {
                self.metrics.err.inc();
                Err(call_error(spec, function, failure))
            }
        }
    }

    fn call_inner<T>(
        &self,
        spec: &ComponentSpec,
        mode: InstanceMode,
        f: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, CallFailure> {
        let limits = &spec.limits;
        let pooled = match mode {
            InstanceMode::Warm => self.warm.lock().pop(),
            InstanceMode::Fresh => None,
        };
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self.instantiate(spec)?,
        };
        arm(&mut instance.store, &spec.runtime, limits)?;
        let outcome = f(&instance.bindings, &mut instance.store);
        instance.calls += 1;
        match outcome {
            Ok(answer) => {
                if mode == InstanceMode::Warm && instance.calls < limits.max_calls_per_instance {
                    let mut warm = self.warm.lock();
                    if warm.len() < limits.pool_size as usize {
                        warm.push(instance);
                    }
                }
                answer.map_err(CallFailure::Guest)
            }
            // The instance is dropped here: a trapped instance must never run again.
            Err(e) => Err(classify(&e, limits.timeout_ms, limits.memory_mib)),
        }
    }

    fn warm_count(&self) -> usize {
        self.warm.lock().len()
    }
}

/// Set the deadline and fuel for the next call on `store`.
fn arm(
    store: &mut Store<HostState>,
    runtime: &Runtime,
    limits: &Limits,
) -> Result<(), CallFailure> {
    store.set_epoch_deadline(runtime.ticks_for(limits.timeout_ms));
    store.data_mut().deadline =
        Instant::now() + std::time::Duration::from_millis(u64::from(limits.timeout_ms));
    if runtime.fuel_enabled() {
        let fuel = if limits.fuel == 0 {
            u64::MAX
        } else {
            limits.fuel
        };
        store
            .set_fuel(fuel)
            .map_err(|e| CallFailure::Trap(format!("{e:#}")))?;
    }
    Ok(())
}

fn call_error(spec: &ComponentSpec, function: &'static str, failure: CallFailure) -> RuntimeError {
    let name = &*spec.scope.name;
    // A guest error is an answer; everything else is a fault worth counting and logging.
    if !matches!(failure, CallFailure::Guest(_)) {
        spec.runtime
            .metrics()
            .failures
            .with_label_values(&[name, failure.kind()])
            .inc();
        tracing::warn!(component = name, function, failure = %failure, "component call failed");
    }
    RuntimeError::Call {
        component: name.to_owned(),
        function,
        failure,
    }
}

/// What went wrong with a blocking call's task: its panic message, or a cancellation.
fn describe_join_error(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return format!("the call was cancelled ({e}); the runtime is shutting down");
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("the host panicked while running the call: {message}")
}

/// Check a router's ranking: every index in range, none repeated.
fn validate_ranking(ranking: &[u32], candidates: usize) -> Result<(), CallFailure> {
    let mut seen = vec![false; candidates];
    for &i in ranking {
        let slot = seen.get_mut(i as usize).ok_or_else(|| {
            CallFailure::BadOutput(format!(
                "index {i} is out of range for {candidates} candidates"
            ))
        })?;
        if std::mem::replace(slot, true) {
            return Err(CallFailure::BadOutput(format!("index {i} is listed twice")));
        }
    }
    Ok(())
}

/// Check a quote: a positive unit size and a sane currency label.
fn validate_price(price: &Price) -> Result<(), CallFailure> {
    if price.pixels_per_unit == 0 {
        return Err(CallFailure::BadOutput("pixels-per-unit is 0".to_owned()));
    }
    if price.currency.is_empty()
        || price.currency.len() > 16
        || !price.currency.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(CallFailure::BadOutput(format!(
            "currency {:?} must be 1-16 printable ASCII characters",
            price.currency
        )));
    }
    Ok(())
}

impl LoadedComponent {
    /// Link `component` against the manifest's world, check its exports and instantiate it once.
    pub(crate) fn link(
        spec: ComponentSpec,
        manifest: Manifest,
        component: Component,
        hash: String,
    ) -> Result<Arc<LoadedComponent>, String> {
        let (imports, exports) = interface_names(&component, spec.runtime.engine());
        let kind = match manifest.world {
            WorldKind::Router => Kind::Router(Pool::new(&spec, &component, "select")?),
            WorldKind::Pricing => Kind::Pricing(Pool::new(&spec, &component, "quote")?),
            WorldKind::Pipeline => Kind::Pipeline(Pool::new(&spec, &component, "run")?),
        };
        let loaded = LoadedComponent {
            manifest,
            hash,
            loaded_at: SystemTime::now(),
            imports,
            exports,
            spec,
            kind,
        };
        loaded.self_check()?;
        Ok(Arc::new(loaded))
    }

    /// Instantiate once (running its start-up code under the deadline) and keep the instance warm.
    fn self_check(&self) -> Result<(), String> {
        fn check<W: WorldBindings>(
            pool: &Pool<W>,
            spec: &ComponentSpec,
            warm: bool,
        ) -> Result<(), String> {
            let instance = pool
                .instantiate(spec)
                .map_err(|f| format!("self-check failed: {f}"))?;
            if warm {
                pool.warm.lock().push(instance);
            }
            Ok(())
        }
        let warm = self.mode() == InstanceMode::Warm;
        match &self.kind {
            Kind::Router(p) => check(p, &self.spec, warm),
            Kind::Pricing(p) => check(p, &self.spec, warm),
            Kind::Pipeline(p) => check(p, &self.spec, warm),
        }
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The world it implements.
    pub fn world(&self) -> WorldKind {
        self.manifest.world
    }

    fn mode(&self) -> InstanceMode {
        self.manifest.instance_mode()
    }

    /// Warm instances currently pooled.
    pub fn warm_instances(&self) -> usize {
        match &self.kind {
            Kind::Router(p) => p.warm_count(),
            Kind::Pricing(p) => p.warm_count(),
            Kind::Pipeline(p) => p.warm_count(),
        }
    }

    fn wrong_world(&self, expected: WorldKind) -> RuntimeError {
        RuntimeError::WrongWorld {
            component: self.manifest.name.clone(),
            expected,
            actual: self.manifest.world,
        }
    }

    /// Router: rank `candidates` for `request`; indices into `candidates`, best first.
    pub fn select(
        &self,
        request: &JobRequest,
        candidates: &[Candidate],
    ) -> Result<Vec<u32>, RuntimeError> {
        let Kind::Router(pool) = &self.kind else {
            return Err(self.wrong_world(WorldKind::Router));
        };
        pool.call(
            &self.spec,
            self.mode(),
            "select",
            |b, store| {
                b.weir_host_routing()
                    .call_select(store, request, candidates)
            },
            |ranking| validate_ranking(ranking, candidates.len()),
        )
    }

    /// Pricing: quote a price for `request`.
    pub fn quote(
        &self,
        request: &JobRequest,
        context: &QuoteContext,
    ) -> Result<Price, RuntimeError> {
        let Kind::Pricing(pool) = &self.kind else {
            return Err(self.wrong_world(WorldKind::Pricing));
        };
        pool.call(
            &self.spec,
            self.mode(),
            "quote",
            |b, store| b.weir_host_quoting().call_quote(store, request, context),
            validate_price,
        )
    }

    /// Pipeline: run one batch job on a fresh (or warm, if the manifest asks) instance.
    pub fn run(
        &self,
        request: JobRequest,
        inputs: Vec<Blob>,
    ) -> Result<(Vec<Blob>, Vec<Param>), RuntimeError> {
        let Kind::Pipeline(pool) = &self.kind else {
            return Err(self.wrong_world(WorldKind::Pipeline));
        };
        pool.call(
            &self.spec,
            self.mode(),
            "run",
            |b, store| {
                let inputs = inputs
                    .into_iter()
                    .map(|blob| store.data_mut().push_blob(blob))
                    .collect::<wasmtime::Result<Vec<_>>>()?;
                let job = Job { request, inputs };
                let output = match b.weir_host_pipeline_handler().call_run(&mut *store, &job)? {
                    Ok(output) => output,
                    Err(e) => return Ok(Err(e)),
                };
                let blobs = output
                    .blobs
                    .into_iter()
                    .map(|h| store.data_mut().take_blob(h))
                    .collect::<wasmtime::Result<Vec<_>>>()?;
                Ok(Ok((blobs, output.params)))
            },
            |_| Ok(()),
        )
    }

    /// Router: [`select`](Self::select) off the async workers, on tokio's blocking pool and
    /// within the runtime's bound on concurrent calls
    /// ([`RuntimeConfig::max_concurrent_calls`](crate::RuntimeConfig::max_concurrent_calls)).
    pub async fn select_async(
        self: Arc<Self>,
        request: JobRequest,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<u32>, RuntimeError> {
        self.off_thread("select", move |c| c.select(&request, &candidates))
            .await
    }

    /// Pricing: [`quote`](Self::quote) off the async workers, like [`select_async`](Self::select_async).
    pub async fn quote_async(
        self: Arc<Self>,
        request: JobRequest,
        context: QuoteContext,
    ) -> Result<Price, RuntimeError> {
        self.off_thread("quote", move |c| c.quote(&request, &context))
            .await
    }

    /// Pipeline: [`run`](Self::run) off the async workers, like [`select_async`](Self::select_async).
    pub async fn run_async(
        self: Arc<Self>,
        request: JobRequest,
        inputs: Vec<Blob>,
    ) -> Result<(Vec<Blob>, Vec<Param>), RuntimeError> {
        self.off_thread("run", move |c| c.run(request, inputs))
            .await
    }

    /// Run `call` on tokio's blocking pool once a call slot is free. Waiting for the slot is
    /// cancellable; a call that started runs to its end (the guest's deadline bounds it) and
    /// holds its slot until then. A panic in `call` becomes [`CallFailure::Host`].
    async fn off_thread<T: Send + 'static>(
        self: Arc<Self>,
        function: &'static str,
        call: impl FnOnce(&LoadedComponent) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let host_failure = |msg: String| call_error(&self.spec, function, CallFailure::Host(msg));
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| host_failure(format!("no async runtime to run the call on: {e}")))?;
        let permit = self
            .spec
            .runtime
            .call_slots()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| host_failure("the runtime's call slots are closed".to_owned()))?;
        let component = self.clone();
        let joined = handle
            .spawn_blocking(move || {
                let _permit = permit;
                call(&component)
            })
            .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(host_failure(describe_join_error(e))),
        }
    }

    /// Pipeline: start a stream on a fresh instance that lives until [`PipelineStream::stop`].
    pub fn start_stream(
        self: &Arc<Self>,
        info: StreamInfo,
    ) -> Result<PipelineStream, RuntimeError> {
        let Kind::Pipeline(pool) = &self.kind else {
            return Err(self.wrong_world(WorldKind::Pipeline));
        };
        let instance = pool
            .instantiate(&self.spec)
            .map_err(|f| call_error(&self.spec, "on-start", f))?;
        let mut stream = PipelineStream {
            component: self.clone(),
            instance: Some(instance),
        };
        stream.invoke("on-start", |b, store| {
            b.weir_host_pipeline_handler().call_on_start(store, &info)
        })?;
        Ok(stream)
    }
}

/// A live stream running through one pipeline instance. Dropping it without `stop` skips `on-stop`.
pub struct PipelineStream {
    component: Arc<LoadedComponent>,
    instance: Option<Instance<pipeline::Pipeline>>,
}

impl PipelineStream {
    /// The component version serving this stream.
    pub fn component(&self) -> &Arc<LoadedComponent> {
        &self.component
    }

    fn invoke<T>(
        &mut self,
        function: &'static str,
        f: impl FnOnce(
            &pipeline::Pipeline,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, RuntimeError> {
        let spec = &self.component.spec;
        let Some(instance) = self.instance.as_mut() else {
            return Err(call_error(
                spec,
                function,
                CallFailure::Trap(
                    "the stream's instance failed earlier and was discarded".to_owned(),
                ),
            ));
        };
        arm(&mut instance.store, &spec.runtime, &spec.limits)
            .map_err(|f| call_error(spec, function, f))?;
        match f(&instance.bindings, &mut instance.store) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(call_error(spec, function, CallFailure::Guest(e))),
            Err(e) => {
                self.instance = None;
                let failure = classify(&e, spec.limits.timeout_ms, spec.limits.memory_mib);
                Err(call_error(spec, function, failure))
            }
        }
    }

    /// Hand a segment to the pipeline; returns what it publishes downstream.
    pub fn on_segment(&mut self, segment: Segment) -> Result<Vec<Segment>, RuntimeError> {
        self.invoke("on-segment", |b, store| {
            let handle = store.data_mut().push_segment(segment)?;
            let out = match b
                .weir_host_pipeline_handler()
                .call_on_segment(&mut *store, handle)?
            {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            let segments = out
                .into_iter()
                .map(|h| store.data_mut().take_segment(h))
                .collect::<wasmtime::Result<Vec<_>>>()?;
            Ok(Ok(segments))
        })
    }

    /// Forward a control message (JSON text).
    pub fn on_control(&mut self, message: &str) -> Result<(), RuntimeError> {
        self.invoke("on-control", |b, store| {
            b.weir_host_pipeline_handler()
                .call_on_control(store, message)
        })
    }

    /// Stop the stream: call `on-stop` and release the instance.
    pub fn stop(mut self) -> Result<(), RuntimeError> {
        let result = self.invoke("on-stop", |b, store| {
            b.weir_host_pipeline_handler().call_on_stop(store).map(Ok)
        });
        self.instance = None;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_validation_rejects_out_of_range_and_duplicates() {
        assert!(validate_ranking(&[2, 0, 1], 3).is_ok());
        assert!(validate_ranking(&[], 3).is_ok());
        assert!(
            matches!(validate_ranking(&[3], 3), Err(CallFailure::BadOutput(m)) if m.contains("out of range"))
        );
        assert!(
            matches!(validate_ranking(&[1, 1], 3), Err(CallFailure::BadOutput(m)) if m.contains("twice"))
        );
    }

    #[test]
    fn a_panic_in_a_blocking_call_becomes_a_message() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let joined = rt.block_on(async {
            tokio::task::spawn_blocking(|| -> u32 { panic!("guest host bug") }).await
        });
        let msg = describe_join_error(joined.expect_err("it panicked"));
        assert!(
            msg.contains("panicked") && msg.contains("guest host bug"),
            "{msg}"
        );
    }

    #[test]
    fn price_validation() {
        let ok = Price {
            price_per_unit: 5,
            pixels_per_unit: 1,
            currency: "WEI".into(),
        };
        assert!(validate_price(&ok).is_ok());
        assert!(validate_price(&Price {
            pixels_per_unit: 0,
            ..ok.clone()
        })
        .is_err());
        assert!(validate_price(&Price {
            currency: String::new(),
            ..ok.clone()
        })
        .is_err());
        assert!(validate_price(&Price {
            currency: "a b".into(),
            ..ok
        })
        .is_err());
    }
}
