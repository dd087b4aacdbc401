//! {{name}}: a pricing policy (world `weir:host/pricing`, export `weir:host/quoting`).
//!
//! Quotes the manifest's `price_per_unit` (base units of `currency` per `pixels_per_unit`
//! units of work), doubled once the node is at least `busy_pct` percent loaded.

use weir_sdk::config::parse_or;
use weir_sdk::pricing::{Error, Guest, JobRequest, Price, QuoteContext};

/// The price per unit for `base` when `in_flight` of `capacity` jobs run: doubled at or above
/// `busy_pct` percent load.
pub fn price_per_unit(base: u64, in_flight: u32, capacity: u32, busy_pct: u32) -> u64 {
    let load = u64::from(in_flight) * 100 / u64::from(capacity.max(1));
    if load >= u64::from(busy_pct) {
        base.saturating_mul(2)
    } else {
        base
    }
}

// Natively (in `cargo test`) nothing exports it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Pricing;

impl Guest for Pricing {
    fn quote(_request: JobRequest, context: QuoteContext) -> Result<Price, Error> {
        let base: u64 = parse_or("price_per_unit", 1000)?;
        let pixels_per_unit: u64 = parse_or("pixels_per_unit", 1)?;
        let busy_pct: u32 = parse_or("busy_pct", 80)?;
        let currency = weir_sdk::config::get("currency").unwrap_or_else(|| "WEI".into());
        if pixels_per_unit == 0 {
            return Err(Error::Config("pixels_per_unit must be at least 1".into()));
        }
        Ok(Price {
            price_per_unit: price_per_unit(base, context.in_flight, context.capacity, busy_pct),
            pixels_per_unit,
            currency,
        })
    }
}

// Exported only in the component: `cargo test` builds natively, without the exports.
#[cfg(target_arch = "wasm32")]
weir_sdk::pricing::export_pricing!(Pricing);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_doubles_once_the_node_is_busy() {
        assert_eq!(price_per_unit(1000, 0, 4, 80), 1000);
        assert_eq!(price_per_unit(1000, 3, 4, 80), 1000);
        assert_eq!(price_per_unit(1000, 4, 4, 80), 2000);
        // No capacity counts as full.
        assert_eq!(price_per_unit(1000, 1, 0, 80), 2000);
    }
}
