//! Reading the boxes of an MP4 byte stream back (used to check what was written).

use super::LlHlsError;

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

pub(super) fn be32(b: &[u8], at: usize) -> Result<u32, LlHlsError> {
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
