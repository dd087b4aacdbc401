//! The `weir` command line: configuration errors and `weir component check`.

use std::process::Command;

use crate::support::*;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

#[test]
fn unknown_config_keys_stop_the_node_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[node]\nhttp_adr = \"127.0.0.1:0\"\n").expect("write");
    let out = weir(&["node", "--config", config.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_adr"), "{err}");
}

#[test]
fn component_check_reports_worlds_and_fails_on_a_mismatch() {
    let router = artifact("components/default-router.wasm");
    let out = weir(&[
        "component",
        "check",
        router.to_str().expect("utf8"),
        "--world",
        "router",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weir:host/routing@0.1.0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("router") && l.ends_with("ok")),
        "{text}"
    );

    let out = weir(&[
        "component",
        "check",
        router.to_str().expect("utf8"),
        "--world",
        "pricing",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not satisfy the `pricing` world"));

    let greedy = artifact("test-programs/greedy-router.wasm");
    let out = weir(&["component", "check", greedy.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("weir:host/transcode@0.1.0"));
}

#[test]
fn component_list_loads_every_manifest_in_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    place_default(dir.path(), "default-router");
    let out = weir(&[
        "component",
        "list",
        "--dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("default-router"));
    std::fs::write(
        dir.path().join("broken.toml"),
        "name = \"broken\"\nworld = \"router\"\n",
    )
    .expect("write");
    let out = weir(&[
        "component",
        "list",
        "--dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken.wasm"));
}

#[test]
fn component_build_compiles_a_rust_guest_and_checks_its_world() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(&repo)
        .args(["component", "build", "guests/default-router", "--out"])
        .arg(out_dir.path())
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.path().join("default-router.wasm").is_file());
    assert!(out_dir.path().join("default-router.toml").is_file());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("router") && l.ends_with("ok")),
        "{text}"
    );
}
