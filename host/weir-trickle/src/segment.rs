//! One segment: the bytes published under one sequence number, written by at most one
//! publisher at a time and read by any number of subscribers, each at its own position.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::budget::Accounts;

/// Chunks at least this long are kept as they arrived (no copy).
const KEEP_CHUNK: usize = 4 * 1024;
/// Smaller chunks are copied into a tail buffer that is sealed at this length, so that a
/// publisher dribbling tiny chunks costs one copy per byte and no per-chunk bookkeeping.
const TAIL_SEAL: usize = 16 * 1024;

/// How a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The publisher finished the body: readers get a clean end.
    Complete,
    /// The publisher went away, sent too much, or the segment was replaced, deleted or evicted
    /// before it was complete: readers that have data get an abrupt end (an error), readers
    /// still waiting for the first byte are told the segment is gone (470).
    Aborted,
    /// The channel was closed before the segment was complete.
    Closed,
}

/// Why a writer must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Another POST took the segment over, or it was ended by someone else.
    Superseded,
    /// The channel was closed.
    Closed,
}

/// What a reader gets from [`Segment::read`].
pub(crate) enum Read {
    /// Bytes after the reader's position.
    Data(Bytes),
    /// Nothing yet; wait on [`Segment::notified`].
    Wait,
    /// All bytes read; the segment ended this way.
    End(End),
}

/// A reader's position: index into the sealed chunks, then offset inside that chunk (or
/// inside the tail when the index is one past the sealed chunks). Sealing the tail keeps its
/// bytes at the same index and offset, so positions stay valid.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadPos {
    chunk: usize,
    offset: usize,
}

#[derive(Default)]
struct State {
    sealed: Vec<Bytes>,
    tail: BytesMut,
    len: usize,
    end: Option<End>,
    /// Generation of the attached writer (0: none ever attached).
    writer: u64,
}

/// The bytes of one sequence number. Its bytes were taken from `accounts` before each
/// [`Segment::push`]; they are given back when the segment is dropped.
pub(crate) struct Segment {
    seq: i64,
    state: Mutex<State>,
    notify: Notify,
    accounts: Accounts,
}

impl Drop for Segment {
    fn drop(&mut self) {
        let len = self.state.get_mut().len;
        self.accounts.give(len);
    }
}

impl Segment {
    pub(crate) fn new(seq: i64, accounts: Accounts) -> Segment {
        Segment {
            seq,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            accounts,
        }
    }

    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// A future woken by the next change (data, end, writer change). Create it before
    /// checking the state, then await it: a change in between still wakes it.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Bytes written so far.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().len
    }

    /// Whether the segment has no data and has not ended: a new writer may take it over
    /// (subscribers already waiting on it then get that writer's bytes).
    pub(crate) fn is_pristine(&self) -> bool {
        let s = self.state.lock();
        s.len == 0 && s.end.is_none()
    }

    /// Whether the segment ended without any data in any way other than completing:
    /// nothing will ever come out of it.
    pub(crate) fn is_dead(&self) -> bool {
        let s = self.state.lock();
        s.len == 0 && matches!(s.end, Some(End::Aborted | End::Closed))
    }

    /// Attach a writer to a pristine segment, superseding any writer attached before it.
    /// Returns the writer's generation, or `None` when the segment is not pristine.
    pub(crate) fn attach_writer(&self) -> Option<u64> {
        let generation = {
            let mut s = self.state.lock();
            if s.len > 0 || s.end.is_some() {
                return None;
            }
            s.writer = s.writer.wrapping_add(1);
            s.writer
        };
        self.notify.notify_waiters();
        Some(generation)
    }

    /// Whether writer `generation` must stop, and why.
    pub(crate) fn stopped(&self, generation: u64) -> Option<Stop> {
        let s = self.state.lock();
        match s.end {
            Some(End::Closed) => Some(Stop::Closed),
            Some(_) => Some(Stop::Superseded),
            None if s.writer != generation => Some(Stop::Superseded),
            None => None,
        }
    }

    /// Whether the segment holds bytes or completed (empty or not): something a reader can
    /// be served once the channel is closed.
    pub(crate) fn has_content(&self) -> bool {
        let s = self.state.lock();
        s.len > 0 || s.end == Some(End::Complete)
    }

    /// Append a chunk from writer `generation`. Its bytes must have been taken from the
    /// segment's accounts already; they are owned by the segment only if this succeeds.
    pub(crate) fn push(&self, generation: u64, chunk: Bytes) -> Result<(), Stop> {
        {
            let mut s = self.state.lock();
            match s.end {
                Some(End::Closed) => return Err(Stop::Closed),
                Some(_) => return Err(Stop::Superseded),
                None if s.writer != generation => return Err(Stop::Superseded),
                None => {}
            }
            s.len = s.len.saturating_add(chunk.len());
            if chunk.len() >= KEEP_CHUNK {
                if !s.tail.is_empty() {
                    let tail = s.tail.split().freeze();
                    s.sealed.push(tail);
                }
                s.sealed.push(chunk);
            } else {
                if s.tail.capacity() - s.tail.len() < chunk.len() {
                    s.tail.reserve(TAIL_SEAL);
                }
                s.tail.extend_from_slice(&chunk);
                if s.tail.len() >= TAIL_SEAL {
                    let tail = s.tail.split().freeze();
                    s.sealed.push(tail);
                }
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    /// End the segment on behalf of writer `generation` (no-op if it was superseded or the
    /// segment already ended). Returns whether this call ended it.
    pub(crate) fn finish(&self, generation: u64, end: End) -> bool {
        let ended = {
            let mut s = self.state.lock();
            if s.end.is_none() && s.writer == generation {
                s.end = Some(end);
                true
            } else {
                false
            }
        };
        if ended {
            self.notify.notify_waiters();
        }
        ended
    }

    /// End the segment from outside (channel closed, segment deleted, replaced, evicted).
    /// A segment that already ended keeps its end, so readers of a complete segment finish
    /// it cleanly. Returns whether this call ended it.
    pub(crate) fn close(&self, end: End) -> bool {
        let ended = {
            let mut s = self.state.lock();
            if s.end.is_none() {
                s.end = Some(end);
                true
            } else {
                false
            }
        };
        if ended {
            self.notify.notify_waiters();
        }
        ended
    }

    /// For a new reader: `Ok` once there is data (or the segment completed empty), the end
    /// if the segment ended any other way (a new reader is not handed a truncated body),
    /// `None` while there is nothing yet.
    pub(crate) fn first(&self) -> Option<Result<(), End>> {
        let s = self.state.lock();
        match s.end {
            Some(End::Complete) => Some(Ok(())),
            Some(end) => Some(Err(end)),
            None if s.len > 0 => Some(Ok(())),
            None => None,
        }
    }

    /// The bytes after `pos` (advancing it), or why there are none.
    pub(crate) fn read(&self, pos: &mut ReadPos) -> Read {
        let s = self.state.lock();
        while pos.chunk < s.sealed.len() {
            let chunk = &s.sealed[pos.chunk];
            if pos.offset < chunk.len() {
                let data = chunk.slice(pos.offset..);
                pos.offset = chunk.len();
                return Read::Data(data);
            }
            pos.chunk += 1;
            pos.offset = 0;
        }
        if pos.offset < s.tail.len() {
            let data = Bytes::copy_from_slice(&s.tail[pos.offset..]);
            pos.offset = s.tail.len();
            return Read::Data(data);
        }
        match s.end {
            Some(end) => Read::End(end),
            None => Read::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(seg: &Segment, pos: &mut ReadPos) -> Vec<u8> {
        let mut out = Vec::new();
        while let Read::Data(d) = seg.read(pos) {
            out.extend_from_slice(&d);
        }
        out
    }

    #[test]
    fn positions_survive_sealing_the_tail() {
        let seg = Segment::new(0, Accounts::unlimited());
        let w = seg.attach_writer().expect("pristine");
        let mut pos = ReadPos::default();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let chunk = vec![(i % 251) as u8; (i % 7) as usize + 1];
            expected.extend_from_slice(&chunk);
            seg.push(w, Bytes::from(chunk)).expect("push");
            if i % 3 == 0 {
                let _ = read_all(&seg, &mut pos);
            }
        }
        seg.push(w, Bytes::from(vec![9u8; 10_000])).expect("push");
        expected.extend_from_slice(&[9u8; 10_000]);
        assert!(seg.finish(w, End::Complete));
        let mut fresh = ReadPos::default();
        assert_eq!(read_all(&seg, &mut fresh), expected);
        assert!(matches!(seg.read(&mut fresh), Read::End(End::Complete)));
        assert_eq!(seg.len(), expected.len());
    }

    #[test]
    fn a_new_writer_supersedes_an_idle_one() {
        let seg = Segment::new(3, Accounts::unlimited());
        let first = seg.attach_writer().expect("pristine");
        let second = seg.attach_writer().expect("still pristine");
        assert_eq!(seg.stopped(first), Some(Stop::Superseded));
        assert_eq!(
            seg.push(first, Bytes::from_static(b"x")),
            Err(Stop::Superseded)
        );
        seg.push(second, Bytes::from_static(b"y")).expect("push");
        assert!(seg.attach_writer().is_none());
        assert!(seg.close(End::Closed));
        assert_eq!(seg.stopped(second), Some(Stop::Closed));
        assert!(!seg.is_dead());
    }

    #[test]
    fn dropping_a_segment_gives_its_bytes_back() {
        let accounts = Accounts::unlimited();
        let seg = Segment::new(0, accounts.clone());
        let w = seg.attach_writer().expect("pristine");
        for chunk in [&b"abc"[..], &[1u8; 5000]] {
            accounts.try_take(chunk.len()).expect("room");
            seg.push(w, Bytes::copy_from_slice(chunk)).expect("push");
        }
        assert_eq!(accounts.node.used(), 5003);
        drop(seg);
        assert_eq!((accounts.node.used(), accounts.channel.used()), (0, 0));
    }
}
