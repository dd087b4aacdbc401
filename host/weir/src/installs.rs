//! Component installs that compile in the background. The admin API's `PUT` hands the upload
//! to a blocking thread and answers at once (or after `?wait=`); each install's phase, its
//! elapsed time and an estimate of its progress can be read until the next install of that
//! name. Uploads of one name never overlap, and at most [`MAX_RUNNING`] run at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use weir_runtime::{LoadPhase, LoadedComponent, RuntimeError};

/// Installs compiling at the same time, node-wide; a further upload is refused until one ends.
pub const MAX_RUNNING: usize = 2;

/// Finished installs remembered (the oldest are forgotten first).
const KEEP_FINISHED: usize = 64;

/// Where an install stands.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Still working, in this phase.
    Running(LoadPhase),
    /// Loaded and serving: the content hash of what was loaded.
    Loaded {
        /// SHA-256 of the wasm, hex.
        hash: String,
    },
    /// Failed; the previous version, if any, keeps serving.
    Failed(Arc<RuntimeError>),
}

/// An install's stage and when it was reached.
#[derive(Debug, Clone)]
pub struct State {
    /// The stage.
    pub stage: Stage,
    /// When the stage began.
    pub since: Instant,
}

impl State {
    /// Whether the install has ended, loaded or failed.
    pub fn is_done(&self) -> bool {
        !matches!(self.stage, Stage::Running(_))
    }
}

/// One upload being (or having been) installed.
#[derive(Debug)]
pub struct Install {
    /// The component's name.
    pub name: String,
    /// The wasm's size.
    pub bytes: usize,
    /// Whether a version of the component was serving when the upload arrived.
    pub replaces: bool,
    /// When the upload was accepted (wall clock).
    pub started_at: SystemTime,
    started: Instant,
    state: watch::Sender<State>,
}

impl Install {
    /// The current state.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Time since the upload was accepted, or until it ended.
    pub fn elapsed(&self, state: &State) -> Duration {
        let end = if state.is_done() {
            state.since
        } else {
            Instant::now()
        };
        end.saturating_duration_since(self.started)
    }

    /// Record that the install reached `phase`.
    pub fn observe(&self, phase: LoadPhase) {
        self.state.send_modify(|s| {
            if !s.is_done() {
                *s = State {
                    stage: Stage::Running(phase),
                    since: Instant::now(),
                };
            }
        });
    }

    /// Record the outcome (only the first counts).
    pub fn finish(&self, result: Result<Arc<LoadedComponent>, RuntimeError>) {
        let stage = match result {
            Ok(component) => Stage::Loaded {
                hash: component.hash.clone(),
            },
            Err(e) => Stage::Failed(Arc::new(e)),
        };
        let mut changed = false;
        self.state.send_if_modified(|s| {
            if s.is_done() {
                return false;
            }
            *s = State {
                stage: stage.clone(),
                since: Instant::now(),
            };
            changed = true;
            true
        });
        if changed {
            let ms = self.elapsed(&self.state()).as_millis() as u64;
            match &stage {
                Stage::Failed(e) => {
                    tracing::warn!(component = %self.name, elapsed_ms = ms, error = %e, "install failed")
                }
                _ => tracing::info!(component = %self.name, elapsed_ms = ms, "install loaded"),
            }
        }
    }

    /// Wait until the install ends or `limit` passes; the state then.
    pub async fn wait(&self, limit: Duration) -> State {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(State::is_done)).await;
        self.state()
    }

    /// An estimate of the share done, from 0 to 1: the phases before and after compiling are
    /// short, and compiling is timed against `expected_compile` (the node's measured speed for
    /// this size). `None` while compiling with nothing to estimate from.
    pub fn progress(&self, state: &State, expected_compile: Option<Duration>) -> Option<f64> {
        match &state.stage {
            Stage::Running(LoadPhase::Queued) => Some(0.0),
            Stage::Running(LoadPhase::Writing) => Some(0.02),
            Stage::Running(LoadPhase::Compiling) => expected_compile.map(|expected| {
                let share = state.since.elapsed().as_secs_f64() / expected.as_secs_f64().max(1e-3);
                0.05 + 0.85 * share.min(0.99)
            }),
            Stage::Running(LoadPhase::Linking) => Some(0.9),
            Stage::Loaded { .. } | Stage::Failed(_) => Some(1.0),
        }
    }
}

/// Why an upload was not started.
#[derive(Debug)]
pub enum Refusal {
    /// An install of the same name is running.
    SameName(Arc<Install>),
    /// [`MAX_RUNNING`] installs are running: their names.
    Busy(Vec<String>),
}

/// The node's installs, latest per name.
#[derive(Debug, Default)]
pub struct Installs {
    by_name: Mutex<BTreeMap<String, Arc<Install>>>,
}

impl Installs {
    /// Start tracking an upload of `name` unless one of that name is running or the node is
    /// at [`MAX_RUNNING`]. Finish it with [`Install::finish`] (a [`FinishGuard`] does that if
    /// the work ends without an outcome).
    pub fn begin(&self, name: &str, bytes: usize, replaces: bool) -> Result<Arc<Install>, Refusal> {
        let mut by_name = self.by_name.lock();
        if let Some(running) = by_name.get(name).filter(|i| !i.state().is_done()) {
            return Err(Refusal::SameName(running.clone()));
        }
        let running: Vec<String> = by_name
            .values()
            .filter(|i| !i.state().is_done())
            .map(|i| i.name.clone())
            .collect();
        if running.len() >= MAX_RUNNING {
            return Err(Refusal::Busy(running));
        }
        let now = Instant::now();
        let install = Arc::new(Install {
            name: name.to_owned(),
            bytes,
            replaces,
            started_at: SystemTime::now(),
            started: now,
            state: watch::Sender::new(State {
                stage: Stage::Running(LoadPhase::Queued),
                since: now,
            }),
        });
        by_name.insert(name.to_owned(), install.clone());
        if by_name.len() > KEEP_FINISHED + MAX_RUNNING {
            let oldest = by_name
                .values()
                .filter(|i| i.state().is_done())
                .min_by_key(|i| i.started)
                .map(|i| i.name.clone());
            if let Some(oldest) = oldest {
                by_name.remove(&oldest);
            }
        }
        tracing::info!(component = name, bytes, "install started");
        Ok(install)
    }

    /// The latest install of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Install>> {
        self.by_name.lock().get(name).cloned()
    }

    /// The installs still running.
    pub fn running(&self) -> Vec<Arc<Install>> {
        self.by_name
            .lock()
            .values()
            .filter(|i| !i.state().is_done())
            .cloned()
            .collect()
    }
}

/// Fails its install if dropped before an outcome was recorded (a panic on the worker), so a
/// name is never left "running" forever.
pub struct FinishGuard(pub Arc<Install>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.finish(Err(RuntimeError::Engine(
            "the install stopped before it finished".into(),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_install_per_name_and_a_node_wide_cap() {
        let installs = Installs::default();
        let a = installs.begin("a", 10, false).expect("a");
        assert!(matches!(
            installs.begin("a", 10, false),
            Err(Refusal::SameName(_))
        ));
        let b = installs.begin("b", 10, false).expect("b");
        match installs.begin("c", 10, false) {
            Err(Refusal::Busy(names)) => assert_eq!(names, vec!["a", "b"]),
            other => panic!("expected busy, got {other:?}"),
        }
        a.finish(Err(RuntimeError::Engine("boom".into())));
        assert!(installs.begin("c", 10, false).is_ok());
        // A finished install of a name may be replaced by a new one.
        drop(FinishGuard(b.clone()));
        assert!(matches!(b.state().stage, Stage::Failed(_)));
        assert!(installs.begin("b", 10, false).is_ok());
        assert_eq!(installs.running().len(), 2);
    }

    #[test]
    fn phases_move_forward_and_the_first_outcome_stays() {
        let installs = Installs::default();
        let i = installs.begin("x", 10, true).expect("x");
        assert_eq!(i.progress(&i.state(), None), Some(0.0));
        i.observe(LoadPhase::Compiling);
        assert_eq!(i.progress(&i.state(), None), None);
        let p = i
            .progress(&i.state(), Some(Duration::from_secs(3600)))
            .expect("estimate");
        assert!((0.05..0.1).contains(&p), "{p}");
        i.finish(Err(RuntimeError::Engine("first".into())));
        i.finish(Err(RuntimeError::Engine("second".into())));
        i.observe(LoadPhase::Linking);
        match i.state().stage {
            Stage::Failed(e) => assert!(e.to_string().contains("first")),
            other => panic!("{other:?}"),
        }
        assert_eq!(i.progress(&i.state(), None), Some(1.0));
    }

    #[tokio::test]
    async fn waiting_ends_at_the_outcome_or_the_limit() {
        let installs = Installs::default();
        let i = installs.begin("x", 10, false).expect("x");
        let state = i.wait(Duration::from_millis(20)).await;
        assert!(!state.is_done());
        let j = i.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            j.finish(Err(RuntimeError::Engine("done".into())));
        });
        let state = i.wait(Duration::from_secs(10)).await;
        assert!(state.is_done());
    }
}
