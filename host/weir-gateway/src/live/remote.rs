//! Transcoding one live segment on an orchestrator through the dispatcher, paid per output
//! pixel.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::header;
use weir_media::profile::Profile;
use weir_media::transcode::Rendition;
use weir_media::wire::{
    self, ladder_pixels, CAPABILITY, DURATION_HEADER, MODEL, PROFILES_HEADER, SEGMENT_HEADER,
};
use weir_protocol::AiHttpError;
use weir_runtime::{JobRequest, OutputSize};

use super::Live;
use crate::dispatch::{err, Answer, Call, Choice, Dispatched};

impl Live {
    /// Transcode one segment on an orchestrator, paying per output pixel.
    pub(super) async fn transcode_remote(
        &self,
        stream: &str,
        seq: u64,
        profiles: &[Profile],
        data: Bytes,
        duration_ms: u64,
    ) -> Result<Vec<Rendition>, AiHttpError> {
        let units = ladder_pixels(profiles, duration_ms);
        let request_id = format!("{stream}/{seq}");
        let size = weir_media::wire::ladder_size(profiles, duration_ms);
        let output = OutputSize::new(size.width, size.height, size.frames, size.count);
        let sender = self.dispatcher.payments().sender();
        let job = JobRequest::priced(CAPABILITY, MODEL, output, units, &sender)
            .with(&request_id, &[("stream", stream)]);
        let ladder = serde_json::to_string(profiles).map_err(|e| err(500, e.to_string()))?;
        let dispatcher = &self.dispatcher;
        let queue = dispatcher
            .choose(CAPABILITY, None, MODEL, job)
            .await?
            .into();
        let call = SegmentCall {
            seq,
            ladder: &ladder,
            rungs: profiles.len(),
            data: &data,
            duration_ms,
            units,
            timeout: self.attempt_timeout,
        };
        let Dispatched {
            choice,
            output: renditions,
            charge,
            attempts: tried,
            ..
        } = dispatcher.run(&request_id, queue, &call).await?;
        tracing::debug!(stream, seq, orchestrator = %choice.url, units, charge, attempts = tried, "segment transcoded");
        Ok(renditions)
    }
}

/// One segment as the dispatcher sends it: MPEG-TS to the orchestrator's `/transcode` with
/// the ladder, paid per output pixel; the answer must hold one rendition per rung.
struct SegmentCall<'a> {
    seq: u64,
    /// The ladder as JSON.
    ladder: &'a str,
    /// Rungs of the ladder.
    rungs: usize,
    data: &'a Bytes,
    duration_ms: u64,
    units: u64,
    timeout: Duration,
}

impl Call for SegmentCall<'_> {
    type Output = Vec<Rendition>;

    fn capability(&self) -> &str {
        CAPABILITY
    }

    fn units(&self) -> u64 {
        self.units
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self, client: &reqwest::Client, choice: &Choice) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/transcode", choice.url))
            .header(header::CONTENT_TYPE, "video/mp2t")
            .header(PROFILES_HEADER, self.ladder)
            .header(DURATION_HEADER, self.duration_ms)
            .header(SEGMENT_HEADER, self.seq)
            .body(self.data.clone())
    }

    async fn accept(&self, answer: Answer) -> Result<Vec<Rendition>, String> {
        let renditions = wire::parse_renditions(&answer.content_type, &answer.body)?;
        if renditions.len() != self.rungs {
            return Err(format!(
                "answered {} renditions for a ladder of {}",
                renditions.len(),
                self.rungs
            ));
        }
        Ok(renditions)
    }
}
