//! The component registry: a directory of manifests and `.wasm` files, loaded, watched and
//! hot-swapped. A swap is one atomic pointer store; calls in flight finish on the version they
//! started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;

use crate::component::LoadedComponent;
use crate::engine::Runtime;
use crate::error::RuntimeError;
use crate::manifest::{is_valid_name, Manifest, WorldKind};
use crate::progress::LoadPhase;

/// The outcome of the latest attempt to load one component.
#[derive(Debug, Clone)]
pub struct LoadStatus {
    /// When the attempt was made.
    pub at: SystemTime,
    /// `None` when it succeeded; the reason otherwise (the previous version, if any, keeps serving).
    pub error: Option<String>,
}

/// What changed when the directory was rescanned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Newly loaded or replaced components.
    pub loaded: Vec<String>,
    /// Components removed because their manifest disappeared.
    pub unloaded: Vec<String>,
    /// Components that failed to load, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Identifies the files a component was loaded from, to skip rescans of unchanged files.
/// The manifest is small, so its text is hashed; the wasm is identified by size, mtime and
/// inode (a replacement by rename always changes the inode, even within one timestamp tick).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    manifest: u64,
    wasm: (u64, Option<SystemTime>, u64),
}

fn file_stamp(path: &Path) -> (u64, Option<SystemTime>, u64) {
    std::fs::metadata(path)
        .map(|m| (m.len(), m.modified().ok(), inode(&m)))
        .unwrap_or((0, None, 0))
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Loaded components by name, swapped atomically as files change.
pub struct Registry {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    components: ArcSwap<BTreeMap<String, Arc<LoadedComponent>>>,
    status: Mutex<BTreeMap<String, LoadStatus>>,
    fingerprints: Mutex<BTreeMap<String, Fingerprint>>,
    /// Serializes loads so two rescans never race on the same name.
    load_lock: Mutex<()>,
}

impl Registry {
    /// A registry over `dir` (created if missing). Nothing is loaded until [`Registry::scan`].
    pub fn new(runtime: Arc<Runtime>, dir: &Path) -> Result<Arc<Registry>, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            RuntimeError::Engine(format!("components directory {}: {e}", dir.display()))
        })?;
        Ok(Arc::new(Registry {
            runtime,
            dir: dir.to_owned(),
            components: ArcSwap::from_pointee(BTreeMap::new()),
            status: Mutex::new(BTreeMap::new()),
            fingerprints: Mutex::new(BTreeMap::new()),
            load_lock: Mutex::new(()),
        }))
    }

    /// The components directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime components are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The loaded version of `name`.
    pub fn get(&self, name: &str) -> Result<Arc<LoadedComponent>, RuntimeError> {
        self.components
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(name.to_owned()))
    }

    /// The loaded version of `name`, which must implement `world`.
    pub fn get_world(
        &self,
        name: &str,
        world: WorldKind,
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        let component = self.get(name)?;
        if component.world() != world {
            return Err(RuntimeError::WrongWorld {
                component: name.to_owned(),
                expected: world,
                actual: component.world(),
            });
        }
        Ok(component)
    }

    /// Every loaded component, by name.
    pub fn list(&self) -> Arc<BTreeMap<String, Arc<LoadedComponent>>> {
        self.components.load_full()
    }

    /// The latest load outcome per component name.
    pub fn statuses(&self) -> BTreeMap<String, LoadStatus> {
        self.status.lock().clone()
    }

    fn manifest_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
            .filter(|n| is_valid_name(n))
            .collect();
        names.sort();
        names
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    fn fingerprint(&self, name: &str) -> Option<Fingerprint> {
        let manifest_path = self.manifest_path(name);
        let text = std::fs::read_to_string(&manifest_path).ok()?;
        let manifest = Manifest::parse(&text, Some(name)).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&text, &mut hasher);
        Some(Fingerprint {
            manifest: std::hash::Hasher::finish(&hasher),
            wasm: file_stamp(&manifest.wasm_path(&self.dir)),
        })
    }

    /// Load (or reload) one component from its manifest in the directory, then swap it in.
    /// On failure the previous version keeps serving and the reason is recorded.
    pub fn load(&self, name: &str) -> Result<Arc<LoadedComponent>, RuntimeError> {
        let _guard = self.load_lock.lock();
        self.load_locked(name, &|_| {})
    }

    /// [`Registry::load`] for a caller that holds `load_lock`.
    fn load_locked(
        &self,
        name: &str,
        observe: &dyn Fn(LoadPhase),
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        let fingerprint = self.fingerprint(name);
        let result = Manifest::load(&self.manifest_path(name))
            .and_then(|m| self.runtime.load_observed(m, &self.dir, observe));
        let metrics = self.runtime.metrics();
        let status = match &result {
            Ok(component) => {
                let replaced = self.swap(|map| map.insert(name.to_owned(), component.clone()));
                metrics.loads.with_label_values(&[name, "ok"]).inc();
                if let Some(old) = replaced {
                    metrics.reloads.with_label_values(&[name]).inc();
                    if old.world() != component.world() {
                        let _ = metrics
                            .loaded
                            .remove_label_values(&[name, old.world().as_str()]);
                    }
                }
                metrics
                    .loaded
                    .with_label_values(&[name, component.world().as_str()])
                    .set(1);
                LoadStatus {
                    at: SystemTime::now(),
                    error: None,
                }
            }
            Err(e) => {
                metrics.loads.with_label_values(&[name, "error"]).inc();
                let serving = self.components.load().contains_key(name);
                tracing::warn!(component = name, error = %e, keeps_serving_previous = serving, "component load failed");
                LoadStatus {
                    at: SystemTime::now(),
                    error: Some(e.to_string()),
                }
            }
        };
        self.status.lock().insert(name.to_owned(), status);
        if let Some(fp) = fingerprint {
            self.fingerprints.lock().insert(name.to_owned(), fp);
        }
        result
    }

    /// Remove `name` from service. Calls in flight finish on it.
    pub fn unload(&self, name: &str) -> Result<(), RuntimeError> {
        let _guard = self.load_lock.lock();
        let removed = self.swap(|map| map.remove(name));
        self.fingerprints.lock().remove(name);
        self.status.lock().remove(name);
        match removed {
            Some(old) => {
                let _ = self
                    .runtime
                    .metrics()
                    .loaded
                    .remove_label_values(&[name, old.world().as_str()]);
                tracing::info!(component = name, "component unloaded");
                Ok(())
            }
            None => Err(RuntimeError::NotFound(name.to_owned())),
        }
    }

    fn swap<R>(&self, edit: impl FnOnce(&mut BTreeMap<String, Arc<LoadedComponent>>) -> R) -> R {
        let mut map = (**self.components.load()).clone();
        let r = edit(&mut map);
        self.components.store(Arc::new(map));
        r
    }

    /// Bring the registry in line with the directory: load new or changed components, unload
    /// those whose manifest is gone. Unchanged files are not reloaded.
    pub fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let names = self.manifest_names();
        for name in &names {
            let current = self.fingerprint(name);
            let known = self.fingerprints.lock().get(name).cloned();
            if current.is_some() && current == known {
                continue;
            }
            match self.load(name) {
                Ok(_) => report.loaded.push(name.clone()),
                Err(e) => report.failed.push((name.clone(), e.to_string())),
            }
        }
        let gone: Vec<String> = self
            .components
            .load()
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if self.unload(&name).is_ok() {
                report.unloaded.push(name);
            }
        }
        // Forget failures of manifests that no longer exist.
        self.status.lock().retain(|n, _| names.contains(n));
        self.fingerprints.lock().retain(|n, _| names.contains(n));
        report
    }

    /// Write a manifest and its wasm into the directory (atomically, via temporary files) and load it.
    /// When the load fails, the files are left in place for inspection and the previous version keeps serving.
    pub fn install(
        &self,
        manifest_text: &str,
        wasm: &[u8],
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        self.install_observed(manifest_text, wasm, &|_| {})
    }

    /// [`Registry::install`], telling `observe` as it reaches each [`LoadPhase`].
    pub fn install_observed(
        &self,
        manifest_text: &str,
        wasm: &[u8],
        observe: &dyn Fn(LoadPhase),
    ) -> Result<Arc<LoadedComponent>, RuntimeError> {
        let manifest = Manifest::parse(manifest_text, None)?;
        let wasm_path = manifest.wasm_path(&self.dir);
        let write = |path: &Path, bytes: &[u8]| -> Result<(), RuntimeError> {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| RuntimeError::Load {
                    component: manifest.name.clone(),
                    reason: format!("cannot write {}: {e}", path.display()),
                })
        };
        // Both files are replaced under the load lock, so the watcher never loads the new code
        // with the old manifest (or the reverse) in between.
        observe(LoadPhase::Queued);
        let _guard = self.load_lock.lock();
        observe(LoadPhase::Writing);
        write(&wasm_path, wasm)?;
        write(
            &self.manifest_path(&manifest.name),
            manifest_text.as_bytes(),
        )?;
        self.load_locked(&manifest.name, observe)
    }

    /// Unload `name` and delete its manifest and wasm from the directory.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let manifest_path = self.manifest_path(name);
        let wasm_path = Manifest::load(&manifest_path)
            .ok()
            .map(|m| m.wasm_path(&self.dir));
        let _ = std::fs::remove_file(&manifest_path);
        if let Some(p) = wasm_path {
            let _ = std::fs::remove_file(p);
        }
        self.unload(name)
    }

    /// Watch the directory and rescan shortly after files change. The watcher lives as long as
    /// the returned guard.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> Result<WatchGuard, RuntimeError> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if !matches!(event.kind, notify::EventKind::Access(_)) {
                        let _ = tx.send(());
                    }
                }
            })
            .map_err(|e| {
                RuntimeError::Engine(format!("cannot watch {}: {e}", self.dir.display()))
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                RuntimeError::Engine(format!("cannot watch {}: {e}", self.dir.display()))
            })?;
        let registry = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("weir-components-watch".to_owned())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Let a burst of events (write, then rename) settle.
                    std::thread::sleep(debounce);
                    while rx.try_recv().is_ok() {}
                    let Some(registry) = registry.upgrade() else {
                        break;
                    };
                    let report = registry.scan();
                    if report != ScanReport::default() {
                        tracing::info!(
                            loaded = ?report.loaded,
                            unloaded = ?report.unloaded,
                            failed = report.failed.len(),
                            "components directory changed"
                        );
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the watcher thread: {e}")))?;
        Ok(WatchGuard { _watcher: watcher })
    }
}

/// Keeps the directory watcher alive.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}
