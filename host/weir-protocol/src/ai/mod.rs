//! Request and response bodies of the Livepeer-compatible AI API.
//!
//! Requests are read field by field from a JSON object or a multipart form, with Livepeer's
//! names and defaults; every invalid field is reported at once (FastAPI style), unknown fields
//! are ignored as Livepeer's runner does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::capability::Capability;
use crate::error::ValidationErrors;

mod read;
mod reader;
mod requests;
mod responses;

use read::read;
pub use reader::FieldSpec;
use reader::{Reader, Source};
pub use requests::{
    AiRequest, AudioToText, ChatMessage, ImageToImage, ImageToText, ImageToVideo, Llm, MediaFacts,
    SegmentAnything2, TextToImage, TextToSpeech, Upscale,
};
pub use responses::{
    AudioResponse, ImageResponse, ImageToTextResponse, LlmChoice, LlmResponse, LlmUsage,
    MasksResponse, Media, TextChunk, TextResponse, VideoResponse,
};

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
