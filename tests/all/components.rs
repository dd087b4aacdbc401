//! Loading and calling components directly through the runtime: every bad-input case gets a
//! clear error naming the component and the reason, and the host keeps serving.

use weir_runtime::{CallFailure, GuestError, Manifest, RuntimeError, StreamInfo, WorldKind};

use crate::support::*;

/// The deadline of the misbehaving component in tests that are not about timeouts: long
/// enough that a loaded machine never turns a memory or trap failure into a timeout.
const GENEROUS_TIMEOUT_MS: u64 = 10_000;

fn misbehaving(timeout_ms: u64, extra: &str) -> String {
    manifest(
        "misbehaving",
        "router",
        &format!("[limits]\ntimeout_ms = {timeout_ms}\nmemory_mib = 16\npool_size = 2\n{extra}"),
    )
}

fn load_misbehaving(
    extra: &str,
) -> (
    std::sync::Arc<weir_runtime::Registry>,
    tempfile::TempDir,
    prometheus::Registry,
) {
    load_misbehaving_with(GENEROUS_TIMEOUT_MS, extra)
}

fn load_misbehaving_with(
    timeout_ms: u64,
    extra: &str,
) -> (
    std::sync::Arc<weir_runtime::Registry>,
    tempfile::TempDir,
    prometheus::Registry,
) {
    let (registry, dir, metrics) = registry();
    place(
        dir.path(),
        "misbehaving",
        &artifact("test-programs/misbehaving-router.wasm"),
        &misbehaving(timeout_ms, extra),
    );
    registry.load("misbehaving").expect("loads");
    (registry, dir, metrics)
}

fn failure(e: RuntimeError) -> CallFailure {
    match e {
        RuntimeError::Call {
            component, failure, ..
        } => {
            assert_eq!(component, "misbehaving");
            failure
        }
        other => panic!("expected a call error, got {other}"),
    }
}

fn select_mode(registry: &weir_runtime::Registry, mode: &str) -> Result<Vec<u32>, RuntimeError> {
    let c = registry.get("misbehaving").expect("loaded");
    c.select(&request(&format!("mode:{mode}")), &[])
}

#[test]
fn a_guest_that_loops_forever_times_out_and_the_host_keeps_serving() {
    let (registry, _dir, metrics) = load_misbehaving_with(500, "");
    let err = select_mode(&registry, "loop").unwrap_err();
    assert!(matches!(
        failure(err),
        CallFailure::Timeout { timeout_ms: 500 }
    ));
    assert_eq!(
        select_mode(&registry, "ok").expect("serves after a timeout"),
        Vec::<u32>::new()
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&metrics.gather())
        .expect("encode");
    assert_eq!(
        metric(
            &text,
            "weir_component_failures_total{component=\"misbehaving\",kind=\"timeout\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_guest_that_allocates_without_bound_hits_its_memory_limit() {
    let (registry, _dir, _m) = load_misbehaving("");
    let err = select_mode(&registry, "alloc").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(failure(err), CallFailure::OutOfMemory { limit_mib: 16 }),
        "{msg}"
    );
    assert!(msg.contains("memory limit of 16 MiB"), "{msg}");
    assert!(select_mode(&registry, "ok").is_ok());
}

#[test]
fn a_trapping_guest_gets_a_typed_error_and_a_fresh_instance_next_time() {
    let (registry, _dir, _m) = load_misbehaving("");
    let err = select_mode(&registry, "trap").unwrap_err();
    match failure(err) {
        CallFailure::Trap(msg) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("expected a trap, got {other}"),
    }
    // `calls` reports the serving instance's call count: a warm instance is reused between
    // calls, and the one that trapped is replaced by a fresh one.
    let calls = |registry: &weir_runtime::Registry| match failure(
        select_mode(registry, "calls").unwrap_err(),
    ) {
        CallFailure::Guest(GuestError::Internal(m)) => m,
        other => panic!("unexpected {other}"),
    };
    assert_eq!(calls(&registry), "calls=1");
    assert_eq!(calls(&registry), "calls=2");
    assert!(matches!(
        failure(select_mode(&registry, "trap").unwrap_err()),
        CallFailure::Trap(_)
    ));
    assert_eq!(calls(&registry), "calls=1");
}

#[test]
fn garbage_answers_and_guest_errors_are_reported_as_such() {
    let (registry, _dir, metrics) = load_misbehaving("");
    let c = registry.get("misbehaving").expect("loaded");
    let err = c.select(&request("mode:garbage"), &[]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(failure(err), CallFailure::BadOutput(_)), "{text}");
    assert!(text.contains("out of range"), "{text}");
    let err = c.select(&request("mode:error"), &[]).unwrap_err();
    assert!(
        matches!(failure(err), CallFailure::Guest(GuestError::InvalidRequest(m)) if m == "asked to fail")
    );
    // Both calls failed; only the rejected answer is a fault of the component (failures_total).
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&metrics.gather())
        .expect("encode");
    let calls = |outcome: &str| {
        metric(
            &text,
            &format!("weir_component_calls_total{{component=\"misbehaving\",function=\"select\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("error"), Some(2.0));
    assert_eq!(
        metric(
            &text,
            "weir_component_failures_total{component=\"misbehaving\",kind=\"bad_output\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn fuel_limits_stop_a_spinning_guest_when_enabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, _m) = runtime_with(true);
    place(
        dir.path(),
        "misbehaving",
        &artifact("test-programs/misbehaving-router.wasm"),
        &manifest(
            "misbehaving",
            "router",
            "[limits]\nfuel = 5000000\ntimeout_ms = 10000",
        ),
    );
    let manifest = Manifest::load(&dir.path().join("misbehaving.toml")).expect("manifest");
    let c = runtime.load(manifest, dir.path()).expect("loads");
    let err = c.select(&request("mode:loop"), &[]).unwrap_err();
    assert!(matches!(failure(err), CallFailure::OutOfFuel));
    assert!(c.select(&request("mode:ok"), &[]).is_ok());
}

#[test]
fn bytes_that_are_not_a_component_are_refused_with_the_reason() {
    let (registry, dir, _m) = registry();
    // A valid core module (magic + version 1), not a component.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(dir.path().join("core.toml"), manifest("core", "router", "")).expect("write");
    let err = registry.load("core").unwrap_err().to_string();
    assert!(
        err.contains("component `core`") && err.contains("not a WebAssembly component"),
        "{err}"
    );

    std::fs::write(dir.path().join("junk.wasm"), b"this is not wasm at all").expect("write");
    std::fs::write(dir.path().join("junk.toml"), manifest("junk", "router", "")).expect("write");
    let err = registry.load("junk").unwrap_err().to_string();
    assert!(
        err.contains("component `junk`") && err.contains("not a WebAssembly binary"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("nowasm.toml"),
        manifest("nowasm", "router", ""),
    )
    .expect("write");
    let err = registry.load("nowasm").unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("nowasm.wasm"),
        "{err}"
    );
    assert!(registry.list().is_empty());
}

#[test]
fn a_component_of_another_world_is_refused_and_named() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "wrong",
        &artifact("components/default-pricing.wasm"),
        &manifest("wrong", "router", ""),
    );
    let err = registry.load("wrong").unwrap_err().to_string();
    assert!(err.contains("does not export the `router` world"), "{err}");
    assert!(err.contains("belongs to the `pricing` world"), "{err}");
}

#[test]
fn a_component_importing_what_its_world_does_not_grant_is_refused() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "greedy",
        &artifact("test-programs/greedy-router.wasm"),
        &manifest("greedy", "router", ""),
    );
    let err = registry.load("greedy").unwrap_err().to_string();
    // It imports transcode (and media, which transcode's types come from): refused either way.
    assert!(err.contains("imports instance `weir:host/"), "{err}");
    assert!(
        err.contains("which the `router` world does not grant"),
        "{err}"
    );
}

#[test]
fn the_wrong_call_for_a_world_is_a_clear_error() {
    let (registry, dir, _m) = registry();
    place_default(dir.path(), "default-pricing");
    let c = registry.load("default-pricing").expect("loads");
    let err = c.select(&request("x"), &[]).unwrap_err();
    assert!(matches!(
        err,
        RuntimeError::WrongWorld {
            expected: WorldKind::Router,
            actual: WorldKind::Pricing,
            ..
        }
    ));
    assert!(registry
        .get_world("default-pricing", WorldKind::Router)
        .is_err());
    assert!(matches!(
        registry.get("absent"),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn default_guests_rank_and_price_from_their_config() {
    let (registry, dir, _m) = registry();
    for name in ["default-router", "default-pricing"] {
        place_default(dir.path(), name);
    }
    let report = registry.scan();
    assert_eq!(
        report.loaded,
        vec!["default-pricing".to_owned(), "default-router".to_owned()]
    );

    let price = registry
        .get("default-pricing")
        .expect("loaded")
        .quote(&request("p"), &context(0, 4))
        .expect("quote");
    assert_eq!(
        (
            price.price_per_unit,
            price.pixels_per_unit,
            price.currency.as_str()
        ),
        (4768371, 1_000_000, "WEI")
    );

    let mk = |id: &str, ppu: u64, latency: u32| weir_runtime::Candidate {
        id: id.into(),
        url: String::new(),
        price: weir_runtime::Price {
            price_per_unit: ppu,
            pixels_per_unit: 1,
            currency: "WEI".into(),
        },
        latency_ms: latency,
        success_bp: 10_000,
        region: String::new(),
        gpu_class: String::new(),
        warm_models: vec![],
        capacity: 4,
        in_flight: 0,
    };
    let router = registry.get("default-router").expect("loaded");
    let ranking = router
        .select(
            &request("r"),
            &[
                mk("slow-dear", 20, 300),
                mk("fast-cheap", 5, 20),
                mk("mid", 10, 100),
            ],
        )
        .expect("select");
    assert_eq!(ranking, vec![1, 2, 0]);
    let err = router.select(&request("r"), &[]).unwrap_err().to_string();
    assert!(err.contains("no-candidates"), "{err}");
}

#[test]
fn pipelines_run_batch_jobs_and_keep_state_for_a_stream() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "echo",
        &artifact("test-programs/echo-pipeline.wasm"),
        &manifest("echo", "pipeline", ""),
    );
    let echo = registry.load("echo").expect("loads");
    let blob = weir_runtime::media::Blob {
        content_type: "image/png".into(),
        data: b"hello pipeline bytes".to_vec().into(),
    };
    let (outputs, params) = echo.run(request("job"), vec![blob]).expect("run");
    assert_eq!(outputs.len(), 1);
    assert_eq!(&*outputs[0].data, b"hello pipeline bytes");
    let bytes = params.iter().find(|p| p.name == "bytes").map(|p| &p.value);
    assert!(matches!(bytes, Some(weir_runtime::ParamValue::Integer(20))));

    let mut stream = echo
        .start_stream(StreamInfo {
            id: "s1".into(),
            capability: "echo".into(),
            params: vec![],
        })
        .expect("start");
    for seq in 0..3u64 {
        let out = stream
            .on_segment(weir_runtime::media::Segment {
                seq,
                duration_ms: 2000,
                content_type: "video/mp2t".into(),
                data: vec![0x47; 188].into(),
            })
            .expect("segment");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq, seq);
    }
    let empty = stream.on_segment(weir_runtime::media::Segment {
        seq: 9,
        duration_ms: 0,
        content_type: "video/mp2t".into(),
        data: Vec::new().into(),
    });
    assert!(empty
        .unwrap_err()
        .to_string()
        .contains("segment 9 is empty"));
    stream.on_control("{}").expect("control");
    // State lives as long as the stream's instance: one control so far, plus this one.
    let err = stream.on_control("\"count\"").unwrap_err().to_string();
    assert!(err.contains("controls=2"), "{err}");
    stream.stop().expect("stop");
}

#[test]
fn manifests_with_unknown_keys_are_refused_before_loading() {
    let (registry, dir, _m) = registry();
    place(
        dir.path(),
        "typo",
        &artifact("components/default-router.wasm"),
        &manifest("typo", "router", "[limits]\ntimeout = 5"),
    );
    let err = registry.load("typo").unwrap_err().to_string();
    assert!(
        err.contains("invalid manifest") && err.contains("timeout"),
        "{err}"
    );
}

/// What a sandbox probe answered: `ok: …` or `denied: …`.
fn probe(registry: &weir_runtime::Registry, mode: &str) -> String {
    match failure(select_mode(registry, mode).expect_err("a probe answers with a guest error")) {
        CallFailure::Guest(GuestError::Internal(m)) => m,
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_component_gets_no_files_environment_or_network_unless_granted() {
    let secret_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(secret_dir.path().join("secret.txt"), "host secret").expect("write");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let home = std::env::var("PATH").expect("PATH is set");

    let (registry, _dir, _m) = load_misbehaving("");
    let host_file = secret_dir.path().join("secret.txt");
    let denied = [
        "env:PATH".to_owned(),
        format!("read:{}", host_file.display()),
        "read:/data/secret.txt".to_owned(),
        format!("connect:{addr}"),
    ];
    for mode in &denied {
        let answer = probe(&registry, mode);
        assert!(
            answer.starts_with("denied:"),
            "{mode} was allowed: {answer}"
        );
    }

    // Now grant a read-only directory, one variable and one address.
    let grants = format!(
        "[permissions]\ndirs = [{{ host = \"{}\", guest = \"/data\" }}]\nenv = [\"PATH\"]\nnetwork = [\"{addr}\"]\n",
        secret_dir.path().display()
    );
    let (registry, _dir2, _m2) = load_misbehaving(&grants);
    assert_eq!(probe(&registry, "env:PATH"), format!("ok: {home}"));
    assert_eq!(probe(&registry, "read:/data/secret.txt"), "ok: host secret");
    assert!(probe(&registry, "write:/data/new.txt").starts_with("denied:"));
    assert!(!secret_dir.path().join("new.txt").exists());
    assert!(probe(&registry, "read:/data/../../etc/hostname").starts_with("denied:"));
    assert_eq!(
        probe(&registry, &format!("connect:{addr}")),
        "ok: connected"
    );
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_addr = other.local_addr().expect("addr");
    assert!(probe(&registry, &format!("connect:{other_addr}")).starts_with("denied:"));
}

#[test]
fn warm_instances_are_retired_after_their_call_budget() {
    let (registry, _dir, _m) = load_misbehaving("max_calls_per_instance = 2");
    let calls = || match failure(select_mode(&registry, "calls").unwrap_err()) {
        CallFailure::Guest(GuestError::Internal(m)) => m,
        other => panic!("unexpected {other}"),
    };
    assert_eq!(calls(), "calls=1");
    assert_eq!(calls(), "calls=2");
    // The instance served its two calls and was retired: the next one starts fresh.
    assert_eq!(calls(), "calls=1");
}
