//! The HLS output of live AI streams: live video implements the [`StreamOutputs`] seam, and
//! AI streams list the segments their orchestrator sends back in the stream's playlists.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;

use super::{Live, LiveStream};
use crate::seams::{BoxFut, StreamOutput, StreamOutputs};

/// The HLS output of one session of a live AI stream.
struct AiOutput {
    live: Arc<Live>,
    stream: Arc<LiveStream>,
    /// The stream's generation this session writes; a later session's output supersedes it.
    generation: u64,
}

impl StreamOutput for AiOutput {
    fn list(&self, data: Bytes) -> BoxFut<'_, ()> {
        Box::pin(
            self.live
                .list_ai_output(&self.stream, self.generation, data),
        )
    }
}

impl StreamOutputs for Live {
    fn open(self: Arc<Self>, id: &str) -> Option<Arc<dyn StreamOutput>> {
        match self.open_stream(id, Vec::new(), true, true) {
            Ok((stream, generation)) => Some(Arc::new(AiOutput {
                live: Arc::clone(&self),
                stream,
                generation,
            })),
            Err(e) => {
                tracing::warn!(stream = %id, error = %e, "the AI stream's output is not served as HLS");
                None
            }
        }
    }

    fn end(&self, id: &str) {
        if let Some(s) = self.get(id) {
            let generation = s.state.lock().generation;
            self.end_stream(&s, generation);
        }
    }
}

impl Live {
    /// List one output segment of an AI stream in its HLS playlists.
    async fn list_ai_output(&self, stream: &LiveStream, generation: u64, data: Bytes) {
        let probe_data = data.clone();
        let target = self.config.segment;
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
}
