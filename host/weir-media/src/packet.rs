//! Media packets as they arrive from a publisher, before segmenting.

use bytes::Bytes;

/// Which elementary stream a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// H.264 video: `data` is one access unit in AVCC form (4-byte big-endian NALU lengths).
    Video,
    /// AAC audio: `data` is one raw AAC frame (no ADTS header).
    Audio,
}

/// One access unit with its timestamps in milliseconds, as RTMP/FLV carries them.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// The stream it belongs to.
    pub track: Track,
    /// Decode timestamp, milliseconds.
    pub dts_ms: i64,
    /// Presentation timestamp, milliseconds (`dts_ms` + composition offset).
    pub pts_ms: i64,
    /// Whether this is a random access point (an IDR for video; every AAC frame is one).
    pub keyframe: bool,
    /// The payload (see [`Track`]).
    pub data: Bytes,
}

/// Codec set-up a publisher sends before (or between) its media packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecConfig {
    /// The AVCDecoderConfigurationRecord (`avcC`) from the FLV AVC sequence header.
    Avc(Bytes),
    /// The AudioSpecificConfig from the FLV AAC sequence header.
    Aac(Bytes),
}

/// What an ingest connection delivers, in order.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// A codec's configuration (may repeat when the publisher changes settings).
    Config(CodecConfig),
    /// A media packet.
    Packet(MediaPacket),
}
