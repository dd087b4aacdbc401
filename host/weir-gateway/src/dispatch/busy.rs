//! Orchestrators that answered "insufficient capacity", waiting to be asked again.
//!
//! A full orchestrator is asked again only after the other candidates, and once every
//! candidate is full the request waits a jittered, exponentially growing pause (full jitter:
//! uniform in `[0, min(CAP, BASE * 2^round)]`) so clients that meet a full orchestrator
//! together do not all come back at the same instant.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// First backoff ceiling.
const BASE: Duration = Duration::from_millis(25);
/// Largest backoff ceiling.
const CAP: Duration = Duration::from_millis(500);

/// The ceiling of the pause before busy round `round` (0-based): `BASE * 2^round`, at most
/// `CAP`.
pub(crate) fn ceiling(round: u32) -> Duration {
    BASE.saturating_mul(1u32 << round.min(16)).min(CAP)
}

/// Candidates that were full, in the order they answered.
pub(crate) struct BusyQueue<C> {
    waiting: VecDeque<C>,
    /// The last "full" answer of each orchestrator, for the final error.
    reasons: BTreeMap<String, String>,
    rounds: u32,
}

impl<C> Default for BusyQueue<C> {
    fn default() -> Self {
        BusyQueue {
            waiting: VecDeque::new(),
            reasons: BTreeMap::new(),
            rounds: 0,
        }
    }
}

impl<C> BusyQueue<C> {
    /// Set `choice` (the orchestrator at `url`) aside after its "full" answer `why`.
    pub(crate) fn push(&mut self, url: &str, choice: C, why: String) {
        self.reasons.insert(url.to_owned(), why);
        self.waiting.push_back(choice);
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Sleep the next jittered pause, cut at `deadline`; false (without sleeping) once the
    /// deadline has passed.
    pub(crate) async fn wait(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ceiling = ceiling(self.rounds);
        self.rounds = self.rounds.saturating_add(1);
        let pause = ceiling.mul_f64(rand::random::<f64>());
        tokio::time::sleep(pause.min(left)).await;
        true
    }

    /// Everyone waiting, to be asked again.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = C> + '_ {
        self.waiting.drain(..)
    }

    /// Why each orchestrator still full at the end was refused.
    pub(crate) fn reasons(&self, waited: Duration) -> Vec<String> {
        self.reasons
            .iter()
            .map(|(url, why)| {
                format!(
                    "{url}: {why} (still full after waiting up to {} ms)",
                    waited.as_millis()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_25_ms_up_to_500_ms() {
        let ms: Vec<u128> = (0..8).map(|r| ceiling(r).as_millis()).collect();
        assert_eq!(ms, [25, 50, 100, 200, 400, 500, 500, 500]);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[tokio::test]
    async fn waits_until_the_deadline_then_stops() {
        let mut q = BusyQueue::default();
        q.push("http://o", 1u8, "insufficient capacity".into());
        let deadline = Instant::now() + Duration::from_millis(300);
        assert!(
            q.wait(deadline).await,
            "the first wait is before the deadline"
        );
        // Pauses never run past the deadline, so waiting ends within a bounded number of rounds.
        let mut rounds = 1;
        while q.wait(deadline).await {
            rounds += 1;
            assert!(rounds < 10_000, "the waits never reached the deadline");
        }
        assert!(Instant::now() >= deadline);
        assert_eq!(q.drain().collect::<Vec<_>>(), [1]);
        assert!(q.is_empty());
        assert!(
            q.reasons(Duration::from_millis(300))[0].contains("http://o: insufficient capacity")
        );
    }
}
