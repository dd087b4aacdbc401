//! AI capabilities and how each one is billed.

use serde::{Deserialize, Serialize};

/// An AI capability of the Livepeer-compatible API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `POST /text-to-image` (JSON).
    TextToImage,
    /// `POST /image-to-image` (multipart).
    ImageToImage,
    /// `POST /image-to-video` (multipart).
    ImageToVideo,
    /// `POST /upscale` (multipart).
    Upscale,
    /// `POST /audio-to-text` (multipart).
    AudioToText,
    /// `POST /segment-anything-2` (multipart).
    #[serde(rename = "segment-anything-2")]
    SegmentAnything2,
    /// `POST /image-to-text` (multipart).
    ImageToText,
    /// `POST /llm` (JSON, SSE when streaming).
    Llm,
    /// `POST /text-to-speech` (JSON).
    TextToSpeech,
}

/// The unit a capability's work is counted and priced in, the same on gateway and orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    /// Output or input pixels (width × height × count).
    Pixels,
    /// Video frames × pixels per frame.
    FramePixels,
    /// Milliseconds of audio.
    AudioMillis,
    /// Tokens (the request's `max_tokens`).
    Tokens,
    /// Characters of text.
    Characters,
}

impl Capability {
    /// Every capability, in API order.
    pub const ALL: [Capability; 9] = [
        Capability::TextToImage,
        Capability::ImageToImage,
        Capability::ImageToVideo,
        Capability::Upscale,
        Capability::AudioToText,
        Capability::SegmentAnything2,
        Capability::ImageToText,
        Capability::Llm,
        Capability::TextToSpeech,
    ];

    /// The id used in paths, prices and ledgers, e.g. `text-to-image`.
    pub fn id(self) -> &'static str {
        match self {
            Capability::TextToImage => "text-to-image",
            Capability::ImageToImage => "image-to-image",
            Capability::ImageToVideo => "image-to-video",
            Capability::Upscale => "upscale",
            Capability::AudioToText => "audio-to-text",
            Capability::SegmentAnything2 => "segment-anything-2",
            Capability::ImageToText => "image-to-text",
            Capability::Llm => "llm",
            Capability::TextToSpeech => "text-to-speech",
        }
    }

    /// Parse a capability id.
    pub fn from_id(id: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The model used when a request names none (Livepeer's defaults).
    pub fn default_model(self) -> &'static str {
        match self {
            Capability::TextToImage | Capability::ImageToImage => "stabilityai/sdxl-turbo",
            Capability::ImageToVideo => "stabilityai/stable-video-diffusion-img2vid-xt",
            Capability::Upscale => "stabilityai/stable-diffusion-x4-upscaler",
            Capability::AudioToText => "openai/whisper-large-v3",
            Capability::SegmentAnything2 => "facebook/sam2-hiera-large",
            Capability::ImageToText => "Salesforce/blip-image-captioning-large",
            Capability::Llm => "meta-llama/llama-3.1-8B-Instruct",
            Capability::TextToSpeech => "parler-tts/parler-tts-large-v1",
        }
    }

    /// How the capability's work is counted.
    pub fn unit(self) -> UnitKind {
        match self {
            Capability::TextToImage
            | Capability::ImageToImage
            | Capability::Upscale
            | Capability::SegmentAnything2
            | Capability::ImageToText => UnitKind::Pixels,
            Capability::ImageToVideo => UnitKind::FramePixels,
            Capability::AudioToText => UnitKind::AudioMillis,
            Capability::Llm => UnitKind::Tokens,
            Capability::TextToSpeech => UnitKind::Characters,
        }
    }

    /// Whether the request body is multipart (else JSON).
    pub fn is_multipart(self) -> bool {
        !matches!(
            self,
            Capability::TextToImage | Capability::Llm | Capability::TextToSpeech
        )
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_serialize_as_ids() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_id(c.id()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).expect("json"),
                format!("\"{}\"", c.id())
            );
        }
        assert_eq!(Capability::from_id("text-to-music"), None);
    }
}
