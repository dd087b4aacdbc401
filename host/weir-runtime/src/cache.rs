//! Compiled-code cache on disk, keyed by the wasm's content hash and the engine's configuration.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// A directory of `.cwasm` files written by this node.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

impl CodeCache {
    /// A cache in `dir` for code compiled by `engine`. Entries compiled under another engine
    /// configuration or wasmtime version live under other keys and are never loaded.
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CodeCache {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// Load the cached compilation of `wasm`, or compile it and cache the result; the flag
    /// says whether it was compiled.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.path_for(content_hash);
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, false)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable cached code");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        let tmp = self.dir.join(format!(
            ".{content_hash}-{}.tmp{}",
            self.engine_key,
            std::process::id()
        ));
        let written = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compiled-code cache");
            let _ = std::fs::remove_file(&tmp);
        }
        #[allow(
            unsafe_code,
            reason = "bytes were produced by precompile_component on this engine a moment ago"
        )]
        // SAFETY: `compiled` is the output of `Engine::precompile_component` on this very engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, true))
    }
}

#[allow(
    unsafe_code,
    reason = "the cache directory is written only by this node, with engine-keyed names"
)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: files in the cache directory are written only by `get_or_compile`, atomically
    // (temp file + rename), and named by the engine's compatibility hash; wasmtime also checks
    // the engine configuration and version recorded in the file before using it.
    unsafe { Component::deserialize_file(engine, path) }
}
