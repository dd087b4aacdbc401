//! Cuts a published stream into MPEG-TS segments on keyframes.
//!
//! [`Segmenter`] takes the [`IngestEvent`]s an RTMP (or similar) publisher delivers — H.264 access
//! units in AVCC form and raw AAC frames, with millisecond timestamps — and produces
//! self-contained MPEG-TS segments:
//!
//! * a segment is cut only before a video IDR, once it has lasted at least the target
//!   duration (so a GOP longer than the target makes longer segments);
//! * every segment starts with an IDR; video before the first IDR is dropped (and audio too,
//!   so segments start together);
//! * a stream with no video is cut on duration alone;
//! * decode timestamps never go backwards or repeat on a track: they are clamped (small
//!   steps back) or re-based (jumps of more than [`JUMP_MS`]), and logged;
//! * a changed codec configuration closes the current segment; the next one starts at the
//!   next IDR with the new configuration;
//! * MPEG-TS timestamps run on across segments (the segment clock plus
//!   [`TS_TIME_OFFSET_MS`]), so concatenated segments play as one stream.
//!
//! The MPEG-TS is written here directly: PAT and PMT at the start of every segment, H.264 in
//! Annex B with an access unit delimiter and SPS/PPS before every IDR, AAC with ADTS headers,
//! PCR on the video PID (on the audio PID for audio-only segments).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::packet::{CodecConfig, IngestEvent, MediaPacket, Track};

mod config;
mod ts;

use config::{scan_avcc, AacConfig, AvcConfig};
use ts::mux;

/// MPEG-TS timestamps are the segment clock (milliseconds from the stream's first packet,
/// monotonic) plus this, so that an encoder that reorders frames (B-frames) never needs a
/// negative decode time.
pub const TS_TIME_OFFSET_MS: i64 = 10_000;
/// A timestamp step larger than this (either way) is a discontinuity: the stream is re-based so
/// that it continues one frame after the previous packet.
pub const JUMP_MS: i64 = 10_000;
/// A segment that has gone this long without a keyframe to cut on is closed anyway; video is
/// then dropped until the next keyframe.
pub const MAX_SEGMENT_MS: i64 = 60_000;

const PID_PMT: u16 = 0x1000;
const PID_VIDEO: u16 = 0x0100;
const PID_AUDIO: u16 = 0x0101;
const TS_PACKET: usize = 188;

/// One MPEG-TS segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sequence number, from 0.
    pub seq: u64,
    /// Start time on the segment clock, milliseconds (the first IDR's decode time, or the first
    /// audio frame's for audio-only segments). TS timestamps are this plus
    /// [`TS_TIME_OFFSET_MS`].
    pub start_ms: i64,
    /// Duration in milliseconds (up to the next segment's start when cut by one).
    pub duration_ms: u64,
    /// The MPEG-TS bytes.
    pub data: Bytes,
    /// Whether the segment has video.
    pub has_video: bool,
    /// Whether the segment has audio.
    pub has_audio: bool,
}

/// Why an event was rejected. The segmenter's state is unchanged by a rejected event, so the
/// caller may log the error and go on pushing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    /// The AVCDecoderConfigurationRecord does not parse.
    #[error("invalid AVC decoder configuration record: {0}")]
    InvalidAvcConfig(String),
    /// The AudioSpecificConfig does not parse or has no ADTS equivalent.
    #[error("invalid AAC AudioSpecificConfig: {0}")]
    InvalidAacConfig(String),
    /// A media packet is malformed.
    #[error("malformed {track:?} packet: {reason}")]
    InvalidPacket {
        /// The packet's track.
        track: Track,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug)]
struct Held {
    track: Track,
    dts: i64,
    pts: i64,
    idr: bool,
    data: Bytes,
}

#[derive(Debug)]
struct Building {
    start_ms: i64,
    packets: Vec<Held>,
    avc: Option<Arc<AvcConfig>>,
    aac: Option<Arc<AacConfig>>,
    has_video: bool,
    has_audio: bool,
    last_dts: i64,
}

/// Per-track timestamp state.
#[derive(Debug, Default, Clone, Copy)]
struct Clock {
    last_dts: Option<i64>,
    /// The last sensible step between packets (ms).
    step: Option<i64>,
}

/// Cuts ingest events into MPEG-TS segments (see the module docs for the rules).
#[derive(Debug)]
pub struct Segmenter {
    target_ms: i64,
    avc: Option<Arc<AvcConfig>>,
    aac: Option<Arc<AacConfig>>,
    cur: Option<Building>,
    waiting_for_idr: bool,
    seq: u64,
    /// Added to ingest timestamps to get the segment clock.
    offset_ms: Option<i64>,
    video_clock: Clock,
    audio_clock: Clock,
    /// MPEG-TS continuity counters: PAT, PMT, video, audio.
    cc: [u8; 4],
}

impl Segmenter {
    /// A segmenter aiming at segments of `target` (at least 1 ms).
    pub fn new(target: Duration) -> Self {
        Segmenter {
            target_ms: i64::try_from(target.as_millis()).unwrap_or(i64::MAX).max(1),
            avc: None,
            aac: None,
            cur: None,
            waiting_for_idr: true,
            seq: 0,
            offset_ms: None,
            video_clock: Clock::default(),
            audio_clock: Clock::default(),
            cc: [0; 4],
        }
    }

    /// Feeds one event; returns a segment when this event closed one.
    pub fn push(&mut self, ev: IngestEvent) -> Result<Option<Segment>, SegmentError> {
        match ev {
            IngestEvent::Config(CodecConfig::Avc(raw)) => {
                if self.avc.as_ref().is_some_and(|c| c.raw == raw) {
                    return Ok(None);
                }
                let cfg = AvcConfig::parse(raw)?;
                let out = self.close(None)?;
                if self.avc.is_some() {
                    tracing::info!(
                        "new H.264 configuration; starting a new segment at the next IDR"
                    );
                }
                self.avc = Some(Arc::new(cfg));
                self.waiting_for_idr = true;
                Ok(out)
            }
            IngestEvent::Config(CodecConfig::Aac(raw)) => {
                if self.aac.as_ref().is_some_and(|c| c.raw == raw) {
                    return Ok(None);
                }
                let cfg = AacConfig::parse(raw)?;
                let out = self.close(None)?;
                if self.aac.is_some() {
                    tracing::info!("new AAC configuration; starting a new segment");
                }
                self.aac = Some(Arc::new(cfg));
                self.waiting_for_idr = self.avc.is_some();
                Ok(out)
            }
            IngestEvent::Packet(p) => match p.track {
                Track::Video => self.push_video(p),
                Track::Audio => self.push_audio(p),
            },
        }
    }

    /// Closes and returns the segment in progress, if any. Later pushes start a new segment
    /// (at the next IDR when there is video).
    pub fn finish(&mut self) -> Result<Option<Segment>, SegmentError> {
        let out = self.close(None)?;
        self.waiting_for_idr = self.avc.is_some();
        Ok(out)
    }

    fn push_video(&mut self, p: MediaPacket) -> Result<Option<Segment>, SegmentError> {
        let Some(avc) = self.avc.clone() else {
            tracing::debug!("video packet before the H.264 configuration; dropped");
            return Ok(None);
        };
        let idr =
            scan_avcc(&p.data, avc.length_size).map_err(|reason| SegmentError::InvalidPacket {
                track: Track::Video,
                reason,
            })?;
        if idr != p.keyframe {
            tracing::debug!(
                flagged = p.keyframe,
                idr,
                "keyframe flag disagrees with the NAL units; going by the NAL units"
            );
        }
        if self.waiting_for_idr && !idr {
            return Ok(None);
        }
        let (dts, pts) = self.fix_time(Track::Video, p.dts_ms, p.pts_ms);
        let mut out = None;
        if idr {
            let due = self
                .cur
                .as_ref()
                .is_some_and(|c| dts - c.start_ms >= self.target_ms || !c.has_video);
            if due {
                out = self.close(Some(dts))?;
            }
        } else if self
            .cur
            .as_ref()
            .is_some_and(|c| dts - c.start_ms >= MAX_SEGMENT_MS)
        {
            tracing::warn!(
                "no keyframe for {MAX_SEGMENT_MS} ms; closing the segment and waiting for one"
            );
            let seg = self.close(None)?;
            self.waiting_for_idr = true;
            return Ok(seg);
        }
        self.waiting_for_idr = false;
        let seg = self.current(dts);
        seg.has_video = true;
        seg.last_dts = seg.last_dts.max(dts);
        seg.packets.push(Held {
            track: Track::Video,
            dts,
            pts,
            idr,
            data: p.data,
        });
        Ok(out)
    }

    fn push_audio(&mut self, p: MediaPacket) -> Result<Option<Segment>, SegmentError> {
        let Some(aac) = self.aac.clone() else {
            tracing::debug!("audio packet before the AAC configuration; dropped");
            return Ok(None);
        };
        if p.data.is_empty() || aac.adts_header(p.data.len()).is_none() {
            return Err(SegmentError::InvalidPacket {
                track: Track::Audio,
                reason: format!("AAC frame of {} bytes", p.data.len()),
            });
        }
        if self.avc.is_some() && (self.waiting_for_idr || self.cur.is_none()) {
            // Segments of a stream with video start at an IDR; audio waits for it.
            return Ok(None);
        }
        let (dts, pts) = self.fix_time(Track::Audio, p.dts_ms, p.pts_ms);
        let mut out = None;
        if self.avc.is_none()
            && self
                .cur
                .as_ref()
                .is_some_and(|c| dts - c.start_ms >= self.target_ms)
        {
            out = self.close(Some(dts))?;
        }
        let seg = self.current(dts);
        seg.has_audio = true;
        seg.last_dts = seg.last_dts.max(dts);
        seg.packets.push(Held {
            track: Track::Audio,
            dts,
            pts,
            idr: true,
            data: p.data,
        });
        Ok(out)
    }

    /// The segment in progress, started at `start_ms` if there is none.
    fn current(&mut self, start_ms: i64) -> &mut Building {
        let (avc, aac) = (self.avc.clone(), self.aac.clone());
        self.cur.get_or_insert_with(|| Building {
            start_ms,
            packets: Vec::new(),
            avc,
            aac,
            has_video: false,
            has_audio: false,
            last_dts: start_ms,
        })
    }

    /// Maps ingest timestamps to the segment clock, keeping each track's DTS increasing.
    fn fix_time(&mut self, track: Track, dts_in: i64, pts_in: i64) -> (i64, i64) {
        let default_step = match track {
            Track::Video => 33,
            Track::Audio => self.aac.as_ref().map_or(21, |a| a.frame_ms),
        };
        let offset = *self.offset_ms.get_or_insert(dts_in.saturating_neg());
        let mut cts = pts_in.saturating_sub(dts_in);
        if cts < 0 {
            tracing::warn!(
                ?track,
                dts_in,
                pts_in,
                "presentation time before decode time; using the decode time"
            );
            cts = 0;
        }
        if cts > JUMP_MS {
            tracing::warn!(?track, cts, "composition offset too large; ignored");
            cts = 0;
        }
        let mut dts = dts_in.saturating_add(offset);
        let clock = match track {
            Track::Video => &mut self.video_clock,
            Track::Audio => &mut self.audio_clock,
        };
        match clock.last_dts {
            Some(last) => {
                let delta = dts.saturating_sub(last);
                if !(-JUMP_MS..=JUMP_MS).contains(&delta) {
                    let step = clock.step.unwrap_or(default_step);
                    let target = last.saturating_add(step);
                    tracing::warn!(
                        ?track,
                        jump_ms = delta,
                        "timestamp discontinuity; re-basing the stream"
                    );
                    self.offset_ms = Some(offset.saturating_add(target.saturating_sub(dts)));
                    dts = target;
                } else if delta <= 0 {
                    tracing::warn!(
                        ?track,
                        dts_in,
                        last_ms = last,
                        "non-increasing timestamp; clamped"
                    );
                    dts = last.saturating_add(1);
                } else if delta < 1000 {
                    clock.step = Some(delta);
                }
            }
            None => {
                if dts < 0 {
                    dts = 0;
                }
            }
        }
        let clock = match track {
            Track::Video => &mut self.video_clock,
            Track::Audio => &mut self.audio_clock,
        };
        clock.last_dts = Some(dts);
        (dts, dts.saturating_add(cts))
    }

    /// Closes the segment in progress. `next_start` is where the next one begins (its duration
    /// runs to there); without it the duration runs to the end of the last packet.
    fn close(&mut self, next_start: Option<i64>) -> Result<Option<Segment>, SegmentError> {
        let Some(b) = self.cur.take() else {
            return Ok(None);
        };
        let end = match next_start {
            Some(e) => e,
            None => {
                let step = if b.has_video {
                    self.video_clock.step.unwrap_or(33)
                } else {
                    b.aac.as_ref().map_or(21, |a| a.frame_ms)
                };
                b.last_dts + step
            }
        };
        let data = mux(&b, &mut self.cc)?;
        let seg = Segment {
            seq: self.seq,
            start_ms: b.start_ms,
            duration_ms: u64::try_from(end - b.start_ms).unwrap_or(0),
            data: Bytes::from(data),
            has_video: b.has_video,
            has_audio: b.has_audio,
        };
        self.seq += 1;
        Ok(Some(seg))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::ts::crc32_mpeg2;
    use super::*;

    pub(crate) fn avcc_record() -> Bytes {
        // Baseline-ish SPS/PPS bytes; only the NAL types matter to the segmenter.
        let sps = [0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x00];
        let pps = [0x68, 0xCE, 0x3C, 0x80];
        let mut v = vec![1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, sps.len() as u8];
        v.extend_from_slice(&sps);
        v.push(1);
        v.extend_from_slice(&[0, pps.len() as u8]);
        v.extend_from_slice(&pps);
        Bytes::from(v)
    }

    fn au(idr: bool) -> Bytes {
        let nal: &[u8] = if idr {
            &[0x65, 0x88, 0x84]
        } else {
            &[0x41, 0x9A, 0x02]
        };
        let mut v = (nal.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(nal);
        Bytes::from(v)
    }

    pub(crate) fn video(ms: i64, idr: bool) -> IngestEvent {
        IngestEvent::Packet(MediaPacket {
            track: Track::Video,
            dts_ms: ms,
            pts_ms: ms,
            keyframe: idr,
            data: au(idr),
        })
    }

    fn audio(ms: i64) -> IngestEvent {
        IngestEvent::Packet(MediaPacket {
            track: Track::Audio,
            dts_ms: ms,
            pts_ms: ms,
            keyframe: true,
            data: Bytes::from_static(&[0x21, 0x10, 0x04]),
        })
    }

    const ASC_48K_STEREO: [u8; 2] = [0x11, 0x90];

    #[test]
    fn crc_matches_the_mpeg2_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn parses_avcc_and_asc() {
        let c = AvcConfig::parse(avcc_record()).expect("avcC");
        assert_eq!(c.length_size, 4);
        assert_eq!(&c.parameter_sets[..5], &[0, 0, 0, 1, 0x67]);
        assert!(AvcConfig::parse(Bytes::from_static(&[1, 2, 3])).is_err());
        let mut truncated = avcc_record().to_vec();
        truncated.truncate(10);
        assert!(AvcConfig::parse(Bytes::from(truncated)).is_err());
        let a = AacConfig::parse(Bytes::from_static(&ASC_48K_STEREO)).expect("asc");
        assert_eq!((a.profile, a.sampling_index, a.channels), (1, 3, 2));
        assert_eq!(a.frame_ms, 21);
        let h = a.adts_header(100).expect("adts");
        assert_eq!(h[0..2], [0xFF, 0xF1]);
        assert_eq!(
            ((u32::from(h[3]) & 3) << 11) | (u32::from(h[4]) << 3) | (u32::from(h[5]) >> 5),
            107
        );
        assert!(AacConfig::parse(Bytes::from_static(&[0x11])).is_err());
        assert!(a.adts_header(9000).is_none());
    }

    #[test]
    fn malformed_packets_are_rejected_without_changing_state() {
        let mut s = Segmenter::new(Duration::from_secs(2));
        s.push(IngestEvent::Config(CodecConfig::Avc(avcc_record())))
            .expect("config");
        let bad = IngestEvent::Packet(MediaPacket {
            track: Track::Video,
            dts_ms: 0,
            pts_ms: 0,
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 9, 0x65]),
        });
        assert!(matches!(
            s.push(bad),
            Err(SegmentError::InvalidPacket {
                track: Track::Video,
                ..
            })
        ));
        assert!(s.cur.is_none());
        assert!(matches!(
            s.push(IngestEvent::Config(CodecConfig::Avc(Bytes::from_static(
                &[1]
            )))),
            Err(SegmentError::InvalidAvcConfig(_))
        ));
    }

    #[test]
    fn cuts_on_idr_after_target_and_clamps_time() {
        let mut s = Segmenter::new(Duration::from_millis(1000));
        s.push(IngestEvent::Config(CodecConfig::Avc(avcc_record())))
            .expect("avc");
        s.push(IngestEvent::Config(CodecConfig::Aac(Bytes::from_static(
            &ASC_48K_STEREO,
        ))))
        .expect("aac");
        // Before the first IDR: dropped.
        assert!(s.push(video(0, false)).expect("p").is_none());
        assert!(s.push(audio(5)).expect("a").is_none());
        let mut segs = Vec::new();
        for i in 1..=90 {
            let ms = i * 33;
            // IDR every 15 frames (~0.5 s); a backwards step at frame 40.
            let ms = if i == 40 { ms - 100 } else { ms };
            if let Some(seg) = s.push(video(ms, i % 15 == 1)).expect("v") {
                segs.push(seg);
            }
            if let Some(seg) = s.push(audio(ms + 3)).expect("a") {
                segs.push(seg);
            }
        }
        segs.extend(s.finish().expect("finish"));
        assert!(segs.len() >= 2, "{}", segs.len());
        for w in segs.windows(2) {
            assert_eq!(w[0].start_ms + w[0].duration_ms as i64, w[1].start_ms);
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        for seg in &segs[..segs.len() - 1] {
            assert!(seg.duration_ms >= 1000, "{}", seg.duration_ms);
            assert!(seg.has_video && seg.has_audio);
            assert_eq!(seg.data.len() % TS_PACKET, 0);
            assert!(seg.data.chunks(TS_PACKET).all(|p| p[0] == 0x47));
        }
    }

    #[test]
    fn audio_only_cuts_on_duration_and_rebases_jumps() {
        let mut s = Segmenter::new(Duration::from_millis(500));
        s.push(IngestEvent::Config(CodecConfig::Aac(Bytes::from_static(
            &ASC_48K_STEREO,
        ))))
        .expect("aac");
        let mut segs = Vec::new();
        for i in 0..100 {
            // A jump of an hour half way.
            let ms = i * 21 + if i >= 50 { 3_600_000 } else { 0 };
            segs.extend(s.push(audio(ms)).expect("a"));
        }
        segs.extend(s.finish().expect("finish"));
        assert_eq!(segs.len(), 5);
        for seg in &segs {
            assert!(!seg.has_video && seg.has_audio);
        }
        let last = segs.last().expect("segment");
        assert!(last.start_ms + (last.duration_ms as i64) < 3000);
    }

    #[test]
    fn a_new_configuration_closes_the_segment() {
        let mut s = Segmenter::new(Duration::from_secs(10));
        s.push(IngestEvent::Config(CodecConfig::Avc(avcc_record())))
            .expect("avc");
        assert!(s.push(video(0, true)).expect("v").is_none());
        assert!(s.push(video(33, false)).expect("v").is_none());
        // The same configuration again changes nothing.
        assert!(s
            .push(IngestEvent::Config(CodecConfig::Avc(avcc_record())))
            .expect("same")
            .is_none());
        let mut other = avcc_record().to_vec();
        other[9] ^= 1;
        let seg = s
            .push(IngestEvent::Config(CodecConfig::Avc(Bytes::from(other))))
            .expect("new config")
            .expect("segment closed");
        assert_eq!((seg.start_ms, seg.duration_ms), (0, 66));
        // Non-IDR after the new configuration is dropped; the next segment starts at an IDR.
        assert!(s.push(video(66, false)).expect("v").is_none());
        assert!(s.push(video(99, true)).expect("v").is_none());
        let seg = s.finish().expect("finish").expect("segment");
        assert_eq!((seg.seq, seg.start_ms), (1, 99));
    }
}
