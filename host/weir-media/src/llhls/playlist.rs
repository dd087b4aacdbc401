//! The LL-HLS media playlist of one rendition and blocking playlist reload.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use crate::hls::rfc3339_millis;

use super::{concat_parts, Fmp4Part, Fmp4Segment};

/// How far a playlist has got: the last part published and whether the stream ended. This is
/// what [`LlWaiter`] watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LlProgress {
    /// (media sequence number, part index) of the newest part, `None` before the first.
    pub last: Option<(u64, usize)>,
    /// Whether the stream has ended (`EXT-X-ENDLIST`).
    pub ended: bool,
}

impl LlProgress {
    /// Whether part `part` of segment `msn`, or any later part, exists. A part index past the
    /// last part of a complete segment means the next segment's part 0.
    pub fn has(&self, msn: u64, part: usize) -> bool {
        match self.last {
            None => false,
            Some((m, p)) => msn < m || (msn == m && part <= p),
        }
    }
}

/// Awaits a playlist's progress for blocking playlist reload; from [`LlPlaylist::subscribe`].
#[derive(Debug, Clone)]
pub struct LlWaiter {
    rx: watch::Receiver<LlProgress>,
}

impl LlWaiter {
    /// The playlist's progress now.
    pub fn progress(&self) -> LlProgress {
        *self.rx.borrow()
    }

    /// Waits until [`LlProgress::has`]`(msn, part)` holds, at most `timeout`. Returns whether
    /// it holds; returns early (`false`) when the stream ends or the playlist is dropped
    /// without the part appearing.
    pub async fn wait_for(&mut self, msn: u64, part: usize, timeout: Duration) -> bool {
        let outcome = {
            let res =
                tokio::time::timeout(timeout, self.rx.wait_for(|p| p.ended || p.has(msn, part)))
                    .await;
            match &res {
                Ok(Ok(p)) => Some(p.has(msn, part)),
                Ok(Err(_)) => None,
                Err(_) => Some(false),
            }
        };
        outcome.unwrap_or_else(|| self.rx.borrow().has(msn, part))
    }
}

#[derive(Debug, Clone)]
struct LlSegment {
    msn: u64,
    duration: Duration,
    program_date_time: SystemTime,
    discontinuity: bool,
    init_id: u64,
    parts: Vec<Fmp4Part>,
}

/// The LL-HLS media playlist of one rendition, holding its init segment(s) and parts.
///
/// Segment URIs are `{msn}.m4s`, part URIs `{msn}.{i}.m4s`, the init segment `init.mp4` (a
/// segment whose init differs from the previous one gets a new `EXT-X-MAP`, `init-{n}.mp4`).
/// Segments leave the window oldest first but stay fetchable for one more window.
#[derive(Debug)]
pub struct LlPlaylist {
    window: usize,
    min_target: u64,
    target: u64,
    part_target_ms: u64,
    next_msn: u64,
    discontinuity_sequence: u64,
    listed: VecDeque<LlSegment>,
    retired: VecDeque<LlSegment>,
    inits: VecDeque<(u64, Bytes)>,
    next_init_id: u64,
    ended: bool,
    progress: watch::Sender<LlProgress>,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from((d.as_micros() + 500) / 1000).unwrap_or(u64::MAX)
}

fn fmt_ms(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl LlPlaylist {
    /// A playlist listing the last `window_segments` segments, with `target` as the nominal
    /// segment length and `part_target` as the nominal part length.
    pub fn new(window_segments: usize, target: Duration, part_target: Duration) -> LlPlaylist {
        let min_target = target.as_secs_f64().ceil().max(1.0) as u64;
        let (progress, _) = watch::channel(LlProgress::default());
        LlPlaylist {
            window: window_segments.max(1),
            min_target,
            target: min_target,
            part_target_ms: duration_ms(part_target).max(1),
            next_msn: 0,
            discontinuity_sequence: 0,
            listed: VecDeque::new(),
            retired: VecDeque::new(),
            inits: VecDeque::new(),
            next_init_id: 0,
            ended: false,
            progress,
        }
    }

    /// Appends a segment (it should have at least one part); returns its media sequence
    /// number and wakes every [`LlWaiter`].
    pub fn push_segment(
        &mut self,
        seg: Fmp4Segment,
        program_date_time: SystemTime,
        discontinuity: bool,
    ) -> u64 {
        let msn = self.next_msn;
        self.next_msn += 1;
        let rounded = seg.duration.as_secs_f64().round() as u64;
        self.target = self.target.max(rounded).max(self.min_target);
        for p in &seg.parts {
            self.part_target_ms = self.part_target_ms.max(duration_ms(p.duration));
        }
        let init_id = match self.inits.back() {
            Some((id, bytes)) if *bytes == seg.init => *id,
            _ => {
                let id = self.next_init_id;
                self.next_init_id += 1;
                self.inits.push_back((id, seg.init));
                id
            }
        };
        let parts = seg.parts.len();
        self.listed.push_back(LlSegment {
            msn,
            duration: seg.duration,
            program_date_time,
            discontinuity: discontinuity && msn > 0,
            init_id,
            parts: seg.parts,
        });
        while self.listed.len() > self.window {
            if let Some(old) = self.listed.pop_front() {
                if old.discontinuity {
                    self.discontinuity_sequence += 1;
                }
                self.retired.push_back(old);
            }
        }
        while self.retired.len() > self.window {
            self.retired.pop_front();
        }
        let oldest_init = self
            .retired
            .front()
            .or(self.listed.front())
            .map_or(init_id, |s| s.init_id);
        while self.inits.len() > 1 && self.inits.front().is_some_and(|(id, _)| *id < oldest_init) {
            self.inits.pop_front();
        }
        self.progress.send_replace(LlProgress {
            last: Some((msn, parts.saturating_sub(1))),
            ended: self.ended,
        });
        msn
    }

    /// Marks the stream as ended (`EXT-X-ENDLIST`) and wakes every [`LlWaiter`].
    pub fn end(&mut self) {
        self.ended = true;
        self.progress.send_modify(|p| p.ended = true);
    }

    /// The stream goes on after an end (its publisher came back): `EXT-X-ENDLIST` is dropped;
    /// the next segment should be pushed as a discontinuity.
    pub fn resume(&mut self) {
        self.ended = false;
        self.progress.send_modify(|p| p.ended = false);
    }

    /// Whether the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// A waiter for blocking playlist reload.
    pub fn subscribe(&self) -> LlWaiter {
        LlWaiter {
            rx: self.progress.subscribe(),
        }
    }

    /// The progress [`LlWaiter`]s see.
    pub fn progress(&self) -> LlProgress {
        *self.progress.borrow()
    }

    /// The current init segment (`init.mp4`, or the newest `init-{n}.mp4`).
    pub fn init(&self) -> Option<Bytes> {
        self.inits.back().map(|(_, b)| b.clone())
    }

    /// The init segment named `name` (`init.mp4` or `init-{n}.mp4`), while a kept segment
    /// uses it.
    pub fn init_by_uri(&self, name: &str) -> Option<Bytes> {
        let id = if name == "init.mp4" {
            0
        } else {
            name.strip_prefix("init-")?
                .strip_suffix(".mp4")?
                .parse()
                .ok()?
        };
        self.inits
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| b.clone())
    }

    fn find(&self, msn: u64) -> Option<&LlSegment> {
        self.listed
            .iter()
            .chain(self.retired.iter())
            .find(|s| s.msn == msn)
    }

    /// Part `i` of segment `msn`, while the segment is listed or recently retired.
    pub fn part(&self, msn: u64, i: usize) -> Option<Bytes> {
        self.find(msn)?.parts.get(i).map(|p| p.data.clone())
    }

    /// The whole segment `msn` (its parts concatenated), while listed or recently retired.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        self.find(msn).map(|s| concat_parts(&s.parts))
    }

    /// Whether part `part` of segment `msn`, or any later part, exists (see
    /// [`LlProgress::has`]).
    pub fn has(&self, msn: u64, part: usize) -> bool {
        self.progress().has(msn, part)
    }

    /// (media sequence number, part index) of the newest part.
    pub fn last(&self) -> Option<(u64, usize)> {
        self.progress().last
    }

    /// The `EXT-X-TARGETDURATION`, seconds.
    pub fn target_duration(&self) -> u64 {
        self.target
    }

    /// The `PART-TARGET`: the configured one, raised to the longest part seen.
    pub fn part_target(&self) -> Duration {
        Duration::from_millis(self.part_target_ms)
    }

    fn init_uri(id: u64) -> String {
        if id == 0 {
            "init.mp4".into()
        } else {
            format!("init-{id}.mp4")
        }
    }

    /// The playlist text. Parts are listed for the segments within three target durations of
    /// the live edge (always for the newest segment).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + 400 * self.listed.len());
        let first = self.listed.front().map_or(self.next_msn, |s| s.msn);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}\n\
             #EXT-X-PART-INF:PART-TARGET={}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
            self.target,
            fmt_ms(3 * self.part_target_ms),
            fmt_ms(self.part_target_ms),
        );
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        // Which segments list their parts: those starting less than 3 target durations
        // before the end.
        let horizon = Duration::from_secs(3 * self.target);
        let mut from_end = Duration::ZERO;
        let mut with_parts = vec![false; self.listed.len()];
        for (i, s) in self.listed.iter().enumerate().rev() {
            with_parts[i] = from_end < horizon || i + 1 == self.listed.len();
            from_end += s.duration;
        }
        let mut map = None;
        for (i, s) in self.listed.iter().enumerate() {
            if s.discontinuity && i > 0 {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(s.init_id) {
                let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", Self::init_uri(s.init_id));
                map = Some(s.init_id);
            }
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                rfc3339_millis(s.program_date_time)
            );
            if with_parts[i] {
                for (k, p) in s.parts.iter().enumerate() {
                    let _ = write!(
                        out,
                        "#EXT-X-PART:DURATION={},URI=\"{}.{k}.m4s\"",
                        fmt_ms(duration_ms(p.duration)),
                        s.msn
                    );
                    out.push_str(if p.independent {
                        ",INDEPENDENT=YES\n"
                    } else {
                        "\n"
                    });
                }
            }
            let _ = write!(
                out,
                "#EXTINF:{:.3},\n{}.m4s\n",
                s.duration.as_secs_f64(),
                s.msn
            );
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        } else {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}.0.m4s\"",
                self.next_msn
            );
        }
        out
    }
}
