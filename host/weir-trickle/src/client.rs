//! Trickle clients: [`Publisher`] and [`Subscriber`]. They speak the plain Livepeer protocol
//! (the token travels in the channel URL only), so they also work against go-livepeer and
//! pytrickle servers. Like Livepeer's clients, both pre-connect the next seq: the publisher
//! opens the POST for `seq + 1` while `seq` is being written, the subscriber opens the GET
//! for `seq + 1` as soon as `seq` starts, so a new segment costs no connection set-up.
//!
//! Give them a `reqwest::Client` without an overall request timeout: a subscriber's GET
//! waits for the next segment for as long as the publisher takes, and a publisher's POST
//! stays open while its segment is written.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Response, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{TrickleError, CLOSED_HEADER, LATEST_HEADER, MAX_SEQ, RESET_HEADER, SEQ_HEADER};

/// Transient failures in a row before [`Subscriber::next`] gives up.
const MAX_RETRIES: u32 = 5;
/// `470` answers in a row before [`Subscriber::next`] gives up.
const MAX_SKIPS: u32 = 50;
/// Chunks queued between a [`SegmentWriter`] and its POST.
const QUEUE: usize = 16;

/// A spawned request for segment `seq`, aborted when dropped.
struct Pending<T, S = i64> {
    seq: S,
    task: JoinHandle<T>,
}

/// The seq after a publisher's `seq`, which must stay within [`MAX_SEQ`].
fn next_seq(seq: u64) -> Result<u64, TrickleError> {
    seq.checked_add(1)
        .filter(|n| *n <= MAX_SEQ as u64)
        .ok_or_else(|| TrickleError::BadSeq(format!("no seq after {seq}")))
}

impl<T, S> Drop for Pending<T, S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T, S: Unpin> Future for Pending<T, S> {
    type Output = Result<T, TrickleError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map_err(|e| TrickleError::Transport(format!("request task: {e}")))
    }
}

fn transport(e: reqwest::Error) -> TrickleError {
    TrickleError::Transport(e.to_string())
}

fn header_i64(response: &Response, name: &str) -> Option<i64> {
    response
        .headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error for a response that is not a success.
async fn status_error(response: Response) -> TrickleError {
    if response.headers().contains_key(CLOSED_HEADER) {
        return TrickleError::Closed;
    }
    match response.status() {
        StatusCode::NOT_FOUND => TrickleError::NotFound,
        StatusCode::FORBIDDEN => TrickleError::Forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => TrickleError::TooLarge,
        status => {
            let mut message = response.text().await.unwrap_or_default();
            if message.len() > 512 {
                let mut end = 512;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            TrickleError::Status {
                status: status.as_u16(),
                message,
            }
        }
    }
}

type Chunk = Result<Bytes, std::io::Error>;

/// A POST whose body is fed through a channel. The body ends cleanly only once `finished`
/// is set; if the sender goes away without it, the body ends with an error, so the server
/// marks the segment aborted instead of complete.
struct OpenPost {
    tx: mpsc::Sender<Chunk>,
    finished: Arc<AtomicBool>,
    response: Pending<Result<Response, reqwest::Error>, u64>,
}

/// Publishes segments to a channel URL (`…/ai/trickle/{name}.{token}`): `POST {url}/{seq}`.
pub struct Publisher {
    client: reqwest::Client,
    url: String,
    /// The next seq to write; `None` until asked from the server.
    next: Option<u64>,
    /// The POST pre-connected for `next`.
    preconnected: Option<OpenPost>,
}

impl Publisher {
    /// A publisher for the channel at `url` (with its token). The first segment continues
    /// the channel's sequence (asked with `GET {url}/next`; 0 if the server cannot say) and
    /// carries `Lp-Trickle-Reset`, which closes whatever an earlier publisher left open.
    pub fn new(client: reqwest::Client, url: impl Into<String>) -> Publisher {
        let mut url = url.into();
        while url.ends_with('/') {
            url.pop();
        }
        Publisher {
            client,
            url,
            next: None,
            preconnected: None,
        }
    }

    /// Publish one whole segment; returns its seq.
    pub async fn write(&mut self, data: Bytes) -> Result<u64, TrickleError> {
        let mut segment = self.begin().await?;
        let seq = segment.seq();
        segment.send(data).await?;
        segment.finish().await?;
        Ok(seq)
    }

    /// Start the next segment, to be streamed with [`SegmentWriter::send`] and ended with
    /// [`SegmentWriter::finish`]. The seq advances whether or not the segment succeeds.
    pub async fn begin(&mut self) -> Result<SegmentWriter, TrickleError> {
        let (seq, reset) = match self.next {
            Some(seq) => (seq, false),
            None => (self.first_seq().await?, true),
        };
        let next = next_seq(seq)?;
        let post = match self.preconnected.take() {
            Some(p) if p.response.seq == seq && !p.response.task.is_finished() => p,
            _ => self.open(seq, reset),
        };
        self.next = Some(next);
        self.preconnected = Some(self.open(next, false));
        Ok(SegmentWriter {
            seq,
            post: Some(post),
        })
    }

    /// Close the channel (`DELETE {url}`); closing a channel that is already closed succeeds.
    pub async fn close(&self) -> Result<(), TrickleError> {
        let mut attempt = 0;
        let response = loop {
            match self.client.delete(&self.url).send().await {
                Ok(r) => break r,
                // DELETE is idempotent: a pooled connection the server just closed is retried.
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    tracing::debug!(url = %self.url, error = %e, "trickle DELETE failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(transport(e)),
            }
        };
        if response.status().is_success() || response.headers().contains_key(CLOSED_HEADER) {
            return Ok(());
        }
        Err(status_error(response).await)
    }

    /// Where the channel's sequence stands: `GET {url}/next`. Servers without `next`
    /// (older go-livepeer) answer an error; the sequence then starts at 0.
    async fn first_seq(&self) -> Result<u64, TrickleError> {
        let response = match self.client.get(format!("{}/next", self.url)).send().await {
            Ok(r) => r,
            Err(e) => return Err(transport(e)),
        };
        if response.headers().contains_key(CLOSED_HEADER) {
            return Err(TrickleError::Closed);
        }
        match response.status() {
            StatusCode::NOT_FOUND => return Err(TrickleError::NotFound),
            StatusCode::FORBIDDEN => return Err(TrickleError::Forbidden),
            _ => {}
        }
        let seq = match header_i64(&response, LATEST_HEADER) {
            Some(seq) => seq.max(0),
            None if response.status().is_success() => match response.text().await {
                // A number too large for a seq is an error below, not a fresh start.
                Ok(text) => match text.trim().parse::<u64>() {
                    Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
                    Err(_) => 0,
                },
                Err(_) => 0,
            },
            None => 0,
        };
        u64::try_from(seq)
            .ok()
            .filter(|s| *s <= MAX_SEQ as u64)
            .ok_or_else(|| TrickleError::BadSeq(format!("the server's next seq {seq}")))
    }

    /// Open `POST {url}/{seq}` with a body fed from a channel.
    fn open(&self, seq: u64, reset: bool) -> OpenPost {
        let (tx, rx) = mpsc::channel::<Chunk>(QUEUE);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let body = futures_util::stream::unfold(Some(rx), move |rx| {
            let done = done.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(chunk) => Some((chunk, Some(rx))),
                    None if done.load(Ordering::Acquire) => None,
                    None => Some((Err(std::io::Error::other("segment abandoned")), None)),
                }
            }
        });
        let mut request = self
            .client
            .post(format!("{}/{seq}", self.url))
            .body(reqwest::Body::wrap_stream(body));
        if reset {
            request = request.header(RESET_HEADER, "1");
        }
        OpenPost {
            tx,
            finished,
            response: Pending {
                seq,
                task: tokio::spawn(request.send()),
            },
        }
    }
}

/// One segment being published. Dropping it without [`Self::finish`] aborts the POST: the
/// server marks the segment aborted, and its subscribers see an error, not a short segment.
pub struct SegmentWriter {
    seq: u64,
    post: Option<OpenPost>,
}

impl SegmentWriter {
    /// The segment's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Send a chunk; subscribers get it as soon as the server does.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), TrickleError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let Some(post) = self.post.as_mut() else {
            return Err(TrickleError::Transport(
                "this segment's POST already failed".into(),
            ));
        };
        // Unless the server already answered (it refuses a segment early: too large,
        // closed, replaced), queue the chunk.
        if !post.response.task.is_finished() && post.tx.send(Ok(chunk)).await.is_ok() {
            return Ok(());
        }
        // The request ended before its body did: find out why.
        let Some(post) = self.post.take() else {
            return Err(TrickleError::Transport("segment POST ended".into()));
        };
        Err(match outcome(post).await {
            Ok(()) => TrickleError::Transport("the server ended the segment early".into()),
            Err(e) => e,
        })
    }

    /// End the segment and wait for the server's answer.
    pub async fn finish(mut self) -> Result<(), TrickleError> {
        match self.post.take() {
            Some(post) => outcome(post).await,
            None => Err(TrickleError::Transport(
                "this segment's POST already failed".into(),
            )),
        }
    }
}

/// End the POST's body and read its answer.
async fn outcome(post: OpenPost) -> Result<(), TrickleError> {
    let OpenPost {
        tx,
        finished,
        response,
    } = post;
    finished.store(true, Ordering::Release);
    drop(tx);
    let response = response.await?.map_err(transport)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(status_error(response).await)
    }
}

/// Follows a channel URL (`…/ai/trickle/{name}.{token}`): `GET {url}/{seq}`, one segment
/// after another.
pub struct Subscriber {
    client: reqwest::Client,
    url: String,
    seq: i64,
    preconnected: Option<Pending<Result<Response, reqwest::Error>>>,
    closed: bool,
}

impl Subscriber {
    /// A subscriber for the channel at `url` (with its token), starting at the live edge:
    /// the next segment to be written.
    pub fn new(client: reqwest::Client, url: impl Into<String>) -> Subscriber {
        let mut url = url.into();
        while url.ends_with('/') {
            url.pop();
        }
        Subscriber {
            client,
            url,
            seq: -1,
            preconnected: None,
            closed: false,
        }
    }

    /// Start at `seq` instead (`-1`: the next segment written, `-2`: the latest started).
    pub fn starting_at(mut self, seq: i64) -> Subscriber {
        self.seq = seq;
        self.preconnected = None;
        self
    }

    /// The next segment, waiting for it to start. `Ok(None)`: the channel was closed. A
    /// segment that fell out of the server's ring (`470`) is skipped: the subscriber jumps to
    /// the live edge. Transient failures are retried a few times with backoff.
    pub async fn next(&mut self) -> Result<Option<IncomingSegment>, TrickleError> {
        if self.closed {
            return Ok(None);
        }
        let mut failures = 0u32;
        let mut skips = 0u32;
        loop {
            let seq = self.seq;
            let result = match self.preconnected.take() {
                Some(p) if p.seq == seq => match p.await {
                    Ok(r) => r.map_err(transport),
                    Err(e) => Err(e),
                },
                _ => self.get(seq).await,
            };
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures > MAX_RETRIES {
                        return Err(e);
                    }
                    tracing::debug!(url = %self.url, seq, error = %e, "trickle GET failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            };
            if response.headers().contains_key(CLOSED_HEADER) {
                self.closed = true;
                return Ok(None);
            }
            match response.status().as_u16() {
                200..=299 => {
                    let got = header_i64(&response, SEQ_HEADER)
                        .filter(|s| *s >= 0)
                        .or((seq >= 0).then_some(seq))
                        .ok_or_else(|| {
                            TrickleError::Transport("the answer has no Lp-Trickle-Seq".into())
                        })?;
                    self.seq = got
                        .checked_add(1)
                        .filter(|n| *n <= MAX_SEQ)
                        .ok_or_else(|| {
                            TrickleError::BadSeq(format!("the server sent segment {got}"))
                        })?;
                    self.preconnected = Some(self.spawn_get(self.seq));
                    return Ok(Some(IncomingSegment {
                        seq: u64::try_from(got).unwrap_or_default(),
                        response,
                    }));
                }
                470 => {
                    skips += 1;
                    if skips > MAX_SKIPS {
                        return Err(TrickleError::Status {
                            status: 470,
                            message: format!("segment {seq} kept being unavailable"),
                        });
                    }
                    let latest = header_i64(&response, LATEST_HEADER).unwrap_or(-1);
                    if latest == seq {
                        // The server sent us back where we were: don't spin.
                        tokio::time::sleep(backoff(1)).await;
                    }
                    tracing::debug!(url = %self.url, seq, latest, "trickle segment unavailable; jumping to the live edge");
                    self.seq = latest;
                }
                408 | 429 | 500..=599 => {
                    failures += 1;
                    if failures > MAX_RETRIES {
                        return Err(status_error(response).await);
                    }
                    tokio::time::sleep(backoff(failures)).await;
                }
                _ => return Err(status_error(response).await),
            }
        }
    }

    async fn get(&self, seq: i64) -> Result<Response, TrickleError> {
        self.client
            .get(format!("{}/{seq}", self.url))
            .send()
            .await
            .map_err(transport)
    }

    fn spawn_get(&self, seq: i64) -> Pending<Result<Response, reqwest::Error>> {
        let request = self.client.get(format!("{}/{seq}", self.url)).send();
        Pending {
            seq,
            task: tokio::spawn(request),
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(5)).min(Duration::from_secs(1))
}

/// A segment being received.
pub struct IncomingSegment {
    seq: u64,
    response: Response,
}

impl IncomingSegment {
    /// The segment's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next bytes as they arrive; `Ok(None)` at the end of a complete segment.
    /// [`TrickleError::Truncated`] if it ended before it was complete.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TrickleError> {
        self.response
            .chunk()
            .await
            .map_err(|e| TrickleError::Truncated(e.to_string()))
    }

    /// The whole segment; [`TrickleError::TooLarge`] past `max` bytes.
    pub async fn bytes(mut self, max: usize) -> Result<Bytes, TrickleError> {
        let mut out = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if out.len().saturating_add(chunk.len()) > max {
                return Err(TrickleError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}
