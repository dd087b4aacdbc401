//! `[gateway.streams]`: live AI streams.

use serde::Deserialize;

/// Settings of live AI streams (`[gateway.streams]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seconds of price paid ahead at start and kept topped up.
    pub pay_ahead_secs: u64,
    /// Seconds between top-ups.
    pub payment_interval_secs: u64,
    /// Streams at once.
    pub max_streams: usize,
    /// Moves to another orchestrator allowed per minute before the stream is given up.
    pub max_swaps_per_minute: u32,
    /// Deadline of a start call to an orchestrator, in seconds.
    pub start_timeout_secs: u64,
    /// A stream with no ingest for this long stops, in seconds.
    pub ingest_idle_secs: u64,
    /// RTMP base URL published in stream answers (`rtmp://host:port/live`); set by the node.
    pub rtmp_base: String,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            pay_ahead_secs: 120,
            payment_interval_secs: 20,
            max_streams: 50,
            max_swaps_per_minute: 3,
            start_timeout_secs: 10,
            ingest_idle_secs: 60,
            rtmp_base: "rtmp://127.0.0.1:1935/live".to_owned(),
        }
    }
}
