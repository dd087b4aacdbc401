//! `weir component new` scaffolds a project in every language for every world that, outside
//! the repository, passes its own test natively, builds with `weir component build` and loads
//! into a node as is, where each answers as its template says.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::json;

use crate::support::*;

const LANGS: [&str; 3] = ["rust", "js", "python"];
const WORLDS: [&str; 3] = ["router", "pricing", "pipeline"];

/// Run `cmd` in `dir`; panic with its output unless it succeeds.
fn run_in(dir: &Path, cmd: &mut Command) {
    let out = cmd.current_dir(dir).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} in {}: {}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The project's own test, run natively as its README says.
fn native_test(lang: &str, project: &Path, cargo_target: &Path) {
    match lang {
        "rust" => run_in(
            project,
            Command::new("cargo")
                .args(["test", "--quiet"])
                .env("CARGO_TARGET_DIR", cargo_target),
        ),
        "js" => run_in(project, Command::new("node").arg("--test")),
        _ => run_in(project, Command::new("python3").args(["-m", "unittest"])),
    }
}

#[test]
fn scaffolded_projects_in_every_language_build_outside_the_repository_and_answer_as_written() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    // Rust projects share one target directory (the SDK's dependencies compile once); it
    // lives under the repository's target so later runs reuse it.
    let cargo_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffolds");
    for lang in LANGS {
        for world in WORLDS {
            let name = format!("my-{lang}-{world}");
            run_in(
                work.path(),
                Command::new(env!("CARGO_BIN_EXE_weir")).args([
                    "component",
                    "new",
                    &name,
                    "--world",
                    world,
                    "--lang",
                    lang,
                ]),
            );
            let project = work.path().join(&name);
            native_test(lang, &project, &cargo_target);
            // Built from the working directory outside the repository: the project's own SDK
            // copy is what it builds with.
            run_in(
                work.path(),
                Command::new(env!("CARGO_BIN_EXE_weir"))
                    .args(["component", "build", &name, "--out"])
                    .arg(&out)
                    .env("CARGO_TARGET_DIR", &cargo_target)
                    .env_remove("WEIR_SDK_DIR")
                    .env_remove("WEIR_WIT_DIR"),
            );
        }
    }

    // Every one loads into a node as built, and answers as its template says.
    let data = tempfile::tempdir().expect("tempdir");
    let components = data.path().join("components");
    std::fs::create_dir_all(&components).expect("mkdir");
    for name in ["default-router", "default-pricing"] {
        place_default(&components, name);
    }
    for entry in std::fs::read_dir(&out).expect("out") {
        let path = entry.expect("entry").path();
        let file = path.file_name().expect("name");
        std::fs::copy(&path, components.join(file)).expect("copy");
    }
    let node = Node::start_in(data, &[]);
    let request = json!({"id": "r1", "capability": "image-to-image", "model": "m"});
    let candidate = |id: &str, ppu: u64, pixels: u64| json!({"id": id, "price": {"price_per_unit": ppu, "pixels_per_unit": pixels, "currency": "WEI"}, "latency_ms": 5});
    let png = std::fs::read(artifact("models/fixture.png")).expect("fixture");
    let data_base64 = base64::engine::general_purpose::STANDARD.encode(&png);
    for lang in LANGS {
        // Cheapest per unit first: a 3, b 2, c 9 per unit.
        let (status, body) = node.call(
            &format!("my-{lang}-router"),
            &json!({"request": request, "candidates": [candidate("a", 30, 10), candidate("b", 2, 1), candidate("c", 9, 1)]}),
        );
        assert_eq!(status, 200, "{lang}: {body}");
        assert_eq!(body["ranking"], json!([1, 0, 2]), "{lang}");
        // The manifest's price, doubled at full load.
        for (in_flight, expected) in [(0, 1000), (4, 2000)] {
            let (status, body) = node.call(
                &format!("my-{lang}-pricing"),
                &json!({"request": request, "context": {"in_flight": in_flight, "capacity": 4}}),
            );
            assert_eq!(status, 200, "{lang}: {body}");
            assert_eq!(body["price"]["price_per_unit"], expected, "{lang}: {body}");
        }
        // Without a model configured, a batch job's inputs come back as they are.
        let (status, body) = node.call(
            &format!("my-{lang}-pipeline"),
            &json!({"request": request, "inputs": [{"content_type": "image/png", "data_base64": data_base64}]}),
        );
        assert_eq!(status, 200, "{lang}: {body}");
        assert_eq!(body["outputs"][0]["data_base64"], data_base64, "{lang}");
        assert_eq!(body["params"]["inputs"], 1, "{lang}: {body}");
    }
}
