//! Writing MPEG-TS: PAT/PMT sections, PES packets and the 188-byte transport packets.

use crate::packet::Track;

use super::config::annex_b;
use super::{Building, SegmentError, PID_AUDIO, PID_PMT, PID_VIDEO, TS_PACKET, TS_TIME_OFFSET_MS};

pub(super) fn to_90k(ms: i64) -> u64 {
    // Wraps at 33 bits as MPEG-TS timestamps do.
    (ms.saturating_add(TS_TIME_OFFSET_MS).max(0) as u64).wrapping_mul(90) & 0x1_FFFF_FFFF
}

pub(super) fn mux(b: &Building, cc: &mut [u8; 4]) -> Result<Vec<u8>, SegmentError> {
    let total: usize = b.packets.iter().map(|p| p.data.len()).sum();
    let mut out = Vec::with_capacity(total + total / 8 + 4 * TS_PACKET);
    let video = b.has_video.then_some(()).and(b.avc.as_deref());
    let audio = b.has_audio.then_some(()).and(b.aac.as_deref());
    let pcr_pid = if video.is_some() {
        PID_VIDEO
    } else {
        PID_AUDIO
    };
    write_psi(&mut out, 0, &pat(), &mut cc[0]);
    let mut streams = Vec::new();
    if video.is_some() {
        streams.push((0x1B, PID_VIDEO));
    }
    if audio.is_some() {
        streams.push((0x0F, PID_AUDIO));
    }
    write_psi(&mut out, PID_PMT, &pmt(pcr_pid, &streams), &mut cc[1]);
    for p in &b.packets {
        let pts = to_90k(p.pts);
        let dts = to_90k(p.dts);
        match (p.track, video, audio) {
            (Track::Video, Some(avc), _) => {
                let es = annex_b(p, avc)?;
                let pes = pes(0xE0, pts, (pts != dts).then_some(dts), &es);
                write_pes(&mut out, PID_VIDEO, &pes, Some(dts), p.idr, &mut cc[2]);
            }
            (Track::Audio, _, Some(aac)) => {
                let Some(h) = aac.adts_header(p.data.len()) else {
                    continue;
                };
                let mut es = Vec::with_capacity(p.data.len() + 7);
                es.extend_from_slice(&h);
                es.extend_from_slice(&p.data);
                let pes = pes(0xC0, pts, None, &es);
                let pcr = video.is_none().then_some(dts);
                write_pes(&mut out, PID_AUDIO, &pes, pcr, video.is_none(), &mut cc[3]);
            }
            _ => {}
        }
    }
    Ok(out)
}

pub(super) fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

pub(super) fn section(table_id: u8, id: u16, body: &[u8]) -> Vec<u8> {
    // section_length counts from after the length field to the end of the CRC.
    let len = 5 + body.len() + 4;
    let mut s = vec![
        table_id,
        0xB0 | ((len >> 8) as u8 & 0x0F),
        (len & 0xFF) as u8,
        (id >> 8) as u8,
        (id & 0xFF) as u8,
        0xC1, // version 0, current
        0x00,
        0x00,
    ];
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

pub(super) fn pat() -> Vec<u8> {
    section(
        0x00,
        1,
        &[
            0x00,
            0x01,
            0xE0 | (PID_PMT >> 8) as u8,
            (PID_PMT & 0xFF) as u8,
        ],
    )
}

pub(super) fn pmt(pcr_pid: u16, streams: &[(u8, u16)]) -> Vec<u8> {
    let mut body = vec![
        0xE0 | (pcr_pid >> 8) as u8,
        (pcr_pid & 0xFF) as u8,
        0xF0,
        0x00,
    ];
    for &(stream_type, pid) in streams {
        body.extend_from_slice(&[
            stream_type,
            0xE0 | (pid >> 8) as u8,
            (pid & 0xFF) as u8,
            0xF0,
            0x00,
        ]);
    }
    section(0x02, 1, &body)
}

pub(super) fn ts_header(pkt: &mut [u8], pid: u16, start: bool, adaptation: bool, cc: &mut u8) {
    pkt[0] = 0x47;
    pkt[1] = (u8::from(start) << 6) | ((pid >> 8) as u8 & 0x1F);
    pkt[2] = (pid & 0xFF) as u8;
    pkt[3] = (if adaptation { 0x30 } else { 0x10 }) | (*cc & 0x0F);
    *cc = cc.wrapping_add(1) & 0x0F;
}

pub(super) fn write_psi(out: &mut Vec<u8>, pid: u16, section: &[u8], cc: &mut u8) {
    let mut pkt = [0xFFu8; TS_PACKET];
    ts_header(&mut pkt, pid, true, false, cc);
    pkt[4] = 0; // pointer_field
    let n = section.len().min(TS_PACKET - 5);
    pkt[5..5 + n].copy_from_slice(&section[..n]);
    out.extend_from_slice(&pkt);
}

pub(super) fn write_ts_time(out: &mut [u8], prefix: u8, ts: u64) {
    out[0] = (prefix << 4) | (((ts >> 29) as u8) & 0x0E) | 1;
    out[1] = (ts >> 22) as u8;
    out[2] = (((ts >> 14) as u8) & 0xFE) | 1;
    out[3] = (ts >> 7) as u8;
    out[4] = (((ts << 1) as u8) & 0xFE) | 1;
}

pub(super) fn pes(stream_id: u8, pts: u64, dts: Option<u64>, es: &[u8]) -> Vec<u8> {
    let header_len = if dts.is_some() { 10 } else { 5 };
    let pes_len = 3 + header_len + es.len();
    let mut v = Vec::with_capacity(9 + header_len + es.len());
    v.extend_from_slice(&[0, 0, 1, stream_id]);
    let len_field = if pes_len <= 0xFFFF { pes_len as u16 } else { 0 };
    v.extend_from_slice(&len_field.to_be_bytes());
    v.push(0x80);
    v.push(if dts.is_some() { 0xC0 } else { 0x80 });
    v.push(header_len as u8);
    let mut t = [0u8; 10];
    match dts {
        Some(d) => {
            write_ts_time(&mut t[..5], 0x3, pts);
            write_ts_time(&mut t[5..], 0x1, d);
            v.extend_from_slice(&t);
        }
        None => {
            write_ts_time(&mut t[..5], 0x2, pts);
            v.extend_from_slice(&t[..5]);
        }
    }
    v.extend_from_slice(es);
    v
}

/// Splits a PES packet into TS packets; the first carries the PCR and random-access flag.
pub(super) fn write_pes(
    out: &mut Vec<u8>,
    pid: u16,
    pes: &[u8],
    pcr: Option<u64>,
    random_access: bool,
    cc: &mut u8,
) {
    let mut rest = pes;
    let mut first = true;
    while first || !rest.is_empty() {
        let mut pkt = [0xFFu8; TS_PACKET];
        let flags = if first {
            (if random_access { 0x40 } else { 0 }) | (if pcr.is_some() { 0x10 } else { 0 })
        } else {
            0
        };
        // Bytes the adaptation field needs (length byte + flags + PCR), 0 if none.
        let af_min = if flags != 0 {
            2 + if flags & 0x10 != 0 { 6 } else { 0 }
        } else {
            0
        };
        let n = rest.len().min(TS_PACKET - 4 - af_min);
        let af_len = TS_PACKET - 4 - n;
        ts_header(&mut pkt, pid, first, af_len > 0, cc);
        if af_len > 0 {
            pkt[4] = (af_len - 1) as u8;
            if af_len > 1 {
                pkt[5] = flags;
                if let (true, Some(base)) = (flags & 0x10 != 0, pcr) {
                    let base = base & 0x1_FFFF_FFFF;
                    pkt[6] = (base >> 25) as u8;
                    pkt[7] = (base >> 17) as u8;
                    pkt[8] = (base >> 9) as u8;
                    pkt[9] = (base >> 1) as u8;
                    pkt[10] = (((base & 1) as u8) << 7) | 0x7E;
                    pkt[11] = 0;
                }
            }
        }
        pkt[4 + af_len..].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
        out.extend_from_slice(&pkt);
    }
}
