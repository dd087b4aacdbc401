//! Hot reload: swaps under load answer every call from the old or the new version; failed
//! loads leave the old version serving; removed manifests unload.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

const PRICE_LINE: &str = "\"price.text-to-image\" = \"4768371/1000000\"";

/// The shipped deadline of the default pricing component.
const SHIPPED_TIMEOUT: &str = "timeout_ms = 50";

fn priced(base: &str, ppu: u64) -> String {
    assert!(
        base.contains(PRICE_LINE),
        "the default pricing manifest changed"
    );
    base.replace(
        PRICE_LINE,
        &format!("\"price.text-to-image\" = \"{ppu}/1000000\""),
    )
}

/// The default pricing manifest with a deadline that a machine busy compiling the swapped-in
/// code cannot hit: the test is about atomic swaps, not about speed.
fn unhurried(base: &str) -> String {
    assert!(
        base.contains(SHIPPED_TIMEOUT),
        "the default pricing manifest changed"
    );
    base.replace(SHIPPED_TIMEOUT, "timeout_ms = 10000")
}

/// Replace a file atomically, as deploy tools do.
fn land(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

#[test]
fn swapping_code_and_config_under_load_fails_no_call() {
    let (registry, dir, _m) = registry();
    let base = unhurried(&built_manifest("components/default-pricing.toml"));
    place(
        dir.path(),
        "default-pricing",
        &artifact("components/default-pricing.wasm"),
        &base,
    );
    std::fs::copy(
        artifact("examples/pricing-surge-js.wasm"),
        dir.path().join("surge.wasm"),
    )
    .expect("copy");
    registry.scan();
    let _watch = registry.watch(Duration::from_millis(20)).expect("watch");

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (registry, stop, calls) = (registry.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let c = registry.get("default-pricing").expect("always loaded");
                    let p = c
                        .quote(&request("load"), &context(1, 4))
                        .expect("no call may fail");
                    seen.insert(p.price_per_unit);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();

    // Config swaps: 4768371 -> 1111 -> 2222, each visible after it lands.
    for ppu in [1111u64, 2222] {
        land(dir.path(), "default-pricing.toml", &priced(&base, ppu));
        let seen = eventually(Duration::from_secs(10), || {
            let p = registry
                .get("default-pricing")
                .ok()?
                .quote(&request("x"), &context(1, 4))
                .ok()?;
            (p.price_per_unit == ppu).then_some(())
        });
        assert!(seen.is_some(), "price {ppu} never became visible");
    }
    // Code swap: the same name now runs the JavaScript surge policy (base 1000 at low load);
    // its compilation happens off the hot path while the Rust version keeps answering.
    let js = "name = \"default-pricing\"\nworld = \"pricing\"\nversion = \"2.0.0\"\nwasm = \"surge.wasm\"\n\
              [limits]\ntimeout_ms = 10000\nmemory_mib = 128\n[config]\nbase_price_per_unit = \"1000\"\n";
    land(dir.path(), "default-pricing.toml", js);
    let swapped = eventually(Duration::from_secs(60), || {
        let c = registry.get("default-pricing").ok()?;
        (c.manifest.version == "2.0.0").then_some(())
    });
    assert!(swapped.is_some(), "the JS version never became visible");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        seen.extend(w.join().expect("worker panicked (a call failed)"));
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert!(
        seen.is_subset(&[4768371, 1111, 2222, 1000].into_iter().collect()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&1000),
        "the new code answered no call: {seen:?}"
    );
}

#[test]
fn a_failed_reload_keeps_the_previous_version_serving() {
    let (registry, dir, _m) = registry();
    place_default(dir.path(), "default-pricing");
    let v1 = registry.load("default-pricing").expect("v1 loads");

    // New bytes that are no component at all.
    std::fs::write(dir.path().join("default-pricing.wasm"), b"garbage").expect("write");
    let err = registry.load("default-pricing").unwrap_err().to_string();
    assert!(err.contains("not a WebAssembly binary"), "{err}");
    let serving = registry.get("default-pricing").expect("still loaded");
    assert_eq!(serving.hash, v1.hash);
    assert!(serving.quote(&request("x"), &context(0, 1)).is_ok());
    let status = registry
        .statuses()
        .get("default-pricing")
        .cloned()
        .expect("status");
    assert!(status
        .error
        .expect("error recorded")
        .contains("not a WebAssembly binary"));

    // A broken manifest is refused the same way.
    std::fs::copy(
        artifact("components/default-pricing.wasm"),
        dir.path().join("default-pricing.wasm"),
    )
    .expect("copy");
    land(
        dir.path(),
        "default-pricing.toml",
        "name = \"default-pricing\"\nworld = \"pricing\"\n[config]\ncurrency = 5\n",
    );
    assert!(registry.load("default-pricing").is_err());
    assert_eq!(
        registry.get("default-pricing").expect("still loaded").hash,
        v1.hash
    );
}

#[test]
fn removing_a_manifest_unloads_the_component() {
    let (registry, dir, _m) = registry();
    place_default(dir.path(), "default-router");
    let _watch = registry.watch(Duration::from_millis(20)).expect("watch");
    registry.scan();
    let held = registry.get("default-router").expect("loaded");
    std::fs::remove_file(dir.path().join("default-router.toml")).expect("remove");
    let gone = eventually(Duration::from_secs(10), || {
        registry.get("default-router").is_err().then_some(())
    });
    assert!(
        gone.is_some(),
        "still loaded after its manifest was removed"
    );
    // A caller holding the old version can still finish its work.
    assert!(held
        .select(&request("x"), &[])
        .is_err_and(|e| e.to_string().contains("no-candidates")));
}
