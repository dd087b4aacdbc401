//! Byte budgets for buffered segment data: one node-wide, one per channel. Bytes are taken
//! as they are appended to a segment and given back when the segment is dropped (see
//! [`crate::segment::Segment`]'s `Drop`), so the count is what the buffers really hold,
//! including segments evicted from a ring but still held by a slow subscriber.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A byte budget: `used` never goes over `limit`.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Take `n` bytes, unless that would go over the limit.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Give back `n` bytes taken before.
    pub(crate) fn give(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes taken now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// The budgets a segment's bytes count against: the node's and its channel's.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    pub(crate) node: Arc<Budget>,
    pub(crate) channel: Arc<Budget>,
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// The channel's own cap (its ring, plus evicted segments still being read).
    Channel,
    /// The node-wide budget.
    Node,
}

impl Accounts {
    /// Unlimited budgets, for segments outside any server.
    #[cfg(test)]
    pub(crate) fn unlimited() -> Accounts {
        Accounts {
            node: Arc::new(Budget::new(usize::MAX)),
            channel: Arc::new(Budget::new(usize::MAX)),
        }
    }

    /// Take `n` bytes from the channel's budget, then from the node's.
    pub(crate) fn try_take(&self, n: usize) -> Result<(), Exhausted> {
        if !self.channel.try_take(n) {
            return Err(Exhausted::Channel);
        }
        if !self.node.try_take(n) {
            self.channel.give(n);
            return Err(Exhausted::Node);
        }
        Ok(())
    }

    /// Give back `n` bytes to both.
    pub(crate) fn give(&self, n: usize) {
        self.channel.give(n);
        self.node.give(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refuse_past_the_limit_and_never_overflow() {
        let b = Budget::new(10);
        assert!(b.try_take(6));
        assert!(!b.try_take(5));
        assert!(!b.try_take(usize::MAX));
        assert!(b.try_take(4));
        b.give(100);
        assert_eq!(b.used(), 0);
        let a = Accounts {
            node: Arc::new(Budget::new(5)),
            channel: Arc::new(Budget::new(8)),
        };
        assert_eq!(a.try_take(6), Err(Exhausted::Node));
        assert_eq!(a.channel.used(), 0, "a refused take leaves nothing behind");
        assert_eq!(a.try_take(5), Ok(()));
        assert_eq!(a.try_take(4), Err(Exhausted::Channel));
        a.give(5);
        assert_eq!((a.node.used(), a.channel.used()), (0, 0));
    }
}
