//! The codec configuration records (`avcC`, AAC AudioSpecificConfig) and AVCC access units.

use bytes::Bytes;

use crate::packet::Track;

use super::{Held, SegmentError};

/// A parsed `avcC` record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AvcConfig {
    pub(super) raw: Bytes,
    pub(super) length_size: usize,
    /// SPS and PPS NAL units in Annex B form, ready to put before an IDR.
    pub(super) parameter_sets: Vec<u8>,
}

impl AvcConfig {
    pub(super) fn parse(raw: Bytes) -> Result<Self, SegmentError> {
        let bad = |s: &str| SegmentError::InvalidAvcConfig(s.to_string());
        let b = &raw[..];
        if b.len() < 7 {
            return Err(bad("shorter than 7 bytes"));
        }
        if b[0] != 1 {
            return Err(bad("configurationVersion is not 1"));
        }
        let length_size = usize::from(b[4] & 0x03) + 1;
        if length_size == 3 {
            return Err(bad("NAL length size of 3 bytes is not allowed"));
        }
        let mut ps = Vec::new();
        let mut pos = 5;
        let mut read_sets =
            |pos: &mut usize, count: usize, want: u8| -> Result<usize, SegmentError> {
                let mut found = 0;
                for _ in 0..count {
                    let len = b
                        .get(*pos..*pos + 2)
                        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                        .ok_or_else(|| bad("truncated parameter set length"))?;
                    let nal = b
                        .get(*pos + 2..*pos + 2 + len)
                        .ok_or_else(|| bad("truncated parameter set"))?;
                    *pos += 2 + len;
                    if nal.is_empty() || nal[0] & 0x1f != want {
                        return Err(bad("parameter set of the wrong NAL type"));
                    }
                    ps.extend_from_slice(&[0, 0, 0, 1]);
                    ps.extend_from_slice(nal);
                    found += 1;
                }
                Ok(found)
            };
        let n_sps = usize::from(b[5] & 0x1f);
        pos += 1;
        let sps = read_sets(&mut pos, n_sps, 7)?;
        let n_pps = b
            .get(pos)
            .map(|&n| usize::from(n))
            .ok_or_else(|| bad("missing PPS count"))?;
        pos += 1;
        let pps = read_sets(&mut pos, n_pps, 8)?;
        if sps == 0 || pps == 0 {
            return Err(bad("no SPS or no PPS"));
        }
        Ok(AvcConfig {
            raw,
            length_size,
            parameter_sets: ps,
        })
    }
}

/// A parsed AudioSpecificConfig, reduced to what an ADTS header needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AacConfig {
    pub(super) raw: Bytes,
    /// ADTS profile (audio object type − 1).
    pub(super) profile: u8,
    pub(super) sampling_index: u8,
    pub(super) channels: u8,
    /// Duration of one frame in ms (1024 samples).
    pub(super) frame_ms: i64,
}

pub(super) const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

pub(super) struct Bits<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
}

impl Bits<'_> {
    pub(super) fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(v)
    }
}

impl AacConfig {
    pub(super) fn parse(raw: Bytes) -> Result<Self, SegmentError> {
        let bad = |s: &str| SegmentError::InvalidAacConfig(s.to_string());
        let mut r = Bits { b: &raw, pos: 0 };
        let short = || bad("truncated");
        let read_aot = |r: &mut Bits| -> Option<u32> {
            let aot = r.read(5)?;
            if aot == 31 {
                Some(32 + r.read(6)?)
            } else {
                Some(aot)
            }
        };
        let read_rate = |r: &mut Bits| -> Option<Option<u8>> {
            let idx = r.read(4)?;
            if idx == 15 {
                let hz = r.read(24)?;
                Some(AAC_RATES.iter().position(|&x| x == hz).map(|i| i as u8))
            } else if (idx as usize) < AAC_RATES.len() {
                Some(Some(idx as u8))
            } else {
                Some(None)
            }
        };
        let mut aot = read_aot(&mut r).ok_or_else(short)?;
        let sampling_index = read_rate(&mut r)
            .ok_or_else(short)?
            .ok_or_else(|| bad("sampling rate has no ADTS index"))?;
        let channels = r.read(4).ok_or_else(short)?;
        if aot == 5 || aot == 29 {
            // HE-AAC (SBR/PS): the rate read above is the core's, which is what ADTS carries
            // (implicit signalling); skip the extension rate and read the core object type.
            read_rate(&mut r).ok_or_else(short)?;
            aot = read_aot(&mut r).ok_or_else(short)?;
        }
        if !(1..=4).contains(&aot) {
            return Err(bad(&format!(
                "audio object type {aot} cannot be carried in ADTS"
            )));
        }
        if channels > 7 {
            return Err(bad(&format!(
                "channel configuration {channels} is reserved"
            )));
        }
        let rate = AAC_RATES[usize::from(sampling_index)];
        Ok(AacConfig {
            raw,
            profile: (aot - 1) as u8,
            sampling_index,
            channels: channels as u8,
            frame_ms: (1024 * 1000 / i64::from(rate)).max(1),
        })
    }

    pub(super) fn adts_header(&self, payload_len: usize) -> Option<[u8; 7]> {
        let len = payload_len + 7;
        if len >= 1 << 13 {
            return None;
        }
        let len = len as u32;
        Some([
            0xFF,
            0xF1,
            (self.profile << 6) | (self.sampling_index << 2) | ((self.channels >> 2) & 1),
            ((self.channels & 3) << 6) | ((len >> 11) as u8 & 0x03),
            ((len >> 3) & 0xFF) as u8,
            (((len & 7) as u8) << 5) | 0x1F,
            0xFC,
        ])
    }
}

/// Walks the NAL units of an AVCC access unit; returns whether it holds an IDR slice.
pub(super) fn scan_avcc(data: &[u8], length_size: usize) -> Result<bool, String> {
    let mut idr = false;
    let mut count = 0;
    for nal in avcc_nals(data, length_size) {
        let nal = nal?;
        count += 1;
        if nal[0] & 0x1f == 5 {
            idr = true;
        }
    }
    if count == 0 {
        return Err("no NAL units".into());
    }
    Ok(idr)
}

pub(super) fn avcc_nals(
    data: &[u8],
    length_size: usize,
) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut pos = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= data.len() {
            return None;
        }
        let Some(len_bytes) = data.get(pos..pos + length_size) else {
            failed = true;
            return Some(Err(format!("truncated NAL length at byte {pos}")));
        };
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        pos += length_size;
        match data.get(pos..pos + len) {
            Some(nal) if !nal.is_empty() => {
                pos += len;
                Some(Ok(nal))
            }
            Some(_) => {
                failed = true;
                Some(Err("empty NAL unit".into()))
            }
            None => {
                failed = true;
                Some(Err(format!(
                    "NAL unit of {len} bytes overruns the packet at byte {pos}"
                )))
            }
        }
    })
}

/// AVCC → Annex B with an access unit delimiter, and SPS/PPS before an IDR that lacks them.
pub(super) fn annex_b(p: &Held, avc: &AvcConfig) -> Result<Vec<u8>, SegmentError> {
    let mut out = Vec::with_capacity(p.data.len() + avc.parameter_sets.len() + 16);
    out.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
    let mut nals = Vec::new();
    for nal in avcc_nals(&p.data, avc.length_size) {
        nals.push(nal.map_err(|reason| SegmentError::InvalidPacket {
            track: Track::Video,
            reason,
        })?);
    }
    if p.idr && !nals.iter().any(|n| n[0] & 0x1f == 7) {
        out.extend_from_slice(&avc.parameter_sets);
    }
    for nal in nals {
        if nal[0] & 0x1f == 9 {
            continue;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    Ok(out)
}
