//! What the server's state does for its handlers: closing channels (and keeping closed ones
//! lingering a while), sweeping idle ones, checking tokens, and reading a POST body into a
//! segment within the byte budget.

use std::sync::Arc;

use axum::body::BodyDataStream;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt as _;

use super::http::{bearer, error};
use super::{gauge, Inner};
use crate::budget::Exhausted;
use crate::channel::{Access, Channel};
use crate::segment::{End, Segment, Stop};
use crate::valid_name;

/// A channel found for a request whose token allows it.
pub(super) enum Found {
    Open(Arc<Channel>),
    /// Closed, but its last segments may still be readable.
    Closed(Arc<Channel>),
}

impl Inner {
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn close(&self, name: &str, only_if: impl Fn(&Channel) -> bool) -> bool {
        let now = self.now_ms();
        let channel = {
            let mut channels = self.channels.write();
            let channel = match channels.get(name) {
                Some(c) if only_if(c) => c.clone(),
                _ => return false,
            };
            // Moved to the closed channels under the same lock, so that no request finds it
            // in neither (and answers "not found" instead of "closed").
            let mut closed = self.closed.lock();
            if closed.len() >= self.config.max_channels.max(1) {
                // Forget the longest-closed one: its clients will be told "not found".
                if let Some(oldest) = closed
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(n, _)| n.clone())
                {
                    if let Some((old, _)) = closed.remove(&oldest) {
                        old.release();
                    }
                }
            }
            closed.insert(name.to_owned(), (channel.clone(), now));
            channels.remove(name);
            self.metrics.channels.set(gauge(channels.len()));
            channel
        };
        channel.close();
        self.linger(channel);
        tracing::debug!(channel = name, "trickle channel closed");
        true
    }

    /// Keep a closed channel's segments readable for `closed_linger`, then drop them.
    fn linger(&self, channel: Arc<Channel>) {
        let linger = self.config.closed_linger;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !linger.is_zero() => {
                runtime.spawn(async move {
                    tokio::time::sleep(linger).await;
                    channel.release();
                });
            }
            _ => channel.release(),
        }
    }

    /// Drop the segments closed channels still keep (the node's budget ran out).
    fn release_lingering(&self) {
        let closed: Vec<Arc<Channel>> = self
            .closed
            .lock()
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        for channel in closed {
            channel.release();
        }
    }

    pub(super) fn sweep(&self) -> usize {
        let now = self.now_ms();
        let idle = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let is_idle = |c: &Channel| now.saturating_sub(c.last_activity()) > idle;
        let candidates: Vec<String> = self
            .channels
            .read()
            .values()
            .filter(|c| is_idle(c))
            .map(|c| c.name.clone())
            .collect();
        let mut swept = 0;
        for name in candidates {
            if self.close(&name, |c| is_idle(c)) {
                tracing::info!(channel = %name, "closed idle trickle channel");
                swept += 1;
            }
        }
        let mut forgotten = Vec::new();
        self.closed.lock().retain(|_, (c, at)| {
            let keep = now.saturating_sub(*at) <= idle;
            if !keep {
                forgotten.push(c.clone());
            }
            keep
        });
        for channel in forgotten {
            channel.release();
        }
        swept
    }

    /// Find the channel named by `ch` (`{name}.{token}`, or `{name}` with a bearer token)
    /// and check that the token allows `need`.
    #[allow(clippy::result_large_err)] // the error is the HTTP answer itself, returned at once
    pub(super) fn authorize(
        &self,
        ch: &str,
        headers: &HeaderMap,
        need: Access,
    ) -> Result<Found, Response> {
        let (name, token) = match ch.split_once('.') {
            Some((name, token)) => (name, Some(token)),
            None => (ch, bearer(headers)),
        };
        let found = if valid_name(name) {
            match self.channels.read().get(name) {
                Some(c) => Some((c.clone(), true)),
                None => self
                    .closed
                    .lock()
                    .get(name)
                    .map(|(c, _)| (c.clone(), false)),
            }
        } else {
            None
        };
        let Some((channel, open)) = found else {
            return Err(error(
                StatusCode::NOT_FOUND,
                &format!("no trickle channel named {name:?}"),
            ));
        };
        let Some(token) = token else {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a token is required: use the channel URL with its token, or Authorization: Bearer",
            ));
        };
        match (channel.access(token), need) {
            (None, _) => Err(error(
                StatusCode::FORBIDDEN,
                "wrong token for this trickle channel",
            )),
            (Some(Access::Subscribe), Access::Publish) => Err(error(
                StatusCode::FORBIDDEN,
                "a subscribe token cannot publish to or delete a trickle channel",
            )),
            (Some(_), _) if open => {
                channel.touch(self.now_ms());
                Ok(Found::Open(channel))
            }
            (Some(_), _) => Ok(Found::Closed(channel)),
        }
    }

    /// Take `n` bytes for segment `seq` of `channel`. When the node's budget is exhausted,
    /// the segments that closed channels keep are dropped first, then it is tried again.
    fn reserve(&self, channel: &Channel, seq: i64, n: usize) -> Result<(), Exhausted> {
        match channel.reserve(seq, n) {
            Err(Exhausted::Node) => {
                self.release_lingering();
                let again = channel.reserve(seq, n);
                if again.is_err() {
                    tracing::warn!(
                        channel = %channel.name,
                        buffered = self.budget.used(),
                        limit = self.budget.limit(),
                        "trickle buffers are full; refusing a write"
                    );
                }
                again
            }
            other => other,
        }
    }

    /// Read a POST body into `segment` as writer `generation`.
    pub(super) async fn receive(
        &self,
        channel: &Channel,
        segment: &Arc<Segment>,
        generation: u64,
        body: &mut BodyDataStream,
    ) -> Received {
        let seq = segment.seq();
        let mut written = 0usize;
        loop {
            let seg = segment.clone();
            let changed = seg.notified();
            if let Some(stop) = segment.stopped(generation) {
                return Received::Stopped(stop, written);
            }
            let item = tokio::select! {
                item = body.next() => item,
                () = changed => continue,
            };
            match item {
                None => {
                    if written == 0 {
                        // An empty segment still moves the live edge, so readers don't stall.
                        channel.started(seq);
                    }
                    if !segment.finish(generation, End::Complete) {
                        let stop = segment.stopped(generation).unwrap_or(Stop::Superseded);
                        return Received::Stopped(stop, written);
                    }
                    return Received::Complete(written);
                }
                Some(Err(e)) => {
                    if segment.finish(generation, End::Aborted) {
                        channel.forget(segment);
                    }
                    return Received::Disconnected(e.to_string(), written);
                }
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    if written.saturating_add(n) > channel.max_segment_bytes {
                        if segment.finish(generation, End::Aborted) {
                            channel.forget(segment);
                        }
                        return Received::TooLarge(written);
                    }
                    if let Err(exhausted) = self.reserve(channel, seq, n) {
                        if segment.finish(generation, End::Aborted) {
                            channel.forget(segment);
                        }
                        return Received::NoRoom(exhausted, written);
                    }
                    if written == 0 {
                        channel.started(seq);
                    }
                    if let Err(stop) = segment.push(generation, chunk) {
                        channel.unreserve(n);
                        return Received::Stopped(stop, written);
                    }
                    written = written.saturating_add(n);
                    self.metrics.bytes_in.inc_by(n as u64);
                    channel.touch(self.now_ms());
                }
            }
        }
    }
}

/// How reading a POST body ended (with the bytes written).
pub(super) enum Received {
    Complete(usize),
    Disconnected(String, usize),
    TooLarge(usize),
    NoRoom(Exhausted, usize),
    Stopped(Stop, usize),
}
