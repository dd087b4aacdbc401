//! HLS playlists for a live ladder: one media playlist per rendition with a sliding window,
//! and the master playlist that lists them.
//!
//! Segments leave the window oldest first but stay fetchable for as long again: a player that
//! read the playlist just before a segment left it can still download that segment.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One MPEG-TS segment of one rendition.
#[derive(Debug, Clone)]
pub struct HlsSegment {
    /// Media sequence number within its playlist.
    pub msn: u64,
    /// Length of the media.
    pub duration: Duration,
    /// Wall-clock time of the segment's first frame.
    pub program_date_time: SystemTime,
    /// Whether the segment follows a break (a publisher reconnect, a skipped segment).
    pub discontinuity: bool,
    /// The MPEG-TS bytes.
    pub data: Bytes,
}

/// The media playlist of one rendition.
#[derive(Debug)]
pub struct MediaPlaylist {
    window: usize,
    min_target: u64,
    target: u64,
    next_msn: u64,
    discontinuity_sequence: u64,
    listed: VecDeque<HlsSegment>,
    retired: VecDeque<HlsSegment>,
    ended: bool,
    peak_bps: u64,
    /// Bytes and seconds of every segment pushed, for the average bit rate.
    total_bytes: u64,
    total_secs: f64,
}

impl MediaPlaylist {
    /// A playlist listing the last `window` segments, with `target` as the nominal segment
    /// length.
    pub fn new(window: usize, target: Duration) -> MediaPlaylist {
        let min_target = target.as_secs_f64().ceil().max(1.0) as u64;
        MediaPlaylist {
            window: window.max(1),
            min_target,
            target: min_target,
            next_msn: 0,
            discontinuity_sequence: 0,
            listed: VecDeque::new(),
            retired: VecDeque::new(),
            ended: false,
            peak_bps: 0,
            total_bytes: 0,
            total_secs: 0.0,
        }
    }

    /// Append a segment; returns its media sequence number. The oldest listed segment moves
    /// to the retired list once the window is full.
    pub fn push(
        &mut self,
        duration: Duration,
        program_date_time: SystemTime,
        discontinuity: bool,
        data: Bytes,
    ) -> u64 {
        let msn = self.next_msn;
        self.next_msn += 1;
        // EXTINF rounded to the nearest second must not exceed the target duration.
        let rounded = duration.as_secs_f64().round() as u64;
        self.target = self.target.max(rounded).max(self.min_target);
        let secs = duration.as_secs_f64();
        if secs > 0.0 {
            self.peak_bps = self.peak_bps.max((data.len() as f64 * 8.0 / secs) as u64);
            self.total_bytes = self.total_bytes.saturating_add(data.len() as u64);
            self.total_secs += secs;
        }
        self.listed.push_back(HlsSegment {
            msn,
            duration,
            program_date_time,
            discontinuity: discontinuity && msn > 0,
            data,
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
        msn
    }

    /// Mark the stream as ended (`EXT-X-ENDLIST`).
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The stream goes on after an end (its publisher came back): `EXT-X-ENDLIST` is dropped;
    /// push the next segment as a discontinuity.
    pub fn resume(&mut self) {
        self.ended = false;
    }

    /// Whether the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// A segment that is listed or recently retired.
    pub fn segment(&self, msn: u64) -> Option<&HlsSegment> {
        self.listed
            .iter()
            .chain(self.retired.iter())
            .find(|s| s.msn == msn)
    }

    /// The segments now listed, oldest first.
    pub fn listed(&self) -> impl Iterator<Item = &HlsSegment> {
        self.listed.iter()
    }

    /// The highest bit rate of any segment so far, bits per second (0 before the first).
    pub fn peak_bps(&self) -> u64 {
        self.peak_bps
    }

    /// The average bit rate of every segment so far, bits per second (0 before the first).
    pub fn average_bps(&self) -> u64 {
        if self.total_secs > 0.0 {
            (self.total_bytes as f64 * 8.0 / self.total_secs) as u64
        } else {
            0
        }
    }

    /// The `EXT-X-TARGETDURATION`, seconds.
    pub fn target_duration(&self) -> u64 {
        self.target
    }

    /// The playlist text; segment URIs are `{prefix}{msn}.ts`.
    pub fn render(&self, prefix: &str) -> String {
        let mut out = String::with_capacity(128 + 96 * self.listed.len());
        let first = self.listed.front().map_or(self.next_msn, |s| s.msn);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
            self.target
        );
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        for (i, s) in self.listed.iter().enumerate() {
            if s.discontinuity && i > 0 {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = write!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{:.3},\n{prefix}{}.ts\n",
                rfc3339_millis(s.program_date_time),
                s.duration.as_secs_f64(),
                s.msn
            );
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

/// One entry of the master playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// URI of the media playlist, relative to the master playlist.
    pub uri: String,
    /// Peak bit rate, bits per second.
    pub bandwidth: u64,
    /// Average bit rate, bits per second (`AVERAGE-BANDWIDTH`; the peak when unknown).
    pub average_bandwidth: Option<u64>,
    /// RFC 6381 codecs, e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: String,
    /// Picture size, when the rendition has video.
    pub resolution: Option<(u32, u32)>,
    /// Frames per second, when known.
    pub frame_rate: Option<f64>,
}

/// The master playlist listing `variants`, highest bandwidth last. Every entry carries
/// `BANDWIDTH`, `AVERAGE-BANDWIDTH` and `CODECS`, and `RESOLUTION` and `FRAME-RATE` when known
/// (players rank variants by them: one without a resolution is ranked below the others).
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let bandwidth = v.bandwidth.max(1);
        let average = v
            .average_bandwidth
            .filter(|a| *a > 0)
            .map_or(bandwidth, |a| a.min(bandwidth));
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},AVERAGE-BANDWIDTH={average},CODECS=\"{}\"",
            v.codecs
        );
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        if let Some(fps) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={fps:.3}");
        }
        let _ = writeln!(out, "\n{}", v.uri);
    }
    out
}

/// The RFC 6381 codec string of the H.264 stream in MPEG-TS `data` (from its first SPS), or
/// `None` when no SPS is found.
pub fn avc_codec(data: &[u8]) -> Option<String> {
    data.windows(7)
        .find(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7)
        .map(|w| format!("avc1.{:02x}{:02x}{:02x}", w[4], w[5], w[6]))
}

/// `SystemTime` as an RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_window_slides_and_retired_segments_stay_fetchable() {
        let mut p = MediaPlaylist::new(3, Duration::from_secs(2));
        for i in 0..5u64 {
            p.push(
                Duration::from_millis(2000),
                at(1_700_000_000 + 2 * i),
                false,
                Bytes::from(vec![0u8; 500]),
            );
        }
        let text = p.render("P240p30fps16x9/");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert_eq!(text.matches("#EXTINF:2.000,").count(), 3);
        assert!(text.contains("P240p30fps16x9/4.ts"));
        assert!(!text.contains("P240p30fps16x9/1.ts"));
        assert!(p.segment(1).is_some(), "retired but still fetchable");
        assert!(p.segment(0).is_some());
        assert_eq!(p.peak_bps(), 2000);
        for i in 5..8u64 {
            p.push(Duration::from_secs(2), at(i), false, Bytes::new());
        }
        assert!(p.segment(1).is_none(), "gone once out of the grace list");
    }

    #[test]
    fn a_long_segment_raises_the_target_duration() {
        let mut p = MediaPlaylist::new(5, Duration::from_secs(2));
        p.push(Duration::from_millis(4400), at(0), false, Bytes::new());
        assert_eq!(p.target_duration(), 4);
        let text = p.render("");
        assert!(text.contains("#EXTINF:4.400,"));
    }

    #[test]
    fn discontinuities_are_marked_and_counted_as_they_leave() {
        let mut p = MediaPlaylist::new(2, Duration::from_secs(2));
        p.push(Duration::from_secs(2), at(0), false, Bytes::new());
        p.push(Duration::from_secs(2), at(2), true, Bytes::new());
        assert!(p.render("").contains("#EXT-X-DISCONTINUITY\n"));
        p.push(Duration::from_secs(2), at(4), false, Bytes::new());
        p.push(Duration::from_secs(2), at(6), false, Bytes::new());
        let text = p.render("");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        p.end();
        assert!(p.render("").ends_with("#EXT-X-ENDLIST\n"));
        p.resume();
        p.push(Duration::from_secs(2), at(8), true, Bytes::new());
        let text = p.render("");
        assert!(!text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(text.ends_with("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:08.000Z\n#EXTINF:2.000,\n4.ts\n"), "{text}");
    }

    #[test]
    fn the_master_playlist_carries_the_attributes_players_need() {
        let m = master_playlist(&[Variant {
            uri: "abc/P360p30fps16x9.m3u8".into(),
            bandwidth: 1_400_000,
            average_bandwidth: Some(1_000_000),
            codecs: "avc1.64001e,mp4a.40.2".into(),
            resolution: Some((640, 360)),
            frame_rate: Some(30.0),
        }]);
        assert!(m.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
        assert!(m.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=1400000,AVERAGE-BANDWIDTH=1000000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=640x360,FRAME-RATE=30.000\nabc/P360p30fps16x9.m3u8\n"
        ));
    }

    #[test]
    fn every_variant_gets_an_average_bandwidth() {
        let mut p = MediaPlaylist::new(3, Duration::from_secs(2));
        assert_eq!(p.average_bps(), 0);
        for bytes in [1000usize, 3000] {
            p.push(
                Duration::from_secs(1),
                at(1_700_000_000),
                false,
                Bytes::from(vec![0u8; bytes]),
            );
        }
        assert_eq!((p.peak_bps(), p.average_bps()), (24_000, 16_000));
        let m = master_playlist(&[Variant {
            uri: "s/source.m3u8".into(),
            bandwidth: 24_000,
            average_bandwidth: None,
            codecs: "avc1.64001f".into(),
            resolution: Some((960, 540)),
            frame_rate: Some(25.0),
        }]);
        assert!(
            m.contains("BANDWIDTH=24000,AVERAGE-BANDWIDTH=24000,CODECS=\"avc1.64001f\",RESOLUTION=960x540,FRAME-RATE=25.000\n"),
            "{m}"
        );
    }

    #[test]
    fn dates_and_codecs_are_formatted() {
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            avc_codec(&[9, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac]).as_deref(),
            Some("avc1.64001f")
        );
        assert_eq!(avc_codec(&[0, 0, 1, 0x65, 1, 2, 3]), None);
    }
}
