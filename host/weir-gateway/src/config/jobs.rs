//! `[gateway.jobs]`: the async jobs API.

use serde::{Deserialize, Serialize};
use weir_jobs::catalog::ModelSpec;

/// Settings of the jobs API (`[gateway.jobs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// `sqlite://PATH` (default `<data-dir>/jobs.db`) or `postgres://…` to share jobs between
    /// gateways.
    pub database: Option<String>,
    /// The older spelling of `[gateway.storage]` (the gateway's one object store), used when
    /// that is absent; the gateway itself reads only `GatewayConfig::storage`.
    pub storage: Option<weir_storage::StorageConfig>,
    /// The models clients may submit.
    pub models: Vec<ModelSpec>,
    /// Jobs this gateway runs at once.
    pub workers: u32,
    /// A worker's hold on a job; renewed a third of the way through.
    pub lease_secs: u64,
    /// Jobs one tenant may have running at once (across gateways).
    pub tenant_concurrency: u32,
    /// Submits one tenant may make per second on this gateway (0: no limit).
    pub submit_rate: u32,
    /// How long results are kept.
    pub result_ttl_secs: u64,
    /// How long a result URL stays valid.
    pub url_expiry_secs: u64,
    /// Let input URLs and webhooks reach loopback and private networks (tests, labs).
    pub allow_private_urls: bool,
    /// Cap on one input file, in MiB.
    pub max_input_mib: usize,
    /// Deadline of fetching one input.
    pub input_timeout_secs: u64,
    /// `whsec_…` webhook signing secret (default: generated into `<data-dir>/webhook-secret`).
    pub webhook_secret: Option<String>,
    /// Deadline of one webhook delivery.
    pub webhook_timeout_secs: u64,
    /// Delays between webhook attempts, in seconds (default: the Standard Webhooks schedule).
    pub webhook_retry_secs: Option<Vec<u64>>,
    /// Most seconds `Prefer: wait=N` holds a submit.
    pub max_wait_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            database: None,
            storage: None,
            models: Vec::new(),
            workers: 4,
            lease_secs: 30,
            tenant_concurrency: 16,
            submit_rate: 0,
            result_ttl_secs: 24 * 3600,
            url_expiry_secs: 3600,
            allow_private_urls: false,
            max_input_mib: 32,
            input_timeout_secs: 30,
            webhook_secret: None,
            webhook_timeout_secs: 15,
            webhook_retry_secs: None,
            max_wait_secs: 60,
        }
    }
}
