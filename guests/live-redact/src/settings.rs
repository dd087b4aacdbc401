//! What live-redact decides without calling the host: the effect and the region from start
//! params and control messages, and the region in pixels for a frame size. Unit-tested natively
//! (`cargo test --manifest-path guests/Cargo.toml -p live-redact`).

use serde_json::{Map, Value};
use weir_sdk::pipeline::{Param, ParamValue};

/// Largest blur radius the host accepts.
pub const MAX_RADIUS: u32 = 64;

/// What is done to the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Blur it (box blur of `radius`, three passes).
    Blur,
    /// Paint it with `color`.
    Fill,
    /// Outline it with `color`, 4 pixels wide.
    Outline,
}

/// The stream's settings; every field can be changed by a control message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// What is done to the region.
    pub effect: Effect,
    /// Left edge, as a fraction of the frame's width.
    pub x: f64,
    /// Top edge, as a fraction of the frame's height.
    pub y: f64,
    /// Width, as a fraction of the frame's width.
    pub w: f64,
    /// Height, as a fraction of the frame's height.
    pub h: f64,
    /// Blur radius in pixels, 1..=64.
    pub radius: u32,
    /// Fill and outline colour.
    pub color: [u8; 3],
}

impl Default for Settings {
    /// Blur the centre quarter of the picture.
    fn default() -> Self {
        Settings {
            effect: Effect::Blur,
            x: 0.25,
            y: 0.25,
            w: 0.5,
            h: 0.5,
            radius: 16,
            color: [0, 0, 0],
        }
    }
}

/// A region in pixels: left, top, width, height.
pub type PixelRect = (i32, i32, u32, u32);

fn fraction(key: &str, v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "`{key}` must be a number in 0..=1 (a fraction of the frame), got {v}"
        )),
    }
}

fn color(v: &Value) -> Result<[u8; 3], String> {
    let bad = || format!("`color` must be \"#rrggbb\", got {v}");
    let hex = v
        .as_str()
        .and_then(|s| s.strip_prefix('#'))
        .ok_or_else(bad)?;
    if hex.len() != 6 || !hex.is_ascii() {
        return Err(bad());
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
    Ok([byte(0)?, byte(2)?, byte(4)?])
}

impl Settings {
    /// These settings with the keys of `changes` applied; unknown keys are refused, `keep` (a
    /// keep-alive) is ignored. Nothing changes when any value is wrong.
    pub fn with(&self, changes: &Map<String, Value>) -> Result<Settings, String> {
        let mut next = *self;
        for (key, v) in changes {
            match key.as_str() {
                "effect" => {
                    next.effect = match v.as_str() {
                        Some("blur") => Effect::Blur,
                        Some("fill") => Effect::Fill,
                        Some("outline") => Effect::Outline,
                        _ => {
                            return Err(format!(
                                "`effect` must be \"blur\", \"fill\" or \"outline\", got {v}"
                            ))
                        }
                    }
                }
                "x" => next.x = fraction(key, v)?,
                "y" => next.y = fraction(key, v)?,
                "w" => next.w = fraction(key, v)?,
                "h" => next.h = fraction(key, v)?,
                "radius" => {
                    next.radius = match v.as_u64() {
                        Some(r) if (1..=u64::from(MAX_RADIUS)).contains(&r) => r as u32,
                        _ => {
                            return Err(format!(
                                "`radius` must be an integer in 1..={MAX_RADIUS}, got {v}"
                            ))
                        }
                    }
                }
                "color" => next.color = color(v)?,
                "keep" => {}
                other => {
                    return Err(format!(
                        "unknown setting `{other}` (effect, x, y, w, h, radius, color)"
                    ))
                }
            }
        }
        Ok(next)
    }

    /// The region in pixels on a `width`×`height` frame (at least one pixel on a side).
    pub fn rect(&self, width: u32, height: u32) -> PixelRect {
        let px = |f: f64, size: u32| (f * f64::from(size)).round() as u32;
        let (x, y) = (px(self.x, width), px(self.y, height));
        let w = px(self.w, width).clamp(1, width.saturating_sub(x).max(1));
        let h = px(self.h, height).clamp(1, height.saturating_sub(y).max(1));
        (x as i32, y as i32, w, h)
    }
}

/// Start params as a JSON object, so they go through the same checks as control messages.
pub fn params_object(params: &[Param]) -> Map<String, Value> {
    params
        .iter()
        .map(|p| {
            let v = match &p.value {
                ParamValue::Text(t) => Value::from(t.as_str()),
                ParamValue::Integer(i) => Value::from(*i),
                ParamValue::Number(n) => Value::from(*n),
                ParamValue::Flag(b) => Value::from(*b),
            };
            (p.name.clone(), v)
        })
        .collect()
}

/// A control message's changes: a JSON object.
pub fn parse_control(message: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(message) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "a control message must be a JSON object, got {other}"
        )),
        Err(e) => Err(format!("a control message must be JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(json: &str) -> Map<String, Value> {
        parse_control(json).expect("object")
    }

    #[test]
    fn changes_apply_together_or_not_at_all() {
        let s = Settings::default();
        let next = s
            .with(&changes(
                r##"{"effect":"fill","x":0,"w":1,"color":"#ff8000","keep":"alive"}"##,
            ))
            .expect("valid");
        assert_eq!(next.effect, Effect::Fill);
        assert_eq!((next.x, next.w, next.color), (0.0, 1.0, [255, 128, 0]));
        for bad in [
            r#"{"effect":"sparkle"}"#,
            r#"{"x":1.5}"#,
            r#"{"x":"0.5"}"#,
            r#"{"radius":0}"#,
            r#"{"radius":65}"#,
            r#"{"color":"red"}"#,
            r##"{"color":"#12345"}"##,
            r##"{"colour":"#123456"}"##,
        ] {
            assert!(s.with(&changes(bad)).is_err(), "{bad}");
        }
        assert!(s.with(&changes(r#"{"x":0.1,"radius":0}"#)).is_err());
        assert!(parse_control("[1]").is_err());
        assert!(parse_control("not json").is_err());
    }

    #[test]
    fn the_region_lands_inside_the_frame() {
        let s = Settings::default();
        assert_eq!(s.rect(640, 360), (160, 90, 320, 180));
        let edge = s
            .with(&changes(r#"{"x":1,"y":1,"w":1,"h":1}"#))
            .expect("valid");
        assert_eq!(edge.rect(640, 360), (640, 360, 1, 1));
        let whole = s
            .with(&changes(r#"{"x":0,"y":0,"w":1,"h":1}"#))
            .expect("valid");
        assert_eq!(whole.rect(641, 361), (0, 0, 641, 361));
    }

    #[test]
    fn start_params_read_like_a_control_message() {
        let params = vec![
            Param {
                name: "effect".into(),
                value: ParamValue::Text("outline".into()),
            },
            Param {
                name: "radius".into(),
                value: ParamValue::Integer(4),
            },
            Param {
                name: "w".into(),
                value: ParamValue::Number(0.1),
            },
        ];
        let s = Settings::default()
            .with(&params_object(&params))
            .expect("valid");
        assert_eq!((s.effect, s.radius, s.w), (Effect::Outline, 4, 0.1));
    }
}
