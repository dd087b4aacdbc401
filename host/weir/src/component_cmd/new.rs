//! `weir component new`: a component project that builds with `weir component build` and
//! loads as is, with its own copy of the SDK (`.weir/`), source using it, one test and a README.

use std::path::Path;

use anyhow::{bail, Context as _};
use weir_runtime::{Manifest, WorldKind};

use super::sdk::{self, SdkFile};

/// The languages `new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate (`cargo build --target wasm32-wasip2`).
    Rust,
    /// A JavaScript module (componentize-js).
    Js,
    /// A Python module (componentize-py).
    Python,
}

/// One world's template: its source, its logic (pure, tested natively) and its test (for
/// Rust, all three are `src/lib.rs`).
struct Template {
    source: &'static str,
    logic: &'static str,
    test: &'static str,
}

macro_rules! template {
    ($dir:literal, $world:literal, $source:literal, $logic:literal, $test:literal) => {
        Template {
            source: include_str!(concat!(
                "../../../../sdk/templates/",
                $dir,
                "/",
                $world,
                $source
            )),
            logic: include_str!(concat!(
                "../../../../sdk/templates/",
                $dir,
                "/",
                $world,
                $logic
            )),
            test: include_str!(concat!(
                "../../../../sdk/templates/",
                $dir,
                "/",
                $world,
                $test
            )),
        }
    };
    // A Rust crate keeps its logic and its test in `src/lib.rs`.
    (rust, $world:literal) => {
        Template {
            source: include_str!(concat!("../../../../sdk/templates/rust/", $world, ".rs")),
            logic: "",
            test: "",
        }
    };
}

fn template(lang: Lang, world: WorldKind) -> Template {
    match (lang, world) {
        (Lang::Rust, WorldKind::Router) => template!(rust, "router"),
        (Lang::Rust, WorldKind::Pricing) => template!(rust, "pricing"),
        (Lang::Rust, WorldKind::Pipeline) => template!(rust, "pipeline"),
        (Lang::Js, WorldKind::Router) => template!("js", "router", ".js", ".logic.js", ".test.mjs"),
        (Lang::Js, WorldKind::Pricing) => {
            template!("js", "pricing", ".js", ".logic.js", ".test.mjs")
        }
        (Lang::Js, WorldKind::Pipeline) => {
            template!("js", "pipeline", ".js", ".logic.js", ".test.mjs")
        }
        (Lang::Python, WorldKind::Router) => {
            template!("python", "router", ".py", ".logic.py", ".test.py")
        }
        (Lang::Python, WorldKind::Pricing) => {
            template!("python", "pricing", ".py", ".logic.py", ".test.py")
        }
        (Lang::Python, WorldKind::Pipeline) => {
            template!("python", "pipeline", ".py", ".logic.py", ".test.py")
        }
    }
}

const CARGO_TOML: &str = include_str!("../../../../sdk/templates/rust/Cargo.toml.tmpl");

/// The manifest of a new component: its world's settings, commented.
fn manifest(name: &str, world: WorldKind, lang: Lang) -> String {
    let description = match world {
        WorldKind::Router => "Ranks orchestrators: cheapest per unit of work first.",
        WorldKind::Pricing => "Quotes a fixed price, doubled when the node is busy.",
        WorldKind::Pipeline => "Runs a granted model on batch inputs; passes live segments.",
    };
    let mut text = format!(
        "name = \"{name}\"\nworld = \"{}\"\nversion = \"0.1.0\"\ndescription = \"{description}\"\n",
        world.as_str()
    );
    if lang != Lang::Rust && world != WorldKind::Pipeline {
        text.push_str("\n[limits]\n# An interpreted guest: more memory and time than a compiled policy needs.\nmemory_mib = 128\ntimeout_ms = 250\n");
    }
    text.push_str(match world {
        WorldKind::Router => "\n[config]\n# Candidates dearer than this (base units per unit of work) are left out.\n# max_price_per_unit = \"2000\"\n",
        WorldKind::Pricing => "\n[config]\nprice_per_unit = \"1000\"\npixels_per_unit = \"1\"\ncurrency = \"WEI\"\n# Load (percent of capacity) from which the price doubles.\nbusy_pct = \"80\"\n",
        WorldKind::Pipeline => "\n# Run one of the node's models on each batch job's inputs:\n# [permissions]\n# models = [\"upscale/upscalerjs/default-model\"]\n# [config]\n# model = \"upscale/upscalerjs/default-model\"\n",
    });
    text
}

/// The project's README: how to test, build and install it.
fn readme(name: &str, world: WorldKind, lang: Lang) -> String {
    let test = match lang {
        Lang::Rust => "cargo test",
        Lang::Js => "node --test",
        Lang::Python => "python3 -m unittest",
    };
    format!(
        "# {name}\n\nA Weir `{world}` component in {lang:?}, made by `weir component new`.\n\n\
         ```sh\n{test}                                # the logic's test, natively\n\
         weir component build .                    # build/components/{name}.wasm and {name}.toml\n\
         cp build/components/{name}.* weir-data/components/   # a running node loads it\n```\n\n\
         `.weir/` holds the copy of Weir's SDK and WIT this project builds with. For JavaScript\n\
         and Python, `weir component build` installs the pinned toolchain (componentize-js or\n\
         componentize-py) once in `~/.cache/weir/tools/`.\n\
         The manifest `{name}.toml` sets its limits, permissions and config.\n",
        world = world.as_str()
    )
}

/// Create project `name` for `world` in `lang` under `parent`.
pub(super) fn scaffold(
    name: &str,
    world: WorldKind,
    lang: Lang,
    parent: &Path,
) -> anyhow::Result<()> {
    let manifest_text = manifest(name, world, lang);
    Manifest::parse(&manifest_text, Some(name)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let t = template(lang, world);
    let named = |text: &str| text.replace("{{name}}", name);
    let mut files: Vec<(String, String)> = vec![
        (format!("{name}.toml"), manifest_text),
        ("README.md".into(), readme(name, world, lang)),
        (
            ".gitignore".into(),
            "/build/\n/target/\n__pycache__/\n".into(),
        ),
    ];
    let carried: &[&[SdkFile]] = match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), named(CARGO_TOML)));
            files.push(("src/lib.rs".into(), named(t.source)));
            &[sdk::WIT, sdk::RUST]
        }
        Lang::Js => {
            files.push((format!("{name}.js"), named(t.source)));
            files.push(("logic.js".into(), named(t.logic)));
            files.push(("logic.test.mjs".into(), named(t.test)));
            &[sdk::WIT, sdk::JS]
        }
        Lang::Python => {
            files.push(("app.py".into(), named(t.source)));
            files.push(("logic.py".into(), named(t.logic)));
            files.push(("test_logic.py".into(), named(t.test)));
            &[sdk::WIT, sdk::PYTHON]
        }
    };
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    for files in carried {
        sdk::write(&dir.join(".weir"), files)?;
    }
    println!(
        "created {} ({} component in {lang:?}); build it with: weir component build {}",
        dir.display(),
        world.as_str(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_and_language_scaffolds_a_loadable_manifest_and_its_files() {
        let root = tempfile::tempdir().expect("tempdir");
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for world in [WorldKind::Router, WorldKind::Pricing, WorldKind::Pipeline] {
                let name = format!("c-{lang:?}-{}", world.as_str()).to_lowercase();
                scaffold(&name, world, lang, root.path()).expect("scaffold");
                let dir = root.path().join(&name);
                let m = Manifest::load(&dir.join(format!("{name}.toml"))).expect("manifest");
                assert_eq!(m.world, world);
                assert!(dir.join(".weir/wit/worlds.wit").is_file());
                let source = match lang {
                    Lang::Rust => dir.join("src/lib.rs"),
                    Lang::Js => dir.join(format!("{name}.js")),
                    Lang::Python => dir.join("app.py"),
                };
                let text = std::fs::read_to_string(source).expect("source");
                assert!(text.contains(&name) && !text.contains("{{"), "{text}");
            }
        }
        // Not twice, and not under a name a manifest refuses.
        let again = scaffold("c-rust-router", WorldKind::Router, Lang::Rust, root.path());
        assert!(again.is_err_and(|e| e.to_string().contains("already exists")));
        let bad = scaffold("Bad Name", WorldKind::Router, Lang::Rust, root.path());
        assert!(bad.is_err_and(|e| e.to_string().contains("must be 1-64")));
        assert!(!root.path().join("Bad Name").exists());
    }
}
