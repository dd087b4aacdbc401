//! Weir's default pricing: a price per unit / pixels per unit per capability and model, from
//! config (see `weir_policy::pricing`).

use std::sync::OnceLock;

use weir_policy::pricing::PriceTable;
use weir_sdk::pricing::{Error, Guest, JobRequest, Price, QuoteContext};

struct DefaultPricing;

/// Config is fixed for a component version, so it is parsed once per instance.
fn table() -> Result<&'static PriceTable, Error> {
    static TABLE: OnceLock<Result<PriceTable, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let all = weir_sdk::config::all();
            PriceTable::from_settings(all.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
        .as_ref()
        .map_err(|e| Error::Config(e.clone()))
}

impl Guest for DefaultPricing {
    fn quote(request: JobRequest, _context: QuoteContext) -> Result<Price, Error> {
        let table = table()?;
        let p = table
            .quote(&request.capability, &request.model)
            .map_err(Error::InvalidRequest)?;
        Ok(Price {
            price_per_unit: p.price_per_unit,
            pixels_per_unit: p.pixels_per_unit,
            currency: table.currency.clone(),
        })
    }
}

weir_sdk::pricing::export_pricing!(DefaultPricing);
