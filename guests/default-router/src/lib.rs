//! Weir's default router: ranks candidates by a weighted score of price, latency, success rate
//! and warm models, after a max-price filter (see `weir_policy::router`).

use std::sync::OnceLock;

use weir_policy::router::{rank, Offer, RankError, RouterConfig};
use weir_sdk::router::{Candidate, Error, Guest, JobRequest};

struct DefaultRouter;

/// Config is fixed for a component version, so it is parsed once per instance.
fn config() -> Result<&'static RouterConfig, Error> {
    static CONFIG: OnceLock<Result<RouterConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let all = weir_sdk::config::all();
            RouterConfig::from_settings(all.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
        .as_ref()
        .map_err(|e| Error::Config(e.clone()))
}

impl Guest for DefaultRouter {
    fn select(request: JobRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>, Error> {
        let cfg = config()?;
        let offers: Vec<Offer<'_>> = candidates
            .iter()
            .map(|c| Offer {
                id: &c.id,
                price_per_unit: c.price.price_per_unit,
                pixels_per_unit: c.price.pixels_per_unit,
                latency_ms: c.latency_ms,
                success_bp: c.success_bp,
                warm: !request.model.is_empty() && c.warm_models.contains(&request.model),
                capacity: c.capacity,
                in_flight: c.in_flight,
            })
            .collect();
        rank(&offers, cfg).map_err(|e| match e {
            RankError::Empty => Error::NoCandidates(e.to_string()),
            RankError::AllFiltered(_) => Error::NoCandidates(e.to_string()),
        })
    }
}

weir_sdk::router::export_router!(DefaultRouter);
