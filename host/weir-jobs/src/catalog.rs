//! The models clients may submit jobs for: each configured model id names a capability (and
//! the orchestrator model behind it) and takes a typed parameter set with ranges and defaults.
//!
//! A request body is a union discriminated by `model`; [`Catalog::validate`] checks it against
//! the model's schema and returns the parameters with defaults filled in, or every problem at
//! once. Parameters ending in `Url` are inputs the gateway fetches (or receives as uploads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which parameter set a model takes (one per AI capability jobs can run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `prompt`, `negativePrompt`, `width`/`height` 512–2048, `steps`, `seed`, `guidanceScale`.
    TextToImage,
    /// `imageUrl`, `prompt`, `strength`, `steps`, `seed`.
    ImageToImage,
    /// `imageUrl`, `prompt`, `duration` 3–10 s, `width`/`height` 512–1920, `fps` 12–30, `seed`.
    ImageToVideo,
    /// `imageUrl`, `prompt`.
    Upscale,
    /// `audioUrl`, `language`.
    AudioToText,
}

impl Kind {
    /// The Livepeer capability id it runs as.
    pub fn capability(self) -> &'static str {
        match self {
            Kind::TextToImage => "text-to-image",
            Kind::ImageToImage => "image-to-image",
            Kind::ImageToVideo => "image-to-video",
            Kind::Upscale => "upscale",
            Kind::AudioToText => "audio-to-text",
        }
    }

    /// The kind for a capability id.
    pub fn from_capability(id: &str) -> Option<Kind> {
        [
            Kind::TextToImage,
            Kind::ImageToImage,
            Kind::ImageToVideo,
            Kind::Upscale,
            Kind::AudioToText,
        ]
        .into_iter()
        .find(|k| k.capability() == id)
    }

    /// Its parameters.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Kind::TextToImage => TEXT_TO_IMAGE,
            Kind::ImageToImage => IMAGE_TO_IMAGE,
            Kind::ImageToVideo => IMAGE_TO_VIDEO,
            Kind::Upscale => UPSCALE,
            Kind::AudioToText => AUDIO_TO_TEXT,
        }
    }
}

const PROMPT: Field = Field::req("prompt", FieldType::Text { max: 1000 });
const NEGATIVE: Field = Field::opt("negativePrompt", FieldType::Text { max: 1000 });
const SEED: Field = Field::opt(
    "seed",
    FieldType::Int {
        min: 0,
        max: u32::MAX as i64,
        default: None,
    },
);
const STEPS: Field = Field::opt(
    "steps",
    FieldType::Int {
        min: 1,
        max: 100,
        default: Some(30),
    },
);
const IMAGE: Field = Field::req("imageUrl", FieldType::Input { part: "image" });

const fn int(name: &'static str, min: i64, max: i64, default: i64) -> Field {
    Field::opt(
        name,
        FieldType::Int {
            min,
            max,
            default: Some(default),
        },
    )
}

const fn number(name: &'static str, min: f64, max: f64, default: f64) -> Field {
    Field::opt(
        name,
        FieldType::Number {
            min,
            max,
            default: Some(default),
        },
    )
}

const TEXT_TO_IMAGE: &[Field] = &[
    PROMPT,
    NEGATIVE,
    int("width", 512, 2048, 1024),
    int("height", 512, 2048, 1024),
    STEPS,
    SEED,
    number("guidanceScale", 0.0, 20.0, 7.5),
];
const IMAGE_TO_IMAGE: &[Field] = &[
    IMAGE,
    PROMPT,
    NEGATIVE,
    number("strength", 0.0, 1.0, 0.8),
    STEPS,
    SEED,
];
const IMAGE_TO_VIDEO: &[Field] = &[
    IMAGE,
    Field::opt("prompt", FieldType::Text { max: 1000 }),
    int("duration", 3, 10, 5),
    int("width", 512, 1920, 1024),
    int("height", 512, 1920, 576),
    int("fps", 12, 30, 24),
    SEED,
];
const UPSCALE: &[Field] = &[IMAGE, Field::opt("prompt", FieldType::Text { max: 1000 })];
const AUDIO_TO_TEXT: &[Field] = &[
    Field::req("audioUrl", FieldType::Input { part: "audio" }),
    Field::opt("language", FieldType::Text { max: 16 }),
];

/// A parameter's type and range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldType {
    /// A string of at most `max` characters.
    Text {
        /// Most characters.
        max: usize,
    },
    /// An integer in `min..=max`.
    Int {
        /// Least value.
        min: i64,
        /// Most value.
        max: i64,
        /// Filled in when absent.
        default: Option<i64>,
    },
    /// A number in `min..=max`.
    Number {
        /// Least value.
        min: f64,
        /// Most value.
        max: f64,
        /// Filled in when absent.
        default: Option<f64>,
    },
    /// A media input: an `http(s)` URL the gateway fetches, or an upload in form part `part`.
    Input {
        /// The form part an upload comes in, and the part name sent to the orchestrator.
        part: &'static str,
    },
}

/// One parameter of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// Its JSON name.
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// Whether a request must give it.
    pub required: bool,
}

impl Field {
    const fn req(name: &'static str, ty: FieldType) -> Field {
        Field {
            name,
            ty,
            required: true,
        }
    }
    const fn opt(name: &'static str, ty: FieldType) -> Field {
        Field {
            name,
            ty,
            required: false,
        }
    }
}

/// A model clients can submit jobs for (`[[gateway.jobs.models]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The id clients send as `model`.
    pub id: String,
    /// The capability it runs as (`text-to-image`, `upscale`, …).
    pub capability: String,
    /// The orchestrator model id; the capability's default when absent.
    #[serde(default)]
    pub model_id: Option<String>,
    /// Higher runs first among queued jobs.
    #[serde(default)]
    pub priority: i64,
    /// Deadline of one run, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Most runs of one job.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_timeout() -> u64 {
    600
}

fn default_attempts() -> u32 {
    3
}

/// One problem with a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// The parameter (`model` for the discriminator).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A validated request: the model and its parameters with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The model's spec.
    pub spec: ModelSpec,
    /// Its kind.
    pub kind: Kind,
    /// The parameters (without `model` and `webhookUrl`).
    pub params: Map<String, Value>,
    /// The webhook endpoint, if any.
    pub webhook_url: Option<String>,
}

impl Validated {
    /// The inputs: `(parameter, form part, URL or None for an upload)`.
    pub fn inputs(&self) -> Vec<(&'static str, &'static str, Option<String>)> {
        self.kind
            .fields()
            .iter()
            .filter_map(|f| match f.ty {
                FieldType::Input { part } => Some((
                    f.name,
                    part,
                    self.params
                        .get(f.name)
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                )),
                _ => None,
            })
            .collect()
    }
}

/// The configured models, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: BTreeMap<String, (ModelSpec, Kind)>,
}

impl Catalog {
    /// A catalog of `specs`; an unknown capability or a repeated id is an error.
    pub fn new(specs: &[ModelSpec]) -> Result<Catalog, String> {
        let mut models = BTreeMap::new();
        for spec in specs {
            let kind = Kind::from_capability(&spec.capability).ok_or_else(|| {
                format!(
                    "job model `{}`: capability `{}` cannot run as a job (one of text-to-image, image-to-image, image-to-video, upscale, audio-to-text)",
                    spec.id, spec.capability
                )
            })?;
            if spec.id.is_empty() || spec.id.len() > 128 {
                return Err(format!(
                    "job model id `{}` must be 1–128 characters",
                    spec.id
                ));
            }
            if spec.max_attempts == 0 || spec.timeout_secs == 0 {
                return Err(format!(
                    "job model `{}`: max_attempts and timeout_secs must be at least 1",
                    spec.id
                ));
            }
            if models
                .insert(spec.id.clone(), (spec.clone(), kind))
                .is_some()
            {
                return Err(format!("job model `{}` is configured twice", spec.id));
            }
        }
        Ok(Catalog { models })
    }

    /// The model ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// A model's spec and kind.
    pub fn get(&self, id: &str) -> Option<(&ModelSpec, Kind)> {
        self.models.get(id).map(|(s, k)| (s, *k))
    }

    /// Check a request body (fields from JSON or a form) against its model's schema.
    /// `uploads` names the form parts that came as files.
    pub fn validate(
        &self,
        body: &Map<String, Value>,
        uploads: &[&str],
    ) -> Result<Validated, Vec<FieldError>> {
        let (spec, kind) = self.model_of(body)?;
        let mut errors = Vec::new();
        let webhook_url = webhook_url_of(body, &mut errors);
        let fields = kind.fields();
        check_unknown_keys(body, fields, &mut errors);
        let mut params = Map::new();
        for f in fields {
            let value = body.get(f.name).filter(|v| !v.is_null());
            check_field(f, value, uploads, &mut params, &mut errors);
        }
        if errors.is_empty() {
            Ok(Validated {
                spec: spec.clone(),
                kind,
                params,
                webhook_url,
            })
        } else {
            Err(errors)
        }
    }

    /// The model a request body names, or the one error saying why there is none.
    fn model_of(&self, body: &Map<String, Value>) -> Result<(&ModelSpec, Kind), Vec<FieldError>> {
        let Some(model) = body.get("model") else {
            return Err(vec![problem("model", "required".to_owned())]);
        };
        let Some((spec, kind)) = model.as_str().and_then(|m| self.get(m)) else {
            let known: Vec<&str> = self.ids().collect();
            return Err(vec![problem(
                "model",
                format!(
                    "unknown model {model}; this gateway runs: {}",
                    known.join(", ")
                ),
            )]);
        };
        Ok((spec, kind))
    }
}

/// A [`FieldError`] for `field`.
fn problem(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message,
    }
}

/// The body's `webhookUrl`, if it is an http(s) URL (otherwise an error is recorded).
fn webhook_url_of(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get("webhookUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.starts_with("https://") || u.starts_with("http://") => {
            Some(u.clone())
        }
        Some(_) => {
            errors.push(problem("webhookUrl", "must be an http(s) URL".to_owned()));
            None
        }
    }
}

/// Record an error for every body key that is neither common nor one of the model's fields.
fn check_unknown_keys(body: &Map<String, Value>, fields: &[Field], errors: &mut Vec<FieldError>) {
    for key in body.keys() {
        let known = key == "model" || key == "webhookUrl";
        if !known && !fields.iter().any(|f| f.name == key) {
            errors.push(problem(key, "unknown parameter for this model".to_owned()));
        }
    }
}

/// Check one field's value (absent or null: `None`), adding it (or its default) to `params`
/// or recording why it is wrong.
fn check_field(
    f: &Field,
    value: Option<&Value>,
    uploads: &[&str],
    params: &mut Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    match (f.ty, value) {
        (FieldType::Input { part }, value) => check_input(f, part, value, uploads, params, errors),
        (FieldType::Text { .. }, None)
        | (FieldType::Int { default: None, .. }, None)
        | (FieldType::Number { default: None, .. }, None) => {
            if f.required {
                errors.push(problem(f.name, "required".to_owned()));
            }
        }
        (
            FieldType::Int {
                default: Some(d), ..
            },
            None,
        ) => {
            params.insert(f.name.to_owned(), Value::from(d));
        }
        (
            FieldType::Number {
                default: Some(d), ..
            },
            None,
        ) => {
            params.insert(f.name.to_owned(), Value::from(d));
        }
        (FieldType::Text { max }, Some(v)) => check_text(f, max, v, params, errors),
        (FieldType::Int { min, max, .. }, Some(v)) => match int_of(v) {
            Some(n) if (min..=max).contains(&n) => {
                params.insert(f.name.to_owned(), Value::from(n));
            }
            Some(n) => errors.push(problem(f.name, format!("{n} is out of range {min}–{max}"))),
            None => errors.push(problem(f.name, "must be an integer".to_owned())),
        },
        (FieldType::Number { min, max, .. }, Some(v)) => match num_of(v) {
            Some(n) if n >= min && n <= max => {
                params.insert(f.name.to_owned(), Value::from(n));
            }
            Some(n) => errors.push(problem(f.name, format!("{n} is out of range {min}–{max}"))),
            None => errors.push(problem(f.name, "must be a number".to_owned())),
        },
    }
}

/// Check an input field: a URL, or an upload in form part `part`, never both.
fn check_input(
    f: &Field,
    part: &str,
    value: Option<&Value>,
    uploads: &[&str],
    params: &mut Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    match value {
        None if uploads.contains(&part) => {}
        None if !f.required => {}
        None => errors.push(problem(
            f.name,
            format!("required: an http(s) URL, or upload the file as form part `{part}`"),
        )),
        Some(_) if uploads.contains(&part) => errors.push(problem(
            f.name,
            format!("give either {} or an upload, not both", f.name),
        )),
        Some(Value::String(u))
            if (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2048 =>
        {
            params.insert(f.name.to_owned(), Value::String(u.clone()));
        }
        Some(_) => errors.push(problem(
            f.name,
            "must be an http(s) URL of at most 2048 characters".to_owned(),
        )),
    }
}

/// Check a text field of at most `max` characters.
fn check_text(
    f: &Field,
    max: usize,
    v: &Value,
    params: &mut Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    match v.as_str() {
        Some(s) if f.required && s.trim().is_empty() => {
            errors.push(problem(f.name, "must not be empty".to_owned()))
        }
        Some(s) if s.chars().count() > max => {
            errors.push(problem(f.name, format!("at most {max} characters")))
        }
        Some(s) => {
            params.insert(f.name.to_owned(), Value::String(s.to_owned()));
        }
        None => errors.push(problem(f.name, "must be a string".to_owned())),
    }
}

/// An integer from JSON, or from a form field's text.
fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A finite number from JSON, or from a form field's text.
fn num_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let spec = |id: &str, cap: &str| ModelSpec {
            id: id.to_owned(),
            capability: cap.to_owned(),
            model_id: None,
            priority: 0,
            timeout_secs: 60,
            max_attempts: 3,
        };
        Catalog::new(&[spec("t2i", "text-to-image"), spec("i2v", "image-to-video")])
            .expect("catalog")
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn defaults_are_filled_and_ranges_checked() {
        let c = catalog();
        let ok = c
            .validate(
                &body(json!({"model": "t2i", "prompt": "a cat", "width": 768})),
                &[],
            )
            .expect("valid");
        assert_eq!(ok.params["width"], 768);
        assert_eq!(ok.params["height"], 1024);
        assert_eq!(ok.params["steps"], 30);
        assert_eq!(ok.kind, Kind::TextToImage);

        let bad = c
            .validate(
                &body(json!({"model": "i2v", "imageUrl": "ftp://x", "duration": 11, "fps": "fast", "color": 1})),
                &[],
            )
            .expect_err("invalid");
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"imageUrl"), "{bad:?}");
        assert!(fields.contains(&"duration"), "{bad:?}");
        assert!(fields.contains(&"fps"), "{bad:?}");
        assert!(fields.contains(&"color"), "{bad:?}");
    }

    #[test]
    fn unknown_models_and_missing_inputs_are_named() {
        let c = catalog();
        let e = c
            .validate(&body(json!({"model": "sdxl"})), &[])
            .expect_err("unknown");
        assert!(e[0].message.contains("t2i"), "{e:?}");
        let e = c
            .validate(&body(json!({"model": "i2v"})), &[])
            .expect_err("missing");
        assert_eq!(e[0].field, "imageUrl");
        // An upload stands in for the URL; both at once is refused.
        let ok = c
            .validate(&body(json!({"model": "i2v"})), &["image"])
            .expect("upload");
        assert_eq!(ok.inputs(), vec![("imageUrl", "image", None)]);
        assert!(c
            .validate(
                &body(json!({"model": "i2v", "imageUrl": "https://x/y.png"})),
                &["image"]
            )
            .is_err());
        // Form fields arrive as text.
        let ok = c
            .validate(
                &body(json!({"model": "i2v", "imageUrl": "https://x/y.png", "fps": "12"})),
                &[],
            )
            .expect("form text");
        assert_eq!(ok.params["fps"], 12);
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let spec = ModelSpec {
            id: "x".to_owned(),
            capability: "segment-anything-2".to_owned(),
            model_id: None,
            priority: 0,
            timeout_secs: 1,
            max_attempts: 1,
        };
        assert!(Catalog::new(std::slice::from_ref(&spec)).is_err());
        let ok = ModelSpec {
            capability: "upscale".to_owned(),
            ..spec
        };
        assert!(Catalog::new(&[ok.clone(), ok]).is_err());
    }
}
