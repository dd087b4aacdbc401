//! Settings of the gateway role.

mod jobs;
mod live;
mod streams;

pub use jobs::JobsConfig;
pub use live::LiveConfig;
pub use streams::StreamsConfig;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use weir_payments::UnitPrice;

/// Settings of the gateway role.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Orchestrator URLs known up front (`--orchAddr`).
    pub orchestrators: Vec<String>,
    /// A URL answering `[{"address": URL}, ...]` with more orchestrators (`--orchWebhookUrl`).
    pub orch_webhook_url: Option<String>,
    /// How often each orchestrator's `/info` is fetched again.
    pub refresh_interval: Duration,
    /// How long a webhook answer is used before asking again.
    pub webhook_interval: Duration,
    /// The router component.
    pub router: String,
    /// Most the gateway pays, by `capability` or `capability/model` (the more specific wins).
    pub max_prices: BTreeMap<String, UnitPrice>,
    /// Bearer tokens clients must send; empty with `open` for local development.
    pub auth_tokens: Vec<String>,
    /// Accept requests without a token.
    pub open: bool,
    /// Most orchestrators tried for one request.
    pub max_attempts: u32,
    /// Total time spent trying orchestrators for one request.
    pub retry_budget: Duration,
    /// How long a request keeps waiting (with jittered backoff) for orchestrators that
    /// answered "insufficient capacity"; those busy answers do not use up `max_attempts`.
    pub busy_wait: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// How long a failing orchestrator is left out.
    pub suspend_for: Duration,
    /// Base URL clients fetch results from (`{public_url}/results/...`).
    pub public_url: String,
    /// The object store for AI results, job inputs and job outputs (default: local disk under
    /// `<data_dir>/objects`).
    pub storage: Option<weir_storage::StorageConfig>,
    /// Cap on one uploaded file.
    pub max_file_bytes: usize,
    /// Cap on a whole request body.
    pub max_body_bytes: usize,
    /// Live video.
    pub live: LiveConfig,
    /// Async generation jobs.
    pub jobs: JobsConfig,
    /// Live AI streams.
    pub streams: StreamsConfig,
    /// Where the gateway keeps its files (job database and objects by default).
    pub data_dir: PathBuf,
    /// Origins whose pages may call the public routes from a browser (CORS): `["*"]` for
    /// any origin, exact origins such as `https://app.example`, or none to turn CORS off.
    /// Credentials are never allowed; the admin API never answers cross-origin requests.
    pub cors_origins: Vec<String>,
}

impl GatewayConfig {
    /// The max price for `capability`/`model`, if any.
    pub fn max_price(&self, capability: &str, model: &str) -> Option<UnitPrice> {
        self.max_prices
            .get(&format!("{capability}/{model}"))
            .or_else(|| self.max_prices.get(capability))
            .copied()
    }
}

/// Parse a price written `PPU` or `PPU/UNITS`.
pub fn parse_price(raw: &str) -> Result<UnitPrice, String> {
    let (ppu, units) = match raw.split_once('/') {
        Some((p, u)) => (p.trim(), u.trim()),
        None => (raw.trim(), "1"),
    };
    let price_per_unit = ppu
        .parse::<u64>()
        .map_err(|e| format!("price {raw:?}: {e}"))?;
    let pixels_per_unit = units
        .parse::<u64>()
        .map_err(|e| format!("price {raw:?}: {e}"))?;
    if pixels_per_unit == 0 {
        return Err(format!("price {raw:?}: pixels per unit must be at least 1"));
    }
    Ok(UnitPrice {
        price_per_unit,
        pixels_per_unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_and_the_specific_max_price_wins() {
        assert_eq!(
            parse_price("5/1000"),
            Ok(UnitPrice {
                price_per_unit: 5,
                pixels_per_unit: 1000
            })
        );
        assert!(parse_price("5/0").is_err());
        assert!(parse_price("x").is_err());
        let mut c = GatewayConfig {
            streams: Default::default(),
            orchestrators: vec![],
            orch_webhook_url: None,
            refresh_interval: Duration::from_secs(1),
            webhook_interval: Duration::from_secs(1),
            router: "r".into(),
            max_prices: BTreeMap::new(),
            auth_tokens: vec![],
            open: true,
            max_attempts: 3,
            retry_budget: Duration::from_secs(1),
            busy_wait: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            suspend_for: Duration::from_secs(1),
            public_url: String::new(),
            storage: None,
            max_file_bytes: 1,
            max_body_bytes: 1,
            live: LiveConfig::default(),
            jobs: JobsConfig::default(),
            data_dir: PathBuf::new(),
            cors_origins: vec!["*".into()],
        };
        c.max_prices
            .insert("upscale".into(), parse_price("10").expect("p"));
        c.max_prices
            .insert("upscale/m".into(), parse_price("3").expect("p"));
        assert_eq!(
            c.max_price("upscale", "m").map(|p| p.price_per_unit),
            Some(3)
        );
        assert_eq!(
            c.max_price("upscale", "n").map(|p| p.price_per_unit),
            Some(10)
        );
        assert_eq!(c.max_price("llm", "n"), None);
    }
}
