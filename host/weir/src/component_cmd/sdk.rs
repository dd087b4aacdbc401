//! The SDK the binary carries: Weir's WIT package, each language's helpers and build script,
//! the project templates of `weir component new` and the pinned component toolchains, so a
//! project builds anywhere the `weir` binary runs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// One file of the SDK: its path under the SDK root (the layout of the repository: `wit/…`,
/// `sdk/<lang>/…`) and its text.
pub(super) struct SdkFile {
    pub(super) path: &'static str,
    pub(super) text: &'static str,
}

macro_rules! sdk_file {
    ($path:literal) => {
        SdkFile {
            path: $path,
            text: include_str!(concat!("../../../../", $path)),
        }
    };
}

/// Weir's WIT package.
pub(super) const WIT: &[SdkFile] = &[
    sdk_file!("wit/host.wit"),
    sdk_file!("wit/media.wit"),
    sdk_file!("wit/types.wit"),
    sdk_file!("wit/video.wit"),
    sdk_file!("wit/worlds.wit"),
];

/// The Rust SDK crate.
pub(super) const RUST: &[SdkFile] = &[
    sdk_file!("sdk/rust/Cargo.toml"),
    sdk_file!("sdk/rust/src/lib.rs"),
];

/// The JavaScript helpers and build script.
pub(super) const JS: &[SdkFile] = &[sdk_file!("sdk/js/build.mjs"), sdk_file!("sdk/js/weir.js")];

/// The Python helpers and build script.
pub(super) const PYTHON: &[SdkFile] = &[
    sdk_file!("sdk/python/build.py"),
    sdk_file!("sdk/python/weir_sdk.py"),
];

/// `sdk/toolchain.mk`: the pinned componentize-js and componentize-py versions.
const TOOLCHAIN: &str = include_str!("../../../../sdk/toolchain.mk");

/// The version `sdk/toolchain.mk` pins for `key` (`COMPONENTIZE_JS_VERSION`, …).
pub(super) fn pinned(key: &str) -> anyhow::Result<&'static str> {
    TOOLCHAIN
        .lines()
        .filter_map(|l| l.split_once(":="))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .with_context(|| format!("sdk/toolchain.mk pins no {key}"))
}

/// Write `files` under `root`, creating directories; files already there are replaced.
pub(super) fn write(root: &Path, files: &[SdkFile]) -> anyhow::Result<()> {
    for f in files {
        let path = root.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, f.text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Weir's directory in the user's cache (`$XDG_CACHE_HOME/weir`, `~/.cache/weir`, else in the
/// temporary directory): the carried SDK and the toolchains installed for projects.
pub(super) fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("weir")
}

/// An SDK root holding every language, written once per binary version in the cache.
pub(super) fn cached() -> anyhow::Result<PathBuf> {
    let root = cache_dir().join(format!("sdk-{}", env!("CARGO_PKG_VERSION")));
    for files in [WIT, RUST, JS, PYTHON] {
        write(&root, files)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toolchain_versions_are_pinned_and_the_files_carried() {
        assert!(pinned("COMPONENTIZE_JS_VERSION").is_ok_and(|v| !v.is_empty()));
        assert!(pinned("COMPONENTIZE_PY_VERSION").is_ok_and(|v| !v.is_empty()));
        assert!(pinned("NOPE").is_err());
        assert!(WIT.iter().any(|f| f.text.contains("world pipeline")));
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), JS).expect("write");
        assert!(dir.path().join("sdk/js/weir.js").is_file());
    }
}
