//! The response bodies of the AI capabilities.

use serde::{Deserialize, Serialize};

use super::requests::ChatMessage;

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
