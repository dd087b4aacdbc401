//! Low-latency HLS (LL-HLS) over fMP4/CMAF for one rendition.
//!
//! [`ts_to_fmp4`] repackages one MPEG-TS segment (H.264 video and/or ADTS AAC audio) into
//! fragmented MP4 without re-encoding: an init segment (`ftyp`+`moov`) and a list of parts, each
//! one `moof`+`mdat` pair of about the part target's length. The boxes are written here from the
//! demuxed packets, so the timeline is exactly the TS one: every `tfdt` carries the sample's
//! original decode time (video in a 90 kHz timescale, audio in its sample rate), and the parts of
//! consecutive segments of one stream play as one continuous track behind a single init segment.
//!
//! [`LlPlaylist`] is the LL-HLS media playlist of one rendition with a sliding window; it keeps
//! the parts and serves them. Blocking playlist reload (`_HLS_msn`/`_HLS_part`) is supported by
//! [`LlWaiter`]: an HTTP handler takes one from [`LlPlaylist::subscribe`] while holding the lock,
//! releases the lock, and awaits [`LlWaiter::wait_for`] before rendering:
//!
//! ```text
//! let mut waiter = playlist.lock().subscribe();
//! if let Some((msn, part)) = requested {
//!     waiter.wait_for(msn, part, Duration::from_secs(3 * target)).await;
//! }
//! let body = playlist.lock().render();
//! ```
//!
//! The muxing is blocking work (a temporary file, the FFmpeg demuxer); call [`ts_to_fmp4`] from
//! `tokio::task::spawn_blocking`.

use std::time::Duration;

use bytes::Bytes;

mod boxes;
mod demux;
mod package;
mod playlist;
mod read;

pub use package::ts_to_fmp4;
pub use playlist::{LlPlaylist, LlProgress, LlWaiter};
pub use read::{read_boxes, track_fragments, Mp4Box, TrackFragment};

/// `track_ID` of the video track in the init segment and in every fragment.
pub const VIDEO_TRACK_ID: u32 = 1;
/// `track_ID` of the audio track (also when the stream has no video).
pub const AUDIO_TRACK_ID: u32 = 2;
/// Timescale of the video track: the MPEG-TS 90 kHz clock, so decode times are kept exactly.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// AAC frames are 1024 samples long.
const AAC_FRAME_SAMPLES: i64 = 1024;
/// Inputs larger than this are refused (box sizes are 32-bit).
const MAX_INPUT: usize = 1 << 30;
/// At most this many distinct SPS or PPS go into the `avcC` record.
const MAX_PARAMETER_SETS: usize = 16;

/// Why a segment could not be repackaged or an MP4 could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LlHlsError {
    /// The FFmpeg libraries are unusable.
    #[error("FFmpeg unavailable: {0}")]
    Unavailable(String),
    /// The input is not a readable MPEG-TS segment.
    #[error("invalid input segment: {0}")]
    InvalidInput(String),
    /// The input holds a codec or codec configuration this packager does not handle.
    #[error("unsupported stream: {0}")]
    Unsupported(String),
    /// The temporary file could not be written.
    #[error("temporary file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// MP4 bytes are malformed.
    #[error("malformed MP4: {0}")]
    Mp4(String),
}

fn invalid(msg: impl Into<String>) -> LlHlsError {
    LlHlsError::InvalidInput(msg.into())
}

/// One segment repackaged as fMP4.
#[derive(Debug, Clone)]
pub struct Fmp4Segment {
    /// The init segment: `ftyp` + `moov`.
    pub init: Bytes,
    /// The parts in order; their concatenation is the whole media segment.
    pub parts: Vec<Fmp4Part>,
    /// Media length of the segment (the sum of the part durations).
    pub duration: Duration,
    /// What the segment's video is, when it has video (probed from the stream).
    pub video: Option<VideoInfo>,
}

/// The picture size and frame rate of a segment's video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second: the stream's declared rate, else measured from the frames.
    pub frame_rate: f64,
}

impl Fmp4Segment {
    /// The whole media segment: every part's bytes, concatenated.
    pub fn data(&self) -> Bytes {
        concat_parts(&self.parts)
    }
}

/// One LL-HLS part: one or more `moof`+`mdat` pairs.
#[derive(Debug, Clone)]
pub struct Fmp4Part {
    /// Media length of the part.
    pub duration: Duration,
    /// Whether the part starts with a video IDR frame (always true for audio-only streams).
    pub independent: bool,
    /// The `moof`+`mdat` bytes.
    pub data: Bytes,
}

fn concat_parts(parts: &[Fmp4Part]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for p in parts {
        out.extend_from_slice(&p.data);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::boxes::{cat, fragment, full_box, mp4_box};
    use super::demux::{annexb_nals, parse_adts, sps_chroma, Sample, VideoTrack};
    use super::read::be32;
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn part(ms: u64, independent: bool, tag: u8) -> Fmp4Part {
        Fmp4Part {
            duration: Duration::from_millis(ms),
            independent,
            data: Bytes::from(vec![tag; 3]),
        }
    }

    fn segment(parts: &[u64], init: &'static [u8]) -> Fmp4Segment {
        let parts: Vec<Fmp4Part> = parts
            .iter()
            .enumerate()
            .map(|(i, &ms)| part(ms, i == 0, i as u8))
            .collect();
        let duration = parts.iter().map(|p| p.duration).sum();
        Fmp4Segment {
            init: Bytes::from_static(init),
            parts,
            duration,
            video: None,
        }
    }

    #[test]
    fn video_info_prefers_the_declared_rate_and_else_measures_it() {
        let sample = |dts: i64| Sample {
            dts,
            cts: 0,
            duration: 3600,
            key: dts == 0,
            data: Vec::new(),
        };
        let mut v = VideoTrack {
            width: 960,
            height: 540,
            sps: Vec::new(),
            pps: Vec::new(),
            samples: (0..50).map(|i| sample(i * 3600)).collect(),
            last_packet_duration: 0,
            nominal_frame: 3600,
            declared_rate: None,
        };
        let measured = v.info();
        assert_eq!((measured.width, measured.height), (960, 540));
        assert!((measured.frame_rate - 25.0).abs() < 1e-9, "{measured:?}");
        v.declared_rate = Some(30_000.0 / 1001.0);
        assert!((v.info().frame_rate - 29.97).abs() < 0.001);
    }

    #[test]
    fn adts_headers_give_the_audio_specific_config() {
        // AAC-LC, 48 kHz (index 3), stereo, protection absent, 7 + 4 bytes.
        let frame = [0xff, 0xf1, 0x4c, 0x80, 0x01, 0x7f, 0xfc, 1, 2, 3, 4];
        let (c, payload) = parse_adts(&frame).expect("valid ADTS");
        assert_eq!(c.sample_rate, 48_000);
        assert_eq!(c.channels, 2);
        assert_eq!(c.asc(), [0x11, 0x90]);
        assert_eq!(payload, &[1, 2, 3, 4]);
        assert!(parse_adts(&frame[..6]).is_err());
        let mut long = frame;
        long[4] = 0x02; // frame length 16 > 11 bytes
        assert!(parse_adts(&long).is_err());
        let mut reserved = frame;
        reserved[2] = 0x40 | (14 << 2);
        assert!(parse_adts(&reserved).is_err());
    }

    #[test]
    fn annex_b_is_split_into_nal_units() {
        let data = [
            0, 0, 0, 1, 9, 0xf0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 0, 1, 0x65, 7, 0,
        ];
        let nals = annexb_nals(&data);
        assert_eq!(nals, vec![&[9u8, 0xf0][..], &[0x67, 1, 2], &[0x65, 7]]);
        assert!(annexb_nals(&[1, 2, 3]).is_empty());
        assert!(annexb_nals(&[0, 0, 1]).is_empty());
    }

    #[test]
    fn high_profile_sps_gives_the_avcc_extension() {
        // profile 100, level 30; sps id 0 (1), chroma 1 (010), luma 0 (1), chroma 0 (1).
        let sps = [0x67, 100, 0, 30, 0b1010_1100];
        assert_eq!(sps_chroma(&sps), Some((1, 0, 0)));
        assert_eq!(sps_chroma(&[0x67, 66, 0, 30, 0xff]), None);
        assert_eq!(sps_chroma(&[0x67, 100, 0, 30]), None);
    }

    #[test]
    fn written_fragments_read_back() {
        let samples = vec![
            Sample {
                dts: 5_000_000_000,
                cts: 6000,
                duration: 3000,
                key: true,
                data: vec![1; 10],
            },
            Sample {
                dts: 5_000_003_000,
                cts: -3000,
                duration: 3000,
                key: false,
                data: vec![2; 5],
            },
        ];
        let audio = vec![Sample {
            dts: 77,
            cts: 0,
            duration: 1024,
            key: true,
            data: vec![3; 4],
        }];
        let frag = fragment(9, &[(1, &samples), (2, &audio)]).expect("fragment");
        let boxes = read_boxes(&frag).expect("boxes");
        let kinds: Vec<String> = boxes.iter().map(Mp4Box::kind_str).collect();
        assert_eq!(kinds, ["moof", "mdat"]);
        assert_eq!(
            boxes[1].body,
            &[[1u8; 10].as_slice(), &[2; 5], &[3; 4]].concat()[..]
        );
        let tf = track_fragments(&frag).expect("trafs");
        assert_eq!(
            tf,
            vec![
                TrackFragment {
                    track_id: 1,
                    base_media_decode_time: 5_000_000_000,
                    sample_count: 2,
                    duration: 6000
                },
                TrackFragment {
                    track_id: 2,
                    base_media_decode_time: 77,
                    sample_count: 1,
                    duration: 1024
                }
            ]
        );
        // The data offset of the first trun points at the start of the mdat payload.
        let moof = read_boxes(boxes[0].body).expect("moof children");
        let traf = read_boxes(moof[1].body).expect("traf children");
        let trun = traf.iter().find(|b| &b.kind == b"trun").expect("trun");
        let offset = be32(trun.body, 8).expect("offset") as usize;
        assert_eq!(offset, boxes[1].offset + 8);
    }

    #[test]
    fn broken_boxes_are_errors() {
        assert!(read_boxes(&[0, 0, 0]).is_err());
        assert!(read_boxes(&[0, 0, 0, 4, b'f', b'r', b'e', b'e']).is_err());
        assert!(read_boxes(&[0, 0, 0, 20, b'f', b'r', b'e', b'e']).is_err());
        assert!(read_boxes(&[0, 0, 0, 1, b'f', b'r', b'e', b'e', 0]).is_err());
        assert_eq!(read_boxes(&[]).expect("empty").len(), 0);
        let to_end = [0, 0, 0, 0, b'm', b'd', b'a', b't', 1, 2];
        assert_eq!(read_boxes(&to_end).expect("size 0")[0].body, &[1, 2]);
        // A traf with a trun claiming more samples than it holds.
        let trun = full_box(b"trun", 0, 0x100, &[0, 0, 0, 9, 0, 0, 0, 1]);
        let tfhd = full_box(b"tfhd", 0, 0, &[0, 0, 0, 1]);
        let tfdt = full_box(b"tfdt", 0, 0, &[0, 0, 0, 1]);
        let moof = mp4_box(b"moof", &mp4_box(b"traf", &cat(&[&tfhd, &tfdt, &trun])));
        assert!(track_fragments(&moof).is_err());
        let moof = mp4_box(b"moof", &mp4_box(b"traf", &tfhd));
        assert!(track_fragments(&moof).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            ts_to_fmp4(&[], Duration::from_millis(500)),
            Err(LlHlsError::InvalidInput(_))
        ));
        let mut noise = Vec::with_capacity(100_000);
        let mut x: u32 = 12345;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noise.push((x >> 16) as u8);
        }
        assert!(ts_to_fmp4(&noise, Duration::from_millis(500)).is_err());
        // Sync bytes with garbage in between: still not a usable segment.
        let mut fake_ts = vec![0u8; 188 * 50];
        for (i, b) in fake_ts.iter_mut().enumerate() {
            *b = if i % 188 == 0 { 0x47 } else { (i * 7) as u8 };
        }
        assert!(ts_to_fmp4(&fake_ts, Duration::from_millis(500)).is_err());
    }

    #[test]
    fn the_playlist_has_the_ll_hls_tags() {
        let mut p = LlPlaylist::new(3, Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!(p.last(), None);
        assert!(!p.has(0, 0));
        let msn = p.push_segment(
            segment(&[500, 500, 500, 500], b"I1"),
            at(1_700_000_000),
            false,
        );
        assert_eq!(msn, 0);
        let text = p.render();
        for tag in [
            "#EXTM3U\n",
            "#EXT-X-VERSION:9\n",
            "#EXT-X-TARGETDURATION:2\n",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500\n",
            "#EXT-X-PART-INF:PART-TARGET=0.500\n",
            "#EXT-X-MEDIA-SEQUENCE:0\n",
            "#EXT-X-MAP:URI=\"init.mp4\"\n",
            "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n",
            "#EXT-X-PART:DURATION=0.500,URI=\"0.0.m4s\",INDEPENDENT=YES\n",
            "#EXT-X-PART:DURATION=0.500,URI=\"0.3.m4s\"\n",
            "#EXTINF:2.000,\n0.m4s\n",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"1.0.m4s\"\n",
        ] {
            assert!(text.contains(tag), "missing {tag:?} in\n{text}");
        }
        assert!(!text.contains("ENDLIST"));
        assert_eq!(p.part(0, 3).as_deref(), Some(&[3u8, 3, 3][..]));
        assert_eq!(p.part(0, 4), None);
        assert_eq!(
            p.segment(0).as_deref(),
            Some(&[0u8, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3][..])
        );
        assert_eq!(p.init().as_deref(), Some(&b"I1"[..]));
        assert_eq!(p.init_by_uri("init.mp4").as_deref(), Some(&b"I1"[..]));
        assert_eq!(p.init_by_uri("init-1.mp4"), None);
        p.end();
        let text = p.render();
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        assert!(!text.contains("PRELOAD-HINT"));
    }

    #[test]
    fn has_follows_parts_and_rolls_over_to_the_next_segment() {
        let mut p = LlPlaylist::new(3, Duration::from_secs(2), Duration::from_millis(500));
        p.push_segment(segment(&[500, 500, 500], b"I"), at(0), false);
        assert_eq!(p.last(), Some((0, 2)));
        assert!(p.has(0, 0) && p.has(0, 2));
        assert!(!p.has(0, 3), "past the last part means segment 1 part 0");
        assert!(!p.has(1, 0));
        p.push_segment(segment(&[500], b"I"), at(2), false);
        assert_eq!(p.last(), Some((1, 0)));
        assert!(p.has(0, 3) && p.has(0, 99) && p.has(1, 0));
        assert!(!p.has(1, 1) && !p.has(2, 0));
    }

    #[test]
    fn the_window_slides_and_long_parts_raise_the_part_target() {
        let mut p = LlPlaylist::new(2, Duration::from_secs(2), Duration::from_millis(500));
        for i in 0..5 {
            p.push_segment(segment(&[500, 500, 500, 500], b"I"), at(2 * i), i == 3);
        }
        let text = p.render();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{text}");
        assert!(!text.contains("DISCONTINUITY-SEQUENCE"), "{text}");
        assert!(!text.contains("\n2.m4s"));
        assert_eq!(text.matches("#EXT-X-MAP").count(), 1);
        assert!(p.segment(1).is_some(), "retired segments stay fetchable");
        assert!(p.part(2, 0).is_some());
        assert!(p.segment(0).is_none());
        p.push_segment(segment(&[700, 600, 600], b"I"), at(10), false);
        let text = p.render();
        assert!(
            text.contains("#EXT-X-PART-INF:PART-TARGET=0.700\n"),
            "{text}"
        );
        assert!(text.contains("PART-HOLD-BACK=2.100\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        assert_eq!(p.part_target(), Duration::from_millis(700));
    }

    #[test]
    fn parts_are_listed_near_the_live_edge_only() {
        let mut p = LlPlaylist::new(6, Duration::from_secs(2), Duration::from_millis(500));
        for i in 0..6 {
            p.push_segment(segment(&[1000, 1000], b"I"), at(2 * i), false);
        }
        let text = p.render();
        // 3 target durations = 6 s: the last three segments list their parts.
        assert_eq!(text.matches("#EXT-X-PART:").count(), 6, "{text}");
        assert!(!text.contains("URI=\"2.0.m4s\""));
        assert!(text.contains("URI=\"3.0.m4s\""));
        assert_eq!(text.matches("#EXTINF:").count(), 6);
    }

    #[test]
    fn a_new_init_gets_its_own_map() {
        let mut p = LlPlaylist::new(4, Duration::from_secs(2), Duration::from_millis(500));
        p.push_segment(segment(&[500], b"A"), at(0), false);
        p.push_segment(segment(&[500], b"B"), at(2), true);
        let text = p.render();
        assert!(
            text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\"\n"),
            "{text}"
        );
        assert_eq!(p.init().as_deref(), Some(&b"B"[..]));
        assert_eq!(p.init_by_uri("init.mp4").as_deref(), Some(&b"A"[..]));
        assert_eq!(p.init_by_uri("init-1.mp4").as_deref(), Some(&b"B"[..]));
        for i in 0..8 {
            p.push_segment(segment(&[500], b"B"), at(4 + i), false);
        }
        assert_eq!(
            p.init_by_uri("init.mp4"),
            None,
            "dropped once no kept segment uses it"
        );
    }

    #[tokio::test]
    async fn waiters_wake_on_push_and_end() {
        let playlist = std::sync::Arc::new(std::sync::Mutex::new(LlPlaylist::new(
            3,
            Duration::from_secs(2),
            Duration::from_millis(500),
        )));
        let mut waiter = playlist.lock().expect("lock").subscribe();
        // Never satisfied: returns false once the timeout passes.
        assert!(!waiter.wait_for(0, 0, Duration::from_millis(10)).await);
        let pusher = {
            let playlist = playlist.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                playlist.lock().expect("lock").push_segment(
                    segment(&[500, 500], b"I"),
                    at(0),
                    false,
                );
            })
        };
        assert!(waiter.wait_for(0, 1, Duration::from_secs(600)).await);
        pusher.await.expect("pusher");
        assert_eq!(waiter.progress().last, Some((0, 1)));
        // Already there: immediate.
        assert!(waiter.wait_for(0, 0, Duration::ZERO).await);
        let mut other = playlist.lock().expect("lock").subscribe();
        let ender = {
            let playlist = playlist.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                playlist.lock().expect("lock").end();
            })
        };
        // The stream ends before segment 5 comes: wakes with false instead of waiting.
        assert!(!other.wait_for(5, 0, Duration::from_secs(600)).await);
        ender.await.expect("ender");
        assert!(other.progress().ended);
    }
}
