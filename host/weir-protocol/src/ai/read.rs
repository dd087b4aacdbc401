//! Reading each capability's request with Livepeer's field names, defaults and limits.

use serde_json::Value;

use crate::capability::Capability;

use super::reader::{FieldSpec, Raw, Reader, Source};
use super::requests::{
    AiRequest, AudioToText, ChatMessage, ImageToImage, ImageToText, ImageToVideo, Llm,
    SegmentAnything2, TextToImage, TextToSpeech, Upscale,
};
use super::IMAGE_TYPES;

/// Reads the request of `capability` field by field, recording every problem in `r`.
pub(super) fn read(capability: Capability, r: &mut Reader<'_>) -> AiRequest {
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
        Capability::AudioToText => read_audio_to_text(capability, r),
        Capability::SegmentAnything2 => read_segment_anything2(capability, r),
        Capability::ImageToText => {
            r.file("image", IMAGE_TYPES);
            AiRequest::ImageToText(ImageToText {
                model_id: r.model(capability),
                prompt: r.text("prompt", false, ""),
            })
        }
        Capability::Llm => read_llm(capability, r),
        Capability::TextToSpeech => AiRequest::TextToSpeech(TextToSpeech {
            model_id: r.model(capability),
            text: r.text("text", true, ""),
            description: r.text("description", false, "A male speaker delivers a slightly expressive and animated speech with a moderate speed and pitch."),
        }),
    }
}

pub(super) fn read_messages(r: &mut Reader<'_>) -> Vec<ChatMessage> {
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

/// `/audio-to-text`: the audio file, `return_timestamps` and a JSON-object `metadata`.
fn read_audio_to_text(capability: Capability, r: &mut Reader<'_>) -> AiRequest {
    r.file(
        "audio",
        &[
            "audio/*",
            "video/mp4",
            "video/webm",
            "application/octet-stream",
        ],
    );
    let return_timestamps = r.text("return_timestamps", false, "true");
    if !["true", "false", "word"].contains(&return_timestamps.as_str()) {
        r.errors
            .push("return_timestamps", "enum", "must be true, false or word");
    }
    let metadata = r.text("metadata", false, "{}");
    if !matches!(
        serde_json::from_str::<Value>(&metadata),
        Ok(Value::Object(_))
    ) {
        r.errors
            .push("metadata", "json_invalid", "must be a JSON object");
    }
    AiRequest::AudioToText(AudioToText {
        model_id: r.model(capability),
        return_timestamps,
        metadata,
    })
}

/// `/segment-anything-2`: the image and the optional JSON prompts (points, box, mask).
fn read_segment_anything2(capability: Capability, r: &mut Reader<'_>) -> AiRequest {
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
            r.errors
                .push(name, "json_invalid", "must be JSON (e.g. [[120, 80]])");
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

/// `/llm`: the chat messages and the sampling settings.
fn read_llm(capability: Capability, r: &mut Reader<'_>) -> AiRequest {
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
