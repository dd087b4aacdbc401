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

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ff::{codec, media, Packet, Rational};
use ffmpeg_next as ff;
use tokio::sync::watch;

use crate::hls::rfc3339_millis;

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

// ---------------------------------------------------------------------------------------------
// Demuxing
// ---------------------------------------------------------------------------------------------

/// One access unit, with times in its track's timescale.
#[derive(Debug, Clone)]
struct Sample {
    dts: i64,
    /// Presentation minus decode time.
    cts: i64,
    duration: i64,
    key: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
struct VideoTrack {
    width: u16,
    height: u16,
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    samples: Vec<Sample>,
    /// Duration of the last packet, as the demuxer reported it (90 kHz), if any.
    last_packet_duration: i64,
    /// One frame at the stream's nominal rate (90 kHz).
    nominal_frame: i64,
    /// The frame rate the stream declares, if any.
    declared_rate: Option<f64>,
}

impl VideoTrack {
    /// Size and frame rate; the rate is measured from the samples when none is declared.
    fn info(&self) -> VideoInfo {
        let span: i64 = self.samples.iter().map(|s| s.duration.max(0)).sum();
        let measured = if span > 0 {
            Some(self.samples.len() as f64 * f64::from(VIDEO_TIMESCALE) / span as f64)
        } else {
            None
        };
        VideoInfo {
            width: u32::from(self.width),
            height: u32::from(self.height),
            frame_rate: self.declared_rate.or(measured).unwrap_or(30.0),
        }
    }
}

#[derive(Debug)]
struct AudioTrack {
    config: AdtsConfig,
    samples: Vec<Sample>,
    /// The decode time of each sample in 90 kHz, for placing it among the video parts.
    times_90k: Vec<i64>,
}

/// The stream parameters an ADTS header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AdtsConfig {
    object_type: u8,
    frequency_index: u8,
    channels: u8,
    sample_rate: u32,
}

const AAC_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

impl AdtsConfig {
    /// The two-byte AudioSpecificConfig.
    fn asc(&self) -> [u8; 2] {
        let v: u16 = (u16::from(self.object_type) << 11)
            | (u16::from(self.frequency_index) << 7)
            | (u16::from(self.channels) << 3);
        v.to_be_bytes()
    }
}

/// Parses one ADTS frame: its configuration and the raw AAC payload.
fn parse_adts(d: &[u8]) -> Result<(AdtsConfig, &[u8]), String> {
    if d.len() < 7 || d[0] != 0xff || d[1] & 0xf6 != 0xf0 {
        return Err("not an ADTS frame".into());
    }
    let protection_absent = d[1] & 1 == 1;
    let profile = d[2] >> 6;
    let frequency_index = (d[2] >> 2) & 0x0f;
    let channels = ((d[2] & 1) << 2) | (d[3] >> 6);
    let frame_len =
        (usize::from(d[3] & 3) << 11) | (usize::from(d[4]) << 3) | usize::from(d[5] >> 5);
    let blocks = d[6] & 3;
    let header = if protection_absent { 7 } else { 9 };
    let sample_rate = *AAC_RATES
        .get(usize::from(frequency_index))
        .ok_or("reserved ADTS sampling frequency index")?;
    if channels == 0 {
        return Err("ADTS channel configuration 0 (program config element) is unsupported".into());
    }
    if blocks != 0 {
        return Err("ADTS frames with several raw data blocks are unsupported".into());
    }
    if frame_len <= header || frame_len > d.len() {
        return Err(format!(
            "ADTS frame length {frame_len} does not fit the packet"
        ));
    }
    Ok((
        AdtsConfig {
            object_type: profile + 1,
            frequency_index,
            channels,
            sample_rate,
        },
        &d[header..frame_len],
    ))
}

/// The NAL units of an Annex B byte stream (start codes removed, trailing zeros trimmed).
fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        let mut nal = &data[s..end.max(s)];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    nals
}

/// Reads Exp-Golomb codes from an RBSP (emulation prevention bytes removed).
struct BitReader {
    data: Vec<u8>,
    pos: usize,
}

impl BitReader {
    fn from_nal_payload(ebsp: &[u8]) -> BitReader {
        let mut data = Vec::with_capacity(ebsp.len());
        let mut zeros = 0;
        for &b in ebsp {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            data.push(b);
        }
        BitReader { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v: u64 = 1;
        for _ in 0..zeros {
            v = (v << 1) | u64::from(self.bit()?);
        }
        u32::try_from(v - 1).ok()
    }
}

/// The `avcC` extension of the High profiles: (chroma_format_idc, bit_depth_luma_minus8,
/// bit_depth_chroma_minus8), when the SPS is of such a profile and parses.
fn sps_chroma(sps: &[u8]) -> Option<(u8, u8, u8)> {
    let profile = *sps.get(1)?;
    if !matches!(profile, 100 | 110 | 122 | 144) {
        return None;
    }
    let mut r = BitReader::from_nal_payload(sps.get(4..)?);
    let _sps_id = r.ue()?;
    let chroma = r.ue()?;
    if chroma == 3 {
        r.bit()?;
    }
    let luma = r.ue()?;
    let chroma_depth = r.ue()?;
    Some((
        u8::try_from(chroma).ok()?.min(3),
        u8::try_from(luma).ok()?.min(7),
        u8::try_from(chroma_depth).ok()?.min(7),
    ))
}

fn init_ffmpeg() -> Result<(), LlHlsError> {
    crate::transcode::ffmpeg_ready().map_err(LlHlsError::Unavailable)
}

/// `t` in time base `tb`, in units of `1/scale` seconds (rounded to nearest).
fn rescale(t: i64, tb: Rational, scale: u32) -> Option<i64> {
    let den = i128::from(tb.denominator());
    if den <= 0 || tb.numerator() <= 0 {
        return None;
    }
    let num = i128::from(t) * i128::from(tb.numerator()) * i128::from(scale);
    i64::try_from((2 * num + den).div_euclid(2 * den)).ok()
}

fn demux(ts: &[u8]) -> Result<(Option<VideoTrack>, Option<AudioTrack>), LlHlsError> {
    init_ffmpeg()?;
    if ts.is_empty() {
        return Err(invalid("empty segment"));
    }
    if ts.len() > MAX_INPUT {
        return Err(invalid(format!(
            "segment of {} bytes is too large",
            ts.len()
        )));
    }
    let dir = tempfile::Builder::new().prefix("weir-llhls-").tempdir()?;
    let path = dir.path().join("in.ts");
    std::fs::write(&path, ts)?;
    let mut ictx =
        ff::format::input(&path).map_err(|e| invalid(format!("cannot open the segment: {e}")))?;
    let format = ictx.format().name().to_string();
    if format != "mpegts" {
        return Err(invalid(format!("expected MPEG-TS, found {format}")));
    }
    let vst = ictx.streams().best(media::Type::Video);
    let ast = ictx.streams().best(media::Type::Audio);
    if vst.is_none() && ast.is_none() {
        return Err(invalid("no audio or video stream"));
    }
    let mut video = None;
    let mut v_in = None;
    if let Some(s) = vst {
        let id = s.parameters().id();
        if id != codec::Id::H264 {
            return Err(LlHlsError::Unsupported(format!(
                "video codec {} (only H.264)",
                id.name()
            )));
        }
        let dec = codec::context::Context::from_parameters(s.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(|e| invalid(format!("video stream: {e}")))?;
        let (Ok(width), Ok(height)) = (u16::try_from(dec.width()), u16::try_from(dec.height()))
        else {
            return Err(invalid("video dimensions out of range"));
        };
        if width == 0 || height == 0 {
            return Err(invalid("video stream has no dimensions"));
        }
        let declared = [s.avg_frame_rate(), s.rate()]
            .into_iter()
            .find(|r| r.numerator() > 0 && r.denominator() > 0);
        let rate = declared.unwrap_or(Rational::new(30, 1));
        let nominal_frame = (i64::from(VIDEO_TIMESCALE) * i64::from(rate.denominator())
            / i64::from(rate.numerator()).max(1))
        .max(1);
        v_in = Some((s.index(), s.time_base()));
        video = Some(VideoTrack {
            width,
            height,
            sps: Vec::new(),
            pps: Vec::new(),
            samples: Vec::new(),
            last_packet_duration: 0,
            nominal_frame,
            declared_rate: declared
                .map(|r| f64::from(r.numerator()) / f64::from(r.denominator()))
                .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1000.0),
        });
    }
    let mut a_in = None;
    if let Some(s) = ast {
        let id = s.parameters().id();
        if id != codec::Id::AAC {
            return Err(LlHlsError::Unsupported(format!(
                "audio codec {} (only AAC)",
                id.name()
            )));
        }
        a_in = Some((s.index(), s.time_base()));
    }
    let mut audio: Option<AudioTrack> = None;
    let mut packet = Packet::empty();
    loop {
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "stopped reading a damaged segment early");
                break;
            }
        }
        let idx = packet.stream();
        if let (Some(v), Some((_, tb))) = (video.as_mut(), v_in.filter(|(i, _)| *i == idx)) {
            add_video(v, &packet, tb)?;
        } else if let Some((_, tb)) = a_in.filter(|(i, _)| *i == idx) {
            add_audio(&mut audio, &packet, tb)?;
        }
    }
    let video = video.filter(|v| !v.samples.is_empty());
    if let Some(v) = &video {
        if v.sps.is_empty() || v.pps.is_empty() {
            return Err(invalid("the H.264 stream carries no SPS/PPS"));
        }
    } else if v_in.is_some() {
        return Err(invalid("the video stream has no frames"));
    }
    if video.is_none() && audio.is_none() {
        return Err(invalid("no media packets"));
    }
    Ok((video, audio))
}

fn packet_times(
    packet: &Packet,
    tb: Rational,
    scale: u32,
) -> Result<Option<(i64, i64)>, LlHlsError> {
    let Some(dts) = packet.dts().or(packet.pts()) else {
        return Ok(None);
    };
    let pts = packet.pts().unwrap_or(dts);
    let (Some(dts), Some(pts)) = (rescale(dts, tb, scale), rescale(pts, tb, scale)) else {
        return Err(invalid("timestamps out of range"));
    };
    if dts < 0 {
        return Err(invalid("negative decode timestamp"));
    }
    Ok(Some((dts, pts)))
}

fn add_video(v: &mut VideoTrack, packet: &Packet, tb: Rational) -> Result<(), LlHlsError> {
    let Some(data) = packet.data() else {
        return Ok(());
    };
    let Some((dts, pts)) = packet_times(packet, tb, VIDEO_TIMESCALE)? else {
        tracing::debug!("dropping a video packet without timestamps");
        return Ok(());
    };
    if v.samples.last().is_some_and(|l| dts <= l.dts) {
        tracing::debug!(
            dts,
            "dropping a video packet with a non-increasing timestamp"
        );
        return Ok(());
    }
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut idr = false;
    for nal in annexb_nals(data) {
        let kind = nal[0] & 0x1f;
        match kind {
            7 | 8 => {
                let sets = if kind == 7 { &mut v.sps } else { &mut v.pps };
                if nal.len() >= 4
                    && nal.len() <= usize::from(u16::MAX)
                    && sets.len() < MAX_PARAMETER_SETS
                    && !sets.iter().any(|s| s.as_slice() == nal)
                {
                    sets.push(nal.to_vec());
                }
            }
            9 => {}
            _ => {
                idr |= kind == 5;
                let len = u32::try_from(nal.len()).map_err(|_| invalid("NAL unit too large"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(nal);
            }
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    if v.samples.is_empty() && !idr {
        tracing::warn!("the segment's first video frame is not an IDR");
    }
    v.last_packet_duration = rescale(packet.duration(), tb, VIDEO_TIMESCALE).unwrap_or(0);
    v.samples.push(Sample {
        dts,
        cts: pts - dts,
        duration: 0,
        key: idr,
        data: out,
    });
    Ok(())
}

fn add_audio(
    audio: &mut Option<AudioTrack>,
    packet: &Packet,
    tb: Rational,
) -> Result<(), LlHlsError> {
    let Some(data) = packet.data() else {
        return Ok(());
    };
    let (config, payload) = match parse_adts(data) {
        Ok(x) => x,
        Err(why) => {
            tracing::debug!(%why, "dropping an audio packet");
            return Ok(());
        }
    };
    if let Some(a) = audio.as_ref() {
        if a.config != config {
            tracing::debug!("dropping an audio packet whose configuration changed mid-segment");
            return Ok(());
        }
    }
    let Some((dts, _)) = packet_times(packet, tb, config.sample_rate)? else {
        tracing::debug!("dropping an audio packet without timestamps");
        return Ok(());
    };
    let Some((dts_90k, _)) = packet_times(packet, tb, VIDEO_TIMESCALE)? else {
        return Ok(());
    };
    let a = audio.get_or_insert_with(|| AudioTrack {
        config,
        samples: Vec::new(),
        times_90k: Vec::new(),
    });
    if a.samples.last().is_some_and(|l| dts <= l.dts) {
        tracing::debug!(
            dts,
            "dropping an audio packet with a non-increasing timestamp"
        );
        return Ok(());
    }
    a.samples.push(Sample {
        dts,
        cts: 0,
        duration: 0,
        key: true,
        data: payload.to_vec(),
    });
    a.times_90k.push(dts_90k);
    Ok(())
}

/// Fills in sample durations from the decode time differences; the last sample gets `last`.
fn set_durations(samples: &mut [Sample], last: i64) {
    let n = samples.len();
    for i in 0..n {
        samples[i].duration = if i + 1 < n {
            samples[i + 1].dts - samples[i].dts
        } else {
            last.max(1)
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Packaging
// ---------------------------------------------------------------------------------------------

/// Repackages one MPEG-TS segment (H.264 and/or ADTS AAC) as fMP4 split into parts of about
/// `part_target`, keeping the TS timestamps. Blocking.
///
/// Parts never split a frame and are at most `part_target` long unless one frame alone is
/// longer; a new part starts at the first frame that would make the current one longer. With
/// video, parts are cut on video frames and each audio frame goes into the part its decode time
/// falls in. The segment should start with an IDR frame (the first part is marked independent
/// only if it does).
pub fn ts_to_fmp4(ts: &[u8], part_target: Duration) -> Result<Fmp4Segment, LlHlsError> {
    let (mut video, mut audio) = demux(ts)?;
    if let Some(v) = video.as_mut() {
        // The last frame lasts as long as the demuxer says, else as long as the one before
        // it, else one frame at the nominal rate.
        let previous = match v.samples.as_slice() {
            [.., a, b] => b.dts - a.dts,
            _ => 0,
        };
        let last = [v.last_packet_duration, previous, v.nominal_frame]
            .into_iter()
            .find(|d| *d > 0)
            .unwrap_or(1);
        set_durations(&mut v.samples, last);
    }
    if let Some(a) = audio.as_mut() {
        set_durations(&mut a.samples, AAC_FRAME_SAMPLES);
    }
    let init = Bytes::from(init_segment(video.as_ref(), audio.as_ref()));

    // Part boundaries on the primary track (video if any, else audio).
    let (primary, scale): (&[Sample], u32) = match (&video, &audio) {
        (Some(v), _) => (&v.samples, VIDEO_TIMESCALE),
        (None, Some(a)) => (&a.samples, a.config.sample_rate),
        (None, None) => return Err(invalid("no media packets")),
    };
    let target = i64::try_from(part_target.as_micros() * u128::from(scale) / 1_000_000)
        .unwrap_or(i64::MAX)
        .max(1);
    let mut starts = vec![0usize];
    let mut part_start = primary[0].dts;
    for (i, s) in primary.iter().enumerate().skip(1) {
        if s.dts.saturating_add(s.duration).saturating_sub(part_start) > target {
            starts.push(i);
            part_start = s.dts;
        }
    }
    let end = primary
        .last()
        .map_or(primary[0].dts, |s| s.dts.saturating_add(s.duration));
    let first = primary[0].dts;
    let bounds: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(primary.len())))
        .collect();

    // Audio samples per part (only when video leads).
    let mut audio_ranges = vec![(0usize, 0usize); bounds.len()];
    if let (Some(v), Some(a)) = (&video, &audio) {
        let mut j = 0;
        for (k, range) in audio_ranges.iter_mut().enumerate() {
            let from = j;
            let limit = bounds.get(k + 1).map(|(s, _)| v.samples[*s].dts);
            while j < a.samples.len() && limit.is_none_or(|l| a.times_90k[j] < l) {
                j += 1;
            }
            *range = (from, j);
        }
    }

    let to_duration = |t: i64| {
        Duration::from_nanos(
            u64::try_from(i128::from(t.max(0)) * 1_000_000_000 / i128::from(scale))
                .unwrap_or(u64::MAX),
        )
    };
    let mut parts = Vec::with_capacity(bounds.len());
    for (k, &(s, e)) in bounds.iter().enumerate() {
        let part_end = bounds.get(k + 1).map_or(end, |(n, _)| primary[*n].dts);
        let mut tracks: Vec<(u32, &[Sample])> = Vec::with_capacity(2);
        let independent = match (&video, &audio) {
            (Some(v), a) => {
                tracks.push((VIDEO_TRACK_ID, &v.samples[s..e]));
                if let Some(a) = a {
                    let (from, to) = audio_ranges[k];
                    if to > from {
                        tracks.push((AUDIO_TRACK_ID, &a.samples[from..to]));
                    }
                }
                v.samples[s].key
            }
            (None, Some(a)) => {
                tracks.push((AUDIO_TRACK_ID, &a.samples[s..e]));
                true
            }
            (None, None) => false,
        };
        let ms = u64::try_from(i128::from(primary[s].dts) * 1000 / i128::from(scale)).unwrap_or(0);
        let sequence = (ms % u64::from(u32::MAX)) as u32 + 1;
        parts.push(Fmp4Part {
            duration: to_duration(part_end - primary[s].dts),
            independent,
            data: Bytes::from(fragment(sequence, &tracks)?),
        });
    }
    Ok(Fmp4Segment {
        init,
        parts,
        duration: to_duration(end - first),
        video: video.as_ref().map(VideoTrack::info),
    })
}

// ---------------------------------------------------------------------------------------------
// Box writing
// ---------------------------------------------------------------------------------------------

fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    // Callers keep bodies far below 4 GiB (inputs are capped at MAX_INPUT).
    v.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(kind);
    v.extend_from_slice(body);
    v
}

fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.push(version);
    b.extend_from_slice(&flags.to_be_bytes()[1..]);
    b.extend_from_slice(body);
    mp4_box(kind, &b)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn matrix() -> Vec<u8> {
    MATRIX.iter().flat_map(|m| m.to_be_bytes()).collect()
}

fn init_segment(video: Option<&VideoTrack>, audio: Option<&AudioTrack>) -> Vec<u8> {
    let mut ftyp = Vec::new();
    ftyp.extend_from_slice(b"iso6");
    ftyp.extend_from_slice(&0u32.to_be_bytes());
    for brand in [b"iso6", b"cmfc", b"iso5", b"mp41"] {
        ftyp.extend_from_slice(brand);
    }
    let mut mvhd = Vec::new();
    mvhd.extend_from_slice(&[0; 8]); // creation, modification
    mvhd.extend_from_slice(&1000u32.to_be_bytes());
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // duration
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume
    mvhd.extend_from_slice(&[0; 10]);
    mvhd.extend_from_slice(&matrix());
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&(AUDIO_TRACK_ID + 1).to_be_bytes());
    let mut moov = full_box(b"mvhd", 0, 0, &mvhd);
    let mut mvex = Vec::new();
    if let Some(v) = video {
        moov.extend(video_trak(v));
        mvex.extend(trex(VIDEO_TRACK_ID));
    }
    if let Some(a) = audio {
        moov.extend(audio_trak(a));
        mvex.extend(trex(AUDIO_TRACK_ID));
    }
    moov.extend(mp4_box(b"mvex", &mvex));
    cat(&[&mp4_box(b"ftyp", &ftyp), &mp4_box(b"moov", &moov)])
}

fn trex(track_id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&track_id.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes()); // sample description index
    b.extend_from_slice(&[0; 12]); // default duration, size, flags
    full_box(b"trex", 0, 0, &b)
}

fn tkhd(track_id: u32, audio: bool, width: u16, height: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&track_id.to_be_bytes());
    b.extend_from_slice(&[0; 4]); // reserved
    b.extend_from_slice(&[0; 4]); // duration
    b.extend_from_slice(&[0; 8]); // reserved
    b.extend_from_slice(&[0; 4]); // layer, alternate group
    b.extend_from_slice(&(if audio { 0x0100u16 } else { 0 }).to_be_bytes());
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&matrix());
    b.extend_from_slice(&(u32::from(width) << 16).to_be_bytes());
    b.extend_from_slice(&(u32::from(height) << 16).to_be_bytes());
    full_box(b"tkhd", 0, 3, &b)
}

fn mdia(
    timescale: u32,
    handler: &[u8; 4],
    name: &str,
    media_header: Vec<u8>,
    stsd: Vec<u8>,
) -> Vec<u8> {
    let mut mdhd = Vec::new();
    mdhd.extend_from_slice(&[0; 8]);
    mdhd.extend_from_slice(&timescale.to_be_bytes());
    mdhd.extend_from_slice(&[0; 4]);
    mdhd.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
    mdhd.extend_from_slice(&[0; 2]);
    let mut hdlr = vec![0; 4];
    hdlr.extend_from_slice(handler);
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(name.as_bytes());
    hdlr.push(0);
    let url = full_box(b"url ", 0, 1, &[]);
    let dref = full_box(b"dref", 0, 0, &cat(&[&1u32.to_be_bytes(), &url]));
    let stbl = mp4_box(
        b"stbl",
        &cat(&[
            &full_box(b"stsd", 0, 0, &cat(&[&1u32.to_be_bytes(), &stsd])),
            &full_box(b"stts", 0, 0, &[0; 4]),
            &full_box(b"stsc", 0, 0, &[0; 4]),
            &full_box(b"stsz", 0, 0, &[0; 8]),
            &full_box(b"stco", 0, 0, &[0; 4]),
        ]),
    );
    let minf = mp4_box(
        b"minf",
        &cat(&[&media_header, &mp4_box(b"dinf", &dref), &stbl]),
    );
    mp4_box(
        b"mdia",
        &cat(&[
            &full_box(b"mdhd", 0, 0, &mdhd),
            &full_box(b"hdlr", 0, 0, &hdlr),
            &minf,
        ]),
    )
}

fn video_trak(v: &VideoTrack) -> Vec<u8> {
    let mut avcc = Vec::new();
    let sps0 = v.sps.first().map(Vec::as_slice).unwrap_or(&[0, 66, 0, 30]);
    avcc.push(1);
    avcc.extend_from_slice(&[
        sps0.get(1).copied().unwrap_or(66),
        sps0.get(2).copied().unwrap_or(0),
        sps0.get(3).copied().unwrap_or(30),
    ]);
    avcc.push(0xff); // 4-byte NAL lengths
    avcc.push(0xe0 | v.sps.len() as u8);
    for s in &v.sps {
        avcc.extend_from_slice(&(s.len() as u16).to_be_bytes());
        avcc.extend_from_slice(s);
    }
    avcc.push(v.pps.len() as u8);
    for p in &v.pps {
        avcc.extend_from_slice(&(p.len() as u16).to_be_bytes());
        avcc.extend_from_slice(p);
    }
    if let Some((chroma, luma, chroma_depth)) = sps_chroma(sps0) {
        avcc.extend_from_slice(&[0xfc | chroma, 0xf8 | luma, 0xf8 | chroma_depth, 0]);
    }
    let mut avc1 = vec![0; 6];
    avc1.extend_from_slice(&1u16.to_be_bytes()); // data reference index
    avc1.extend_from_slice(&[0; 16]);
    avc1.extend_from_slice(&v.width.to_be_bytes());
    avc1.extend_from_slice(&v.height.to_be_bytes());
    avc1.extend_from_slice(&0x0048_0000u32.to_be_bytes());
    avc1.extend_from_slice(&0x0048_0000u32.to_be_bytes());
    avc1.extend_from_slice(&[0; 4]);
    avc1.extend_from_slice(&1u16.to_be_bytes()); // frame count
    avc1.extend_from_slice(&[0; 32]); // compressor name
    avc1.extend_from_slice(&0x0018u16.to_be_bytes());
    avc1.extend_from_slice(&0xffffu16.to_be_bytes());
    avc1.extend(mp4_box(b"avcC", &avcc));
    let vmhd = full_box(b"vmhd", 0, 1, &[0; 8]);
    mp4_box(
        b"trak",
        &cat(&[
            &tkhd(VIDEO_TRACK_ID, false, v.width, v.height),
            &mdia(
                VIDEO_TIMESCALE,
                b"vide",
                "Video",
                vmhd,
                mp4_box(b"avc1", &avc1),
            ),
        ]),
    )
}

fn descriptor(tag: u8, body: &[u8]) -> Vec<u8> {
    // Four-byte size form: works for any body below 2^28 bytes.
    let n = body.len() as u32;
    let mut d = vec![
        tag,
        0x80 | ((n >> 21) & 0x7f) as u8,
        0x80 | ((n >> 14) & 0x7f) as u8,
        0x80 | ((n >> 7) & 0x7f) as u8,
        (n & 0x7f) as u8,
    ];
    d.extend_from_slice(body);
    d
}

fn audio_trak(a: &AudioTrack) -> Vec<u8> {
    let c = a.config;
    let asc = c.asc();
    let mut dcd = vec![0x40, 0x15, 0, 0, 0];
    dcd.extend_from_slice(&0u32.to_be_bytes()); // max bit rate
    dcd.extend_from_slice(&0u32.to_be_bytes()); // average bit rate
    dcd.extend(descriptor(5, &asc));
    let mut es = Vec::new();
    es.extend_from_slice(&(AUDIO_TRACK_ID as u16).to_be_bytes());
    es.push(0);
    es.extend(descriptor(4, &dcd));
    es.extend(descriptor(6, &[2]));
    let esds = full_box(b"esds", 0, 0, &descriptor(3, &es));
    let mut mp4a = vec![0; 6];
    mp4a.extend_from_slice(&1u16.to_be_bytes());
    mp4a.extend_from_slice(&[0; 8]);
    let channels: u16 = if c.channels == 7 {
        8
    } else {
        u16::from(c.channels)
    };
    mp4a.extend_from_slice(&channels.to_be_bytes());
    mp4a.extend_from_slice(&16u16.to_be_bytes());
    mp4a.extend_from_slice(&[0; 4]);
    let rate_field = if c.sample_rate <= 0xffff {
        c.sample_rate << 16
    } else {
        0
    };
    mp4a.extend_from_slice(&rate_field.to_be_bytes());
    mp4a.extend(esds);
    let smhd = full_box(b"smhd", 0, 0, &[0; 4]);
    mp4_box(
        b"trak",
        &cat(&[
            &tkhd(AUDIO_TRACK_ID, true, 0, 0),
            &mdia(
                c.sample_rate,
                b"soun",
                "Audio",
                smhd,
                mp4_box(b"mp4a", &mp4a),
            ),
        ]),
    )
}

/// One `moof`+`mdat` holding `tracks`' samples, with `tfdt` = each track's first decode time.
fn fragment(sequence: u32, tracks: &[(u32, &[Sample])]) -> Result<Vec<u8>, LlHlsError> {
    let build = |offsets: &[i32]| -> Result<Vec<u8>, LlHlsError> {
        let mut trafs = Vec::new();
        for ((track_id, samples), &offset) in tracks.iter().zip(offsets) {
            let Some(first) = samples.first() else {
                continue;
            };
            let tfhd = full_box(b"tfhd", 0, 0x02_0000, &track_id.to_be_bytes());
            let base = u64::try_from(first.dts).map_err(|_| invalid("negative decode time"))?;
            let tfdt = full_box(b"tfdt", 1, 0, &base.to_be_bytes());
            let mut trun = Vec::with_capacity(8 + samples.len() * 16);
            trun.extend_from_slice(&(samples.len() as u32).to_be_bytes());
            trun.extend_from_slice(&offset.to_be_bytes());
            for s in *samples {
                let dur = u32::try_from(s.duration)
                    .map_err(|_| invalid("sample duration out of range"))?;
                let size = u32::try_from(s.data.len()).map_err(|_| invalid("sample too large"))?;
                let flags: u32 = if s.key { 0x0200_0000 } else { 0x0101_0000 };
                let cts =
                    i32::try_from(s.cts).map_err(|_| invalid("composition offset out of range"))?;
                trun.extend_from_slice(&dur.to_be_bytes());
                trun.extend_from_slice(&size.to_be_bytes());
                trun.extend_from_slice(&flags.to_be_bytes());
                trun.extend_from_slice(&cts.to_be_bytes());
            }
            let trun = full_box(
                b"trun",
                1,
                0x0001 | 0x0100 | 0x0200 | 0x0400 | 0x0800,
                &trun,
            );
            trafs.extend(mp4_box(b"traf", &cat(&[&tfhd, &tfdt, &trun])));
        }
        let mfhd = full_box(b"mfhd", 0, 0, &sequence.to_be_bytes());
        Ok(mp4_box(b"moof", &cat(&[&mfhd, &trafs])))
    };
    let sizes: Vec<usize> = tracks
        .iter()
        .map(|(_, s)| s.iter().map(|x| x.data.len()).sum())
        .collect();
    let moof_len = build(&vec![0; tracks.len()])?.len();
    let mut offsets = Vec::with_capacity(tracks.len());
    let mut at = moof_len + 8;
    for size in &sizes {
        offsets.push(i32::try_from(at).map_err(|_| invalid("fragment too large"))?);
        at += size;
    }
    let moof = build(&offsets)?;
    let mut mdat = Vec::with_capacity(at - moof_len);
    for (_, samples) in tracks {
        for s in *samples {
            mdat.extend_from_slice(&s.data);
        }
    }
    let total = u32::try_from(8 + mdat.len()).map_err(|_| invalid("fragment too large"))?;
    let mut out = moof;
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(&mdat);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Box reading
// ---------------------------------------------------------------------------------------------

/// One box of an MP4 byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Box<'a> {
    /// The four-character type, e.g. `*b"moof"`.
    pub kind: [u8; 4],
    /// Offset of the box (its size field) in the slice it was read from.
    pub offset: usize,
    /// The box's payload, after its header.
    pub body: &'a [u8],
}

impl Mp4Box<'_> {
    /// The type as text.
    pub fn kind_str(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

/// The boxes laid end to end in `data` (one level; read a container's children with
/// `read_boxes(b.body)`). Errors on a truncated or impossible box header.
pub fn read_boxes(data: &[u8]) -> Result<Vec<Mp4Box<'_>>, LlHlsError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        let head: [u8; 8] = rest
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| LlHlsError::Mp4(format!("truncated box header at {at}")))?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = [head[4], head[5], head[6], head[7]];
        let (size, header) = match size32 {
            0 => (rest.len(), 8),
            1 => {
                let big = rest
                    .get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .ok_or_else(|| LlHlsError::Mp4(format!("truncated large size at {at}")))?;
                let big = usize::try_from(u64::from_be_bytes(big))
                    .map_err(|_| LlHlsError::Mp4("box too large".into()))?;
                (big, 16)
            }
            n => (n as usize, 8),
        };
        if size < header || size > rest.len() {
            return Err(LlHlsError::Mp4(format!(
                "box {} at {at} has size {size} but {} bytes remain",
                String::from_utf8_lossy(&kind),
                rest.len()
            )));
        }
        out.push(Mp4Box {
            kind,
            offset: at,
            body: &rest[header..size],
        });
        at += size;
    }
    Ok(out)
}

/// What one `traf` of a movie fragment says about its track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackFragment {
    /// `track_ID` from the `tfhd`.
    pub track_id: u32,
    /// `baseMediaDecodeTime` from the `tfdt` (track timescale).
    pub base_media_decode_time: u64,
    /// Samples in the fragment's `trun` boxes.
    pub sample_count: u32,
    /// Sum of the per-sample durations (track timescale; 0 when the `trun` omits them).
    pub duration: u64,
}

fn be32(b: &[u8], at: usize) -> Result<u32, LlHlsError> {
    b.get(at..at + 4)
        .and_then(|x| <[u8; 4]>::try_from(x).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| LlHlsError::Mp4("box body too short".into()))
}

/// Every `traf` of every top-level `moof` in `data`, in order (a `moof` without `tfdt` is an
/// error).
pub fn track_fragments(data: &[u8]) -> Result<Vec<TrackFragment>, LlHlsError> {
    let mut out = Vec::new();
    for moof in read_boxes(data)?.iter().filter(|b| &b.kind == b"moof") {
        for traf in read_boxes(moof.body)?.iter().filter(|b| &b.kind == b"traf") {
            let mut track_id = None;
            let mut base = None;
            let mut count = 0u32;
            let mut duration = 0u64;
            for b in read_boxes(traf.body)? {
                match &b.kind {
                    b"tfhd" => track_id = Some(be32(b.body, 4)?),
                    b"tfdt" => {
                        base = Some(if b.body.first() == Some(&1) {
                            u64::from(be32(b.body, 4)?) << 32 | u64::from(be32(b.body, 8)?)
                        } else {
                            u64::from(be32(b.body, 4)?)
                        })
                    }
                    b"trun" => {
                        let flags = be32(b.body, 0)? & 0x00ff_ffff;
                        let n = be32(b.body, 4)?;
                        let at =
                            8 + 4 * usize::from(flags & 1 != 0) + 4 * usize::from(flags & 4 != 0);
                        let fields = [0x100, 0x200, 0x400, 0x800]
                            .iter()
                            .filter(|f| flags & **f != 0)
                            .count();
                        let stride = 4 * fields;
                        let needed = usize::try_from(n)
                            .ok()
                            .and_then(|n| n.checked_mul(stride))
                            .and_then(|x| x.checked_add(at));
                        if needed.is_none_or(|x| x > b.body.len()) {
                            return Err(LlHlsError::Mp4("trun shorter than its samples".into()));
                        }
                        if flags & 0x100 != 0 {
                            for i in 0..n as usize {
                                duration += u64::from(be32(b.body, at + i * stride)?);
                            }
                        }
                        count = count.saturating_add(n);
                    }
                    _ => {}
                }
            }
            let (Some(track_id), Some(base_media_decode_time)) = (track_id, base) else {
                return Err(LlHlsError::Mp4("traf without tfhd or tfdt".into()));
            };
            out.push(TrackFragment {
                track_id,
                base_media_decode_time,
                sample_count: count,
                duration,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Playlist
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
