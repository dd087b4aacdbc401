//! What live-scale decides without calling the host: the target height from start params and
//! control messages, and the rendition for a source size. Unit-tested natively (`cargo test
//! --manifest-path guests/Cargo.toml -p live-scale`).

use serde_json::Value;
use weir_sdk::media::VideoInfo;
use weir_sdk::pipeline::{Param, ParamValue};
use weir_sdk::transcode::Rendition;

/// Smallest target height accepted.
pub const MIN_HEIGHT: u32 = 144;
/// Largest target height accepted.
pub const MAX_HEIGHT: u32 = 1080;
/// Target height when neither the start params nor the manifest's config give one.
pub const DEFAULT_HEIGHT: u32 = 240;
/// Name of the start param and of the control message key.
pub const HEIGHT_KEY: &str = "height";

/// Narrowest and widest output the host's transcoder accepts.
const MIN_WIDTH: u32 = 16;
const MAX_WIDTH: u32 = 4096;
/// Frame rate assumed for sizing the bitrate when the probe does not know the source's.
const FALLBACK_FPS: f64 = 30.0;

/// What a control message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Livepeer's `{"keep":"alive"}`: nothing to do.
    KeepAlive,
    /// Scale the following segments to this height.
    Height(u32),
}

fn out_of_range(got: impl std::fmt::Display) -> String {
    format!("`{HEIGHT_KEY}` must be an integer in {MIN_HEIGHT}..={MAX_HEIGHT}, got {got}")
}

/// `height` checked against the accepted range and rounded down to even (4:2:0 needs even sizes).
pub fn check_height(height: i64) -> Result<u32, String> {
    match u32::try_from(height) {
        Ok(h) if (MIN_HEIGHT..=MAX_HEIGHT).contains(&h) => Ok(h & !1),
        _ => Err(out_of_range(height)),
    }
}

/// A height given as text: decimal digits, surrounding spaces allowed.
fn height_from_text(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(h) => check_height(h),
        Err(_) => Err(out_of_range(format!("{text:?}"))),
    }
}

/// Whether `n` is a whole number small enough to convert to `i64` exactly.
fn is_whole(n: f64) -> bool {
    n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15
}

/// A height given as a float: only whole numbers (`360.0`) are accepted.
fn height_from_number(n: f64) -> Result<u32, String> {
    if is_whole(n) {
        check_height(n as i64)
    } else {
        Err(out_of_range(n))
    }
}

/// The height a start param asks for: an integer, or a numeric string.
pub fn height_from_param(value: &ParamValue) -> Result<u32, String> {
    match value {
        ParamValue::Integer(h) => check_height(*h),
        ParamValue::Text(text) => height_from_text(text),
        ParamValue::Number(n) => height_from_number(*n),
        ParamValue::Flag(b) => Err(out_of_range(b)),
    }
}

/// The height the stream starts with: the `height` param when present, else `default`.
/// Other params are ignored.
pub fn start_height(params: &[Param], default: u32) -> Result<u32, String> {
    match params.iter().find(|p| p.name == HEIGHT_KEY) {
        Some(p) => height_from_param(&p.value),
        None => Ok(default),
    }
}

/// Parse a control message: `{"height": 360}` (a number or a numeric string), or Livepeer's
/// keepalive `{"keep":"alive"}`. Other keys beside `height` are ignored.
pub fn parse_control(message: &str) -> Result<Control, String> {
    let value: Value = serde_json::from_str(message).map_err(|e| {
        format!(
            "control message is not valid JSON ({e}); expected {{\"{HEIGHT_KEY}\": N}} or {{\"keep\": \"alive\"}}"
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "control message must be a JSON object like {{\"{HEIGHT_KEY}\": 360}}, got {message}"
        ));
    };
    match fields.get(HEIGHT_KEY) {
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(h), _) => check_height(h),
            (None, Some(f)) if is_whole(f) => check_height(f as i64),
            _ => Err(out_of_range(n)),
        }
        .map(Control::Height),
        Some(Value::String(text)) => height_from_text(text).map(Control::Height),
        Some(other) => Err(out_of_range(other)),
        None if fields.get("keep").and_then(Value::as_str) == Some("alive") => {
            Ok(Control::KeepAlive)
        }
        None => Err(format!(
            "control message has no `{HEIGHT_KEY}`: expected {{\"{HEIGHT_KEY}\": N}} with N in {MIN_HEIGHT}..={MAX_HEIGHT}, or {{\"keep\": \"alive\"}}"
        )),
    }
}

/// The output size for a `src_width` x `src_height` source scaled to `height`: the aspect ratio
/// kept, the width rounded to the nearest even number within what the transcoder accepts.
pub fn scaled_size(src_width: u32, src_height: u32, height: u32) -> Result<(u32, u32), String> {
    if src_width == 0 || src_height == 0 {
        return Err(format!(
            "the source video has no size ({src_width}x{src_height})"
        ));
    }
    // Nearest even width: 2 * round(src_width * height / (2 * src_height)).
    let num = u64::from(src_width) * u64::from(height);
    let den = 2 * u64::from(src_height);
    let half = (num + den / 2) / den;
    let width = u32::try_from(half * 2).unwrap_or(MAX_WIDTH);
    Ok((width.clamp(MIN_WIDTH, MAX_WIDTH), height))
}

/// A bitrate for `width` x `height` at `fps`, in bits per second: close to Livepeer's presets
/// at 30 fps (240p 600 kbit/s, 360p 1.1 Mbit/s, 720p 3.1 Mbit/s, 1080p 5.7 Mbit/s), growing
/// with the square root of the frame rate, rounded to kbit/s and kept within 100 kbit/s..=20 Mbit/s.
pub fn bitrate(width: u32, height: u32, fps: f64) -> u32 {
    let fps = if fps.is_finite() && fps >= 1.0 {
        fps.min(240.0)
    } else {
        FALLBACK_FPS
    };
    let pixels = f64::from(width) * f64::from(height);
    let bps = 105.0 * pixels.powf(0.75) * (fps / 30.0).sqrt();
    let kbps = (bps / 1000.0).round().clamp(100.0, 20_000.0);
    kbps as u32 * 1000
}

/// The source's frame rate as a float, when the probe knows it.
pub fn source_fps(info: &VideoInfo) -> Option<f64> {
    (info.fps_num > 0 && info.fps_den > 0)
        .then(|| f64::from(info.fps_num) / f64::from(info.fps_den))
}

/// The one rendition a segment probed as `info` is re-encoded to: `height` with the source's
/// aspect ratio, the source frame rate (`fps-num` 0 keeps it), one keyframe per segment.
pub fn rendition(info: &VideoInfo, height: u32) -> Result<Rendition, String> {
    let (width, height) = scaled_size(info.width, info.height, height)?;
    let fps = source_fps(info).unwrap_or(FALLBACK_FPS);
    Ok(Rendition {
        name: format!("live-scale-{height}p"),
        width,
        height,
        bitrate: bitrate(width, height, fps),
        fps_num: 0,
        fps_den: 1,
        gop_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: ParamValue) -> Param {
        Param {
            name: name.into(),
            value,
        }
    }

    fn info(width: u32, height: u32, fps_num: u32, fps_den: u32) -> VideoInfo {
        VideoInfo {
            codec: "h264".into(),
            width,
            height,
            fps_num,
            fps_den,
        }
    }

    #[test]
    fn start_height_defaults_and_ignores_unknown_params() {
        assert_eq!(start_height(&[], DEFAULT_HEIGHT), Ok(240));
        let params = [
            param("prompt", ParamValue::Text("a cat".into())),
            param("strength", ParamValue::Number(0.5)),
        ];
        assert_eq!(start_height(&params, 360), Ok(360));
    }

    #[test]
    fn start_height_accepts_integers_numeric_strings_and_whole_numbers() {
        let h = |v| start_height(&[param("height", v)], DEFAULT_HEIGHT);
        assert_eq!(h(ParamValue::Integer(360)), Ok(360));
        assert_eq!(h(ParamValue::Integer(144)), Ok(144));
        assert_eq!(h(ParamValue::Integer(1080)), Ok(1080));
        assert_eq!(h(ParamValue::Text("720".into())), Ok(720));
        assert_eq!(h(ParamValue::Text(" 480 ".into())), Ok(480));
        assert_eq!(h(ParamValue::Number(576.0)), Ok(576));
        // Odd heights are rounded down to even.
        assert_eq!(h(ParamValue::Integer(361)), Ok(360));
    }

    #[test]
    fn start_height_refuses_bad_values_with_the_accepted_range() {
        let h = |v| start_height(&[param("height", v)], DEFAULT_HEIGHT).unwrap_err();
        for (value, shown) in [
            (ParamValue::Integer(143), "143"),
            (ParamValue::Integer(1081), "1081"),
            (ParamValue::Integer(-240), "-240"),
            (ParamValue::Integer(i64::MAX), "9223372036854775807"),
            (ParamValue::Text("tall".into()), "\"tall\""),
            (ParamValue::Text("360p".into()), "\"360p\""),
            (ParamValue::Text(String::new()), "\"\""),
            (ParamValue::Number(360.5), "360.5"),
            (ParamValue::Number(f64::NAN), "NaN"),
            (ParamValue::Flag(true), "true"),
        ] {
            let err = h(value);
            assert_eq!(
                err,
                format!("`height` must be an integer in 144..=1080, got {shown}")
            );
        }
    }

    #[test]
    fn control_sets_the_height_or_keeps_alive() {
        assert_eq!(
            parse_control(r#"{"height": 360}"#),
            Ok(Control::Height(360))
        );
        assert_eq!(
            parse_control(r#"{"height":"720"}"#),
            Ok(Control::Height(720))
        );
        assert_eq!(
            parse_control(r#"{"height": 480.0}"#),
            Ok(Control::Height(480))
        );
        assert_eq!(parse_control(r#"{"keep":"alive"}"#), Ok(Control::KeepAlive));
        assert_eq!(
            parse_control(r#"{"keep":"alive","height":144}"#),
            Ok(Control::Height(144))
        );
        // Other keys ride along unnoticed.
        assert_eq!(
            parse_control(r#"{"height": 240, "prompt": "x"}"#),
            Ok(Control::Height(240))
        );
    }

    #[test]
    fn control_errors_say_what_is_expected() {
        let err = parse_control("height=360").unwrap_err();
        assert!(
            err.starts_with("control message is not valid JSON"),
            "{err}"
        );
        assert!(err.contains(r#"{"height": N}"#), "{err}");
        let err = parse_control("").unwrap_err();
        assert!(
            err.starts_with("control message is not valid JSON"),
            "{err}"
        );
        let err = parse_control("[360]").unwrap_err();
        assert!(
            err.starts_with("control message must be a JSON object"),
            "{err}"
        );
        let err = parse_control(r#"{"heigth": 360}"#).unwrap_err();
        assert!(err.starts_with("control message has no `height`"), "{err}");
        let err = parse_control(r#"{"keep":"dead"}"#).unwrap_err();
        assert!(err.starts_with("control message has no `height`"), "{err}");
        assert_eq!(
            parse_control(r#"{"height": 2000}"#).unwrap_err(),
            "`height` must be an integer in 144..=1080, got 2000"
        );
        assert_eq!(
            parse_control(r#"{"height": null}"#).unwrap_err(),
            "`height` must be an integer in 144..=1080, got null"
        );
        assert_eq!(
            parse_control(r#"{"height": [360]}"#).unwrap_err(),
            "`height` must be an integer in 144..=1080, got [360]"
        );
        assert_eq!(
            parse_control(r#"{"height": 1e30}"#).unwrap_err(),
            "`height` must be an integer in 144..=1080, got 1e+30"
        );
    }

    #[test]
    fn scaling_keeps_the_aspect_ratio_with_even_sizes() {
        assert_eq!(scaled_size(1280, 720, 240), Ok((426, 240)));
        assert_eq!(scaled_size(1920, 1080, 360), Ok((640, 360)));
        assert_eq!(scaled_size(640, 480, 240), Ok((320, 240)));
        assert_eq!(scaled_size(1280, 720, 1080), Ok((1920, 1080)));
        // Portrait video: 9:16.
        assert_eq!(scaled_size(720, 1280, 240), Ok((136, 240)));
        // Odd source sizes still give an even width.
        assert_eq!(scaled_size(1366, 767, 144), Ok((256, 144)));
        // Extreme aspect ratios stay within the transcoder's limits.
        assert_eq!(scaled_size(16, 4096, 144), Ok((16, 144)));
        assert_eq!(scaled_size(4096, 16, 1080), Ok((4096, 1080)));
        assert!(scaled_size(0, 720, 240).unwrap_err().contains("no size"));
    }

    #[test]
    fn bitrates_follow_the_size_and_frame_rate() {
        assert_eq!(bitrate(426, 240, 30.0), 600_000);
        let b360 = bitrate(640, 360, 30.0);
        let b720 = bitrate(1280, 720, 30.0);
        let b1080 = bitrate(1920, 1080, 30.0);
        assert!((1_000_000..=1_300_000).contains(&b360), "{b360}");
        assert!((2_800_000..=4_000_000).contains(&b720), "{b720}");
        assert!((5_000_000..=6_500_000).contains(&b1080), "{b1080}");
        assert!(bitrate(1280, 720, 60.0) > b720);
        assert!(bitrate(1280, 720, 15.0) < b720);
        // Unknown or silly frame rates are sized as 30 fps; tiny outputs get the floor.
        assert_eq!(bitrate(1280, 720, 0.0), b720);
        assert_eq!(bitrate(1280, 720, f64::NAN), b720);
        assert_eq!(bitrate(16, 16, 1.0), 100_000);
        assert_eq!(bitrate(4096, 4096, 240.0), 20_000_000);
    }

    #[test]
    fn the_rendition_keeps_the_source_frame_rate() {
        let r = rendition(&info(1280, 720, 30, 1), 240).expect("rendition");
        assert_eq!(r.name, "live-scale-240p");
        assert_eq!((r.width, r.height), (426, 240));
        assert_eq!(r.bitrate, 600_000);
        assert_eq!((r.fps_num, r.fps_den, r.gop_ms), (0, 1, 0));
        // A 60 fps source gets more bits; an unknown rate (0/1) is sized as 30 fps.
        assert!(rendition(&info(1280, 720, 60, 1), 240).expect("r").bitrate > r.bitrate);
        assert_eq!(
            rendition(&info(1280, 720, 0, 1), 240).expect("r").bitrate,
            r.bitrate
        );
        assert_eq!(
            source_fps(&info(1280, 720, 30000, 1001)).map(|f| (f * 100.0).round()),
            Some(2997.0)
        );
        assert!(rendition(&info(1280, 0, 30, 1), 240).is_err());
    }
}
