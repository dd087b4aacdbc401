//! Request and response bodies of the Livepeer-compatible AI API.
//!
//! Requests are read field by field from a JSON object or a multipart form, with Livepeer's
//! names and defaults; every invalid field is reported at once (FastAPI style), unknown fields
//! are ignored as Livepeer's runner does.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::capability::Capability;
use crate::error::ValidationErrors;

/// Frames an image-to-video job produces (Stable Video Diffusion XT), for billing.
pub const IMAGE_TO_VIDEO_FRAMES: u64 = 25;
/// Longest prompt or text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Accepted image types.
pub const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/webp"];

/// An uploaded file of a multipart request (its bytes stay with the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// File name as sent.
    pub filename: String,
    /// MIME type as sent.
    pub content_type: String,
    /// Size in bytes.
    pub len: u64,
}

/// The text fields and files of a multipart request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormInput {
    /// Text fields by name.
    pub fields: BTreeMap<String, String>,
    /// Files by field name.
    pub files: BTreeMap<String, FilePart>,
    /// The names of parts sent more than once. A field the capability reads that is among them
    /// is refused (422 naming it); repeated unknown parts are ignored, as unknown parts are.
    pub repeated: BTreeSet<String>,
}

enum Source<'a> {
    Json(&'a Map<String, Value>),
    Form(&'a FormInput),
    /// No input: every field reads as absent and is recorded in the schema.
    Schema,
}

/// One field of a request as the validation code reads it; the OpenAPI document is built
/// from these, so the documented and the enforced rules are the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldSpec {
    /// Field name.
    pub name: String,
    /// JSON-Schema type: `string`, `integer`, `number`, `boolean`, `file`, `messages`.
    pub kind: &'static str,
    /// Whether it must be sent.
    pub required: bool,
    /// Default when absent.
    pub default: Option<Value>,
    /// Inclusive minimum.
    pub minimum: Option<f64>,
    /// Inclusive maximum.
    pub maximum: Option<f64>,
    /// Value must be a multiple of this.
    pub multiple_of: Option<u32>,
    /// Longest text, in characters.
    pub max_length: Option<usize>,
    /// Accepted MIME types of a file.
    pub media_types: Vec<String>,
}

impl FieldSpec {
    fn new(name: &str, kind: &'static str) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            kind,
            required: false,
            default: None,
            minimum: None,
            maximum: None,
            multiple_of: None,
            max_length: None,
            media_types: Vec::new(),
        }
    }
}

enum Raw<'a> {
    Json(&'a Value),
    Form(&'a str),
}

/// Reads typed fields and collects every problem.
struct Reader<'a> {
    source: Source<'a>,
    errors: ValidationErrors,
    schema: Vec<FieldSpec>,
}

impl<'a> Reader<'a> {
    fn raw(&self, name: &str) -> Option<Raw<'a>> {
        match self.source {
            Source::Json(map) => map.get(name).filter(|v| !v.is_null()).map(Raw::Json),
            Source::Form(form) => form
                .fields
                .get(name)
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .map(Raw::Form),
            Source::Schema => None,
        }
    }

    /// A field the capability reads that came more than once in a form is refused.
    fn check_repeated(&mut self, name: &str) {
        if let Source::Form(form) = self.source {
            if form.repeated.contains(name) {
                self.errors.push(
                    name,
                    "duplicate",
                    "sent more than once: send each field once",
                );
            }
        }
    }

    fn record(&mut self, spec: FieldSpec) {
        self.check_repeated(&spec.name);
        if matches!(self.source, Source::Schema) && !self.schema.iter().any(|f| f.name == spec.name)
        {
            self.schema.push(spec);
        }
    }

    fn text(&mut self, name: &str, required: bool, default: &str) -> String {
        self.record(FieldSpec {
            required,
            default: (!required).then(|| Value::String(default.to_owned())),
            max_length: Some(MAX_TEXT_CHARS),
            ..FieldSpec::new(name, "string")
        });
        match self.raw(name) {
            None if required => {
                self.errors.push(name, "missing", "field required");
                String::new()
            }
            None => default.to_owned(),
            Some(Raw::Json(Value::String(s))) => self.check_len(name, s, required),
            Some(Raw::Form(s)) => self.check_len(name, s, required),
            Some(Raw::Json(_)) => {
                self.errors.push(name, "string_type", "must be a string");
                String::new()
            }
        }
    }

    fn check_len(&mut self, name: &str, s: &str, required: bool) -> String {
        let chars = s.chars().count();
        if chars > MAX_TEXT_CHARS {
            self.errors.push(
                name,
                "string_too_long",
                format!("must be at most {MAX_TEXT_CHARS} characters (got {chars})"),
            );
        } else if required && s.trim().is_empty() {
            self.errors
                .push(name, "string_too_short", "must not be empty");
        }
        s.to_owned()
    }

    fn int(&mut self, name: &str, default: Option<i64>, min: i64, max: i64) -> Option<i64> {
        self.record(FieldSpec {
            default: default.map(Value::from),
            minimum: Some(min as f64),
            maximum: Some(max as f64),
            ..FieldSpec::new(name, "integer")
        });
        let value = match self.raw(name) {
            None => return default,
            Some(Raw::Json(Value::Number(n))) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            Some(Raw::Json(_)) => None,
            Some(Raw::Form(s)) => s.trim().parse::<i64>().ok(),
        };
        match value {
            None => {
                self.errors.push(name, "int_parsing", "must be an integer");
                default
            }
            Some(v) if v < min => {
                self.errors.push(
                    name,
                    "greater_than_equal",
                    format!("must be at least {min} (got {v})"),
                );
                default
            }
            Some(v) if v > max => {
                self.errors.push(
                    name,
                    "less_than_equal",
                    format!("must be at most {max} (got {v})"),
                );
                default
            }
            Some(v) => Some(v),
        }
    }

    /// An integer that must be present or defaulted; ranges fit in u32.
    fn uint(&mut self, name: &str, default: u32, min: u32, max: u32) -> u32 {
        self.int(
            name,
            Some(i64::from(default)),
            i64::from(min),
            i64::from(max),
        )
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
    }

    fn number(&mut self, name: &str, default: f64, min: f64, max: f64) -> f64 {
        self.record(FieldSpec {
            default: Some(Value::from(default)),
            minimum: Some(min),
            maximum: Some(max),
            ..FieldSpec::new(name, "number")
        });
        let value = match self.raw(name) {
            None => return default,
            Some(Raw::Json(Value::Number(n))) => n.as_f64(),
            Some(Raw::Json(_)) => None,
            Some(Raw::Form(s)) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        };
        match value {
            None => {
                self.errors.push(name, "float_parsing", "must be a number");
                default
            }
            Some(v) if v < min || v > max => {
                self.errors.push(
                    name,
                    "range",
                    format!("must be within {min}..={max} (got {v})"),
                );
                default
            }
            Some(v) => v,
        }
    }

    fn flag(&mut self, name: &str, default: bool) -> bool {
        self.record(FieldSpec {
            default: Some(Value::Bool(default)),
            ..FieldSpec::new(name, "boolean")
        });
        match self.raw(name) {
            None => default,
            Some(Raw::Json(Value::Bool(b))) => *b,
            Some(Raw::Form(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.errors
                        .push(name, "bool_parsing", "must be true or false");
                    default
                }
            },
            Some(Raw::Json(_)) => {
                self.errors.push(name, "bool_type", "must be true or false");
                default
            }
        }
    }

    fn seed(&mut self) -> Option<u64> {
        self.int("seed", None, 0, i64::MAX)
            .and_then(|v| u64::try_from(v).ok())
    }

    /// A dimension: a multiple of 8 within 64..=max.
    fn dimension(&mut self, name: &str, default: u32, max: u32) -> u32 {
        let v = self.uint(name, default, 64, max);
        if let Some(spec) = self.schema.iter_mut().find(|f| f.name == name) {
            spec.multiple_of = Some(8);
        }
        if !v.is_multiple_of(8) {
            self.errors.push(
                name,
                "multiple_of",
                format!("must be a multiple of 8 (got {v})"),
            );
            return default;
        }
        v
    }

    fn file(&mut self, name: &str, types: &[&str]) -> Option<FilePart> {
        if matches!(self.source, Source::Schema) {
            self.record(FieldSpec {
                required: true,
                media_types: types.iter().map(|t| (*t).to_owned()).collect(),
                ..FieldSpec::new(name, "file")
            });
            return None;
        }
        let Source::Form(form) = self.source else {
            self.errors.push(
                name,
                "missing",
                "a file upload needs a multipart/form-data body",
            );
            return None;
        };
        self.check_repeated(name);
        let Some(part) = form.files.get(name) else {
            self.errors.push(name, "missing", "file required");
            return None;
        };
        let ct = part
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let accepted = types.iter().any(|t| match t.strip_suffix("/*") {
            Some(prefix) => ct.split('/').next() == Some(prefix),
            None => ct == *t,
        });
        if ct.is_empty() {
            self.errors.push(
                name,
                "missing_content_type",
                format!(
                    "the file part has no Content-Type and its bytes are not recognised \
                     (accepted: {})",
                    types.join(", ")
                ),
            );
        } else if !accepted {
            self.errors.push(
                name,
                "unsupported_media_type",
                format!(
                    "type {ct:?} is not accepted (accepted: {})",
                    types.join(", ")
                ),
            );
        }
        if part.len == 0 {
            self.errors.push(name, "empty_file", "file is empty");
        }
        Some(part.clone())
    }

    fn model(&mut self, capability: Capability) -> String {
        self.model_field("model_id", capability)
    }

    /// The model named in field `name`, else (and documented as the default) the
    /// capability's default model.
    fn model_field(&mut self, name: &str, capability: Capability) -> String {
        let model = self.text(name, false, "");
        if let Some(spec) = self.schema.iter_mut().find(|f| f.name == name) {
            spec.default = Some(Value::String(capability.default_model().to_owned()));
        }
        if model.is_empty() {
            capability.default_model().to_owned()
        } else {
            model
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// `POST /text-to-image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextToImage {
    /// Model id (default `stabilityai/sdxl-turbo`).
    pub model_id: String,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: String,
    /// Output width, a multiple of 8 in 64..=2048 (default 512).
    pub width: u32,
    /// Output height, a multiple of 8 in 64..=2048 (default 512).
    pub height: u32,
    /// Images to generate, 1..=8 (default 1).
    pub num_images_per_prompt: u32,
    /// Denoising steps, 1..=200 (default 50).
    pub num_inference_steps: u32,
    /// Classifier-free guidance, 0..=50 (default 7.5).
    pub guidance_scale: f64,
    /// Random seed (random when absent).
    pub seed: Option<u64>,
    /// Run the NSFW checker (default true).
    pub safety_check: bool,
    /// LoRA weights as a JSON string (default empty).
    pub loras: String,
}

/// `POST /image-to-image` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageToImage {
    /// Model id.
    pub model_id: String,
    /// Edit instruction.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: String,
    /// How far to move from the input, 0..=1 (default 0.8).
    pub strength: f64,
    /// Guidance, 0..=50 (default 7.5).
    pub guidance_scale: f64,
    /// Image guidance, 0..=50 (default 1.5).
    pub image_guidance_scale: f64,
    /// Steps, 1..=200 (default 100).
    pub num_inference_steps: u32,
    /// Images, 1..=8 (default 1).
    pub num_images_per_prompt: u32,
    /// Random seed.
    pub seed: Option<u64>,
    /// NSFW checker (default true).
    pub safety_check: bool,
    /// LoRA weights (JSON string).
    pub loras: String,
}

/// `POST /upscale` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upscale {
    /// Model id.
    pub model_id: String,
    /// Guidance prompt (required by Livepeer's API).
    pub prompt: String,
    /// Steps, 1..=200 (default 75).
    pub num_inference_steps: u32,
    /// Random seed.
    pub seed: Option<u64>,
    /// NSFW checker (default true).
    pub safety_check: bool,
}

/// `POST /image-to-video` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageToVideo {
    /// Model id.
    pub model_id: String,
    /// Output width, multiple of 8 in 64..=1920 (default 1024).
    pub width: u32,
    /// Output height, multiple of 8 in 64..=1920 (default 576).
    pub height: u32,
    /// Frames per second, 1..=60 (default 6).
    pub fps: u32,
    /// Motion amount, 0..=255 (default 127).
    pub motion_bucket_id: u32,
    /// Noise added to the input, 0..=1 (default 0.02).
    pub noise_aug_strength: f64,
    /// Steps, 1..=200 (default 25).
    pub num_inference_steps: u32,
    /// Random seed.
    pub seed: Option<u64>,
    /// NSFW checker (default true).
    pub safety_check: bool,
}

/// `POST /audio-to-text` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioToText {
    /// Model id.
    pub model_id: String,
    /// `true`, `false` or `word` (default `true`).
    pub return_timestamps: String,
    /// Extra runner options as a JSON object string (default `{}`).
    pub metadata: String,
}

/// `POST /segment-anything-2` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentAnything2 {
    /// Model id.
    pub model_id: String,
    /// Point prompts as a JSON string, e.g. `[[120,80]]`.
    pub point_coords: Option<String>,
    /// Labels of the points as a JSON string, e.g. `[1]`.
    pub point_labels: Option<String>,
    /// Box prompt as a JSON string.
    #[serde(rename = "box")]
    pub box_: Option<String>,
    /// Low-resolution mask input as a JSON string.
    pub mask_input: Option<String>,
    /// Return several masks (default true).
    pub multimask_output: bool,
    /// Return logits (default true).
    pub return_logits: bool,
    /// Coordinates are normalized (default true).
    pub normalize_coords: bool,
}

/// `POST /image-to-text` (multipart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageToText {
    /// Model id.
    pub model_id: String,
    /// Optional conditioning prompt.
    pub prompt: String,
}

/// One chat message of an LLM request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// `POST /llm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llm {
    /// Model id (the body field is `model`).
    pub model: String,
    /// The conversation, at least one message.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate, 1..=32768 (default 256).
    pub max_tokens: u32,
    /// Sampling temperature, 0..=2 (default 0.7).
    pub temperature: f64,
    /// Nucleus sampling, 0..=1 (default 1).
    pub top_p: f64,
    /// Top-k sampling, -1 = off (default -1).
    pub top_k: i64,
    /// Stream tokens as server-sent events (default false).
    pub stream: bool,
}

/// `POST /text-to-speech`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextToSpeech {
    /// Model id.
    pub model_id: String,
    /// What to say.
    pub text: String,
    /// Voice description.
    pub description: String,
}

/// A validated request of any capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "capability", content = "request", rename_all = "kebab-case")]
pub enum AiRequest {
    /// `/text-to-image`.
    TextToImage(TextToImage),
    /// `/image-to-image`.
    ImageToImage(ImageToImage),
    /// `/image-to-video`.
    ImageToVideo(ImageToVideo),
    /// `/upscale`.
    Upscale(Upscale),
    /// `/audio-to-text`.
    AudioToText(AudioToText),
    /// `/segment-anything-2`.
    #[serde(rename = "segment-anything-2")]
    SegmentAnything2(SegmentAnything2),
    /// `/image-to-text`.
    ImageToText(ImageToText),
    /// `/llm`.
    Llm(Llm),
    /// `/text-to-speech`.
    TextToSpeech(TextToSpeech),
}

/// What the host learned from decoding the uploaded media, for billing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaFacts {
    /// Input image width and height.
    pub image: Option<(u32, u32)>,
    /// Input audio duration in milliseconds.
    pub audio_millis: Option<u64>,
}

fn read(capability: Capability, r: &mut Reader<'_>) -> AiRequest {
    match capability {
        Capability::TextToImage => AiRequest::TextToImage(TextToImage {
            model_id: r.model(capability),
            prompt: r.text("prompt", true, ""),
            negative_prompt: r.text("negative_prompt", false, ""),
            width: r.dimension("width", 512, 2048),
            height: r.dimension("height", 512, 2048),
            num_images_per_prompt: r.uint("num_images_per_prompt", 1, 1, 8),
            num_inference_steps: r.uint("num_inference_steps", 50, 1, 200),
            guidance_scale: r.number("guidance_scale", 7.5, 0.0, 50.0),
            seed: r.seed(),
            safety_check: r.flag("safety_check", true),
            loras: r.text("loras", false, ""),
        }),
        Capability::ImageToImage => {
            r.file("image", IMAGE_TYPES);
            AiRequest::ImageToImage(ImageToImage {
                model_id: r.model(capability),
                prompt: r.text("prompt", true, ""),
                negative_prompt: r.text("negative_prompt", false, ""),
                strength: r.number("strength", 0.8, 0.0, 1.0),
                guidance_scale: r.number("guidance_scale", 7.5, 0.0, 50.0),
                image_guidance_scale: r.number("image_guidance_scale", 1.5, 0.0, 50.0),
                num_inference_steps: r.uint("num_inference_steps", 100, 1, 200),
                num_images_per_prompt: r.uint("num_images_per_prompt", 1, 1, 8),
                seed: r.seed(),
                safety_check: r.flag("safety_check", true),
                loras: r.text("loras", false, ""),
            })
        }
        Capability::Upscale => {
            r.file("image", IMAGE_TYPES);
            AiRequest::Upscale(Upscale {
                model_id: r.model(capability),
                prompt: r.text("prompt", true, ""),
                num_inference_steps: r.uint("num_inference_steps", 75, 1, 200),
                seed: r.seed(),
                safety_check: r.flag("safety_check", true),
            })
        }
        Capability::ImageToVideo => {
            r.file("image", IMAGE_TYPES);
            AiRequest::ImageToVideo(ImageToVideo {
                model_id: r.model(capability),
                width: r.dimension("width", 1024, 1920),
                height: r.dimension("height", 576, 1920),
                fps: r.uint("fps", 6, 1, 60),
                motion_bucket_id: r.uint("motion_bucket_id", 127, 0, 255),
                noise_aug_strength: r.number("noise_aug_strength", 0.02, 0.0, 1.0),
                num_inference_steps: r.uint("num_inference_steps", 25, 1, 200),
                seed: r.seed(),
                safety_check: r.flag("safety_check", true),
            })
        }
        Capability::AudioToText => {
            r.file("audio", &["audio/*", "video/mp4", "video/webm", "application/octet-stream"]);
            let return_timestamps = r.text("return_timestamps", false, "true");
            if !["true", "false", "word"].contains(&return_timestamps.as_str()) {
                r.errors.push("return_timestamps", "enum", "must be true, false or word");
            }
            let metadata = r.text("metadata", false, "{}");
            if !matches!(serde_json::from_str::<Value>(&metadata), Ok(Value::Object(_))) {
                r.errors.push("metadata", "json_invalid", "must be a JSON object");
            }
            AiRequest::AudioToText(AudioToText {
                model_id: r.model(capability),
                return_timestamps,
                metadata,
            })
        }
        Capability::SegmentAnything2 => {
            r.file("image", IMAGE_TYPES);
            let mut json_field = |name: &str| {
                let raw = r.text(name, false, "");
                // Absent is no value, not an empty text.
                if let Some(spec) = r.schema.iter_mut().find(|f| f.name == name) {
                    spec.default = None;
                }
                if raw.is_empty() {
                    return None;
                }
                if serde_json::from_str::<Value>(&raw).is_err() {
                    r.errors.push(name, "json_invalid", "must be JSON (e.g. [[120, 80]])");
                }
                Some(raw)
            };
            let point_coords = json_field("point_coords");
            let point_labels = json_field("point_labels");
            let box_ = json_field("box");
            let mask_input = json_field("mask_input");
            AiRequest::SegmentAnything2(SegmentAnything2 {
                model_id: r.model(capability),
                point_coords,
                point_labels,
                box_,
                mask_input,
                multimask_output: r.flag("multimask_output", true),
                return_logits: r.flag("return_logits", true),
                normalize_coords: r.flag("normalize_coords", true),
            })
        }
        Capability::ImageToText => {
            r.file("image", IMAGE_TYPES);
            AiRequest::ImageToText(ImageToText {
                model_id: r.model(capability),
                prompt: r.text("prompt", false, ""),
            })
        }
        Capability::Llm => {
            let messages = read_messages(r);
            let model = r.model_field("model", capability);
            AiRequest::Llm(Llm {
                model,
                messages,
                max_tokens: r.uint("max_tokens", 256, 1, 32_768),
                temperature: r.number("temperature", 0.7, 0.0, 2.0),
                top_p: r.number("top_p", 1.0, 0.0, 1.0),
                top_k: r.int("top_k", Some(-1), -1, 1_000).unwrap_or(-1),
                stream: r.flag("stream", false),
            })
        }
        Capability::TextToSpeech => AiRequest::TextToSpeech(TextToSpeech {
            model_id: r.model(capability),
            text: r.text("text", true, ""),
            description: r.text("description", false, "A male speaker delivers a slightly expressive and animated speech with a moderate speed and pitch."),
        }),
    }
}

fn read_messages(r: &mut Reader<'_>) -> Vec<ChatMessage> {
    if matches!(r.source, Source::Schema) {
        r.record(FieldSpec {
            required: true,
            ..FieldSpec::new("messages", "messages")
        });
        return Vec::new();
    }
    let Some(Raw::Json(value)) = r.raw("messages") else {
        r.errors.push(
            "messages",
            "missing",
            "field required: a list of {role, content}",
        );
        return Vec::new();
    };
    match serde_json::from_value::<Vec<ChatMessage>>(value.clone()) {
        Ok(m) if m.is_empty() => {
            r.errors
                .push("messages", "too_short", "must hold at least one message");
            m
        }
        Ok(m) => {
            for (i, msg) in m.iter().enumerate() {
                if !["system", "user", "assistant"].contains(&msg.role.as_str()) {
                    r.errors.push(
                        "messages",
                        "enum",
                        format!("messages[{i}].role must be system, user or assistant"),
                    );
                }
            }
            m
        }
        Err(e) => {
            r.errors.push(
                "messages",
                "list_type",
                format!("must be a list of {{role, content}}: {e}"),
            );
            Vec::new()
        }
    }
}

impl AiRequest {
    /// Validate a JSON body for a JSON capability.
    pub fn from_json(capability: Capability, body: &Value) -> Result<AiRequest, ValidationErrors> {
        let Value::Object(map) = body else {
            let mut errors = ValidationErrors::default();
            errors.push(
                "body",
                "model_attributes_type",
                "the body must be a JSON object",
            );
            return Err(errors);
        };
        let mut reader = Reader {
            source: Source::Json(map),
            errors: ValidationErrors::default(),
            schema: Vec::new(),
        };
        let request = read(capability, &mut reader);
        reader.finish(request)
    }

    /// Validate a multipart form for a multipart capability.
    pub fn from_form(
        capability: Capability,
        form: &FormInput,
    ) -> Result<AiRequest, ValidationErrors> {
        let mut reader = Reader {
            source: Source::Form(form),
            errors: ValidationErrors::default(),
            schema: Vec::new(),
        };
        let request = read(capability, &mut reader);
        reader.finish(request)
    }

    /// The fields `capability` reads, with their types, defaults and ranges, in the order the
    /// validation reads them.
    pub fn schema(capability: Capability) -> Vec<FieldSpec> {
        let mut reader = Reader {
            source: Source::Schema,
            errors: ValidationErrors::default(),
            schema: Vec::new(),
        };
        read(capability, &mut reader);
        reader.schema
    }

    /// The capability of this request.
    pub fn capability(&self) -> Capability {
        match self {
            AiRequest::TextToImage(_) => Capability::TextToImage,
            AiRequest::ImageToImage(_) => Capability::ImageToImage,
            AiRequest::ImageToVideo(_) => Capability::ImageToVideo,
            AiRequest::Upscale(_) => Capability::Upscale,
            AiRequest::AudioToText(_) => Capability::AudioToText,
            AiRequest::SegmentAnything2(_) => Capability::SegmentAnything2,
            AiRequest::ImageToText(_) => Capability::ImageToText,
            AiRequest::Llm(_) => Capability::Llm,
            AiRequest::TextToSpeech(_) => Capability::TextToSpeech,
        }
    }

    /// The model the request asks for (its capability's default when it named none).
    pub fn model_id(&self) -> &str {
        match self {
            AiRequest::TextToImage(r) => &r.model_id,
            AiRequest::ImageToImage(r) => &r.model_id,
            AiRequest::ImageToVideo(r) => &r.model_id,
            AiRequest::Upscale(r) => &r.model_id,
            AiRequest::AudioToText(r) => &r.model_id,
            AiRequest::SegmentAnything2(r) => &r.model_id,
            AiRequest::ImageToText(r) => &r.model_id,
            AiRequest::Llm(r) => &r.model,
            AiRequest::TextToSpeech(r) => &r.model_id,
        }
    }

    /// Billable units in the capability's [`crate::UnitKind`]; the same computation runs on the
    /// gateway (to pay) and the orchestrator (to charge). Inputs that must be decoded to be
    /// measured are passed in `facts`.
    pub fn units(&self, facts: MediaFacts) -> Result<u64, String> {
        let image = || {
            facts
                .image
                .map(|(w, h)| u64::from(w) * u64::from(h))
                .ok_or_else(|| "the input image's size is needed to bill this request".to_owned())
        };
        Ok(match self {
            AiRequest::TextToImage(r) => {
                u64::from(r.width) * u64::from(r.height) * u64::from(r.num_images_per_prompt)
            }
            AiRequest::ImageToImage(r) => image()? * u64::from(r.num_images_per_prompt),
            AiRequest::ImageToVideo(r) => {
                u64::from(r.width) * u64::from(r.height) * IMAGE_TO_VIDEO_FRAMES
            }
            AiRequest::Upscale(_) | AiRequest::SegmentAnything2(_) | AiRequest::ImageToText(_) => {
                image()?
            }
            AiRequest::AudioToText(_) => facts.audio_millis.ok_or_else(|| {
                "the input audio's duration is needed to bill this request".to_owned()
            })?,
            AiRequest::Llm(r) => u64::from(r.max_tokens),
            AiRequest::TextToSpeech(r) => r.text.chars().count() as u64,
        })
    }
}

/// One produced media object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Where it is served (a data URL from a runner, rewritten to the gateway's own URL).
    pub url: String,
    /// The seed used.
    #[serde(default)]
    pub seed: u64,
    /// Whether the safety checker flagged it.
    #[serde(default)]
    pub nsfw: bool,
}

/// `{images: [...]}`: text-to-image, image-to-image, upscale, image-to-video (gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageResponse {
    /// The images (or video files).
    pub images: Vec<Media>,
}

/// `{frames: [[...]]}`: image-to-video as a runner returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoResponse {
    /// One list of frames per output video.
    pub frames: Vec<Vec<Media>>,
}

/// A timestamped piece of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextChunk {
    /// The text.
    pub text: String,
    /// `[start, end]` in seconds.
    pub timestamp: Vec<f64>,
}

/// `{text, chunks}`: audio-to-text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextResponse {
    /// The whole transcript.
    pub text: String,
    /// Timestamped pieces.
    #[serde(default)]
    pub chunks: Vec<TextChunk>,
}

/// `{text}`: image-to-text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageToTextResponse {
    /// The caption.
    pub text: String,
}

/// `{masks, scores, logits}`: segment-anything-2 (each a JSON-encoded array, as strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasksResponse {
    /// Masks.
    pub masks: String,
    /// Scores.
    pub scores: String,
    /// Logits.
    pub logits: String,
}

/// `{audio: {url}}`: text-to-speech.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioResponse {
    /// The audio file.
    pub audio: Media,
}

/// Token counts of an LLM answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// One choice of an LLM answer (`message` when whole, `delta` when streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmChoice {
    /// Choice index.
    pub index: u32,
    /// The whole message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage>,
    /// The next piece, when streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatMessage>,
    /// Why generation stopped (`stop`, `length`), on the last piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// `/llm` answer, whole or one server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// Completion id.
    pub id: String,
    /// Model that answered.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// Choices.
    pub choices: Vec<LlmChoice>,
    /// Token counts (on the last event when streaming).
    #[serde(default)]
    pub usage: LlmUsage,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors_of(e: &ValidationErrors) -> Vec<(String, String)> {
        e.detail
            .iter()
            .map(|f| (f.loc[1].clone(), f.kind.clone()))
            .collect()
    }

    #[test]
    fn text_to_image_applies_livepeer_defaults() {
        let r = AiRequest::from_json(
            Capability::TextToImage,
            &json!({"prompt": "a weir at dawn"}),
        )
        .expect("valid");
        let AiRequest::TextToImage(t) = &r else {
            panic!("wrong variant")
        };
        assert_eq!(
            (
                t.width,
                t.height,
                t.num_images_per_prompt,
                t.num_inference_steps
            ),
            (512, 512, 1, 50)
        );
        assert_eq!(t.model_id, "stabilityai/sdxl-turbo");
        assert!(t.safety_check && t.seed.is_none());
        assert_eq!(r.units(MediaFacts::default()), Ok(512 * 512));
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let body = json!({"width": 4000, "height": "tall", "num_images_per_prompt": 0, "guidance_scale": -1, "seed": -5, "safety_check": "yes", "prompt": "  "});
        let err = AiRequest::from_json(Capability::TextToImage, &body).unwrap_err();
        let got = errors_of(&err);
        for expected in [
            ("prompt", "string_too_short"),
            ("width", "less_than_equal"),
            ("height", "int_parsing"),
            ("num_images_per_prompt", "greater_than_equal"),
            ("guidance_scale", "range"),
            ("seed", "greater_than_equal"),
            ("safety_check", "bool_type"),
        ] {
            assert!(
                got.contains(&(expected.0.into(), expected.1.into())),
                "{expected:?} missing from {got:?}"
            );
        }
        let err = AiRequest::from_json(
            Capability::TextToImage,
            &json!({"width": 100, "prompt": "x"}),
        )
        .unwrap_err();
        assert_eq!(
            errors_of(&err),
            vec![("width".into(), "multiple_of".into())]
        );
        let err = AiRequest::from_json(Capability::TextToImage, &json!([1])).unwrap_err();
        assert_eq!(err.detail[0].kind, "model_attributes_type");
    }

    fn form(fields: &[(&str, &str)], files: &[(&str, &str, u64)]) -> FormInput {
        FormInput {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: files
                .iter()
                .map(|(k, ct, len)| {
                    (
                        k.to_string(),
                        FilePart {
                            filename: "f".into(),
                            content_type: ct.to_string(),
                            len: *len,
                        },
                    )
                })
                .collect(),
            repeated: Default::default(),
        }
    }

    #[test]
    fn multipart_requests_check_files_and_parse_text_fields() {
        let ok = form(
            &[
                ("prompt", "sharpen"),
                ("seed", "42"),
                ("safety_check", "false"),
            ],
            &[("image", "image/png", 10)],
        );
        let r = AiRequest::from_form(Capability::Upscale, &ok).expect("valid");
        let AiRequest::Upscale(u) = &r else {
            panic!("wrong variant")
        };
        assert_eq!(
            (u.seed, u.safety_check, u.num_inference_steps),
            (Some(42), false, 75)
        );
        assert_eq!(
            r.units(MediaFacts {
                image: Some((256, 256)),
                audio_millis: None
            }),
            Ok(65536)
        );
        assert!(r.units(MediaFacts::default()).is_err());

        let bad = form(&[("prompt", "x")], &[("image", "application/pdf", 10)]);
        let err = AiRequest::from_form(Capability::Upscale, &bad).unwrap_err();
        assert_eq!(
            errors_of(&err),
            vec![("image".into(), "unsupported_media_type".into())]
        );
        let missing = form(&[], &[]);
        let err = AiRequest::from_form(Capability::Upscale, &missing).unwrap_err();
        assert_eq!(
            errors_of(&err),
            vec![
                ("image".into(), "missing".into()),
                ("prompt".into(), "missing".into())
            ]
        );
        let audio = form(&[("metadata", "[1]")], &[("audio", "audio/mpeg", 5)]);
        let err = AiRequest::from_form(Capability::AudioToText, &audio).unwrap_err();
        assert_eq!(
            errors_of(&err),
            vec![("metadata".into(), "json_invalid".into())]
        );
    }

    #[test]
    fn llm_and_speech_units() {
        let r = AiRequest::from_json(
            Capability::Llm,
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": true}),
        )
        .expect("valid");
        assert_eq!(r.units(MediaFacts::default()), Ok(100));
        let err = AiRequest::from_json(
            Capability::Llm,
            &json!({"messages": [{"role": "robot", "content": "x"}]}),
        )
        .unwrap_err();
        assert_eq!(errors_of(&err), vec![("messages".into(), "enum".into())]);
        let r = AiRequest::from_json(Capability::TextToSpeech, &json!({"text": "héllo"}))
            .expect("valid");
        assert_eq!(r.units(MediaFacts::default()), Ok(5));
    }

    #[test]
    fn requests_round_trip_through_json_for_forwarding() {
        let r = AiRequest::from_json(Capability::TextToImage, &json!({"prompt": "x", "seed": 7}))
            .expect("valid");
        let text = serde_json::to_string(&r).expect("json");
        let back: AiRequest = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }
}
