//! The HLS output of live AI streams: the seam live video exposes to AI streams, which list
//! the segments their orchestrator sends back in the stream's playlists.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;

use super::LiveStream;
use crate::server::Gateway;

/// The HLS output of one session of a live AI stream: what live video exposes to AI streams,
/// which list the segments their orchestrator sends back through it.
#[derive(Clone)]
pub(crate) struct AiOutput {
    gateway: Gateway,
    stream: Arc<LiveStream>,
    /// The stream's generation this session writes; a later session's output supersedes it.
    generation: u64,
}

impl AiOutput {
    /// List one output segment in the stream's HLS playlists (dropped once a later session
    /// took the stream over).
    pub(crate) async fn list(&self, data: Bytes) {
        self.gateway
            .list_ai_output(&self.stream, self.generation, data)
            .await;
    }
}

impl Gateway {
    /// The HLS stream showing AI stream `id`'s output, opened (or continued after the stream
    /// moved, with a discontinuity) for a new session.
    pub(crate) fn open_ai_output(&self, id: &str) -> Option<AiOutput> {
        match self.open_stream(id, Vec::new(), true, true) {
            Ok((stream, generation)) => Some(AiOutput {
                gateway: self.clone(),
                stream,
                generation,
            }),
            Err(e) => {
                tracing::warn!(stream = %id, error = %e, "the AI stream's output is not served as HLS");
                None
            }
        }
    }

    /// List one output segment of an AI stream in its HLS playlists.
    async fn list_ai_output(&self, stream: &LiveStream, generation: u64, data: Bytes) {
        let probe_data = data.clone();
        let target = self.streams().config.segment;
        let duration = tokio::task::spawn_blocking(move || {
            weir_media::transcode::probe(&probe_data).map(|i| i.duration_ms)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .filter(|ms| *ms > 0)
        .map_or(target, Duration::from_millis);
        let (at, discontinuity) = {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return;
            }
            st.last_active = Instant::now();
            st.next_seq += 1;
            let now = SystemTime::now();
            (
                now.checked_sub(duration).unwrap_or(now),
                std::mem::take(&mut st.discontinuity),
            )
        };
        let fmp4 = self.package(vec![data.clone()]).await.pop().flatten();
        {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return;
            }
            st.source
                .push(duration, at, discontinuity, data.clone(), fmp4);
        }
        self.record(
            &stream.id,
            vec![("source".to_owned(), duration, data)],
            discontinuity,
        );
    }

    /// The AI stream `id` ended: end its HLS playlists.
    pub(crate) fn end_ai_output(&self, id: &str) {
        if let Some(s) = self.streams().get(id) {
            let generation = s.state.lock().generation;
            self.end_stream(&s, generation);
        }
    }
}
