//! Which orchestrators exist and what they offer: a static list plus an optional webhook,
//! each orchestrator's `/info` fetched periodically, latency and success per
//! (orchestrator, capability, model), and suspension of failing orchestrators.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use weir_protocol::info::OrchestratorInfo;

/// Cap on an `/info` or webhook answer.
const MAX_INFO_BYTES: usize = 1 << 20;

/// Observed behaviour of one orchestrator for one capability/model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Smoothed latency of successful jobs, in milliseconds.
    pub latency_ms: f64,
    /// Successful jobs.
    pub ok: u64,
    /// Failed jobs.
    pub failed: u64,
}

impl Stats {
    /// Success rate in basis points (10000 when nothing is known yet).
    pub fn success_bp(&self) -> u32 {
        (self.ok * 10_000)
            .checked_div(self.ok + self.failed)
            .map_or(10_000, |bp| bp as u32)
    }
}

/// What the gateway knows of one orchestrator.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Its last `/info`.
    pub info: Option<OrchestratorInfo>,
    /// When `/info` last answered.
    pub refreshed: Option<Instant>,
    /// Why the last refresh failed.
    pub last_error: Option<String>,
    /// Left out of selection until then.
    pub suspended_until: Option<Instant>,
    /// Why it was suspended.
    pub suspended_because: Option<String>,
    /// Per `capability/model`.
    pub stats: BTreeMap<String, Stats>,
}

impl Known {
    /// Whether it is suspended at `now`.
    pub fn suspended(&self, now: Instant) -> bool {
        self.suspended_until.is_some_and(|t| t > now)
    }
}

/// A view of one orchestrator for `GET /gateway/orchestrators`.
#[derive(Debug, Clone, Serialize)]
pub struct KnownView {
    /// Its URL.
    pub url: String,
    /// Its last `/info`.
    pub info: Option<OrchestratorInfo>,
    /// Milliseconds since `/info` last answered.
    pub refreshed_ms_ago: Option<u64>,
    /// Why the last refresh failed.
    pub last_error: Option<String>,
    /// Milliseconds of suspension left.
    pub suspended_ms: Option<u64>,
    /// Why it was suspended.
    pub suspended_because: Option<String>,
    /// Per `capability/model`.
    pub stats: BTreeMap<String, Stats>,
}

#[derive(Deserialize)]
struct WebhookEntry {
    address: String,
}

/// The set of known orchestrators.
pub struct Discovery {
    static_urls: Vec<String>,
    webhook: Option<String>,
    webhook_interval: Duration,
    client: reqwest::Client,
    known: RwLock<BTreeMap<String, Known>>,
    webhook_urls: RwLock<(Option<Instant>, Vec<String>)>,
}

/// Normalize an orchestrator address: add `http://` when missing, drop a trailing slash.
pub fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<T, String> {
    let response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: status {}", response.status()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if body.len() > MAX_INFO_BYTES {
        return Err(format!(
            "GET {url}: answer larger than {MAX_INFO_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: invalid answer: {e}"))
}

impl Discovery {
    /// Orchestrators from `static_urls`, plus those the `webhook` lists.
    pub fn new(
        static_urls: &[String],
        webhook: Option<String>,
        webhook_interval: Duration,
        client: reqwest::Client,
    ) -> Discovery {
        let static_urls: Vec<String> = static_urls.iter().map(|u| normalize(u)).collect();
        let known = static_urls
            .iter()
            .map(|u| (u.clone(), Known::default()))
            .collect();
        Discovery {
            static_urls,
            webhook,
            webhook_interval,
            client,
            known: RwLock::new(known),
            webhook_urls: RwLock::new((None, Vec::new())),
        }
    }

    async fn urls(&self) -> Vec<String> {
        let mut urls: BTreeSet<String> = self.static_urls.iter().cloned().collect();
        if let Some(hook) = &self.webhook {
            let fresh = self
                .webhook_urls
                .read()
                .0
                .is_some_and(|t| t.elapsed() < self.webhook_interval);
            if !fresh {
                match get_json::<Vec<WebhookEntry>>(&self.client, hook, Duration::from_secs(3))
                    .await
                {
                    Ok(list) => {
                        let list: Vec<String> =
                            list.iter().map(|e| normalize(&e.address)).collect();
                        tracing::debug!(count = list.len(), "orchestrator webhook answered");
                        *self.webhook_urls.write() = (Some(Instant::now()), list);
                    }
                    Err(e) => {
                        // Keep the last good list; try again next refresh.
                        tracing::warn!(webhook = %hook, error = %e, "orchestrator webhook failed");
                    }
                }
            }
            urls.extend(self.webhook_urls.read().1.iter().cloned());
        }
        urls.into_iter().collect()
    }

    /// Fetch the list and every orchestrator's `/info` once.
    pub async fn refresh(&self) {
        let urls = self.urls().await;
        {
            let mut known = self.known.write();
            known.retain(|url, _| urls.contains(url));
            for url in &urls {
                known.entry(url.clone()).or_default();
            }
        }
        let fetches = urls.iter().map(|url| self.refresh_one(url));
        futures_util::future::join_all(fetches).await;
    }

    /// Fetch one orchestrator's `/info` now.
    pub async fn refresh_one(&self, url: &str) {
        let result = get_json::<OrchestratorInfo>(
            &self.client,
            &format!("{url}/info"),
            Duration::from_secs(3),
        )
        .await;
        let mut known = self.known.write();
        let Some(k) = known.get_mut(url) else {
            return;
        };
        match result {
            Ok(info) => {
                k.info = Some(info);
                k.refreshed = Some(Instant::now());
                k.last_error = None;
            }
            Err(e) => {
                if k.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(orchestrator = %url, error = %e, "orchestrator info refresh failed");
                }
                // An orchestrator that stopped answering offers nothing until it answers again.
                k.info = None;
                k.last_error = Some(e);
            }
        }
    }

    /// Refresh forever, every `interval`.
    pub fn spawn_refresh(
        self: &std::sync::Arc<Self>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                this.refresh().await;
            }
        })
    }

    /// Everything known, read-locked (hold it briefly: refreshes and stats wait for it).
    pub fn known(&self) -> parking_lot::RwLockReadGuard<'_, BTreeMap<String, Known>> {
        self.known.read()
    }

    /// Record a finished attempt.
    pub fn record(&self, url: &str, account: &str, ok: bool, latency: Duration) {
        let mut known = self.known.write();
        if let Some(k) = known.get_mut(url) {
            let s = k.stats.entry(account.to_owned()).or_default();
            if ok {
                let ms = latency.as_secs_f64() * 1000.0;
                s.latency_ms = if s.ok == 0 {
                    ms
                } else {
                    s.latency_ms * 0.8 + ms * 0.2
                };
                s.ok += 1;
            } else {
                s.failed += 1;
            }
        }
    }

    /// Leave `url` out of selection for `duration`.
    pub fn suspend(&self, url: &str, duration: Duration, why: &str) {
        let mut known = self.known.write();
        if let Some(k) = known.get_mut(url) {
            tracing::warn!(orchestrator = %url, secs = duration.as_secs_f64(), reason = %why, "orchestrator suspended");
            k.suspended_until = Some(Instant::now() + duration);
            k.suspended_because = Some(why.to_owned());
        }
    }

    /// Views for the status endpoint.
    pub fn views(&self) -> Vec<KnownView> {
        let now = Instant::now();
        self.known
            .read()
            .iter()
            .map(|(url, k)| KnownView {
                url: url.clone(),
                info: k.info.clone(),
                refreshed_ms_ago: k.refreshed.map(|t| t.elapsed().as_millis() as u64),
                last_error: k.last_error.clone(),
                suspended_ms: k
                    .suspended_until
                    .filter(|t| *t > now)
                    .map(|t| (t - now).as_millis() as u64),
                suspended_because: k
                    .suspended(now)
                    .then(|| k.suspended_because.clone())
                    .flatten(),
                stats: k.stats.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_and_stats_track_success() {
        assert_eq!(normalize("127.0.0.1:8935/"), "http://127.0.0.1:8935");
        assert_eq!(normalize("https://o.example"), "https://o.example");
        let d = Discovery::new(
            &["127.0.0.1:1".to_owned()],
            None,
            Duration::from_secs(60),
            reqwest::Client::new(),
        );
        let url = "http://127.0.0.1:1";
        d.record(url, "upscale/m", true, Duration::from_millis(10));
        d.record(url, "upscale/m", false, Duration::ZERO);
        let k = d.known().get(url).cloned().expect("known");
        assert_eq!(k.stats["upscale/m"].success_bp(), 5000);
    }

    /// What the status endpoint says of `url`: (suspended, why).
    fn shown(d: &Discovery, url: &str) -> (bool, Option<String>) {
        let view = d
            .views()
            .into_iter()
            .find(|v| v.url == url)
            .expect("listed");
        (view.suspended_ms.is_some(), view.suspended_because)
    }

    #[tokio::test]
    async fn a_suspension_outlasts_refreshes_and_ends_when_its_time_is_up() {
        // Two orchestrators whose `/info` always answers.
        let info = OrchestratorInfo {
            version: "test".into(),
            service_url: String::new(),
            region: String::new(),
            gpu_class: "cpu".into(),
            models: Vec::new(),
        };
        let app = axum::Router::new().route(
            "/info",
            axum::routing::get(move || {
                let info = info.clone();
                async move { axum::Json(info) }
            }),
        );
        let mut urls = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            urls.push(format!("http://{}", listener.local_addr().expect("addr")));
            let app = app.clone();
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let d = Discovery::new(&urls, None, Duration::from_secs(60), reqwest::Client::new());
        d.refresh().await;
        let (failing, healthy) = (urls[0].as_str(), urls[1].as_str());
        assert!(d.known().values().all(|k| k.info.is_some()));

        let suspension = Duration::from_secs(2);
        let start = Instant::now();
        d.suspend(failing, suspension, "answered 500");
        d.suspend("http://127.0.0.1:1", suspension, "not known: ignored");
        assert_eq!(d.known().len(), 2);
        assert_eq!(shown(&d, failing), (true, Some("answered 500".into())));
        assert_eq!(shown(&d, healthy), (false, None));
        // Answering `/info` again does not lift it: only time does.
        d.refresh().await;
        assert!(d.known()[failing].info.is_some());
        assert!(shown(&d, failing).0, "a refresh lifted the suspension");
        assert!(d.known()[failing].suspended(start));
        assert!(!d.known()[failing].suspended(start + suspension + Duration::from_millis(1)));

        // It comes back once the suspension is over, and not before.
        let deadline = Instant::now() + Duration::from_secs(60);
        while shown(&d, failing).0 {
            assert!(Instant::now() < deadline, "the suspension never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            start.elapsed() >= suspension,
            "back after {:?}",
            start.elapsed()
        );
        assert_eq!(shown(&d, failing), (false, None));
        assert!(!d.known()[failing].suspended(Instant::now()));
    }
}
