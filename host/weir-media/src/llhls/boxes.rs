//! Writing the MP4 boxes of the init segment and of each `moof`+`mdat` fragment.

use super::demux::{sps_chroma, AudioTrack, Sample, VideoTrack};
use super::{invalid, LlHlsError, AUDIO_TRACK_ID, VIDEO_TIMESCALE, VIDEO_TRACK_ID};

pub(super) fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    // Callers keep bodies far below 4 GiB (inputs are capped at MAX_INPUT).
    v.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(kind);
    v.extend_from_slice(body);
    v
}

pub(super) fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.push(version);
    b.extend_from_slice(&flags.to_be_bytes()[1..]);
    b.extend_from_slice(body);
    mp4_box(kind, &b)
}

pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

pub(super) fn matrix() -> Vec<u8> {
    MATRIX.iter().flat_map(|m| m.to_be_bytes()).collect()
}

pub(super) fn init_segment(video: Option<&VideoTrack>, audio: Option<&AudioTrack>) -> Vec<u8> {
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

pub(super) fn trex(track_id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&track_id.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes()); // sample description index
    b.extend_from_slice(&[0; 12]); // default duration, size, flags
    full_box(b"trex", 0, 0, &b)
}

pub(super) fn tkhd(track_id: u32, audio: bool, width: u16, height: u16) -> Vec<u8> {
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

pub(super) fn mdia(
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

pub(super) fn video_trak(v: &VideoTrack) -> Vec<u8> {
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

pub(super) fn descriptor(tag: u8, body: &[u8]) -> Vec<u8> {
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

pub(super) fn audio_trak(a: &AudioTrack) -> Vec<u8> {
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
pub(super) fn fragment(sequence: u32, tracks: &[(u32, &[Sample])]) -> Result<Vec<u8>, LlHlsError> {
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
