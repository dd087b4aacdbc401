//! The request body of each AI capability.

use serde::{Deserialize, Serialize};

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
