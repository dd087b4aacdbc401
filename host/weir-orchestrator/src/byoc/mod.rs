//! Bring-your-own-compute on the orchestrator: capabilities registered at run time by external
//! workers (`POST /capability/register`) or configured as in-process WASM `pipeline`
//! components, priced per second, with capacity enforced atomically and workers health-checked.
//!
//! Batch jobs arrive at `POST /process/request/{route}` with the `Livepeer` job header and a
//! payment; they are forwarded to the worker's `{url}/{route}` (or run by the pipeline
//! component) and charged for the seconds they took, never more than the `timeout_seconds`
//! reserved up front (module `batch`; answers streamed as server-sent events in `events`).
//! Workers register in `register`. Live streams are in `streams`.

mod batch;
mod events;
mod register;
pub(crate) mod streams;

pub(crate) use batch::process_request;
pub(crate) use register::{register, unregister};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;
use weir_models::capacity::{Capacity, Slot};
use weir_payments::UnitPrice;
use weir_protocol::byoc::{valid_capability_name, RegisterCapability, BYOC_MODEL};
use weir_protocol::info::{InfoModel, InfoPrice};
use weir_protocol::AiHttpError;
use weir_runtime::{Registry, WorldKind};

use crate::handler::err;
use crate::Orchestrator;

/// A WASM `pipeline` component served as a BYOC capability (`[[orchestrator.pipelines]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEntry {
    /// Capability name clients ask for.
    pub name: String,
    /// Component name in the registry (world `pipeline`).
    pub component: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Concurrent jobs and streams.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Base units per `price_scaling` seconds.
    #[serde(default)]
    pub price_per_unit: u64,
    /// Seconds per `price_per_unit`.
    #[serde(default = "one")]
    pub price_scaling: u64,
    /// Currency label.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_capacity() -> u32 {
    4
}

fn one() -> u64 {
    1
}

fn default_currency() -> String {
    "WEI".to_owned()
}

/// Settings of BYOC on the orchestrator (`[orchestrator.byoc]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByocConfig {
    /// The secret workers present to register (`Authorization: <secret>`); registration is
    /// refused while none is set.
    pub secret: Option<String>,
    /// Pipelines served in-process.
    pub pipelines: Vec<PipelineEntry>,
    /// Period of worker health checks, in seconds.
    pub health_interval_secs: u64,
    /// Failed checks in a row that take a worker out.
    pub unhealthy_after: u32,
    /// Deadline of calls to a worker's stream endpoints, in seconds.
    pub worker_timeout_secs: u64,
    /// A stream's balance is debited this often, in seconds.
    pub debit_interval_secs: u64,
    /// A stream starts only with at least this many seconds of price in its balance.
    pub min_balance_secs: u64,
    /// Streams at once on this orchestrator.
    pub max_streams: usize,
    /// Largest segment a pipeline reads.
    pub max_segment_bytes: usize,
    /// Largest worker answer to a batch job.
    pub max_answer_bytes: usize,
    /// Capabilities that may be registered.
    pub max_capabilities: usize,
}

impl Default for ByocConfig {
    fn default() -> Self {
        ByocConfig {
            secret: None,
            pipelines: Vec::new(),
            health_interval_secs: 5,
            unhealthy_after: 2,
            worker_timeout_secs: 5,
            debit_interval_secs: 5,
            min_balance_secs: 60,
            max_streams: 100,
            max_segment_bytes: 32 << 20,
            max_answer_bytes: 64 << 20,
            max_capabilities: 256,
        }
    }
}

impl ByocConfig {
    pub(crate) fn health_interval(&self) -> Duration {
        Duration::from_secs(self.health_interval_secs.max(1))
    }

    pub(crate) fn worker_timeout(&self) -> Duration {
        Duration::from_secs(self.worker_timeout_secs.max(1))
    }

    pub(crate) fn debit_interval(&self) -> Duration {
        Duration::from_secs(self.debit_interval_secs.max(1))
    }
}

/// Who does a capability's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// An external worker over HTTP and trickle.
    Worker {
        /// Base URL, no trailing slash.
        url: String,
        /// Bearer token it expects.
        token: Option<String>,
    },
    /// A `pipeline` component run in-process.
    Pipeline {
        /// Component name.
        component: String,
    },
}

/// One capability this orchestrator offers.
pub(crate) struct Offered {
    pub(crate) name: String,
    pub(crate) backend: Backend,
    pub(crate) capacity: Arc<Capacity>,
    /// Base units per `price.pixels_per_unit` seconds.
    pub(crate) price: UnitPrice,
    pub(crate) currency: String,
    pub(crate) healthy: AtomicBool,
    failures: AtomicU32,
}

impl Offered {
    /// The price per millisecond of stream time, as a [`UnitPrice`] over milliseconds.
    pub(crate) fn price_per_ms(&self) -> UnitPrice {
        UnitPrice {
            price_per_unit: self.price.price_per_unit,
            pixels_per_unit: self.price.pixels_per_unit.saturating_mul(1000),
        }
    }

    /// The price as the pricing types carry it.
    pub(crate) fn quoted(&self) -> weir_runtime::Price {
        weir_runtime::Price {
            price_per_unit: self.price.price_per_unit,
            pixels_per_unit: self.price.pixels_per_unit,
            currency: self.currency.clone(),
        }
    }

    pub(crate) fn slot(&self) -> Result<Slot, AiHttpError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(err(
                503,
                format!(
                    "capability `{}`: its worker is failing health checks",
                    self.name
                ),
            ));
        }
        self.capacity.try_acquire().map_err(|full| {
            err(
                503,
                format!(
                    "insufficient capacity: `{}` runs {} of {}",
                    self.name, full.in_flight, full.limit
                ),
            )
        })
    }

    /// Record a worker failure seen outside health checks (a refused or dropped call).
    pub(crate) fn worker_failed(&self, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(capability = %self.name, why, "worker taken out until its health check passes");
        }
    }
}

/// The capabilities registered on an orchestrator.
pub(crate) struct Capabilities {
    config: ByocConfig,
    map: RwLock<HashMap<String, Arc<Offered>>>,
    pub(crate) client: reqwest::Client,
}

impl Capabilities {
    pub(crate) fn new(config: ByocConfig, registry: &Registry) -> Result<Capabilities, String> {
        let mut map = HashMap::new();
        for p in &config.pipelines {
            if !valid_capability_name(&p.name) {
                return Err(format!("pipeline `{}`: not a capability name", p.name));
            }
            if p.capacity == 0 || p.price_scaling == 0 {
                return Err(format!(
                    "pipeline `{}`: capacity and price_scaling must be at least 1",
                    p.name
                ));
            }
            if let Err(e) = registry.get_world(&p.component, WorldKind::Pipeline) {
                tracing::warn!(pipeline = %p.name, component = %p.component, error = %e, "pipeline component not loaded yet; jobs fail until it is");
            }
            let offered = Offered {
                name: p.name.clone(),
                backend: Backend::Pipeline {
                    component: p.component.clone(),
                },
                capacity: Capacity::new(p.capacity),
                price: UnitPrice {
                    price_per_unit: p.price_per_unit,
                    pixels_per_unit: p.price_scaling,
                },
                currency: p.currency.clone(),
                healthy: AtomicBool::new(true),
                failures: AtomicU32::new(0),
            };
            if map.insert(p.name.clone(), Arc::new(offered)).is_some() {
                return Err(format!("pipeline `{}` is configured twice", p.name));
            }
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Capabilities {
            config,
            map: RwLock::new(map),
            client,
        })
    }

    pub(crate) fn config(&self) -> &ByocConfig {
        &self.config
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Offered>, AiHttpError> {
        self.map.read().get(name).cloned().ok_or_else(|| {
            err(
                404,
                format!("capability `{name}` is not registered on this orchestrator"),
            )
        })
    }

    fn register(&self, r: RegisterCapability) -> Result<(), AiHttpError> {
        r.validate().map_err(|e| err(400, e))?;
        let mut map = self.map.write();
        if let Some(existing) = map.get(&r.name) {
            if matches!(existing.backend, Backend::Pipeline { .. }) {
                return Err(err(
                    409,
                    format!("`{}` is a pipeline configured on this orchestrator", r.name),
                ));
            }
        } else if map.len() >= self.config.max_capabilities {
            return Err(err(
                503,
                format!(
                    "{} capabilities are registered (max_capabilities)",
                    map.len()
                ),
            ));
        }
        // Re-registering keeps the slots in use when the capacity is unchanged.
        let capacity = match map.get(&r.name) {
            Some(e) if e.capacity.limit() == r.capacity => e.capacity.clone(),
            _ => Capacity::new(r.capacity),
        };
        let offered = Offered {
            name: r.name.clone(),
            backend: Backend::Worker {
                url: r.url.trim_end_matches('/').to_owned(),
                token: r.token.filter(|t| !t.is_empty()),
            },
            capacity,
            price: UnitPrice {
                price_per_unit: r.price_per_unit,
                pixels_per_unit: r.price_scaling,
            },
            currency: if r.currency.is_empty() {
                default_currency()
            } else {
                r.currency
            },
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
        };
        tracing::info!(capability = %r.name, description = %r.description, url = ?offered.backend, capacity = r.capacity, price = r.price_per_unit, scaling = r.price_scaling, "capability registered");
        map.insert(r.name, Arc::new(offered));
        Ok(())
    }

    fn unregister(&self, name: &str) -> Result<(), AiHttpError> {
        let mut map = self.map.write();
        match map.get(name).map(|o| &o.backend) {
            None => Err(err(404, format!("capability `{name}` is not registered"))),
            Some(Backend::Pipeline { .. }) => Err(err(
                409,
                format!("`{name}` is a pipeline configured on this orchestrator"),
            )),
            Some(Backend::Worker { .. }) => {
                map.remove(name);
                tracing::info!(capability = %name, "capability unregistered");
                Ok(())
            }
        }
    }

    /// What `/info` lists: healthy capabilities with their per-second price.
    pub(crate) fn info(&self) -> Vec<InfoModel> {
        let mut v: Vec<InfoModel> = self
            .map
            .read()
            .values()
            .filter(|o| o.healthy.load(Ordering::Acquire))
            .map(|o| InfoModel {
                capability: o.name.clone(),
                model_id: BYOC_MODEL.to_owned(),
                warm: true,
                runner: match o.backend {
                    Backend::Worker { .. } => "byoc".to_owned(),
                    Backend::Pipeline { .. } => "wasm".to_owned(),
                },
                price: InfoPrice {
                    price_per_unit: o.price.price_per_unit,
                    pixels_per_unit: o.price.pixels_per_unit,
                    currency: o.currency.clone(),
                },
                capacity: o.capacity.limit(),
                in_flight: o.capacity.in_flight(),
            })
            .collect();
        v.sort_by(|a, b| a.capability.cmp(&b.capability));
        v
    }

    /// Check every worker's health once: `GET {url}/health`, healthy on a 2xx unless its JSON
    /// `status` says `ERROR` or `LOADING`.
    async fn check_all(&self) {
        let workers: Vec<Arc<Offered>> = self
            .map
            .read()
            .values()
            .filter(|o| matches!(o.backend, Backend::Worker { .. }))
            .cloned()
            .collect();
        let timeout = self.config.worker_timeout();
        for o in workers {
            let Backend::Worker { url, token } = &o.backend else {
                continue;
            };
            let mut request = self.client.get(format!("{url}/health")).timeout(timeout);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let ok = match request.send().await {
                // pytrickle answers 200 with `{"status": "ERROR" | "LOADING" | …}`.
                Ok(r) if r.status().is_success() => {
                    let status =
                        r.json::<serde_json::Value>().await.ok().and_then(|v| {
                            v.get("status").and_then(|s| s.as_str()).map(str::to_owned)
                        });
                    !matches!(status.as_deref(), Some("ERROR" | "LOADING"))
                }
                _ => false,
            };
            if ok {
                o.failures.store(0, Ordering::Release);
                if !o.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(capability = %o.name, "worker healthy again; back in service");
                }
            } else {
                let failures = o.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.config.unhealthy_after {
                    o.worker_failed("health check failed");
                }
            }
        }
    }
}

/// Periodic worker health checks.
pub(crate) fn spawn_health_checks(o: Orchestrator) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(o.byoc().config().health_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            o.byoc().check_all().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_section_has_defaults_and_refuses_typos() {
        let c: ByocConfig = toml::from_str("").expect("defaults");
        assert_eq!(c, ByocConfig::default());
        assert!(toml::from_str::<ByocConfig>("secrett = \"x\"").is_err());
        let c: ByocConfig = toml::from_str(
            "secret = \"s\"\n[[pipelines]]\nname = \"scale\"\ncomponent = \"live-scale\"\nprice_per_unit = 3",
        )
        .expect("valid");
        assert_eq!(c.pipelines[0].capacity, 4);
        assert_eq!(c.pipelines[0].price_scaling, 1);
    }
}
