//! Per-store host state and the host side of every `weir:host` interface.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::types::{Error as GuestError, Param, Price};
use crate::bindings::{clock, config, log, media, models, payments, storage, transcode, video};
use crate::limits::Limiter;
use crate::media::{read_range, Blob, Segment};
use crate::models::{granted, ModelSlot};
use crate::storage::{namespaced, ComponentStorage, StorageSlot};
use crate::video::{Frame, FrameBudget};

/// Longest guest log message kept, in bytes.
const MAX_LOG_BYTES: usize = 4096;

/// The ledger as policies see it (read-only). The payments crate implements it; a node without
/// a ledger uses [`NoLedger`].
pub trait PaymentsSource: Send + Sync {
    /// Credit `sender` holds for `capability`, in base units.
    fn balance(&self, sender: &str, capability: &str) -> Result<i64, GuestError>;
    /// Spent with / earned from `counterparty` for a capability and model, in base units.
    fn spent(&self, counterparty: &str, capability: &str, model: &str) -> Result<u64, GuestError>;
    /// The current price for a capability and model with `counterparty`.
    fn current_price(
        &self,
        counterparty: &str,
        capability: &str,
        model: &str,
    ) -> Result<Price, GuestError>;
}

/// The payments source of a node that has no ledger: every query says so.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLedger;

impl NoLedger {
    fn unsupported<T>() -> Result<T, GuestError> {
        Err(GuestError::Unsupported(
            "payments: this node has no payment ledger configured".to_owned(),
        ))
    }
}

impl PaymentsSource for NoLedger {
    fn balance(&self, _: &str, _: &str) -> Result<i64, GuestError> {
        Self::unsupported()
    }
    fn spent(&self, _: &str, _: &str, _: &str) -> Result<u64, GuestError> {
        Self::unsupported()
    }
    fn current_price(&self, _: &str, _: &str, _: &str) -> Result<Price, GuestError> {
        Self::unsupported()
    }
}

/// Media work done by the host for components (`media.segment.probe`, `transcode.ladder`,
/// `video.decode`/`encode`). The runtime never links FFmpeg: the orchestrator provides an
/// implementation with [`crate::Runtime::provide_media`]; until then these calls answer
/// `unsupported`.
pub trait MediaSource: Send + Sync {
    /// What the host knows of `segment`'s video stream (frame rate 0/1 when unknown).
    fn probe(&self, segment: &Segment) -> Result<media::VideoInfo, GuestError>;
    /// `segment` transcoded to every rendition, in order. Blocking.
    fn ladder(
        &self,
        segment: &Segment,
        renditions: &[transcode::Rendition],
    ) -> Result<Vec<Segment>, GuestError>;
    /// `segment`'s video decoded into `rgb24` frames in presentation order: at most `frames`
    /// frames and `bytes` bytes of pixels (more is an error), by `deadline`. Blocking. A source
    /// that cannot decode answers `unsupported` (the default).
    fn decode(
        &self,
        _segment: &Segment,
        _frames: usize,
        _bytes: u64,
        _deadline: Instant,
    ) -> Result<Vec<Frame>, GuestError> {
        Err(GuestError::Unsupported(
            "video decoding: this node's media source does not decode frames".to_owned(),
        ))
    }
    /// `frames` (`rgb24`, one size, increasing times) encoded into a segment with `source`'s
    /// audio, sequence number and duration, by `deadline`. Blocking. A source that cannot
    /// encode answers `unsupported` (the default).
    fn encode(
        &self,
        _source: &Segment,
        _frames: &[&Frame],
        _settings: &video::EncodeSettings,
        _deadline: Instant,
    ) -> Result<Segment, GuestError> {
        Err(GuestError::Unsupported(
            "video encoding: this node's media source does not encode frames".to_owned(),
        ))
    }
}

/// Where a component finds the node's media source (set once, possibly after it loaded).
pub(crate) type MediaSlot = Arc<OnceLock<Arc<dyn MediaSource>>>;

/// What every store of one component version shares.
#[derive(Clone)]
pub(crate) struct ComponentScope {
    /// Component name, for logs.
    pub name: Arc<str>,
    /// The manifest's `[config]` table.
    pub config: Arc<BTreeMap<String, String>>,
    /// Ledger view.
    pub payments: Arc<dyn PaymentsSource>,
    /// Host media work.
    pub media: MediaSlot,
    /// The node's object store.
    pub storage: StorageSlot,
    /// Largest object the component may store, in bytes.
    pub storage_object_bytes: u64,
    /// The node's model runners.
    pub models: ModelSlot,
    /// The models the manifest grants (`capability/model-id`, `capability/*`).
    pub model_grants: Arc<[String]>,
}

/// The data of one wasmtime store: one live instance of a component.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) scope: ComponentScope,
    /// When the call in progress runs out of time (set by every call).
    pub(crate) deadline: Instant,
    /// The frames this instance holds (`weir:host/video`).
    pub(crate) frames: FrameBudget,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Move a host blob into this store's table, as a handle for the guest.
    pub(crate) fn push_blob(&mut self, blob: Blob) -> wasmtime::Result<Resource<Blob>> {
        Ok(self.table.push(blob)?)
    }

    /// Move a host segment into this store's table, as a handle for the guest.
    pub(crate) fn push_segment(&mut self, segment: Segment) -> wasmtime::Result<Resource<Segment>> {
        Ok(self.table.push(segment)?)
    }

    /// Take a blob the guest handed back.
    pub(crate) fn take_blob(&mut self, handle: Resource<Blob>) -> wasmtime::Result<Blob> {
        Ok(self.table.delete(handle)?)
    }

    /// Take a segment the guest handed back.
    pub(crate) fn take_segment(&mut self, handle: Resource<Segment>) -> wasmtime::Result<Segment> {
        Ok(self.table.delete(handle)?)
    }
}

pub(crate) fn unsupported<T>(what: &str) -> wasmtime::Result<Result<T, GuestError>> {
    Ok(Err(GuestError::Unsupported(format!(
        "{what} is not available on this node yet"
    ))))
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let component = &*self.scope.name;
        match level {
            log::Level::Trace => tracing::trace!(target: "weir::guest", component, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weir::guest", component, "{message}"),
            log::Level::Info => tracing::info!(target: "weir::guest", component, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::guest", component, "{message}"),
            log::Level::Error => tracing::error!(target: "weir::guest", component, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.scope.config.get(&key).cloned())
    }

    fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .scope
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(process_start().elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl payments::Host for HostState {
    fn balance(
        &mut self,
        sender: String,
        capability: String,
    ) -> wasmtime::Result<Result<i64, GuestError>> {
        Ok(self.scope.payments.balance(&sender, &capability))
    }

    fn spent(
        &mut self,
        counterparty: String,
        capability: String,
        model: String,
    ) -> wasmtime::Result<Result<u64, GuestError>> {
        Ok(self
            .scope
            .payments
            .spent(&counterparty, &capability, &model))
    }

    fn current_price(
        &mut self,
        counterparty: String,
        capability: String,
        model: String,
    ) -> wasmtime::Result<Result<Price, GuestError>> {
        Ok(self
            .scope
            .payments
            .current_price(&counterparty, &capability, &model))
    }
}

impl media::Host for HostState {}

impl crate::bindings::types::Host for HostState {}

impl media::HostBlob for HostState {
    fn new(&mut self, content_type: String, data: Vec<u8>) -> wasmtime::Result<Resource<Blob>> {
        self.push_blob(Blob {
            content_type,
            data: data.into(),
        })
    }

    fn content_type(&mut self, this: Resource<Blob>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.content_type.clone())
    }

    fn len(&mut self, this: Resource<Blob>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.data.len() as u64)
    }

    fn read(
        &mut self,
        this: Resource<Blob>,
        offset: u64,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, GuestError>> {
        Ok(Ok(read_range(&self.table.get(&this)?.data, offset, max)))
    }

    fn drop(&mut self, rep: Resource<Blob>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl media::HostSegment for HostState {
    fn seq(&mut self, this: Resource<Segment>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.seq)
    }

    fn duration_ms(&mut self, this: Resource<Segment>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&this)?.duration_ms)
    }

    fn content_type(&mut self, this: Resource<Segment>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.content_type.clone())
    }

    fn len(&mut self, this: Resource<Segment>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.data.len() as u64)
    }

    fn read(
        &mut self,
        this: Resource<Segment>,
        offset: u64,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, GuestError>> {
        Ok(Ok(read_range(&self.table.get(&this)?.data, offset, max)))
    }

    fn probe(
        &mut self,
        this: Resource<Segment>,
    ) -> wasmtime::Result<Result<media::VideoInfo, GuestError>> {
        let Some(media) = self.scope.media.get().cloned() else {
            return unsupported("media probing (no transcoder on this node)");
        };
        Ok(media.probe(self.table.get(&this)?))
    }

    fn drop(&mut self, rep: Resource<Segment>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl transcode::Host for HostState {
    fn ladder(
        &mut self,
        source: Resource<Segment>,
        renditions: Vec<transcode::Rendition>,
    ) -> wasmtime::Result<Result<Vec<Resource<Segment>>, GuestError>> {
        let Some(media) = self.scope.media.get().cloned() else {
            return unsupported("transcoding (no transcoder on this node)");
        };
        let out = match media.ladder(self.table.get(&source)?, &renditions) {
            Ok(out) => out,
            Err(e) => return Ok(Err(e)),
        };
        let mut handles = Vec::with_capacity(out.len());
        for segment in out {
            handles.push(self.push_segment(segment)?);
        }
        Ok(Ok(handles))
    }
}

impl models::Host for HostState {
    fn invoke(
        &mut self,
        capability: String,
        model_id: String,
        params: Vec<Param>,
        inputs: Vec<Resource<Blob>>,
    ) -> wasmtime::Result<Result<models::ModelOutput, GuestError>> {
        let component = self.scope.name.clone();
        if !granted(&self.scope.model_grants, &capability, &model_id) {
            return Ok(Err(GuestError::Denied(format!(
                "component `{component}` may not run model {capability}/{model_id}: add it to [permissions] models"
            ))));
        }
        let Some(runners) = self.scope.models.get().cloned() else {
            return unsupported(&format!(
                "model {capability}/{model_id} (no model runners on this node)"
            ));
        };
        let mut blobs = Vec::with_capacity(inputs.len());
        for handle in &inputs {
            blobs.push(self.table.get(handle)?.clone());
        }
        let (outputs, params) =
            match runners.invoke(&capability, &model_id, &params, blobs, self.deadline) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
        let mut handles = Vec::with_capacity(outputs.len());
        for blob in outputs {
            handles.push(self.push_blob(blob)?);
        }
        tracing::debug!(
            component = &*component,
            capability,
            model_id,
            outputs = handles.len(),
            "component ran a model"
        );
        Ok(Ok(models::ModelOutput {
            blobs: handles,
            params,
        }))
    }
}

impl HostState {
    /// The node's object store, or the `unsupported` answer of a node that has none.
    fn object_store(&self) -> Result<Arc<dyn ComponentStorage>, GuestError> {
        self.scope.storage.get().cloned().ok_or_else(|| {
            GuestError::Unsupported(
                "object storage for components: this node has no object store (it comes with the gateway role's `[gateway.storage]`)".to_owned(),
            )
        })
    }
}

impl storage::Host for HostState {
    fn put(
        &mut self,
        key: String,
        data: Resource<Blob>,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        let blob = self.table.get(&data)?.clone();
        let (component, limit) = (self.scope.name.clone(), self.scope.storage_object_bytes);
        let stored = (|| {
            let store = self.object_store()?;
            let full = namespaced(&component, &key)?;
            if blob.data.len() as u64 > limit {
                return Err(GuestError::InvalidRequest(format!(
                    "storage put {key:?}: {} bytes is more than component `{component}` may store in one object ({} KiB, limits.storage_object_kib)",
                    blob.data.len(),
                    limit / 1024
                )));
            }
            let url = store.put(&full, &blob, self.deadline)?;
            tracing::debug!(
                component = &*component,
                key = full,
                bytes = blob.data.len(),
                "component stored an object"
            );
            Ok(url)
        })();
        Ok(stored)
    }

    fn get(&mut self, key: String) -> wasmtime::Result<Result<Resource<Blob>, GuestError>> {
        let found = self.object_store().and_then(|store| {
            let full = namespaced(&self.scope.name, &key)?;
            store.get(&full, self.deadline)
        });
        match found {
            Ok(Some(blob)) => Ok(Ok(self.push_blob(blob)?)),
            Ok(None) => Ok(Err(GuestError::InvalidRequest(format!(
                "storage get: component `{}` has no object under {key:?}",
                self.scope.name
            )))),
            Err(e) => Ok(Err(e)),
        }
    }
}
