//! How a segment's ladder travels between gateway and orchestrator, and how it is billed.
//!
//! The renditions come back as `multipart/mixed`, one part per rendition, in the shape
//! Livepeer's HTTP push answers with (`Content-Type: video/MP2T; name=…`,
//! `Content-Disposition`, `Rendition-Name`, `Content-Length`), plus `Weir-Resolution`,
//! `Weir-Frames`, `Weir-Frame-Rate` and `Content-Duration` so the receiver can bill and list
//! each rendition without probing it.

use bytes::Bytes;
use weir_protocol::multipart::{self, Part};

use crate::profile::Profile;
use crate::transcode::Rendition;

/// The capability id orchestrators advertise for live transcoding.
pub const CAPABILITY: &str = "transcode";
/// The model id of the H.264 ladder.
pub const MODEL: &str = "h264";
/// Request header carrying the ladder (a JSON array of profiles).
pub const PROFILES_HEADER: &str = "weir-profiles";
/// Request header carrying the segment's sequence number (names the parts).
pub const SEGMENT_HEADER: &str = "weir-segment";
/// Livepeer's header for a segment's length in milliseconds.
pub const DURATION_HEADER: &str = "content-duration";

/// Pixels a ladder produces from `duration_ms` of media: Σ width × height × frames, frames
/// rounded up. Gateways reserve this; orchestrators charge what was really encoded.
pub fn ladder_pixels(profiles: &[Profile], duration_ms: u64) -> u64 {
    profiles
        .iter()
        .map(|p| {
            let frames = (u128::from(duration_ms) * u128::from(p.fps))
                .div_ceil(1000 * u128::from(p.fps_den.max(1)));
            u128::from(p.width) * u128::from(p.height) * frames
        })
        .sum::<u128>()
        .min(u128::from(u64::MAX)) as u64
}

/// What a ladder produces from a segment, as routers and pricing components see it: the
/// largest rendition's size, the most frames any rendition has, and how many renditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderSize {
    /// Widest rendition, in pixels.
    pub width: u32,
    /// Tallest rendition, in pixels.
    pub height: u32,
    /// Most frames of any rendition over `duration_ms`, rounded up.
    pub frames: u32,
    /// Renditions.
    pub count: u32,
}

/// The size of what `profiles` produce from `duration_ms` of media; the gateway and the
/// orchestrator both describe a segment's job with it.
pub fn ladder_size(profiles: &[Profile], duration_ms: u64) -> LadderSize {
    let frames = profiles
        .iter()
        .map(|p| {
            (u128::from(duration_ms) * u128::from(p.fps))
                .div_ceil(1000 * u128::from(p.fps_den.max(1)))
        })
        .max()
        .unwrap_or(0);
    LadderSize {
        width: profiles.iter().map(|p| p.width).max().unwrap_or(0),
        height: profiles.iter().map(|p| p.height).max().unwrap_or(0),
        frames: u32::try_from(frames).unwrap_or(u32::MAX),
        count: u32::try_from(profiles.len()).unwrap_or(u32::MAX),
    }
}

/// The renditions of segment `seq` as a `multipart/mixed` body: (content type, body).
pub fn renditions_body(seq: &str, renditions: &[Rendition]) -> (String, Bytes) {
    let boundary = multipart::boundary();
    let parts: Vec<Part> = renditions
        .iter()
        .map(|r| {
            let file = format!("{}_{seq}.ts", r.name);
            let header = |n: &str, v: String| (n.to_owned(), v);
            Part {
                headers: vec![
                    header("Content-Type", format!("video/MP2T; name=\"{file}\"")),
                    header(
                        "Content-Disposition",
                        format!("attachment; filename=\"{file}\""),
                    ),
                    header("Rendition-Name", r.name.clone()),
                    header("Weir-Resolution", format!("{}x{}", r.width, r.height)),
                    header("Weir-Frames", r.frames.to_string()),
                    header("Weir-Frame-Rate", format!("{}/{}", r.fps.0, r.fps.1)),
                    header("Content-Duration", r.duration_ms.to_string()),
                ],
                data: r.data.clone(),
            }
        })
        .collect();
    (
        format!("multipart/mixed; boundary={boundary}"),
        multipart::write(&boundary, &parts),
    )
}

/// The renditions in a body made by [`renditions_body`].
pub fn parse_renditions(content_type: &str, body: &Bytes) -> Result<Vec<Rendition>, String> {
    let boundary = multipart::boundary_of(content_type).map_err(|e| e.to_string())?;
    let parts = multipart::parse(&boundary, body).map_err(|e| e.to_string())?;
    parts
        .into_iter()
        .map(|p| {
            let get = |name: &str| {
                p.header(name)
                    .ok_or_else(|| format!("a rendition part has no {name} header"))
            };
            let name = get("Rendition-Name")?.to_owned();
            let bad = |what: &str| format!("rendition {name}: bad {what}");
            let (w, h) = get("Weir-Resolution")?
                .split_once('x')
                .ok_or_else(|| bad("Weir-Resolution"))?;
            let (num_s, den) = get("Weir-Frame-Rate")?
                .split_once('/')
                .ok_or_else(|| bad("Weir-Frame-Rate"))?;
            let num = |s: &str, what: &str| s.trim().parse::<u64>().map_err(|_| bad(what));
            let small = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(what));
            Ok(Rendition {
                width: small(num(w, "width")?, "width")?,
                height: small(num(h, "height")?, "height")?,
                fps: (
                    small(num(num_s, "frame rate")?, "frame rate")?,
                    small(num(den, "frame rate")?, "frame rate")?,
                ),
                frames: num(get("Weir-Frames")?, "Weir-Frames")?,
                duration_ms: num(get("Content-Duration")?, "Content-Duration")?,
                data: p.data,
                name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_pixels_count_every_frame_of_every_rendition() {
        let ladder = crate::profile::default_ladder();
        // 2 s at 30 fps: 60 frames of 426x240 and of 640x360.
        assert_eq!(ladder_pixels(&ladder, 2000), 60 * (426 * 240 + 640 * 360));
        // A partial frame is a whole frame.
        assert_eq!(ladder_pixels(&ladder[..1], 1), 426 * 240);
    }

    #[test]
    fn a_ladder_is_sized_by_its_largest_rendition_and_most_frames() {
        let mut ladder = crate::profile::default_ladder();
        assert_eq!(
            ladder_size(&ladder, 2000),
            LadderSize {
                width: 640,
                height: 360,
                frames: 60,
                count: 2
            }
        );
        // 29.97 fps over 2 s is 59.94 frames: 60, as billed.
        ladder[0].fps = 30_000;
        ladder[0].fps_den = 1001;
        assert_eq!(ladder_size(&ladder[..1], 2000).frames, 60);
        let empty = ladder_size(&[], 2000);
        assert_eq!((empty.width, empty.frames, empty.count), (0, 0, 0));
    }

    #[test]
    fn renditions_round_trip_through_multipart() {
        let r = Rendition {
            name: "P360p30fps16x9".into(),
            width: 640,
            height: 360,
            fps: (30, 1),
            frames: 60,
            duration_ms: 2000,
            data: Bytes::from_static(b"\x47not really ts"),
        };
        let (ct, body) = renditions_body("7", std::slice::from_ref(&r));
        assert!(ct.starts_with("multipart/mixed; boundary="));
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("Content-Type: video/MP2T; name=\"P360p30fps16x9_7.ts\""));
        let back = parse_renditions(&ct, &body).expect("parse");
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].width, back[0].height, back[0].fps, back[0].frames),
            (640, 360, (30, 1), 60)
        );
        assert_eq!(back[0].data, r.data);
        assert!(parse_renditions("text/plain", &body).is_err());
    }
}
