//! The protocol-neutral publish seam. An ingest protocol (RTMP today; WHIP or SRT would be
//! others) accepts a publisher, asks a [`PublishHandler`] where the stream goes, and turns
//! what the publisher sends into [`IngestEvent`]s on the sender it is given. Whoever takes
//! the events cuts them into segments with [`segment`], the one segmenter loop.
//!
//! A new protocol adds a [`Protocol`] variant and a server that calls
//! [`PublishHandler::publish`]; nothing downstream of the events changes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::packet::IngestEvent;
use crate::segmenter::{Segment, Segmenter};

/// The protocol a stream is published with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// RTMP (`rtmp://host/{path}/{key}`).
    Rtmp,
}

impl Protocol {
    /// The protocol's URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
        }
    }
}

/// A publisher asking to publish a stream.
#[derive(Debug, Clone)]
pub struct Publish {
    /// How it publishes.
    pub protocol: Protocol,
    /// The path before the stream key (RTMP's application name).
    pub path: String,
    /// The stream key.
    pub key: String,
    /// Where it connects from.
    pub peer: SocketAddr,
}

impl Publish {
    /// The URL the publisher published to, on `host` (`rtmp://host/{path}/{key}`).
    pub fn url(&self, host: &str) -> String {
        format!(
            "{}://{host}/{}/{}",
            self.protocol.scheme(),
            self.path,
            self.key
        )
    }
}

/// The events of an accepted publish go here until the publish ends; the sender is then
/// dropped.
pub type Events = mpsc::Sender<IngestEvent>;

/// A boxed publish decision.
pub type Decision = Pin<Box<dyn Future<Output = Result<Events, String>> + Send>>;

/// Where published streams go.
pub trait PublishHandler: Send + Sync + 'static {
    /// `publish` asks to publish. `Ok(sender)`: its events go there until the publisher ends
    /// the stream or goes away. `Err(reason)`: the publish is refused (logged, connection
    /// closed). Servers wait for the decision for a bounded time and count a slower one as a
    /// refusal.
    fn publish(&self, publish: Publish) -> Decision;
}

/// What [`segment`] did with one publish's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segmented {
    /// Segments handed on.
    pub segments: u64,
    /// Packets dropped as bad media (each logged).
    pub dropped: u64,
}

/// The one segmenter loop: cut `events` into MPEG-TS segments of about `target` (on
/// keyframes) and hand each to `deliver`, awaited, until the events end or `deliver` answers
/// `false`; the last, partial segment is delivered too. Bad media drops the packet (logged
/// with `stream`), never the publish.
pub async fn segment<F, Fut>(
    mut events: mpsc::Receiver<IngestEvent>,
    target: Duration,
    stream: &str,
    mut deliver: F,
) -> Segmented
where
    F: FnMut(Segment) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut segmenter = Segmenter::new(target);
    let mut done = Segmented::default();
    while let Some(event) = events.recv().await {
        match segmenter.push(event) {
            Ok(Some(seg)) => {
                done.segments += 1;
                if !deliver(seg).await {
                    return done;
                }
            }
            Ok(None) => {}
            Err(e) => {
                done.dropped += 1;
                tracing::warn!(%stream, error = %e, "bad media from the publisher; packet dropped");
            }
        }
    }
    match segmenter.finish() {
        Ok(Some(seg)) => {
            done.segments += 1;
            deliver(seg).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(%stream, error = %e, "last segment dropped"),
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{CodecConfig, MediaPacket, Track};
    use crate::segmenter::tests::{avcc_record, video};
    use bytes::Bytes;

    #[test]
    fn the_publish_url_names_protocol_path_and_key() {
        let p = Publish {
            protocol: Protocol::Rtmp,
            path: "live".into(),
            key: "abc".into(),
            peer: "127.0.0.1:1935".parse().expect("addr"),
        };
        assert_eq!(
            p.url("example.com:1935"),
            "rtmp://example.com:1935/live/abc"
        );
    }

    fn one_second_of_video(from_ms: i64) -> Vec<IngestEvent> {
        // 30 fps with an IDR every 10 frames.
        (0..30)
            .map(|i| video(from_ms + i * 33, i % 10 == 0))
            .collect()
    }

    async fn run(events: Vec<IngestEvent>, stop_after: u64) -> (Segmented, Vec<Segment>) {
        let (tx, rx) = mpsc::channel(events.len() + 1);
        for e in events {
            tx.send(e).await.expect("queued");
        }
        drop(tx);
        let mut got = Vec::new();
        let done = segment(rx, Duration::from_millis(500), "s", |seg| {
            got.push(seg);
            let more = (got.len() as u64) < stop_after;
            async move { more }
        })
        .await;
        (done, got)
    }

    #[tokio::test]
    async fn events_become_segments_bad_packets_are_dropped_and_the_tail_is_delivered() {
        let mut events = vec![IngestEvent::Config(CodecConfig::Avc(avcc_record()))];
        events.extend(one_second_of_video(0));
        events.push(IngestEvent::Packet(MediaPacket {
            track: Track::Video,
            dts_ms: 1000,
            pts_ms: 1000,
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 9, 0x65]),
        }));
        events.extend(one_second_of_video(1033));
        let (done, got) = run(events, u64::MAX).await;
        assert_eq!(done.dropped, 1);
        assert_eq!(done.segments, got.len() as u64);
        assert!(got.len() >= 3, "{} segments", got.len());
        let total: u64 = got.iter().map(|s| s.duration_ms).sum();
        assert!(total >= 1900, "{total} ms segmented of ~2 s");
        for w in got.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
    }

    #[tokio::test]
    async fn a_consumer_that_answers_false_ends_the_loop() {
        let mut events = vec![IngestEvent::Config(CodecConfig::Avc(avcc_record()))];
        events.extend(one_second_of_video(0));
        events.extend(one_second_of_video(1000));
        let (done, got) = run(events, 1).await;
        assert_eq!((done.segments, got.len()), (1, 1));
    }
}
