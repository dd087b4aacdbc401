//! A small corpus-driven mutation fuzzer for stable Rust.
//!
//! Each target is a function from bytes to nothing that must not panic. The fuzzer starts from
//! the target's seeds (built in code) and its corpus (`corpus/<target>/*`, kept in the repo),
//! mutates them (bit flips, interesting values, inserts, deletes, duplications, splices) and
//! runs the target on each mutant under `catch_unwind`. A panic fails the run and writes the
//! input to `crashes/<target>-<hash>` beside the corpus (ignored by git) so it can
//! be replayed and then kept in the corpus once fixed.
//!
//! There is no coverage feedback (that needs a nightly toolchain and sanitizer coverage, which
//! this project's machines cannot install); mutation depth and many executions stand in for it.
//!
//! Budget: `WEIR_FUZZ_SECS` seconds per target (default 2, the short pass `make test` runs);
//! seed: `WEIR_FUZZ_SEED` (default: from the clock, printed so a run can be repeated).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Largest input the mutator grows a case to.
const MAX_INPUT: usize = 64 * 1024;

/// Panics seen per thread name ("" for unnamed threads), contained ones excepted.
static PANICS: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());
static CONTAINED: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();
static CONTAINED_IN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Panics raised under a function whose path contains `fragment` (read from the backtrace) are
/// caught by the code under test on purpose (for example a third-party parser wrapped in
/// `catch_unwind`): they are counted apart and do not fail a run. The target must still show
/// that it survived them.
pub fn expect_contained_panics_in(fragment: &'static str) {
    if let Ok(mut v) = CONTAINED_IN.lock() {
        v.push(fragment);
    }
}

/// Panics seen in code listed with [`expect_contained_panics_in`].
pub fn contained_panics() -> usize {
    CONTAINED.load(Ordering::SeqCst)
}

/// Panics seen anywhere in this process since it started, including in background tasks whose
/// panics never reach the target's caller (a tokio task, a server connection).
pub fn panics_seen() -> usize {
    panics_on("")
}

/// Panics seen on threads whose name starts with `prefix`. A target whose code runs on
/// threads of its own (a tokio runtime built with `thread_name`) watches those, so a panic in
/// another test running at the same time is never blamed on it.
pub fn panics_on(prefix: &str) -> usize {
    PANICS
        .lock()
        .map(|v| {
            v.iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(_, c)| c)
                .sum()
        })
        .unwrap_or(0)
}

fn count_panic() {
    let name = std::thread::current().name().unwrap_or("").to_owned();
    if let Ok(mut v) = PANICS.lock() {
        match v.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => v.push((name, 1)),
        }
    }
}

/// Count every panic in the process (then print it as the default hook does).
pub fn install_panic_counter() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fragments = CONTAINED_IN.lock().map(|v| v.clone()).unwrap_or_default();
            let contained = !fragments.is_empty() && {
                let trace = std::backtrace::Backtrace::force_capture().to_string();
                fragments.iter().any(|f| trace.contains(f))
            };
            if contained {
                CONTAINED.fetch_add(1, Ordering::SeqCst);
            } else {
                count_panic();
                default(info);
            }
        }));
    });
}

/// What a fuzzing run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Inputs run through the target.
    pub executions: u64,
    /// Inputs that panicked (the run stops at the first).
    pub crashes: u64,
}

/// The fuzzing budget per target, from `WEIR_FUZZ_SECS`.
pub fn budget() -> Duration {
    let secs = std::env::var("WEIR_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The folder that holds `corpus/` and `crashes/`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("corpus").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() <= MAX_INPUT)
        .collect()
}

/// Write the built-in seeds into `corpus/<target>/seed-N` (run with `WEIR_FUZZ_SAVE_SEEDS=1`
/// after changing a seed, so the corpus in the repo starts from the same inputs).
fn save_seeds(target: &str, seeds: &[Vec<u8>]) {
    let dir = root().join("corpus").join(target);
    let _ = std::fs::create_dir_all(&dir);
    for (i, s) in seeds.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("seed-{i}")), s);
    }
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    let dir = root().join("crashes");
    let path = dir.join(format!("{target}-{:016x}", h.finish()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, input);
    path
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'-', b'+', b'0', b'9', b'\r', b'\n', b'"',
];

/// Apply one random mutation to `data`; `other` is a second case to splice from.
fn mutate_once(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.random_range(0..8u8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = rng.random();
        }
        3 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=64)).min(len);
            data.drain(a..b);
        }
        5 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=64)).min(len);
            let copy = data[a..b].to_vec();
            let at = rng.random_range(0..=data.len());
            data.splice(at..at, copy);
        }
        6 if !other.is_empty() => {
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => {
            // Overwrite 2, 4 or 8 bytes with an extreme integer (lengths, sizes, sequence numbers).
            let width = [2usize, 4, 8][rng.random_range(0..3)];
            let at = rng.random_range(0..len);
            let value: u64 =
                [0, u64::MAX, i64::MAX as u64, 1 << 31, 0xffff][rng.random_range(0..5)];
            for (k, b) in value.to_be_bytes()[8 - width..].iter().enumerate() {
                if let Some(slot) = data.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        _ => data.push(rng.random()),
    }
    data.truncate(MAX_INPUT);
}

/// Run `target` on mutants of `seeds` and the target's corpus for [`budget`]. Panics (with
/// the saved input's path) when the target panics.
pub fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl FnMut(&[u8])) -> Report {
    fuzz_watching(name, None, seeds, target)
}

/// [`fuzz`], also failing when a panic happens on a thread whose name starts with
/// `background` (the threads of a server the target feeds).
pub fn fuzz_watching(
    name: &str,
    background: Option<&str>,
    seeds: Vec<Vec<u8>>,
    mut target: impl FnMut(&[u8]),
) -> Report {
    install_panic_counter();
    if std::env::var_os("WEIR_FUZZ_SAVE_SEEDS").is_some() {
        save_seeds(name, &seeds);
    }
    let mut cases = seeds;
    cases.extend(load_corpus(name));
    if cases.is_empty() {
        cases.push(Vec::new());
    }
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + budget();
    let mut executions = 0u64;
    // Every case as it is first, then mutants until the budget is spent.
    let originals = cases.clone();
    for case in originals.iter() {
        run_one(name, background, seed, case, &mut target);
        executions += 1;
    }
    while Instant::now() < deadline {
        let mut input = cases[rng.random_range(0..cases.len())].clone();
        let other = &cases[rng.random_range(0..cases.len())];
        for _ in 0..rng.random_range(1..=4) {
            mutate_once(&mut rng, &mut input, other);
        }
        run_one(name, background, seed, &input, &mut target);
        executions += 1;
        // Keep some mutants as bases for deeper mutation, bounded.
        if cases.len() < 256 && rng.random_range(0..64) == 0 {
            cases.push(input);
        }
    }
    println!(
        "fuzz {name}: {executions} executions, 0 crashes, {} contained panics so far (seed {seed})",
        contained_panics()
    );
    Report {
        executions,
        crashes: 0,
    }
}

fn run_one(
    name: &str,
    background: Option<&str>,
    seed: u64,
    input: &[u8],
    target: &mut impl FnMut(&[u8]),
) {
    let watched = || background.map_or(0, panics_on);
    let before = watched();
    let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
    if outcome.is_err() || watched() != before {
        let path = save_crash(name, input);
        panic!(
            "fuzz target {name} panicked (seed {seed}); input saved at {}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_stay_within_the_size_cap_and_change_the_input() {
        let mut rng = StdRng::seed_from_u64(7);
        let base = vec![0u8; 100];
        let mut changed = 0;
        for _ in 0..1000 {
            let mut m = base.clone();
            mutate_once(&mut rng, &mut m, b"other");
            assert!(m.len() <= MAX_INPUT);
            if m != base {
                changed += 1;
            }
        }
        assert!(changed > 900, "only {changed} of 1000 mutants differ");
    }

    #[test]
    #[should_panic(expected = "fuzz target self-check panicked")]
    fn a_panicking_target_fails_the_run_with_its_input_saved() {
        fuzz("self-check", vec![b"abc".to_vec()], |input| {
            if input.len() > 2 {
                panic!("boom");
            }
        });
    }
}
