//! Default routing: a weighted score of price, latency, success rate and warm models, after a
//! max-price filter, with deterministic tie-breaking.

use std::cmp::Ordering;

use crate::{cmp_unit_price, parse_setting};

/// Weights and limits of the default router, from its `[config]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Weight of a low price (`price_weight`, default 40).
    pub price_weight: u64,
    /// Weight of a low latency (`latency_weight`, default 30).
    pub latency_weight: u64,
    /// Weight of a high success rate (`success_weight`, default 20).
    pub success_weight: u64,
    /// Weight of holding the requested model warm (`warm_weight`, default 10).
    pub warm_weight: u64,
    /// Skip candidates whose unit price exceeds `max_price_per_unit / max_price_pixels_per_unit`.
    pub max_price: Option<(u64, u64)>,
    /// Drop candidates the last discovery saw at capacity (`skip_full`, default false). By
    /// default they rank after every other candidate instead: the count is a snapshot from the
    /// last refresh, and the orchestrator's own answer (busy, waited out by the gateway) is
    /// the accurate one.
    pub skip_full: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            price_weight: 40,
            latency_weight: 30,
            success_weight: 20,
            warm_weight: 10,
            max_price: None,
            skip_full: false,
        }
    }
}

impl RouterConfig {
    /// Build from `key = value` settings; unknown keys are an error so typos surface.
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut cfg = RouterConfig::default();
        let mut max_ppu = None;
        let mut max_units = 1u64;
        for (key, raw) in settings {
            match key {
                "price_weight" => cfg.price_weight = parse_setting(key, raw)?,
                "latency_weight" => cfg.latency_weight = parse_setting(key, raw)?,
                "success_weight" => cfg.success_weight = parse_setting(key, raw)?,
                "warm_weight" => cfg.warm_weight = parse_setting(key, raw)?,
                "max_price_per_unit" => max_ppu = Some(parse_setting(key, raw)?),
                "max_price_pixels_per_unit" => max_units = parse_setting(key, raw)?,
                "skip_full" => cfg.skip_full = parse_setting(key, raw)?,
                other => return Err(format!("unknown config key `{other}`")),
            }
        }
        if max_units == 0 {
            return Err("config `max_price_pixels_per_unit` must be at least 1".to_owned());
        }
        let total = [
            cfg.price_weight,
            cfg.latency_weight,
            cfg.success_weight,
            cfg.warm_weight,
        ];
        if total.iter().any(|w| *w > 1_000_000) || total.iter().sum::<u64>() == 0 {
            return Err("weights must be 0..=1000000 and not all zero".to_owned());
        }
        cfg.max_price = max_ppu.map(|p| (p, max_units));
        Ok(cfg)
    }
}

/// What the router needs to know of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer<'a> {
    /// Orchestrator id (tie-breaker of last resort).
    pub id: &'a str,
    /// Quoted price per `pixels_per_unit` units.
    pub price_per_unit: u64,
    /// Units one `price_per_unit` buys.
    pub pixels_per_unit: u64,
    /// Observed latency, ms (0 = unknown, scored as the worst).
    pub latency_ms: u32,
    /// Success rate in basis points.
    pub success_bp: u32,
    /// Holds the requested model warm.
    pub warm: bool,
    /// Concurrent jobs accepted (0 = unknown, never considered full).
    pub capacity: u32,
    /// Jobs running now.
    pub in_flight: u32,
}

/// Why no ranking could be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankError {
    /// Nothing to rank.
    Empty,
    /// Every candidate was filtered out; the text says by what.
    AllFiltered(String),
}

impl std::fmt::Display for RankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RankError::Empty => f.write_str("no candidates were offered"),
            RankError::AllFiltered(why) => write!(f, "every candidate was filtered out: {why}"),
        }
    }
}

/// A criterion scaled to 0..=10000 across the candidates: 10000 for the best, 0 for the worst.
fn scale(value: u128, min: u128, max: u128, lower_is_better: bool) -> u64 {
    if max == min {
        return 10_000;
    }
    let pos = if lower_is_better {
        max - value
    } else {
        value - min
    };
    (pos * 10_000 / (max - min)) as u64
}

/// Unit price in micro-base-units per unit of work, for scoring only (money is compared exactly).
fn scoring_price(o: &Offer<'_>) -> u128 {
    u128::from(o.price_per_unit) * 1_000_000 / u128::from(o.pixels_per_unit.max(1))
}

/// Whether the offer's last known load fills its capacity (unknown capacity never does).
fn is_full(o: &Offer<'_>) -> bool {
    o.capacity > 0 && o.in_flight >= o.capacity
}

/// Rank `offers`: indices, best first, those seen at capacity after the rest. Deterministic
/// for equal inputs.
pub fn rank(offers: &[Offer<'_>], cfg: &RouterConfig) -> Result<Vec<u32>, RankError> {
    if offers.is_empty() {
        return Err(RankError::Empty);
    }
    let (mut too_expensive, mut full) = (0usize, 0usize);
    let eligible: Vec<usize> = (0..offers.len())
        .filter(|&i| {
            let o = &offers[i];
            if let Some((max_ppu, max_units)) = cfg.max_price {
                if cmp_unit_price(o.price_per_unit, o.pixels_per_unit, max_ppu, max_units)
                    == Ordering::Greater
                {
                    too_expensive += 1;
                    return false;
                }
            }
            if cfg.skip_full && is_full(o) {
                full += 1;
                return false;
            }
            true
        })
        .collect();
    if eligible.is_empty() {
        return Err(RankError::AllFiltered(format!(
            "{too_expensive} above the max price, {full} at capacity"
        )));
    }

    let prices: Vec<u128> = eligible
        .iter()
        .map(|&i| scoring_price(&offers[i]))
        .collect();
    // Unknown latency (0) scores as the slowest known one.
    let worst_latency = eligible
        .iter()
        .map(|&i| offers[i].latency_ms)
        .max()
        .unwrap_or(0);
    let latencies: Vec<u128> = eligible
        .iter()
        .map(|&i| match offers[i].latency_ms {
            0 => u128::from(worst_latency),
            l => u128::from(l),
        })
        .collect();
    let (pmin, pmax) = min_max(&prices);
    let (lmin, lmax) = min_max(&latencies);

    let mut scored: Vec<(u64, usize)> = eligible
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let o = &offers[i];
            let score = cfg.price_weight * scale(prices[k], pmin, pmax, true)
                + cfg.latency_weight * scale(latencies[k], lmin, lmax, true)
                + cfg.success_weight * u64::from(o.success_bp.min(10_000))
                + cfg.warm_weight * if o.warm { 10_000 } else { 0 };
            (score, i)
        })
        .collect();
    scored.sort_by(|&(sa, a), &(sb, b)| {
        let (oa, ob) = (&offers[a], &offers[b]);
        is_full(oa)
            .cmp(&is_full(ob))
            .then_with(|| sb.cmp(&sa))
            .then_with(|| {
                cmp_unit_price(
                    oa.price_per_unit,
                    oa.pixels_per_unit,
                    ob.price_per_unit,
                    ob.pixels_per_unit,
                )
            })
            .then_with(|| oa.id.cmp(ob.id))
            .then_with(|| a.cmp(&b))
    });
    Ok(scored.into_iter().map(|(_, i)| i as u32).collect())
}

fn min_max(values: &[u128]) -> (u128, u128) {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, ppu: u64, latency: u32, success: u32) -> Offer<'_> {
        Offer {
            id,
            price_per_unit: ppu,
            pixels_per_unit: 1,
            latency_ms: latency,
            success_bp: success,
            warm: false,
            capacity: 4,
            in_flight: 0,
        }
    }

    #[test]
    fn cheaper_faster_more_reliable_wins() {
        let offers = [
            offer("a", 10, 100, 9000),
            offer("b", 5, 50, 10000),
            offer("c", 20, 200, 5000),
        ];
        assert_eq!(rank(&offers, &RouterConfig::default()), Ok(vec![1, 0, 2]));
    }

    #[test]
    fn max_price_filters_exactly_and_reports_why() {
        let cfg = RouterConfig::from_settings([
            ("max_price_per_unit", "10"),
            ("max_price_pixels_per_unit", "2"),
        ])
        .expect("valid");
        // 5/1 is above 10/2 = 5? equal: kept. 6/1 is above: dropped.
        let offers = [offer("a", 5, 10, 10000), offer("b", 6, 10, 10000)];
        assert_eq!(rank(&offers, &cfg), Ok(vec![0]));
        let err = rank(&offers[1..], &cfg).unwrap_err();
        assert_eq!(
            err,
            RankError::AllFiltered("1 above the max price, 0 at capacity".into())
        );
    }

    #[test]
    fn ties_break_by_price_then_id() {
        let offers = [offer("z", 5, 10, 10000), offer("a", 5, 10, 10000)];
        assert_eq!(rank(&offers, &RouterConfig::default()), Ok(vec![1, 0]));
    }

    #[test]
    fn warm_and_capacity() {
        let mut warm = offer("w", 10, 10, 10000);
        warm.warm = true;
        let cold = offer("c", 10, 10, 10000);
        assert_eq!(
            rank(&[cold.clone(), warm], &RouterConfig::default()),
            Ok(vec![1, 0])
        );
        // Seen at capacity: the cheapest, fastest offer ranks last by default, and is dropped
        // with `skip_full`.
        let mut full = offer("f", 1, 1, 10000);
        full.in_flight = 4;
        let offers = [full, cold];
        assert_eq!(rank(&offers, &RouterConfig::default()), Ok(vec![1, 0]));
        assert_eq!(rank(&offers[..1], &RouterConfig::default()), Ok(vec![0]));
        let skip = RouterConfig::from_settings([("skip_full", "true")]).expect("valid");
        assert_eq!(rank(&offers, &skip), Ok(vec![1]));
        assert_eq!(
            rank(&offers[..1], &skip),
            Err(RankError::AllFiltered(
                "0 above the max price, 1 at capacity".into()
            ))
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(RouterConfig::from_settings([("price_weight", "x")])
            .unwrap_err()
            .contains("price_weight"));
        assert!(RouterConfig::from_settings([("pryce_weight", "1")])
            .unwrap_err()
            .contains("pryce_weight"));
        assert!(RouterConfig::from_settings([("max_price_pixels_per_unit", "0")]).is_err());
        assert_eq!(rank(&[], &RouterConfig::default()), Err(RankError::Empty));
    }
}
