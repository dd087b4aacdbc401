//! Live media for Weir: the protocol-neutral publish seam and the one segmenter loop
//! ([`ingest`]), RTMP ingest ([`rtmp`]), cutting the published stream into MPEG-TS
//! segments on keyframes ([`segmenter`]), transcoding a segment to an ABR ladder with the FFmpeg
//! libraries ([`transcode`], profiles in [`profile`]), the HLS playlists the gateway serves
//! ([`hls`]), low-latency HLS over fMP4 with parts and blocking playlist reload ([`llhls`]),
//! the form a ladder travels in between gateway and orchestrator ([`wire`]), and encoding an AI
//! runner's still frames into one MP4 video ([`frames`]).

pub mod frames;
pub mod gpu;
pub mod hls;
pub mod ingest;
pub mod llhls;
pub mod packet;
pub mod profile;
pub mod rtmp;
pub mod segmenter;
pub mod transcode;
pub mod wire;
