//! Phase **select**: the orchestrators to try for a call, best first. Candidates are those
//! whose last `/info` offers the capability and model at or below the max price; the router
//! component orders them (warm models first); suspended ones come last.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use weir_payments::credit::account;
use weir_payments::UnitPrice;
use weir_protocol::byoc::BYOC_MODEL;
use weir_protocol::info::InfoModel;
use weir_protocol::AiHttpError;
use weir_runtime::{Candidate, JobRequest, OutputSize, Price, WorldKind};

use super::{err, Choice, Dispatcher};
use crate::discovery::{normalize, Known};

/// One orchestrator's offer of the capability: its URL, what discovery knows of it, the model
/// offer.
type Offer<'a> = (&'a String, &'a Known, &'a InfoModel);

/// The model chosen for a call and its candidates.
struct Candidates {
    model: String,
    /// Healthy orchestrators, for the router to rank.
    fresh: Vec<Candidate>,
    /// Suspended orchestrators: a last resort.
    suspended: Vec<Candidate>,
}

impl Dispatcher {
    /// The orchestrators to try for `job`, best first: those offering `cap` with the model
    /// the client named (`named_model`), else `default_model`, else the most offered one; at or
    /// below the max price; ranked by the router component; suspended ones last.
    pub(crate) async fn choose(
        &self,
        cap: &str,
        named_model: Option<&str>,
        default_model: &str,
        job: JobRequest,
    ) -> Result<Vec<Choice>, AiHttpError> {
        let Candidates {
            model,
            fresh,
            mut suspended,
        } = self.candidates(cap, named_model, default_model)?;
        let mut job = job;
        job.model = model.clone();
        let mut ordered = self.rank(job, &model, fresh).await?;
        // Suspended orchestrators are a last resort, cheapest first.
        suspended.sort_by(|a, b| {
            unit(&a.price)
                .cmp_rate(&unit(&b.price))
                .then(a.url.cmp(&b.url))
        });
        ordered.extend(suspended);
        Ok(ordered
            .into_iter()
            .map(|c| Choice {
                warm: c.warm_models.contains(&model),
                price: unit(&c.price),
                url: c.url,
                model: model.clone(),
            })
            .collect())
    }

    /// Orchestrators offering BYOC capability `job.capability` for `units` seconds, best
    /// first, filtered by the job's include/exclude lists. Registrations come and go, so a
    /// miss refreshes discovery once before giving up.
    pub(crate) async fn choose_for_job(
        &self,
        job: &weir_protocol::byoc::JobRequest,
        units: u64,
    ) -> Result<VecDeque<Choice>, AiHttpError> {
        let sender = self.payments.sender();
        let request = JobRequest::priced(
            &job.capability,
            BYOC_MODEL,
            OutputSize::NONE,
            units,
            &sender,
        )
        .with(&job.id, &[]);
        let cap = job.capability.as_str();
        let choices = match self
            .choose(cap, Some(BYOC_MODEL), BYOC_MODEL, request.clone())
            .await
        {
            Ok(c) => c,
            Err(_) => {
                self.discovery.refresh().await;
                self.choose(cap, Some(BYOC_MODEL), BYOC_MODEL, request)
                    .await
                    .map_err(|e| {
                        let why = e.message();
                        err(
                            503,
                            format!("no orchestrator offers capability `{cap}`: {why}"),
                        )
                    })?
            }
        };
        let filter = job.params().map_err(|e| err(400, e))?.orchestrators;
        let include: Vec<String> = filter.include.iter().map(|u| normalize(u)).collect();
        let exclude: Vec<String> = filter.exclude.iter().map(|u| normalize(u)).collect();
        let kept: VecDeque<Choice> = choices
            .into_iter()
            .filter(|c| include.is_empty() || include.contains(&c.url))
            .filter(|c| !exclude.contains(&c.url))
            .collect();
        if kept.is_empty() {
            return Err(err(
                503,
                format!(
                    "no orchestrator offering `{cap}` is left after the job's include/exclude lists"
                ),
            ));
        }
        Ok(kept)
    }

    /// The model chosen for `cap` (see [`Dispatcher::choose`]) and the orchestrators offering
    /// it at or below the max price, as router candidates. Discovery's lock is held only in
    /// here, never across the router call.
    fn candidates(
        &self,
        cap: &str,
        named_model: Option<&str>,
        default_model: &str,
    ) -> Result<Candidates, AiHttpError> {
        let known = self.discovery.known();
        let now = Instant::now();
        let offers: Vec<Offer<'_>> = known
            .iter()
            .filter_map(|(url, k)| k.info.as_ref().map(|i| (url, k, i)))
            .flat_map(|(url, k, info)| {
                info.models
                    .iter()
                    .filter(|m| m.capability == cap)
                    .map(move |m| (url, k, m))
            })
            .collect();
        if offers.is_empty() {
            let reachable = known.values().filter(|k| k.info.is_some()).count();
            return Err(err(
                503,
                format!(
                    "no orchestrator offers {cap} ({} known, {reachable} reachable)",
                    known.len()
                ),
            ));
        }
        let model = pick_model(&offers, cap, named_model, default_model)?;
        let max = self.config.max_price(cap, &model);
        let mut cheapest: Option<UnitPrice> = None;
        let mut fresh = Vec::new();
        let mut suspended = Vec::new();
        for (url, k, m) in offers.iter().filter(|(_, _, m)| m.model_id == model) {
            let price = offered_price(m);
            if cheapest.is_none_or(|c| price.cmp_rate(&c).is_lt()) {
                cheapest = Some(price);
            }
            if max.is_some_and(|max| price.exceeds(&max)) {
                continue;
            }
            let candidate = candidate(cap, &model, url, k, m, price);
            if k.suspended(now) {
                suspended.push(candidate);
            } else {
                fresh.push(candidate);
            }
        }
        if fresh.is_empty() && suspended.is_empty() {
            return Err(none_within_max(cap, &model, max, cheapest));
        }
        // Candidates are owned now: let refreshes and stats in before the router runs.
        Ok(Candidates {
            model,
            fresh,
            suspended,
        })
    }

    /// Order candidates for `job` (running `model`) with the router component; warm models
    /// first (stable). The router runs off the async workers. A router that answers with one
    /// of its contract's errors, or ranks no candidate, refuses the request (503 with its
    /// reason); one that traps, runs past its deadline, runs out of memory or answers garbage
    /// is overridden by price order.
    async fn rank(
        &self,
        job: JobRequest,
        model: &str,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, AiHttpError> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let router = &self.config.router;
        let ranked = match self.registry.get_world(router, WorldKind::Router) {
            Ok(r) => r.select_async(job, candidates.clone()).await,
            Err(e) => Err(e),
        };
        let mut ordered: Vec<Candidate> = match ranked {
            Ok(ranking) if ranking.is_empty() => {
                return Err(err(
                    503,
                    format!(
                        "the router component `{router}` ranked none of the {} candidate orchestrators",
                        candidates.len()
                    ),
                ));
            }
            Ok(ranking) => ranking
                .into_iter()
                .filter_map(|i| candidates.get(i as usize).cloned())
                .collect(),
            Err(weir_runtime::RuntimeError::Call {
                failure: weir_runtime::CallFailure::Guest(refusal),
                ..
            }) => {
                let reason = weir_runtime::describe_guest_error(&refusal);
                tracing::info!(component = %router, reason = %reason, "router refused the request");
                return Err(err(
                    503,
                    format!("the router component `{router}` refused the request: {reason}"),
                ));
            }
            Err(e) => {
                tracing::error!(component = %router, error = %e, "router failed; falling back to price order");
                self.metrics
                    .router_failures
                    .with_label_values(&[router.as_str()])
                    .inc();
                let mut c = candidates;
                c.sort_by(|a, b| {
                    unit(&a.price)
                        .cmp_rate(&unit(&b.price))
                        .then(a.url.cmp(&b.url))
                });
                c
            }
        };
        ordered.sort_by_key(|c| !c.warm_models.iter().any(|w| w == model));
        Ok(ordered)
    }
}

/// The model a call for `cap` runs: the one the client named (which must be offered), else
/// `default_model` when offered, else the one most orchestrators offer.
fn pick_model(
    offers: &[Offer<'_>],
    cap: &str,
    named_model: Option<&str>,
    default_model: &str,
) -> Result<String, AiHttpError> {
    if let Some(model) = named_model {
        if !offers.iter().any(|(_, _, m)| m.model_id == model) {
            let mut offered: Vec<&str> =
                offers.iter().map(|(_, _, m)| m.model_id.as_str()).collect();
            offered.sort_unstable();
            offered.dedup();
            return Err(err(
                503,
                format!(
                    "no orchestrator offers model `{model}` for {cap} (offered: {})",
                    offered.join(", ")
                ),
            ));
        }
        return Ok(model.to_owned());
    }
    if offers.iter().any(|(_, _, m)| m.model_id == default_model) {
        return Ok(default_model.to_owned());
    }
    let mut counts = BTreeMap::<&str, usize>::new();
    for (_, _, m) in offers {
        *counts.entry(m.model_id.as_str()).or_default() += 1;
    }
    Ok(counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(m, _)| m.to_owned())
        .unwrap_or_default())
}

/// The price of a model offer.
fn offered_price(m: &InfoModel) -> UnitPrice {
    UnitPrice {
        price_per_unit: m.price.price_per_unit,
        pixels_per_unit: m.price.pixels_per_unit.max(1),
    }
}

/// An offer as the router component sees it.
fn candidate(
    cap: &str,
    model: &str,
    url: &str,
    k: &Known,
    m: &InfoModel,
    price: UnitPrice,
) -> Candidate {
    let stats = k
        .stats
        .get(&account(cap, model))
        .cloned()
        .unwrap_or_default();
    let info = k.info.as_ref();
    Candidate {
        id: url.to_owned(),
        url: url.to_owned(),
        price: Price {
            price_per_unit: price.price_per_unit,
            pixels_per_unit: price.pixels_per_unit,
            currency: m.price.currency.clone(),
        },
        latency_ms: stats.latency_ms.round() as u32,
        success_bp: stats.success_bp(),
        region: info.map(|i| i.region.clone()).unwrap_or_default(),
        gpu_class: info.map(|i| i.gpu_class.clone()).unwrap_or_default(),
        warm_models: if m.warm {
            vec![model.to_owned()]
        } else {
            Vec::new()
        },
        capacity: m.capacity,
        in_flight: m.in_flight,
    }
}

/// Why no orchestrator is left for `cap`/`model`: none offers it, or none at or below `max`.
fn none_within_max(
    cap: &str,
    model: &str,
    max: Option<UnitPrice>,
    cheapest: Option<UnitPrice>,
) -> AiHttpError {
    let (Some(max), Some(c)) = (max, cheapest) else {
        return err(503, format!("no orchestrator offers {cap}/{model}"));
    };
    err(
        503,
        format!(
            "no orchestrator offers {cap}/{model} at or below the max price {}/{} (cheapest offer: {}/{})",
            max.price_per_unit, max.pixels_per_unit, c.price_per_unit, c.pixels_per_unit
        ),
    )
}

/// A router price as a unit price.
fn unit(p: &Price) -> UnitPrice {
    UnitPrice {
        price_per_unit: p.price_per_unit,
        pixels_per_unit: p.pixels_per_unit.max(1),
    }
}
