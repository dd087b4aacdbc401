//! A pricing component that misbehaves on purpose, chosen by its `mode` config value:
//! `ok` (quotes 1 per pixel in `WEI`), `loop` (never returns), `alloc` (allocates without
//! bound), `trap` (panics, writing to stderr first), `garbage` (quotes 0 pixels per unit),
//! `error` (returns a guest error). With `scope = "jobs"` it misbehaves only for quotes of
//! jobs (`units > 0`) and quotes normally for `/info` (which asks for 0 units).

use weir_sdk::pricing::{Error, Guest, JobRequest, Price, QuoteContext};

struct Misbehaving;

impl Guest for Misbehaving {
    fn quote(request: JobRequest, context: QuoteContext) -> Result<Price, Error> {
        let mode = weir_sdk::config::get("mode").unwrap_or_else(|| "ok".to_owned());
        let jobs_only = weir_sdk::config::get("scope").is_some_and(|s| s == "jobs");
        let mode = if jobs_only && request.units == 0 {
            "ok".to_owned()
        } else {
            mode
        };
        match mode.as_str() {
            "ok" => Ok(Price {
                price_per_unit: 1,
                pixels_per_unit: 1,
                currency: "WEI".to_owned(),
            }),
            "loop" => {
                let mut x = u64::from(context.in_flight);
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("misbehaving pricing: asked to trap"),
            "garbage" => Ok(Price {
                price_per_unit: 1,
                pixels_per_unit: 0,
                currency: "WEI".to_owned(),
            }),
            "error" => Err(Error::Unsupported("asked to refuse".to_owned())),
            other => Err(Error::Config(format!("unknown mode {other}"))),
        }
    }
}

weir_sdk::pricing::export_pricing!(Misbehaving);
