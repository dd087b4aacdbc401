//! Demuxing one MPEG-TS segment into H.264 and ADTS AAC sample tracks with the FFmpeg demuxer.

use ff::{codec, media, Packet, Rational};
use ffmpeg_next as ff;

use super::{invalid, LlHlsError, VideoInfo, MAX_INPUT, MAX_PARAMETER_SETS, VIDEO_TIMESCALE};

/// One access unit, with times in its track's timescale.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) dts: i64,
    /// Presentation minus decode time.
    pub(super) cts: i64,
    pub(super) duration: i64,
    pub(super) key: bool,
    pub(super) data: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct VideoTrack {
    pub(super) width: u16,
    pub(super) height: u16,
    pub(super) sps: Vec<Vec<u8>>,
    pub(super) pps: Vec<Vec<u8>>,
    pub(super) samples: Vec<Sample>,
    /// Duration of the last packet, as the demuxer reported it (90 kHz), if any.
    pub(super) last_packet_duration: i64,
    /// One frame at the stream's nominal rate (90 kHz).
    pub(super) nominal_frame: i64,
    /// The frame rate the stream declares, if any.
    pub(super) declared_rate: Option<f64>,
}

impl VideoTrack {
    /// Size and frame rate; the rate is measured from the samples when none is declared.
    pub(super) fn info(&self) -> VideoInfo {
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
pub(super) struct AudioTrack {
    pub(super) config: AdtsConfig,
    pub(super) samples: Vec<Sample>,
    /// The decode time of each sample in 90 kHz, for placing it among the video parts.
    pub(super) times_90k: Vec<i64>,
}

/// The stream parameters an ADTS header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AdtsConfig {
    pub(super) object_type: u8,
    pub(super) frequency_index: u8,
    pub(super) channels: u8,
    pub(super) sample_rate: u32,
}

pub(super) const AAC_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

impl AdtsConfig {
    /// The two-byte AudioSpecificConfig.
    pub(super) fn asc(&self) -> [u8; 2] {
        let v: u16 = (u16::from(self.object_type) << 11)
            | (u16::from(self.frequency_index) << 7)
            | (u16::from(self.channels) << 3);
        v.to_be_bytes()
    }
}

/// Parses one ADTS frame: its configuration and the raw AAC payload.
pub(super) fn parse_adts(d: &[u8]) -> Result<(AdtsConfig, &[u8]), String> {
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
pub(super) fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
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
pub(super) struct BitReader {
    pub(super) data: Vec<u8>,
    pub(super) pos: usize,
}

impl BitReader {
    pub(super) fn from_nal_payload(ebsp: &[u8]) -> BitReader {
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

    pub(super) fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    pub(super) fn ue(&mut self) -> Option<u32> {
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
pub(super) fn sps_chroma(sps: &[u8]) -> Option<(u8, u8, u8)> {
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

pub(super) fn init_ffmpeg() -> Result<(), LlHlsError> {
    crate::transcode::ffmpeg_ready().map_err(LlHlsError::Unavailable)
}

/// `t` in time base `tb`, in units of `1/scale` seconds (rounded to nearest).
pub(super) fn rescale(t: i64, tb: Rational, scale: u32) -> Option<i64> {
    let den = i128::from(tb.denominator());
    if den <= 0 || tb.numerator() <= 0 {
        return None;
    }
    let num = i128::from(t) * i128::from(tb.numerator()) * i128::from(scale);
    i64::try_from((2 * num + den).div_euclid(2 * den)).ok()
}

pub(super) fn demux(ts: &[u8]) -> Result<(Option<VideoTrack>, Option<AudioTrack>), LlHlsError> {
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
        v_in = Some((s.index(), s.time_base()));
        video = Some(video_track(&s)?);
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
    loop {
        // A fresh packet each time: av_read_frame does not release what the packet held, so
        // reading into one packet again leaks the previous packet's buffer.
        let mut packet = Packet::empty();
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

/// The empty video track of an H.264 stream: its dimensions and nominal frame duration.
fn video_track(s: &ff::format::stream::Stream<'_>) -> Result<VideoTrack, LlHlsError> {
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
    let (Ok(width), Ok(height)) = (u16::try_from(dec.width()), u16::try_from(dec.height())) else {
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
    Ok(VideoTrack {
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
    })
}

pub(super) fn packet_times(
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

pub(super) fn add_video(
    v: &mut VideoTrack,
    packet: &Packet,
    tb: Rational,
) -> Result<(), LlHlsError> {
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

pub(super) fn add_audio(
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
pub(super) fn set_durations(samples: &mut [Sample], last: i64) {
    let n = samples.len();
    for i in 0..n {
        samples[i].duration = if i + 1 < n {
            samples[i + 1].dts - samples[i].dts
        } else {
            last.max(1)
        };
    }
}
