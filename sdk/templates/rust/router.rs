//! {{name}}: a routing policy (world `weir:host/router`, export `weir:host/routing`).
//!
//! Ranks the orchestrators that may take a job: cheapest price per unit of work first, then
//! lowest latency; drops those dearer than the manifest's `max_price_per_unit` when set.

use weir_sdk::router::{Candidate, Error, Guest, JobRequest};

/// The candidates' indices, best first: within `max` (base units per unit of work) when
/// given, cheapest first, then lowest latency (0 = unknown, last), then id.
pub fn rank(candidates: &[Candidate], max: Option<u64>) -> Vec<u32> {
    // price/pixels compared exactly as price * other pixels: no division, no rounding.
    let per_unit = |c: &Candidate| {
        (
            u128::from(c.price.price_per_unit),
            u128::from(c.price.pixels_per_unit.max(1)),
        )
    };
    let mut order: Vec<u32> = (0..candidates.len() as u32)
        .filter(|&i| {
            let (price, pixels) = per_unit(&candidates[i as usize]);
            max.is_none_or(|max| price <= u128::from(max) * pixels)
        })
        .collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a as usize], &candidates[b as usize]);
        let ((pa, xa), (pb, xb)) = (per_unit(ca), per_unit(cb));
        let latency = |c: &Candidate| {
            if c.latency_ms == 0 {
                u32::MAX
            } else {
                c.latency_ms
            }
        };
        (pa * xb)
            .cmp(&(pb * xa))
            .then(latency(ca).cmp(&latency(cb)))
            .then(ca.id.cmp(&cb.id))
    });
    order
}

// Natively (in `cargo test`) nothing exports it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Router;

impl Guest for Router {
    fn select(request: JobRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>, Error> {
        let max = weir_sdk::config::get("max_price_per_unit")
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Error::Config(format!("max_price_per_unit `{v}` is not a number")))
            })
            .transpose()?;
        let order = rank(&candidates, max);
        if order.is_empty() {
            return Err(Error::NoCandidates(format!(
                "none of {} candidates for {} is within the max price",
                candidates.len(),
                request.capability
            )));
        }
        Ok(order)
    }
}

// Exported only in the component: `cargo test` builds natively, without the exports.
#[cfg(target_arch = "wasm32")]
weir_sdk::router::export_router!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::router::Price;

    fn candidate(
        id: &str,
        price_per_unit: u64,
        pixels_per_unit: u64,
        latency_ms: u32,
    ) -> Candidate {
        Candidate {
            id: id.into(),
            price: Price {
                price_per_unit,
                pixels_per_unit,
                currency: "WEI".into(),
            },
            latency_ms,
            url: format!("https://{id}.example"),
            success_bp: 10_000,
            region: String::new(),
            gpu_class: String::new(),
            warm_models: Vec::new(),
            capacity: 1,
            in_flight: 0,
        }
    }

    #[test]
    fn cheapest_per_unit_first_and_over_the_max_left_out() {
        let c = vec![
            candidate("a", 30, 10, 5),
            candidate("b", 2, 1, 50),
            candidate("c", 9, 1, 5),
        ];
        // a: 3 per unit, b: 2, c: 9.
        assert_eq!(rank(&c, None), vec![1, 0, 2]);
        assert_eq!(rank(&c, Some(3)), vec![1, 0]);
    }
}
