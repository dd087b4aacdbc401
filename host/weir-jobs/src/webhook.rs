//! Standard Webhooks v1 signing and delivery.
//!
//! Every delivery carries three headers:
//!
//! * `webhook-id` — the message id, the same on every retry, so receivers can deduplicate;
//! * `webhook-timestamp` — Unix seconds of this attempt;
//! * `webhook-signature` — `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`; the header
//!   is a space-separated list so a receiver can accept several keys during rotation.
//!
//! The secret is `whsec_` + base64 of 24..=64 random bytes ([`WebhookSecret`]). Deliveries go
//! through an [`EgressClient`], so a webhook URL cannot reach
//! private networks; only 2xx counts as delivered, redirects are not followed, 410 disables the
//! endpoint and 429/502/503/504 may slow retries down with `Retry-After`
//! ([`RetrySchedule::next_delay`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sha2::Sha256;

use crate::egress::EgressClient;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a serialized [`WebhookSecret`].
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest key a [`WebhookSecret`] may hold, in bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// The longest key a [`WebhookSecret`] may hold, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// The user agent of webhook deliveries.
pub const USER_AGENT_VALUE: &str = "weir-webhooks";
/// The default tolerance of [`verify`]: five minutes either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// A signing secret: `whsec_` + base64 of 24..=64 random bytes.
///
/// `Debug` does not print the key; use [`WebhookSecret::as_str`] to show it to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a string is not a [`WebhookSecret`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error("webhook secret must start with `whsec_`")]
    BadPrefix,
    /// What follows the prefix is not standard base64.
    #[error("webhook secret is not valid base64")]
    BadBase64,
    /// The key is shorter than 24 or longer than 64 bytes.
    #[error("webhook secret must hold 24 to 64 bytes, not {0}")]
    BadLength(usize),
}

impl WebhookSecret {
    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        WebhookSecret(rand::random::<[u8; 32]>().to_vec())
    }

    /// A secret from raw key bytes (24..=64 of them).
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(WebhookSecret(key.to_vec()))
    }

    /// The secret as its owner sees it: `whsec_<base64>`.
    pub fn as_str(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = SecretError;

    /// Accepts `whsec_<standard base64>` holding 24..=64 bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::BadPrefix)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError::BadBase64)?;
        WebhookSecret::from_bytes(&key)
    }
}

fn signed_mac(secret: &WebhookSecret, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = signed_mac(secret, msg_id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Why a webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is missing or empty; holds its name.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a Unix timestamp")]
    BadTimestamp,
    /// The timestamp is older than the tolerance allows.
    #[error("webhook timestamp too old")]
    TooOld,
    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook timestamp too new")]
    TooNew,
    /// No `v1` entry of the signature list matches.
    #[error("no matching signature")]
    NoMatchingSignature,
}

/// Verify the three headers against the body: any `v1,` entry of the space-separated signature
/// list may match (constant-time compare), timestamp within `tolerance_secs` of `now` (Unix
/// seconds; see [`DEFAULT_TOLERANCE_SECS`]). Entries of other versions (`v1a,` …) and entries
/// that are not base64 are skipped.
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-id"));
    }
    let timestamp = timestamp.trim();
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-timestamp"));
    }
    if signatures.trim().is_empty() {
        return Err(VerifyError::MissingHeader("webhook-signature"));
    }
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if now.saturating_sub(ts) > tolerance_secs {
        return Err(VerifyError::TooOld);
    }
    if ts.saturating_sub(now) > tolerance_secs {
        return Err(VerifyError::TooNew);
    }
    // Sign the timestamp exactly as sent.
    let mac = signed_mac(secret, msg_id, timestamp, body);
    let matched = signatures
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// The retry schedule: delays after each failed attempt; default 5 s, 5 min, 30 min, 2 h, 5 h,
/// 10 h, 14 h, 20 h, 24 h (first attempt immediate, so ten attempts in all), each with ±10 %
/// jitter.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// `delays[i]` is the wait after attempt `i + 1` failed.
    pub delays: Vec<Duration>,
    /// Relative jitter: each delay is scaled by a uniform factor in `1 ± jitter` (clamped to
    /// 0..=1).
    pub jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 60 * MIN;
        RetrySchedule {
            delays: [
                5,
                5 * MIN,
                30 * MIN,
                2 * HOUR,
                5 * HOUR,
                10 * HOUR,
                14 * HOUR,
                20 * HOUR,
                24 * HOUR,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            jitter: 0.1,
        }
    }
}

impl RetrySchedule {
    /// How many attempts the schedule allows in all (the first plus one per delay).
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Delay before attempt `attempt + 1` after `attempt` (1-based) failed; `None` when attempts
    /// are used up. A `Retry-After` the endpoint sent (429/503) wins when longer, but is capped at
    /// the schedule's longest delay so an endpoint cannot park a delivery forever. `attempt` 0
    /// (nothing has failed yet) gives zero: the first attempt is immediate.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt == 0 {
            return Some(Duration::ZERO);
        }
        let base = *self.delays.get(usize::try_from(attempt - 1).ok()?)?;
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = if jitter > 0.0 {
            base.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter))
        } else {
            base
        };
        let cap = self.delays.iter().max().copied().unwrap_or_default();
        Some(match retry_after {
            Some(ra) => delay.max(ra.min(cap)),
            None => delay,
        })
    }
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// The attempt failed and may be retried.
    Failed {
        /// The status code, when the endpoint answered at all.
        status: Option<u16>,
        /// What went wrong, for logs and the delivery record.
        error: String,
        /// The endpoint's `Retry-After` (delta-seconds form) on 429/502/503/504.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered 410 Gone: stop sending to it.
    Disabled {
        /// The status code (410).
        status: u16,
    },
}

/// Sends signed webhooks through an [`EgressClient`] (use a policy with a timeout of about
/// 15 s, e.g. [`EgressPolicy::webhooks`](crate::egress::EgressPolicy::webhooks); 3xx counts
/// as failure; only 2xx is success; 410 disables; 429/502/503/504 honour `Retry-After`
/// seconds if present).
#[derive(Clone, Debug)]
pub struct WebhookSender {
    egress: EgressClient,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn failed(error: impl Into<String>) -> Outcome {
    Outcome::Failed {
        status: None,
        error: error.into(),
        retry_after: None,
    }
}

/// `Retry-After` in its delta-seconds form (HTTP dates are ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

impl WebhookSender {
    /// A sender delivering through `egress`.
    pub fn new(egress: EgressClient) -> Self {
        WebhookSender { egress }
    }

    /// POST `body` (JSON) to `url` with headers webhook-id, webhook-timestamp (now, unix secs),
    /// webhook-signature, content-type: application/json, user-agent "weir-webhooks".
    pub async fn send(
        &self,
        url: &str,
        secret: &WebhookSecret,
        msg_id: &str,
        body: &[u8],
    ) -> Outcome {
        self.send_at(url, secret, msg_id, body, unix_now()).await
    }

    async fn send_at(
        &self,
        url: &str,
        secret: &WebhookSecret,
        msg_id: &str,
        body: &[u8],
        timestamp: i64,
    ) -> Outcome {
        let signature = sign(secret, msg_id, timestamp, body);
        let Ok(id) = HeaderValue::from_str(msg_id) else {
            return failed("webhook id is not a valid header value");
        };
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("webhook-id"), id);
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        match HeaderValue::from_str(&signature) {
            Ok(v) => headers.insert(HeaderName::from_static("webhook-signature"), v),
            Err(_) => return failed("signature is not a valid header value"),
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));

        let result = self
            .egress
            .post(url, headers, Bytes::copy_from_slice(body))
            .await;
        let outcome = match result {
            Err(e) => failed(e.to_string()),
            Ok((status, _, _)) if (200..300).contains(&status) => Outcome::Delivered { status },
            Ok((410, _, _)) => Outcome::Disabled { status: 410 },
            Ok((status, headers, _)) => {
                let retry_after = match status {
                    429 | 502 | 503 | 504 => retry_after(&headers),
                    _ => None,
                };
                let error = if (300..400).contains(&status) {
                    format!("endpoint answered HTTP {status}; redirects are not followed")
                } else {
                    format!("endpoint answered HTTP {status}")
                };
                Outcome::Failed {
                    status: Some(status),
                    error,
                    retry_after,
                }
            }
        };
        tracing::debug!(%url, %msg_id, ?outcome, "webhook delivery attempt");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::EgressPolicy;
    use axum::{
        http::{HeaderMap as AxHeaders, StatusCode},
        response::IntoResponse,
        routing::post,
        Router,
    };
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1614265330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> WebhookSecret {
        VECTOR_SECRET.parse().unwrap()
    }

    #[test]
    fn reference_vector() {
        assert_eq!(
            sign(&vector_secret(), VECTOR_ID, VECTOR_TS, VECTOR_BODY),
            VECTOR_SIG
        );
        // Independently of `sign`: HMAC-SHA256 over the spec's "{id}.{ts}.{body}" string.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(format!("{VECTOR_ID}.{VECTOR_TS}.{{\"test\": 2432232314}}").as_bytes());
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(expected, VECTOR_SIG);
        assert_eq!(
            verify(
                &vector_secret(),
                VECTOR_ID,
                "1614265330",
                VECTOR_SIG,
                VECTOR_BODY,
                VECTOR_TS + 10,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn secret_parsing_and_display() {
        let s = vector_secret();
        assert_eq!(s.as_str(), VECTOR_SECRET);
        let g = WebhookSecret::generate();
        assert!(g.as_str().starts_with("whsec_"));
        assert_eq!(g.as_str().parse::<WebhookSecret>().unwrap(), g);
        assert_ne!(g, WebhookSecret::generate());
        let dbg = format!("{g:?}");
        assert!(!dbg.contains(&g.as_str()[6..]), "{dbg}");
        assert!(dbg.contains("redacted"));

        assert_eq!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<WebhookSecret>(),
            Err(SecretError::BadPrefix)
        );
        assert_eq!(
            "whsec_!!!!".parse::<WebhookSecret>(),
            Err(SecretError::BadBase64)
        );
        let short = format!("whsec_{}", STANDARD.encode([1u8; 23]));
        assert_eq!(
            short.parse::<WebhookSecret>(),
            Err(SecretError::BadLength(23))
        );
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert_eq!(
            long.parse::<WebhookSecret>(),
            Err(SecretError::BadLength(65))
        );
        let max = format!("whsec_{}", STANDARD.encode([1u8; 64]));
        assert!(max.parse::<WebhookSecret>().is_ok());
    }

    #[test]
    fn round_trip_and_failures() {
        let secret = WebhookSecret::generate();
        let body = br#"{"id":"job_1","status":"succeeded"}"#;
        let now = 1_700_000_000;
        let sig = sign(&secret, "msg_1", now, body);
        let ts = now.to_string();
        assert_eq!(verify(&secret, "msg_1", &ts, &sig, body, now, 300), Ok(()));

        // Tampered body, wrong id, wrong secret.
        let tampered = br#"{"id":"job_1","status":"failed"}"#;
        assert_eq!(
            verify(&secret, "msg_1", &ts, &sig, tampered, now, 300),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(&secret, "msg_2", &ts, &sig, body, now, 300),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(
                &WebhookSecret::generate(),
                "msg_1",
                &ts,
                &sig,
                body,
                now,
                300
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        // A signature made for a different timestamp.
        let other_ts = (now + 1).to_string();
        assert_eq!(
            verify(&secret, "msg_1", &other_ts, &sig, body, now, 300),
            Err(VerifyError::NoMatchingSignature)
        );

        // Timestamps.
        assert_eq!(
            verify(&secret, "msg_1", &ts, &sig, body, now + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify(&secret, "msg_1", &ts, &sig, body, now + 301, 300),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify(&secret, "msg_1", &ts, &sig, body, now - 301, 300),
            Err(VerifyError::TooNew)
        );
        assert_eq!(
            verify(&secret, "msg_1", "yesterday", &sig, body, now, 300),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify(&secret, "", &ts, &sig, body, now, 300),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(&secret, "msg_1", "", &sig, body, now, 300),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify(&secret, "msg_1", &ts, " ", body, now, 300),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );

        // Any entry of a rotation list may match; other versions and junk are skipped.
        let old = sign(&WebhookSecret::generate(), "msg_1", now, body);
        let list = format!("v1a,AAAA {old} garbage v1,!!! {sig}");
        assert_eq!(verify(&secret, "msg_1", &ts, &list, body, now, 300), Ok(()));
        let v1a_only = sig.replacen("v1,", "v1a,", 1);
        assert_eq!(
            verify(&secret, "msg_1", &ts, &v1a_only, body, now, 300),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn retry_schedule() {
        let exact = RetrySchedule {
            jitter: 0.0,
            ..RetrySchedule::default()
        };
        assert_eq!(exact.max_attempts(), 10);
        assert_eq!(exact.next_delay(0, None), Some(Duration::ZERO));
        assert_eq!(exact.next_delay(1, None), Some(Duration::from_secs(5)));
        assert_eq!(exact.next_delay(2, None), Some(Duration::from_secs(300)));
        assert_eq!(
            exact.next_delay(9, None),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(exact.next_delay(10, None), None);
        assert_eq!(exact.next_delay(u32::MAX, None), None);
        let mut prev = Duration::ZERO;
        for attempt in 1..=9 {
            let d = exact.next_delay(attempt, None).unwrap();
            assert!(d > prev, "attempt {attempt}: {d:?} <= {prev:?}");
            prev = d;
        }

        let jittered = RetrySchedule::default();
        for attempt in 1..=9u32 {
            let base = exact.delays[attempt as usize - 1].as_secs_f64();
            for _ in 0..200 {
                let d = jittered.next_delay(attempt, None).unwrap().as_secs_f64();
                assert!(
                    d >= base * 0.9 - 1e-6 && d <= base * 1.1 + 1e-6,
                    "{d} vs {base}"
                );
            }
        }
        assert_eq!(jittered.next_delay(10, None), None);
        // Jitter actually varies the delay.
        let samples: std::collections::HashSet<_> = (0..50)
            .map(|_| jittered.next_delay(5, None).unwrap())
            .collect();
        assert!(samples.len() > 1);

        // Retry-After wins when longer, is ignored when shorter, and is capped.
        assert_eq!(
            exact.next_delay(1, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            exact.next_delay(2, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            exact.next_delay(1, Some(Duration::from_secs(10 * 24 * 3600))),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(
            exact.next_delay(9, Some(Duration::from_secs(1))),
            exact.next_delay(9, None)
        );
        // Retry-After does not extend the schedule.
        assert_eq!(exact.next_delay(10, Some(Duration::from_secs(7))), None);
    }

    #[derive(Clone, Default)]
    struct Seen {
        requests: Arc<Mutex<Vec<(AxHeaders, Bytes)>>>,
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        addr
    }

    fn sender(timeout: Duration) -> WebhookSender {
        WebhookSender::new(
            EgressClient::new(EgressPolicy {
                allow_private: true,
                timeout,
                ..EgressPolicy::webhooks()
            })
            .unwrap(),
        )
    }

    fn header<'a>(h: &'a AxHeaders, name: &str) -> &'a str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn delivers_and_receiver_verifies() {
        let secret = WebhookSecret::generate();
        let seen = Seen::default();
        let (s, k) = (seen.clone(), secret.clone());
        let app = Router::new().route(
            "/hook",
            post(move |h: AxHeaders, body: Bytes| {
                let (s, k) = (s.clone(), k.clone());
                async move {
                    let now = unix_now();
                    let ok = verify(
                        &k,
                        header(&h, "webhook-id"),
                        header(&h, "webhook-timestamp"),
                        header(&h, "webhook-signature"),
                        &body,
                        now,
                        DEFAULT_TOLERANCE_SECS,
                    );
                    s.requests.lock().unwrap().push((h, body));
                    match ok {
                        Ok(()) => StatusCode::NO_CONTENT,
                        Err(_) => StatusCode::UNAUTHORIZED,
                    }
                }
            }),
        );
        let addr = serve(app).await;
        let body = br#"{"id":"job_1","status":"succeeded"}"#;
        let out = sender(Duration::from_secs(5))
            .send(&format!("http://{addr}/hook"), &secret, "msg_abc", body)
            .await;
        assert_eq!(out, Outcome::Delivered { status: 204 });
        let (h, b) = seen.requests.lock().unwrap()[0].clone();
        assert_eq!(b.as_ref(), body);
        assert_eq!(header(&h, "webhook-id"), "msg_abc");
        assert_eq!(header(&h, "content-type"), "application/json");
        assert_eq!(header(&h, "user-agent"), "weir-webhooks");
        let ts: i64 = header(&h, "webhook-timestamp").parse().unwrap();
        assert!((ts - unix_now()).abs() < 60);
        assert_eq!(
            header(&h, "webhook-signature"),
            sign(&secret, "msg_abc", ts, body)
        );

        // The wrong secret is rejected by the receiver: a failure with its status.
        let out = sender(Duration::from_secs(5))
            .send(
                &format!("http://{addr}/hook"),
                &WebhookSecret::generate(),
                "msg_abc",
                body,
            )
            .await;
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    status: Some(401),
                    retry_after: None,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn status_handling() {
        let app = Router::new()
            .route("/500", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route("/410", post(|| async { StatusCode::GONE }))
            .route("/200", post(|| async { "ok" }))
            .route(
                "/301",
                post(|| async {
                    (StatusCode::MOVED_PERMANENTLY, [("location", "/200")]).into_response()
                }),
            )
            .route(
                "/429",
                post(|| async {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")]).into_response()
                }),
            )
            .route(
                "/503",
                post(|| async {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "120")]).into_response()
                }),
            )
            .route(
                "/503-date",
                post(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                    )
                        .into_response()
                }),
            )
            .route(
                "/500-retry",
                post(|| async {
                    (StatusCode::INTERNAL_SERVER_ERROR, [("retry-after", "7")]).into_response()
                }),
            );
        let addr = serve(app).await;
        let s = sender(Duration::from_secs(5));
        let secret = WebhookSecret::generate();
        let send = |path: &str| {
            let url = format!("http://{addr}/{path}");
            let (s, secret) = (s.clone(), secret.clone());
            async move { s.send(&url, &secret, "msg_1", b"{}").await }
        };

        assert_eq!(send("200").await, Outcome::Delivered { status: 200 });
        assert_eq!(send("410").await, Outcome::Disabled { status: 410 });
        match send("500").await {
            Outcome::Failed {
                status: Some(500),
                retry_after: None,
                error,
            } => {
                assert!(error.contains("500"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        match send("301").await {
            Outcome::Failed {
                status: Some(301),
                retry_after: None,
                error,
            } => {
                assert!(error.contains("redirect"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            send("429").await,
            Outcome::Failed { status: Some(429), retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            send("503").await,
            Outcome::Failed { status: Some(503), retry_after: Some(d), .. } if d == Duration::from_secs(120)
        ));
        assert!(matches!(
            send("503-date").await,
            Outcome::Failed {
                status: Some(503),
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            send("500-retry").await,
            Outcome::Failed {
                status: Some(500),
                retry_after: None,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        // Accept connections but never answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let started = std::time::Instant::now();
        let out = sender(Duration::from_millis(300))
            .send(
                &format!("http://{addr}/"),
                &WebhookSecret::generate(),
                "msg_1",
                b"{}",
            )
            .await;
        match out {
            Outcome::Failed {
                status: None,
                error,
                retry_after: None,
            } => {
                assert!(error.contains("timed out"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn private_endpoints_are_refused_by_default() {
        // A real receiver on loopback that would answer 204 to anyone who reached it.
        let seen = Seen::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/hook",
            post(move |h: AxHeaders, body: Bytes| {
                let s = s2.clone();
                async move {
                    s.requests.lock().unwrap().push((h, body));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let addr = serve(app).await;
        let port = addr.port();
        let secret = WebhookSecret::generate();
        // It does answer when private addresses are allowed: the refusals below are egress's.
        let open = sender(Duration::from_secs(5))
            .send(&format!("http://{addr}/hook"), &secret, "msg_0", b"{}")
            .await;
        assert_eq!(open, Outcome::Delivered { status: 204 });
        assert_eq!(seen.requests.lock().unwrap().len(), 1);

        let s = WebhookSender::new(EgressClient::new(EgressPolicy::webhooks()).unwrap());
        for (url, why) in [
            (
                format!("http://127.0.0.1:{port}/hook"),
                "`127.0.0.1` resolves to 127.0.0.1, which is not a public address",
            ),
            (
                format!("http://localhost:{port}/hook"),
                "which is not a public address",
            ),
            (
                "http://169.254.169.254/".to_owned(),
                "`169.254.169.254` resolves to 169.254.169.254, which is not a public address",
            ),
            (
                "file:///etc/passwd".to_owned(),
                "unsupported URL scheme `file`",
            ),
        ] {
            match s.send(&url, &secret, "msg_1", b"{}").await {
                Outcome::Failed {
                    status: None,
                    error,
                    retry_after: None,
                } => assert!(error.contains(why), "{url}: {error}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let out = s
            .send(
                &format!("http://127.0.0.1:{port}/hook"),
                &secret,
                "bad\nid",
                b"{}",
            )
            .await;
        match out {
            Outcome::Failed {
                status: None,
                error,
                ..
            } => assert!(
                error.contains("webhook id is not a valid header value"),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            seen.requests.lock().unwrap().len(),
            1,
            "a refused delivery reached the receiver"
        );
    }
}
