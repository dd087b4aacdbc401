//! The path of a live segment: a publish's events are cut by the one segmenter loop (or a
//! segment is pushed whole), each segment is transcoded on an orchestrator through the
//! dispatcher while its source is listed, then its renditions are listed and recorded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use tokio::sync::mpsc;
use weir_media::ingest::Publish;
use weir_media::llhls::{ts_to_fmp4, Fmp4Segment};
use weir_media::packet::IngestEvent;
use weir_media::transcode::Rendition;
use weir_protocol::AiHttpError;

use super::{Live, LiveStream};
use crate::dispatch::err;

/// Where one segment goes in its stream: its sequence number, its wall-clock time and
/// whether it follows a break.
struct Slot {
    seq: u64,
    at: SystemTime,
    discontinuity: bool,
}

impl Slot {
    /// Take the stream's next slot for a segment starting at `start_ms` (media time) that
    /// lasts `duration`; refused when the stream was republished since `generation`.
    fn take(
        stream: &LiveStream,
        generation: u64,
        start_ms: i64,
        duration: Duration,
    ) -> Result<Slot, AiHttpError> {
        let mut st = stream.state.lock();
        if st.generation != generation {
            return Err(err(409, "the stream was republished; segment dropped"));
        }
        st.last_active = Instant::now();
        let seq = st.next_seq;
        st.next_seq += 1;
        // The first segment ends now: its first frame was captured `duration` ago.
        let epoch = *st.epoch.get_or_insert_with(|| {
            let now = SystemTime::now();
            (now.checked_sub(duration).unwrap_or(now), start_ms)
        });
        let offset = start_ms.saturating_sub(epoch.1).max(0) as u64;
        Ok(Slot {
            seq,
            at: epoch.0 + Duration::from_millis(offset),
            discontinuity: std::mem::take(&mut st.discontinuity),
        })
    }
}

/// A rendition's duration as listed (at least a millisecond).
fn rendition_duration(r: &Rendition) -> Duration {
    Duration::from_millis(r.duration_ms.max(1))
}

impl Live {
    /// Accept a publish (RTMP or any other ingest protocol) of a live stream: the stream key
    /// names the stream, the auth webhook (if any) admits it and may name its ladder.
    pub(crate) async fn publish_live(
        self: &Arc<Self>,
        publish: Publish,
    ) -> Result<mpsc::Sender<IngestEvent>, String> {
        let public = &self.public_url;
        let host = public.split_once("://").map_or(public.as_str(), |(_, h)| h);
        let url = publish.url(host);
        let (key, peer) = (&publish.key, publish.peer);
        let (id, profiles) = self.authorize_stream(&url, key).await?;
        let (stream, generation) = self.open_stream(&id, profiles, true, false)?;
        tracing::info!(stream = %id, %peer, generation, protocol = publish.protocol.scheme(), "publish accepted");
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(Arc::clone(self).run_ingest(stream, generation, rx));
        Ok(tx)
    }

    /// Read events from one publish until it ends, segmenting (the one segmenter loop) and
    /// transcoding; segments are transcoded one after another, beside the segmenting.
    async fn run_ingest(
        self: Arc<Self>,
        stream: Arc<LiveStream>,
        generation: u64,
        events: mpsc::Receiver<IngestEvent>,
    ) {
        let (segments, mut queue) = mpsc::channel::<weir_media::segmenter::Segment>(8);
        let worker = {
            let g = Arc::clone(&self);
            let stream = stream.clone();
            tokio::spawn(async move {
                while let Some(seg) = queue.recv().await {
                    if stream.state.lock().generation != generation {
                        break;
                    }
                    let duration = Duration::from_millis(seg.duration_ms);
                    if let Err(e) = g
                        .publish_segment(&stream, generation, seg.start_ms, duration, seg.data)
                        .await
                    {
                        tracing::warn!(stream = %stream.id, error = %e, "segment listed untranscoded");
                    }
                }
            })
        };
        let target = self.config.segment;
        let done = weir_media::ingest::segment(events, target, &stream.id, |seg| {
            let segments = segments.clone();
            async move { segments.send(seg).await.is_ok() }
        })
        .await;
        self.segments
            .with_label_values(&["dropped"])
            .inc_by(done.dropped);
        drop(segments);
        if let Err(e) = worker.await {
            tracing::error!(stream = %stream.id, error = %e, "segment worker failed");
        }
        self.end_stream(&stream, generation);
    }

    /// Transcode one segment and list it (and its renditions) in the stream's playlists.
    /// The source is listed even when transcoding fails; the error says why it failed.
    pub(super) async fn publish_segment(
        &self,
        stream: &LiveStream,
        generation: u64,
        start_ms: i64,
        duration: Duration,
        data: Bytes,
    ) -> Result<Vec<Rendition>, AiHttpError> {
        let slot = Slot::take(stream, generation, start_ms, duration)?;
        // The source is listed as soon as it is packaged, while the orchestrator transcodes.
        let list_source = self.list_source(stream, generation, &slot, duration, &data);
        let transcode = self.transcode_and_package(stream, slot.seq, &data, duration);
        let ((), (transcoded, packaged)) = tokio::join!(list_source, transcode);
        self.record(
            &stream.id,
            vec![("source".to_owned(), duration, data)],
            slot.discontinuity,
        );
        let renditions = self.list_renditions(stream, generation, &slot, transcoded, packaged)?;
        self.record(
            &stream.id,
            renditions
                .iter()
                .map(|r| (r.name.clone(), rendition_duration(r), r.data.clone()))
                .collect(),
            slot.discontinuity,
        );
        Ok(renditions)
    }

    /// List the source segment once it is packaged as fMP4 (unless the stream was
    /// republished meanwhile).
    async fn list_source(
        &self,
        stream: &LiveStream,
        generation: u64,
        slot: &Slot,
        duration: Duration,
        data: &Bytes,
    ) {
        let fmp4 = self.package(vec![data.clone()]).await.pop().flatten();
        let mut st = stream.state.lock();
        if st.generation == generation {
            st.source
                .push(duration, slot.at, slot.discontinuity, data.clone(), fmp4);
        }
    }

    /// Transcode the segment on an orchestrator and package the renditions as fMP4.
    async fn transcode_and_package(
        &self,
        stream: &LiveStream,
        seq: u64,
        data: &Bytes,
        duration: Duration,
    ) -> (
        Result<Vec<Rendition>, AiHttpError>,
        Vec<Option<Fmp4Segment>>,
    ) {
        let duration_ms = duration.as_millis().max(1) as u64;
        let transcoded = self
            .transcode_remote(&stream.id, seq, &stream.profiles, data.clone(), duration_ms)
            .await;
        let packaged = match &transcoded {
            Ok(renditions) => {
                self.package(renditions.iter().map(|r| r.data.clone()).collect())
                    .await
            }
            Err(_) => Vec::new(),
        };
        (transcoded, packaged)
    }

    /// List the transcoded renditions in their playlists; a rendition that is missing (or a
    /// transcode that failed) leaves a gap, marked as a discontinuity on the next segment.
    fn list_renditions(
        &self,
        stream: &LiveStream,
        generation: u64,
        slot: &Slot,
        transcoded: Result<Vec<Rendition>, AiHttpError>,
        mut packaged: Vec<Option<Fmp4Segment>>,
    ) -> Result<Vec<Rendition>, AiHttpError> {
        let mut st = stream.state.lock();
        if st.generation != generation {
            return Err(err(409, "the stream was republished; renditions dropped"));
        }
        st.last_active = Instant::now();
        let outcome = match &transcoded {
            Ok(_) => "transcoded",
            Err(_) => "untranscoded",
        };
        self.segments.with_label_values(&[outcome]).inc();
        let renditions = match transcoded {
            Ok(renditions) => renditions,
            Err(e) => {
                for t in &mut st.renditions {
                    t.gap = true;
                }
                return Err(e);
            }
        };
        for t in &mut st.renditions {
            match renditions.iter().position(|r| r.name == t.name) {
                Some(i) => {
                    let r = &renditions[i];
                    let fmp4 = packaged.get_mut(i).and_then(Option::take);
                    let d = rendition_duration(r);
                    t.push(d, slot.at, slot.discontinuity, r.data.clone(), fmp4);
                }
                None => t.gap = true,
            }
        }
        Ok(renditions)
    }

    /// Append segments to the stream's recording, when streams are recorded (written in the
    /// background, in the order asked).
    pub(super) fn record(
        &self,
        stream: &str,
        segments: Vec<(String, Duration, Bytes)>,
        discontinuity: bool,
    ) {
        if let Some(recorder) = &self.recorder {
            for (rendition, duration, data) in segments {
                recorder.append(stream, &rendition, duration, discontinuity, data);
            }
        }
    }

    /// MPEG-TS segments as fMP4 with low-latency parts; `None` for one that cannot be
    /// packaged (logged; its low-latency playlist then marks a gap).
    pub(super) async fn package(&self, segments: Vec<Bytes>) -> Vec<Option<Fmp4Segment>> {
        let part = self.config.part;
        let n = segments.len();
        let work = tokio::task::spawn_blocking(move || {
            segments
                .iter()
                .map(|ts| match ts_to_fmp4(ts, part) {
                    Ok(seg) => Some(seg),
                    Err(e) => {
                        tracing::warn!(error = %e, "segment not packaged for low-latency HLS");
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        match work.await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "fMP4 packaging crashed");
                (0..n).map(|_| None).collect()
            }
        }
    }
}
