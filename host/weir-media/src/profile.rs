//! Transcoding profiles: the renditions of an ABR ladder.
//!
//! Profiles are given either as a comma-separated list of Livepeer preset names
//! (`P240p30fps16x9,P360p30fps16x9`) or as the `transcodingOptions` JSON array
//! (`[{"name": "...", "width": 640, "height": 360, "bitrate": 1200000, "fps": 30, ...}]`).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The fewest renditions a ladder may have.
pub const MIN_RENDITIONS: usize = 1;
/// The most renditions a ladder may have.
pub const MAX_RENDITIONS: usize = 8;
/// The smallest width or height accepted.
pub const MIN_DIMENSION: u32 = 16;
/// The largest width or height accepted.
pub const MAX_DIMENSION: u32 = 4096;
/// The highest frame rate accepted (frames per second, after dividing by `fps_den`).
pub const MAX_FPS: u32 = 240;
/// The longest GOP accepted, in seconds.
pub const MAX_GOP_SECONDS: f64 = 60.0;
/// The longest profile name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The H.264 profile a rendition is encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum H264Profile {
    /// Let the encoder pick (libx264 picks High for 4:2:0 8-bit).
    #[default]
    None,
    /// Constrained Baseline: no B-frames, no CABAC.
    Baseline,
    /// Main.
    Main,
    /// High.
    High,
    /// High without B-frames.
    ConstrainedHigh,
}

impl H264Profile {
    /// Parses the `transcodingOptions` spelling (`h264baseline`, `h264main`, `h264high`,
    /// `h264constrainedhigh`, `none`; case-insensitive, empty means `none`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Some(Self::None),
            "h264baseline" => Some(Self::Baseline),
            "h264main" => Some(Self::Main),
            "h264high" => Some(Self::High),
            "h264constrainedhigh" => Some(Self::ConstrainedHigh),
            _ => None,
        }
    }

    /// The `transcodingOptions` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Baseline => "h264baseline",
            Self::Main => "h264main",
            Self::High => "h264high",
            Self::ConstrainedHigh => "h264constrainedhigh",
        }
    }

    /// The value of libx264's `profile` option, if one is set.
    pub fn x264_profile(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Baseline => Some("baseline"),
            Self::Main => Some("main"),
            Self::High | Self::ConstrainedHigh => Some("high"),
        }
    }

    /// Whether the profile forbids B-frames.
    pub fn forbids_b_frames(self) -> bool {
        matches!(self, Self::Baseline | Self::ConstrainedHigh)
    }
}

/// The keyframe interval of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Gop {
    /// Two seconds of frames (IDRs then line up with the usual 2 s segments).
    #[default]
    Default,
    /// Every frame is an IDR.
    Intra,
    /// An IDR every this many seconds.
    Seconds(f64),
}

impl Gop {
    /// The GOP length in frames at `fps_num / fps_den` frames per second (at least 1).
    pub fn frames(self, fps_num: u32, fps_den: u32) -> u32 {
        let fps = f64::from(fps_num) / f64::from(fps_den.max(1));
        let frames = match self {
            Gop::Default => fps * 2.0,
            Gop::Intra => 1.0,
            Gop::Seconds(s) => fps * s,
        };
        // The value is finite and bounded by validation (240 fps × 60 s), so the cast is exact.
        frames.round().clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// One rendition of the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rendition name, unique in a ladder (used in playlist and segment names).
    pub name: String,
    /// Output width in pixels (even).
    pub width: u32,
    /// Output height in pixels (even).
    pub height: u32,
    /// Target video bitrate in bits per second.
    pub bitrate: u64,
    /// Frame rate numerator.
    pub fps: u32,
    /// Frame rate denominator (1 for integer rates).
    pub fps_den: u32,
    /// H.264 profile.
    pub profile: H264Profile,
    /// Keyframe interval.
    pub gop: Gop,
}

impl Profile {
    fn preset(name: &str, width: u32, height: u32, kbps: u64, fps: u32) -> Self {
        Profile {
            name: name.to_string(),
            width,
            height,
            bitrate: kbps * 1000,
            fps,
            fps_den: 1,
            profile: H264Profile::None,
            gop: Gop::Default,
        }
    }

    /// The frame rate as a float.
    pub fn fps_f64(&self) -> f64 {
        f64::from(self.fps) / f64::from(self.fps_den.max(1))
    }

    /// The GOP length in frames.
    pub fn gop_frames(&self) -> u32 {
        self.gop.frames(self.fps, self.fps_den)
    }

    /// Checks one profile on its own (see the module constants for the limits).
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |reason: String| ProfileError::Invalid {
            name: self.name.clone(),
            reason,
        };
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(bad(format!("name must be 1..={MAX_NAME_LEN} characters")));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(bad(
                "name may only contain ASCII letters, digits, '_', '-' and '.'".to_string(),
            ));
        }
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_DIMENSION..=MAX_DIMENSION).contains(&v) {
                return Err(bad(format!(
                    "{what} {v} is outside {MIN_DIMENSION}..={MAX_DIMENSION}"
                )));
            }
            if v % 2 != 0 {
                return Err(bad(format!("{what} {v} is odd (4:2:0 needs even sizes)")));
            }
        }
        if self.bitrate == 0 {
            return Err(bad("bitrate must be greater than 0".to_string()));
        }
        if self.bitrate > 1_000_000_000 {
            return Err(bad(format!("bitrate {} is above 1 Gbit/s", self.bitrate)));
        }
        if self.fps_den == 0 {
            return Err(bad("fpsDen must be greater than 0".to_string()));
        }
        let fps = self.fps_f64();
        if !(1.0..=f64::from(MAX_FPS)).contains(&fps) {
            return Err(bad(format!(
                "frame rate {}/{} is outside 1..={MAX_FPS}",
                self.fps, self.fps_den
            )));
        }
        if let Gop::Seconds(s) = self.gop {
            if !s.is_finite() || s <= 0.0 || s > MAX_GOP_SECONDS {
                return Err(bad(format!(
                    "gop {s} must be a number of seconds in (0, {MAX_GOP_SECONDS}]"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} {}/{}fps {}bps",
            self.name, self.width, self.height, self.fps, self.fps_den, self.bitrate
        )
    }
}

/// Why a profile list was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    /// The list is empty.
    #[error("no transcoding profiles given")]
    Empty,
    /// The list is longer than [`MAX_RENDITIONS`].
    #[error("{0} renditions requested, at most {MAX_RENDITIONS} are allowed")]
    TooMany(usize),
    /// A name is not one of the presets.
    #[error("unknown transcoding preset {0:?} (known: {known})", known = preset_names().join(", "))]
    UnknownPreset(String),
    /// Two renditions share a name.
    #[error("duplicate rendition name {0:?}")]
    DuplicateName(String),
    /// The JSON form does not parse.
    #[error("invalid transcodingOptions JSON: {0}")]
    Json(String),
    /// A profile has an out-of-range or malformed field.
    #[error("invalid profile {name:?}: {reason}")]
    Invalid {
        /// The profile's name (possibly generated).
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Livepeer's preset table: name, width, height, kbit/s, fps.
const PRESETS: &[(&str, u32, u32, u64, u32)] = &[
    ("P720p60fps16x9", 1280, 720, 6000, 60),
    ("P720p30fps16x9", 1280, 720, 4000, 30),
    ("P720p25fps16x9", 1280, 720, 3500, 25),
    ("P720p30fps4x3", 960, 720, 3500, 30),
    ("P576p30fps16x9", 1024, 576, 1500, 30),
    ("P576p25fps16x9", 1024, 576, 1500, 25),
    ("P360p30fps16x9", 640, 360, 1200, 30),
    ("P360p25fps16x9", 640, 360, 1000, 25),
    ("P360p30fps4x3", 480, 360, 1000, 30),
    ("P240p30fps16x9", 426, 240, 600, 30),
    ("P240p25fps16x9", 426, 240, 600, 25),
    ("P240p30fps4x3", 320, 240, 600, 30),
    ("P144p30fps16x9", 256, 144, 400, 30),
    ("P144p25fps16x9", 256, 144, 400, 25),
];

/// The names of all presets, in table order.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// Looks a preset up by its exact name.
pub fn preset(name: &str) -> Option<Profile> {
    PRESETS
        .iter()
        .find(|p| p.0 == name)
        .map(|&(n, w, h, kbps, fps)| Profile::preset(n, w, h, kbps, fps))
}

/// The default ladder: `P240p30fps16x9` and `P360p30fps16x9`.
pub fn default_ladder() -> Vec<Profile> {
    ["P240p30fps16x9", "P360p30fps16x9"]
        .iter()
        .filter_map(|n| preset(n))
        .collect()
}

/// Checks a whole ladder: 1..=[`MAX_RENDITIONS`] entries, each valid, names unique.
pub fn validate_ladder(profiles: &[Profile]) -> Result<(), ProfileError> {
    if profiles.len() < MIN_RENDITIONS {
        return Err(ProfileError::Empty);
    }
    if profiles.len() > MAX_RENDITIONS {
        return Err(ProfileError::TooMany(profiles.len()));
    }
    let mut seen = HashSet::new();
    for p in profiles {
        p.validate()?;
        if !seen.insert(p.name.as_str()) {
            return Err(ProfileError::DuplicateName(p.name.clone()));
        }
    }
    Ok(())
}

/// Parses a ladder from preset names (`P240p30fps16x9,P360p30fps16x9`) or from the
/// `transcodingOptions` JSON array, and validates it.
pub fn parse_profiles(s: &str) -> Result<Vec<Profile>, ProfileError> {
    let s = s.trim();
    let profiles = if s.starts_with('[') {
        parse_json(s)?
    } else {
        let names: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.len() > MAX_RENDITIONS {
            return Err(ProfileError::TooMany(names.len()));
        }
        names
            .into_iter()
            .map(|n| preset(n).ok_or_else(|| ProfileError::UnknownPreset(n.to_string())))
            .collect::<Result<Vec<_>, _>>()?
    };
    validate_ladder(&profiles)?;
    Ok(profiles)
}

/// A GOP as JSON gives it: `"intra"`, a number of seconds, or seconds as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonGop {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonProfile {
    #[serde(default)]
    name: String,
    width: u32,
    height: u32,
    bitrate: u64,
    #[serde(default)]
    fps: u32,
    #[serde(default, rename = "fpsDen")]
    fps_den: u32,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    gop: Option<JsonGop>,
    // Accepted for compatibility; only H.264 output is produced.
    #[serde(default)]
    encoder: Option<String>,
    #[serde(default, rename = "colorDepth")]
    color_depth: Option<u32>,
    #[serde(default, rename = "chromaFormat")]
    chroma_format: Option<u32>,
    #[serde(default)]
    quality: Option<u32>,
}

fn parse_json(s: &str) -> Result<Vec<Profile>, ProfileError> {
    let raw: Vec<JsonProfile> =
        serde_json::from_str(s).map_err(|e| ProfileError::Json(e.to_string()))?;
    if raw.len() > MAX_RENDITIONS {
        return Err(ProfileError::TooMany(raw.len()));
    }
    raw.into_iter().map(json_to_profile).collect()
}

fn json_to_profile(j: JsonProfile) -> Result<Profile, ProfileError> {
    let name = if j.name.trim().is_empty() {
        format!("custom_{}x{}_{}", j.width, j.height, j.bitrate)
    } else {
        j.name.trim().to_string()
    };
    let bad = |reason: String| ProfileError::Invalid {
        name: name.clone(),
        reason,
    };
    if let Some(enc) = j.encoder.as_deref() {
        if !(enc.is_empty()
            || enc.eq_ignore_ascii_case("H.264")
            || enc.eq_ignore_ascii_case("h264"))
        {
            return Err(bad(format!(
                "encoder {enc:?} is not supported (only H.264)"
            )));
        }
    }
    if let Some(depth) = j.color_depth {
        if depth != 0 && depth != 8 {
            return Err(bad(format!("colorDepth {depth} is not supported (only 8)")));
        }
    }
    if let Some(cf) = j.chroma_format {
        if cf != 0 {
            return Err(bad(format!(
                "chromaFormat {cf} is not supported (only 4:2:0)"
            )));
        }
    }
    if j.quality.is_some_and(|q| q != 0) {
        return Err(bad(
            "quality (CRF) is not supported; set bitrate".to_string()
        ));
    }
    let profile = H264Profile::parse(&j.profile)
        .ok_or_else(|| bad(format!("unknown H.264 profile {:?}", j.profile)))?;
    let gop = match j.gop {
        None => Gop::Default,
        Some(JsonGop::Number(s)) => Gop::Seconds(s),
        Some(JsonGop::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                Gop::Default
            } else if t.eq_ignore_ascii_case("intra") {
                Gop::Intra
            } else {
                let s: f64 = t
                    .parse()
                    .map_err(|_| bad(format!("gop {t:?} is neither \"intra\" nor seconds")))?;
                Gop::Seconds(s)
            }
        }
    };
    let p = Profile {
        name: name.clone(),
        width: j.width,
        height: j.height,
        bitrate: j.bitrate,
        // Livepeer treats a missing frame rate as "keep the source's"; Weir needs a fixed
        // output rate, so it uses 30 fps.
        fps: if j.fps == 0 { 30 } else { j.fps },
        fps_den: if j.fps_den == 0 { 1 } else { j.fps_den },
        profile,
        gop,
    };
    p.validate()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_livepeer_sizes_and_bitrates() {
        let p = preset("P240p30fps16x9").expect("preset");
        assert_eq!(
            (p.width, p.height, p.bitrate, p.fps),
            (426, 240, 600_000, 30)
        );
        let p = preset("P360p30fps16x9").expect("preset");
        assert_eq!(
            (p.width, p.height, p.bitrate, p.fps),
            (640, 360, 1_200_000, 30)
        );
        let p = preset("P720p30fps16x9").expect("preset");
        assert_eq!((p.width, p.height, p.bitrate), (1280, 720, 4_000_000));
        let p = preset("P144p30fps16x9").expect("preset");
        assert_eq!((p.width, p.height, p.bitrate), (256, 144, 400_000));
        let p = preset("P576p30fps16x9").expect("preset");
        assert_eq!((p.width, p.height, p.bitrate), (1024, 576, 1_500_000));
        let p = preset("P720p60fps16x9").expect("preset");
        assert_eq!((p.fps, p.bitrate), (60, 6_000_000));
        assert_eq!(PRESETS.len(), 14);
        for name in preset_names() {
            preset(name)
                .expect("preset")
                .validate()
                .expect("valid preset");
        }
    }

    #[test]
    fn default_ladder_is_240_and_360() {
        let l = default_ladder();
        let names: Vec<&str> = l.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["P240p30fps16x9", "P360p30fps16x9"]);
        assert_eq!(l[0].gop_frames(), 60);
    }

    #[test]
    fn parses_preset_names() {
        let l = parse_profiles(" P144p30fps16x9, P720p25fps16x9 ,").expect("parse");
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].fps, 25);
        assert!(matches!(
            parse_profiles("P240p30fps16x9,P999p"),
            Err(ProfileError::UnknownPreset(n)) if n == "P999p"
        ));
        assert_eq!(parse_profiles(""), Err(ProfileError::Empty));
        assert_eq!(parse_profiles(" , "), Err(ProfileError::Empty));
        assert!(matches!(
            parse_profiles("P240p30fps16x9,P240p30fps16x9"),
            Err(ProfileError::DuplicateName(_))
        ));
        let nine = ["P240p30fps16x9"; 9].join(",");
        assert_eq!(parse_profiles(&nine), Err(ProfileError::TooMany(9)));
    }

    #[test]
    fn parses_json() {
        let l = parse_profiles(
            r#"[
              {"name":"a","width":640,"height":360,"bitrate":900000,"fps":30000,"fpsDen":1001,
               "profile":"h264main","gop":"1.5"},
              {"name":"b","width":320,"height":180,"bitrate":300000,"fps":15,"profile":"H264Baseline","gop":"intra"},
              {"width":426,"height":240,"bitrate":600000,"gop":3},
              {"name":"d","width":256,"height":144,"bitrate":1,"profile":"none","encoder":"H.264"}
            ]"#,
        )
        .expect("parse");
        assert_eq!(l.len(), 4);
        assert_eq!((l[0].fps, l[0].fps_den), (30000, 1001));
        assert_eq!(l[0].profile, H264Profile::Main);
        assert_eq!(l[0].gop, Gop::Seconds(1.5));
        assert_eq!(l[0].gop_frames(), 45);
        assert_eq!(l[1].profile, H264Profile::Baseline);
        assert_eq!(l[1].gop, Gop::Intra);
        assert_eq!(l[1].gop_frames(), 1);
        assert_eq!(l[2].name, "custom_426x240_600000");
        assert_eq!((l[2].fps, l[2].fps_den), (30, 1));
        assert_eq!(l[2].gop, Gop::Seconds(3.0));
        assert_eq!(l[2].gop_frames(), 90);
        assert_eq!(l[3].gop, Gop::Default);
    }

    fn json_err(body: &str) -> String {
        parse_profiles(&format!("[{body}]"))
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn rejects_bad_json_profiles() {
        let base = r#""name":"x","width":640,"height":360,"bitrate":1000,"fps":30"#;
        parse_profiles(&format!("[{{{base}}}]")).expect("the base profile is valid");
        assert!(
            json_err(r#"{"name":"x","width":641,"height":360,"bitrate":1000}"#).contains("odd")
        );
        assert!(
            json_err(r#"{"name":"x","width":8,"height":360,"bitrate":1000}"#)
                .contains("outside 16..=4096")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":8192,"bitrate":1000}"#)
                .contains("height 8192")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":0}"#).contains("bitrate")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"fps":241}"#)
                .contains("frame rate")
        );
        assert!(json_err(
            r#"{"name":"x","width":640,"height":360,"bitrate":1,"fps":1,"fpsDen":2}"#
        )
        .contains("frame rate"));
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"profile":"vp9"}"#)
                .contains("H.264 profile")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"gop":"often"}"#)
                .contains("gop")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"gop":-1}"#)
                .contains("gop")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"gop":"0"}"#)
                .contains("gop")
        );
        assert!(
            json_err(r#"{"name":"x y","width":640,"height":360,"bitrate":1}"#).contains("name")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"encoder":"VP9"}"#)
                .contains("encoder")
        );
        assert!(
            json_err(r#"{"name":"x","width":640,"height":360,"bitrate":1,"bogus":1}"#)
                .contains("JSON")
        );
        assert!(json_err(r#"{"name":"x","width":-640,"height":360,"bitrate":1}"#).contains("JSON"));
        assert!(matches!(parse_profiles("[]"), Err(ProfileError::Empty)));
        assert!(matches!(parse_profiles("[{"), Err(ProfileError::Json(_))));
        let dup = r#"[{"name":"x","width":640,"height":360,"bitrate":1},
                      {"name":"x","width":320,"height":180,"bitrate":1}]"#;
        assert_eq!(
            parse_profiles(dup),
            Err(ProfileError::DuplicateName("x".to_string()))
        );
    }

    #[test]
    fn serde_round_trip() {
        let l = default_ladder();
        let json = serde_json::to_string(&l).expect("serialize");
        let back: Vec<Profile> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, l);
    }
}
