//! Capacity accounting: how many jobs a runner takes at once, enforced atomically.
//!
//! A [`Slot`] is held for the whole job and released when dropped, whether the job finished,
//! failed, panicked or its future was cancelled, so no path leaks capacity.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Jobs a runner may run at once.
#[derive(Debug)]
pub struct Capacity {
    limit: u32,
    in_flight: AtomicU32,
}

/// The runner is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient capacity: {in_flight} of {limit} slots in use")]
pub struct Full {
    /// The limit.
    pub limit: u32,
    /// Slots in use when the request came.
    pub in_flight: u32,
}

/// One job's hold on a [`Capacity`]; released on drop.
#[derive(Debug)]
pub struct Slot {
    capacity: Arc<Capacity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.capacity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Capacity {
    /// A capacity of `limit` concurrent jobs.
    pub fn new(limit: u32) -> Arc<Capacity> {
        Arc::new(Capacity {
            limit,
            in_flight: AtomicU32::new(0),
        })
    }

    /// Take a slot, or say the runner is full. Never over-commits, whatever the concurrency.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, Full> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .map(|_| Slot {
                capacity: self.clone(),
            })
            .map_err(|in_flight| Full {
                limit: self.limit,
                in_flight,
            })
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Slots in use now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn slots_are_limited_and_released_on_drop() {
        let c = Capacity::new(2);
        let a = c.try_acquire().expect("first");
        let _b = c.try_acquire().expect("second");
        assert_eq!(
            c.try_acquire().unwrap_err(),
            Full {
                limit: 2,
                in_flight: 2
            }
        );
        drop(a);
        assert_eq!(c.in_flight(), 1);
        assert!(c.try_acquire().is_ok());
        assert_eq!(
            c.in_flight(),
            1,
            "the slot taken in the assert was dropped with it"
        );
        assert!(Capacity::new(0).try_acquire().is_err());
    }

    #[test]
    fn concurrent_jobs_never_exceed_the_limit_and_leak_nothing() {
        let c = Capacity::new(3);
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, peak) = (c.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut served = 0u32;
                    for _ in 0..2_000 {
                        if let Ok(slot) = c.try_acquire() {
                            peak.fetch_max(c.in_flight(), Ordering::AcqRel);
                            served += 1;
                            std::hint::black_box(&slot);
                        }
                    }
                    served
                })
            })
            .collect();
        let served: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert!(served > 0);
        assert!(
            peak.load(Ordering::Acquire) <= 3,
            "over-committed: {}",
            peak.load(Ordering::Acquire)
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_panicking_job_still_releases_its_slot() {
        let c = Capacity::new(1);
        let c2 = c.clone();
        let result = std::thread::spawn(move || {
            let _slot = c2.try_acquire().expect("slot");
            panic!("job failed");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(c.in_flight(), 0);
    }
}
