//! One channel: its tokens, its MIME type and the ring of its last segments. All of a
//! channel's mutable state sits behind its own lock; segments have their own locks, always
//! taken after (never before) the channel's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::HeaderValue;
use parking_lot::Mutex;
use subtle::ConstantTimeEq as _;

use crate::budget::{Accounts, Budget, Exhausted};
use crate::segment::{End, Segment};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Publish, delete and subscribe.
    Publish,
    /// Subscribe only.
    Subscribe,
}

/// Where a GET lands.
pub(crate) enum ReadTarget {
    /// This segment (existing or pre-created at the live edge).
    Segment(Arc<Segment>),
    /// Not in the ring and not the next write (fell out, or too far ahead).
    Missing { seq: i64, latest: i64 },
    /// The channel is closed.
    Closed,
}

/// Why a POST cannot write where it asked.
pub(crate) enum WriteRefused {
    /// The seq is older than everything in a full ring.
    TooOld { seq: i64, latest: i64 },
    /// The channel is closed.
    Closed,
}

struct Ring {
    segments: BTreeMap<i64, Arc<Segment>>,
    next_write: i64,
    closed: bool,
}

/// A channel.
pub(crate) struct Channel {
    pub(crate) name: String,
    pub(crate) mime: HeaderValue,
    publish_token: String,
    subscribe_token: String,
    ring_len: usize,
    /// Largest segment accepted on this channel.
    pub(crate) max_segment_bytes: usize,
    /// The node's budget and this channel's own, which its segments' bytes count against.
    accounts: Accounts,
    ring: Mutex<Ring>,
    /// Milliseconds since the server's epoch of the last publish or subscribe activity.
    last_activity: AtomicU64,
}

/// The settings of one channel, beyond its name and tokens.
pub(crate) struct ChannelSpec {
    pub(crate) mime: HeaderValue,
    pub(crate) ring_len: usize,
    pub(crate) max_segment_bytes: usize,
    /// Cap on the bytes of this channel's segments (at least `max_segment_bytes`).
    pub(crate) max_channel_bytes: usize,
    pub(crate) node: Arc<Budget>,
}

impl Channel {
    pub(crate) fn new(
        name: String,
        spec: ChannelSpec,
        publish_token: String,
        subscribe_token: String,
        now_ms: u64,
    ) -> Channel {
        let channel_budget = spec.max_channel_bytes.max(spec.max_segment_bytes);
        Channel {
            name,
            mime: spec.mime,
            publish_token,
            subscribe_token,
            ring_len: spec.ring_len.max(1),
            max_segment_bytes: spec.max_segment_bytes,
            accounts: Accounts {
                node: spec.node,
                channel: Arc::new(Budget::new(channel_budget)),
            },
            ring: Mutex::new(Ring {
                segments: BTreeMap::new(),
                next_write: 0,
                closed: false,
            }),
            last_activity: AtomicU64::new(now_ms),
        }
    }

    /// What `token` allows on this channel, compared in constant time.
    pub(crate) fn access(&self, token: &str) -> Option<Access> {
        let publish: bool = token.as_bytes().ct_eq(self.publish_token.as_bytes()).into();
        let subscribe: bool = token
            .as_bytes()
            .ct_eq(self.subscribe_token.as_bytes())
            .into();
        if publish {
            Some(Access::Publish)
        } else if subscribe {
            Some(Access::Subscribe)
        } else {
            None
        }
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_activity.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// The next seq to be written (the live edge), and whether the channel is closed.
    pub(crate) fn next_write(&self) -> (i64, bool) {
        let r = self.ring.lock();
        (r.next_write, r.closed)
    }

    /// Insert a fresh segment, evicting the oldest beyond the ring's length.
    fn insert(&self, r: &mut Ring, seq: i64) -> Arc<Segment> {
        let segment = Arc::new(Segment::new(seq, self.accounts.clone()));
        if let Some(old) = r.segments.insert(seq, segment.clone()) {
            old.close(End::Aborted);
        }
        while r.segments.len() > self.ring_len {
            match r.segments.pop_first() {
                Some((_, old)) => {
                    old.close(End::Aborted);
                }
                None => break,
            }
        }
        segment
    }

    /// Resolve a GET for `seq` (`-1`: next write, `-2`: current write), pre-creating the
    /// segment at the live edge.
    pub(crate) fn for_read(&self, seq: i64) -> ReadTarget {
        let mut r = self.ring.lock();
        let latest = r.next_write;
        if r.closed {
            return Self::for_read_closed(&r, seq);
        }
        let seq = match seq {
            -1 => latest,
            -2 => latest.saturating_sub(1).max(0),
            s => s,
        };
        if let Some(segment) = r.segments.get(&seq) {
            // A segment at the live edge whose writer vanished before sending anything is
            // replaced, so that a reader sent back here by a 470 waits instead of spinning.
            if !(seq == latest && segment.is_dead()) {
                return ReadTarget::Segment(segment.clone());
            }
        }
        if seq == latest {
            let segment = self.insert(&mut r, seq);
            return ReadTarget::Segment(segment);
        }
        ReadTarget::Missing { seq, latest }
    }

    /// A GET on a closed channel: the segments it kept (written before the close, or still
    /// being finished by their publisher) are served; anything else is told "closed".
    fn for_read_closed(r: &Ring, seq: i64) -> ReadTarget {
        let seq = match seq {
            -1 => return ReadTarget::Closed,
            -2 => r.next_write.saturating_sub(1).max(0),
            s => s,
        };
        match r.segments.get(&seq) {
            Some(segment) if segment.has_content() => ReadTarget::Segment(segment.clone()),
            _ => ReadTarget::Closed,
        }
    }

    /// Take `n` bytes for segment `seq` from the channel's and the node's budgets. When the
    /// channel's own cap is reached, the oldest other segments are evicted from the ring
    /// first (their bytes come back once no subscriber reads them any more).
    pub(crate) fn reserve(&self, seq: i64, n: usize) -> Result<(), Exhausted> {
        let mut r = self.ring.lock();
        loop {
            match self.accounts.try_take(n) {
                Err(Exhausted::Channel) => {}
                other => return other,
            }
            let oldest = r.segments.keys().copied().find(|s| *s != seq);
            let Some(old) = oldest.and_then(|s| r.segments.remove(&s)) else {
                return Err(Exhausted::Channel);
            };
            old.close(End::Aborted);
        }
    }

    /// Give back `n` bytes taken by [`Self::reserve`] but not stored.
    pub(crate) fn unreserve(&self, n: usize) {
        self.accounts.give(n);
    }

    /// Bytes held by this channel's segments (in its ring, or evicted and still read).
    pub(crate) fn buffered(&self) -> usize {
        self.accounts.channel.used()
    }

    /// Resolve a POST for `seq` (`-1`: next write): the segment to write and its seq. A
    /// pristine segment (pre-created by a reader, or pre-connected by a publisher that sent
    /// nothing yet) is taken over; one with data is replaced (its readers finish with what
    /// it has). `reset` closes every other segment except pristine ones ahead of `seq`, and
    /// moves the live edge to `seq`.
    /// Returns the segment, its seq and the writer generation attached to it.
    pub(crate) fn for_write(
        &self,
        seq: i64,
        reset: bool,
    ) -> Result<(Arc<Segment>, i64, u64), WriteRefused> {
        let mut r = self.ring.lock();
        if r.closed {
            return Err(WriteRefused::Closed);
        }
        let seq = if seq == -1 { r.next_write } else { seq };
        if reset {
            let stale: Vec<i64> = r
                .segments
                .iter()
                .filter(|(&s, seg)| s < seq || (s > seq && !seg.is_pristine()))
                .map(|(&s, _)| s)
                .collect();
            for s in stale {
                if let Some(seg) = r.segments.remove(&s) {
                    seg.close(End::Aborted);
                }
            }
            r.next_write = seq;
        }
        if let Some(segment) = r.segments.get(&seq) {
            // Attached under the channel's lock, so no other writer slips in between.
            if let Some(generation) = segment.attach_writer() {
                return Ok((segment.clone(), seq, generation));
            }
        } else if r.segments.len() >= self.ring_len
            && r.segments
                .first_key_value()
                .is_some_and(|(&first, _)| seq < first)
        {
            return Err(WriteRefused::TooOld {
                seq,
                latest: r.next_write,
            });
        }
        let segment = self.insert(&mut r, seq);
        let generation = segment.attach_writer().unwrap_or_default();
        Ok((segment, seq, generation))
    }

    /// The first byte of `seq` arrived (or it completed empty): the live edge moves past it.
    pub(crate) fn started(&self, seq: i64) {
        let mut r = self.ring.lock();
        r.next_write = r.next_write.max(seq.saturating_add(1));
    }

    /// Take `segment` out of the ring if it is still there: its publisher aborted it, so
    /// nothing more is served from it, and its bytes go once its current readers finish.
    pub(crate) fn forget(&self, segment: &Arc<Segment>) {
        let mut r = self.ring.lock();
        let seq = segment.seq();
        if r.segments
            .get(&seq)
            .is_some_and(|s| Arc::ptr_eq(s, segment))
        {
            r.segments.remove(&seq);
        }
    }

    /// Close one segment. Returns whether it was in the ring.
    pub(crate) fn close_segment(&self, seq: i64) -> bool {
        let r = self.ring.lock();
        match r.segments.get(&seq) {
            Some(seg) => {
                seg.close(End::Aborted);
                true
            }
            None => false,
        }
    }

    /// Close the channel: no new segment is started. Segments with bytes or complete stay
    /// readable (one still being written is finished by its publisher), so that subscribers
    /// get everything written before the close; segments with nothing in them end now.
    /// [`Self::release`] drops what is kept.
    pub(crate) fn close(&self) {
        let mut r = self.ring.lock();
        r.closed = true;
        let empty: Vec<i64> = r
            .segments
            .iter()
            .filter(|(_, seg)| !seg.has_content())
            .map(|(&s, _)| s)
            .collect();
        for s in empty {
            if let Some(seg) = r.segments.remove(&s) {
                seg.close(End::Closed);
            }
        }
    }

    /// Drop every segment of a closed channel: those still being written end now.
    pub(crate) fn release(&self) {
        let segments = {
            let mut r = self.ring.lock();
            r.closed = true;
            std::mem::take(&mut r.segments)
        };
        for seg in segments.into_values() {
            seg.close(End::Closed);
        }
    }
}

#[cfg(test)]
impl Channel {
    /// The segment at `seq` in the ring, if any.
    pub(crate) fn segment(&self, seq: i64) -> Option<Arc<Segment>> {
        self.ring.lock().segments.get(&seq).cloned()
    }
}
