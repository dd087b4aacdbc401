//! Component manifests: `NAME.toml` beside the component's `.wasm` in the components directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorldKind {
    /// Ranks orchestrator candidates (`select`).
    Router,
    /// Quotes prices (`quote`).
    Pricing,
    /// Runs batch jobs and live streams.
    Pipeline,
}

impl WorldKind {
    /// The WIT world name, e.g. `router`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorldKind::Router => "router",
            WorldKind::Pricing => "pricing",
            WorldKind::Pipeline => "pipeline",
        }
    }

    /// Whether instances are kept warm between calls by default.
    pub fn warm_by_default(self) -> bool {
        !matches!(self, WorldKind::Pipeline)
    }
}

impl std::fmt::Display for WorldKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorldKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "router" => Ok(WorldKind::Router),
            "pricing" => Ok(WorldKind::Pricing),
            "pipeline" => Ok(WorldKind::Pipeline),
            other => Err(format!(
                "unknown world `{other}` (expected router, pricing or pipeline)"
            )),
        }
    }
}

/// How instances are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Keep a small pool of live instances; reset one after a trap.
    Warm,
    /// A new instance for every call (or every stream, for pipelines).
    Fresh,
}

/// Per-call limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB.
    pub memory_mib: u32,
    /// Wall-clock deadline per call (and per instantiation), in milliseconds.
    pub timeout_ms: u32,
    /// Instructions budget per call when the node runs with fuel enabled (0 = unlimited).
    pub fuel: u64,
    /// Warm instances kept per component.
    pub pool_size: u32,
    /// Calls an instance serves before it is retired and replaced.
    pub max_calls_per_instance: u32,
    /// Largest object the component may store through `weir:host/storage`, in KiB.
    pub storage_object_kib: u32,
}

/// The default of [`Limits::storage_object_kib`]: 16 MiB.
pub const DEFAULT_STORAGE_OBJECT_KIB: u32 = 16 * 1024;

/// The most [`Limits::storage_object_kib`] may be: 1 GiB.
pub const MAX_STORAGE_OBJECT_KIB: u32 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            timeout_ms: 100,
            fuel: 0,
            pool_size: 8,
            max_calls_per_instance: 100_000,
            storage_object_kib: DEFAULT_STORAGE_OBJECT_KIB,
        }
    }
}

impl Limits {
    /// The defaults of a component of `world`: router and pricing calls sit on a request's
    /// path (100 ms, 64 MiB); a pipeline's calls do live media work on whole segments and may
    /// be interpreted (JavaScript, Python), so it gets 2 s and 256 MiB.
    pub fn for_world(world: WorldKind) -> Limits {
        match world {
            WorldKind::Router | WorldKind::Pricing => Limits::default(),
            WorldKind::Pipeline => Limits {
                memory_mib: 256,
                timeout_ms: 2_000,
                ..Limits::default()
            },
        }
    }
}

/// `[limits]` as written: what it leaves out comes from [`Limits::for_world`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    memory_mib: Option<u32>,
    timeout_ms: Option<u32>,
    fuel: Option<u64>,
    pool_size: Option<u32>,
    max_calls_per_instance: Option<u32>,
    storage_object_kib: Option<u32>,
}

impl LimitsSpec {
    fn resolve(self, world: WorldKind) -> Limits {
        let d = Limits::for_world(world);
        Limits {
            memory_mib: self.memory_mib.unwrap_or(d.memory_mib),
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
            fuel: self.fuel.unwrap_or(d.fuel),
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            max_calls_per_instance: self
                .max_calls_per_instance
                .unwrap_or(d.max_calls_per_instance),
            storage_object_kib: self.storage_object_kib.unwrap_or(d.storage_object_kib),
        }
    }
}

/// A directory the component may open, as a WASI preopen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Host directory, relative to the manifest's directory or absolute.
    pub host: PathBuf,
    /// Path the guest sees, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may write (read-only by default).
    #[serde(default)]
    pub writable: bool,
}

/// What a component may touch beyond the Weir interfaces. Nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Permissions {
    /// Directories it may open.
    pub dirs: Vec<DirGrant>,
    /// Host environment variables passed through (by name).
    pub env: Vec<String>,
    /// Socket addresses (`IP:PORT`) it may connect to over TCP.
    pub network: Vec<std::net::SocketAddr>,
    /// Whether its stdout/stderr go to the host's stderr (discarded by default).
    pub stdio: bool,
    /// Models it may run through `weir:host/models.invoke`: `capability/model-id`, or
    /// `capability/*` for every model of a capability.
    pub models: Vec<String>,
}

/// A component's manifest as written (limits not yet completed with the world's defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestSpec {
    name: String,
    world: WorldKind,
    #[serde(default = "default_version")]
    version: String,
    #[serde(default)]
    wasm: Option<PathBuf>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    instance: Option<InstanceMode>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    permissions: Permissions,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

impl From<ManifestSpec> for Manifest {
    fn from(m: ManifestSpec) -> Manifest {
        Manifest {
            limits: m.limits.resolve(m.world),
            name: m.name,
            world: m.world,
            version: m.version,
            wasm: m.wasm,
            description: m.description,
            instance: m.instance,
            permissions: m.permissions,
            config: m.config,
        }
    }
}

/// A component's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ManifestSpec")]
pub struct Manifest {
    /// Unique name; must equal the manifest's file stem.
    pub name: String,
    /// World the component implements.
    pub world: WorldKind,
    /// Version label (informational; the content hash identifies the code).
    #[serde(default = "default_version")]
    pub version: String,
    /// The `.wasm` file, relative to the manifest's directory (default `NAME.wasm`).
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// One line saying what the component does.
    #[serde(default)]
    pub description: String,
    /// Instance reuse (default: warm for router/pricing, fresh for pipeline).
    #[serde(default)]
    pub instance: Option<InstanceMode>,
    /// Per-call limits: those the manifest sets, the rest from [`Limits::for_world`].
    #[serde(default)]
    pub limits: Limits,
    /// Grants beyond the Weir interfaces.
    #[serde(default)]
    pub permissions: Permissions,
    /// The component's settings, read through `weir:host/config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_version() -> String {
    "0.0.0".to_owned()
}

/// Largest accepted manifest, in bytes.
const MAX_MANIFEST_BYTES: usize = 256 * 1024;

impl Manifest {
    /// Parse and validate manifest text. `file_stem` is the manifest's file name without `.toml`, when it has one.
    pub fn parse(text: &str, file_stem: Option<&str>) -> Result<Manifest, RuntimeError> {
        let name_for_errors = file_stem.unwrap_or("<manifest>").to_owned();
        let invalid = |reason: String| RuntimeError::InvalidManifest {
            component: name_for_errors.clone(),
            reason,
        };
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                text.len()
            )));
        }
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        manifest.validate(file_stem).map_err(invalid)?;
        Ok(manifest)
    }

    /// Read `path` and parse it.
    pub fn load(path: &Path) -> Result<Manifest, RuntimeError> {
        let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::InvalidManifest {
            component: stem.clone().unwrap_or_default(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Manifest::parse(&text, stem.as_deref())
    }

    fn validate(&self, file_stem: Option<&str>) -> Result<(), String> {
        if !is_valid_name(&self.name) {
            return Err(format!(
                "name `{}` must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter",
                self.name
            ));
        }
        if let Some(stem) = file_stem {
            if stem != self.name {
                return Err(format!(
                    "name `{}` does not match the manifest file name `{stem}.toml`",
                    self.name
                ));
            }
        }
        if let Some(wasm) = &self.wasm {
            if wasm.is_absolute()
                || wasm
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "wasm path `{}` must stay inside the components directory",
                    wasm.display()
                ));
            }
        }
        let l = &self.limits;
        if !(1..=4096).contains(&l.memory_mib) {
            return Err(format!(
                "limits.memory_mib = {} must be within 1..=4096",
                l.memory_mib
            ));
        }
        if !(1..=600_000).contains(&l.timeout_ms) {
            return Err(format!(
                "limits.timeout_ms = {} must be within 1..=600000",
                l.timeout_ms
            ));
        }
        if l.pool_size > 256 {
            return Err(format!(
                "limits.pool_size = {} must be at most 256",
                l.pool_size
            ));
        }
        if l.max_calls_per_instance == 0 {
            return Err("limits.max_calls_per_instance must be at least 1".to_owned());
        }
        if !(1..=MAX_STORAGE_OBJECT_KIB).contains(&l.storage_object_kib) {
            return Err(format!(
                "limits.storage_object_kib = {} must be within 1..={MAX_STORAGE_OBJECT_KIB}",
                l.storage_object_kib
            ));
        }
        for grant in &self.permissions.dirs {
            if !grant.guest.starts_with('/') {
                return Err(format!(
                    "permissions.dirs guest path `{}` must be absolute",
                    grant.guest
                ));
            }
        }
        if let Some(bad) = self.permissions.models.iter().find(|g| {
            g.split_once('/')
                .is_none_or(|(c, m)| c.is_empty() || m.is_empty())
        }) {
            return Err(format!(
                "permissions.models entry `{bad}` must be `capability/model-id` or `capability/*`"
            ));
        }
        Ok(())
    }

    /// The `.wasm` path, resolved against the manifest's directory.
    pub fn wasm_path(&self, dir: &Path) -> PathBuf {
        dir.join(
            self.wasm
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.wasm", self.name))),
        )
    }

    /// The effective instance mode.
    pub fn instance_mode(&self) -> InstanceMode {
        self.instance.unwrap_or(if self.world.warm_by_default() {
            InstanceMode::Warm
        } else {
            InstanceMode::Fresh
        })
    }
}

/// Whether `name` is acceptable as a component name (also used as a file stem and metric label).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_manifest_with_defaults() {
        let m = Manifest::parse("name = \"r\"\nworld = \"router\"\n", Some("r")).expect("valid");
        assert_eq!(m.world, WorldKind::Router);
        assert_eq!(m.instance_mode(), InstanceMode::Warm);
        assert_eq!(m.wasm_path(Path::new("/c")), PathBuf::from("/c/r.wasm"));
        assert!(m.permissions.dirs.is_empty() && m.permissions.network.is_empty());
    }

    #[test]
    fn rejects_unknown_keys_bad_names_and_escapes() {
        let err = Manifest::parse("name = \"r\"\nworld = \"router\"\nbogus = 1\n", Some("r"))
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Manifest::parse("name = \"R!\"\nworld = \"router\"\n", None).unwrap_err();
        assert!(err.to_string().contains("must be 1-64"), "{err}");
        let err = Manifest::parse("name = \"a\"\nworld = \"router\"\n", Some("b")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = Manifest::parse(
            "name = \"a\"\nworld = \"router\"\nwasm = \"../x.wasm\"\n",
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("inside the components directory"),
            "{err}"
        );
        let err = Manifest::parse("name = \"a\"\nworld = \"routr\"\n", None).unwrap_err();
        assert!(err.to_string().contains("routr"), "{err}");
        let err = Manifest::parse(
            "name = \"a\"\nworld = \"pipeline\"\n[permissions]\nmodels = [\"upscale\"]\n",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`upscale` must be"), "{err}");
        let err = Manifest::parse(
            "name = \"a\"\nworld = \"router\"\n[limits]\ntimeout_ms = 0\n",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn pipelines_are_fresh_by_default() {
        let m = Manifest::parse("name = \"p\"\nworld = \"pipeline\"\n", None).expect("valid");
        assert_eq!(m.instance_mode(), InstanceMode::Fresh);
    }

    #[test]
    fn limits_default_per_world_and_keep_what_the_manifest_sets() {
        let r = Manifest::parse("name = \"r\"\nworld = \"router\"\n", None).expect("valid");
        assert_eq!(r.limits, Limits::default());
        assert_eq!(r.limits.timeout_ms, 100);
        let p = Manifest::parse("name = \"p\"\nworld = \"pipeline\"\n", None).expect("valid");
        assert_eq!((p.limits.timeout_ms, p.limits.memory_mib), (2_000, 256));
        let p = Manifest::parse(
            "name = \"p\"\nworld = \"pipeline\"\n[limits]\ntimeout_ms = 15000\n",
            None,
        )
        .expect("valid");
        assert_eq!((p.limits.timeout_ms, p.limits.memory_mib), (15_000, 256));
        let err = Manifest::parse(
            "name = \"p\"\nworld = \"pipeline\"\n[limits]\ntimeout = 1\n",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }
}
