//! `[gateway.live]`: live video.

use std::time::Duration;

use weir_media::profile::Profile;

/// Settings of live video on the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// The ladder every stream gets unless its auth webhook names another
    /// (`transcodingOptions`).
    pub profiles: Vec<Profile>,
    /// Target segment length (segments are cut on the first keyframe after it).
    pub segment: Duration,
    /// Segments listed in each media playlist.
    pub window: usize,
    /// Streams live at once (Livepeer's `maxSessions`).
    pub max_sessions: usize,
    /// A URL asked to accept or refuse each new stream (Livepeer's `authWebhookUrl`).
    pub auth_webhook_url: Option<String>,
    /// A pushed stream with no new segment for this long has ended.
    pub push_idle: Duration,
    /// Largest pushed segment.
    pub max_push_bytes: usize,
    /// How long an ended stream's playlists stay served.
    pub keep_ended: Duration,
    /// Target length of a low-latency HLS part.
    pub part: Duration,
    /// Where streams are recorded (source and renditions), when they are.
    pub record_dir: Option<std::path::PathBuf>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            profiles: weir_media::profile::default_ladder(),
            segment: Duration::from_secs(2),
            window: 6,
            max_sessions: 10,
            auth_webhook_url: None,
            push_idle: Duration::from_secs(60),
            max_push_bytes: 64 << 20,
            keep_ended: Duration::from_secs(120),
            part: Duration::from_millis(500),
            record_dir: None,
        }
    }
}
