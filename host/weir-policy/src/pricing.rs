//! Default pricing: a price per unit / pixels per unit per capability and model, from config.
//!
//! Settings: `currency` (default `WEI`), `default` (price for anything not listed), and
//! `price.<capability>` / `price.<capability>.<model>`; each price is `PPU` or `PPU/UNITS`
//! (e.g. `"4768371/1"` or `"5/1000"`). The most specific entry wins.

use std::collections::BTreeMap;

use crate::parse_setting;

/// A price: `price_per_unit` base units buy `pixels_per_unit` units of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPrice {
    /// Base units per `pixels_per_unit`.
    pub price_per_unit: u64,
    /// Units of work (at least 1).
    pub pixels_per_unit: u64,
}

/// The parsed price table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    /// Currency label of every price.
    pub currency: String,
    default: Option<UnitPrice>,
    by_capability: BTreeMap<String, UnitPrice>,
    by_model: BTreeMap<(String, String), UnitPrice>,
}

fn parse_price(key: &str, raw: &str) -> Result<UnitPrice, String> {
    let (ppu, units) = match raw.split_once('/') {
        Some((p, u)) => (parse_setting::<u64>(key, p)?, parse_setting::<u64>(key, u)?),
        None => (parse_setting::<u64>(key, raw)?, 1),
    };
    if units == 0 {
        return Err(format!(
            "config `{key}` = {raw:?}: pixels per unit must be at least 1"
        ));
    }
    Ok(UnitPrice {
        price_per_unit: ppu,
        pixels_per_unit: units,
    })
}

impl PriceTable {
    /// Build from `key = value` settings; unknown keys are an error.
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut table = PriceTable {
            currency: "WEI".to_owned(),
            ..PriceTable::default()
        };
        for (key, raw) in settings {
            if key == "currency" {
                let c = raw.trim();
                if c.is_empty() || c.len() > 16 || !c.chars().all(|ch| ch.is_ascii_graphic()) {
                    return Err(format!(
                        "config `currency` = {raw:?} must be 1-16 printable ASCII characters"
                    ));
                }
                table.currency = c.to_owned();
            } else if key == "default" {
                table.default = Some(parse_price(key, raw)?);
            } else if let Some(rest) = key.strip_prefix("price.") {
                let price = parse_price(key, raw)?;
                match rest.split_once('.') {
                    Some((cap, model)) if !cap.is_empty() && !model.is_empty() => {
                        table
                            .by_model
                            .insert((cap.to_owned(), model.to_owned()), price);
                    }
                    None if !rest.is_empty() => {
                        table.by_capability.insert(rest.to_owned(), price);
                    }
                    _ => {
                        return Err(format!(
                            "config key `{key}` must be price.<capability>[.<model>]"
                        ))
                    }
                }
            } else {
                return Err(format!("unknown config key `{key}`"));
            }
        }
        Ok(table)
    }

    /// The price for `capability` and `model` (empty model = capability price).
    pub fn quote(&self, capability: &str, model: &str) -> Result<UnitPrice, String> {
        if !model.is_empty() {
            if let Some(p) = self
                .by_model
                .get(&(capability.to_owned(), model.to_owned()))
            {
                return Ok(*p);
            }
        }
        self.by_capability
            .get(capability)
            .or(self.default.as_ref())
            .copied()
            .ok_or_else(|| {
                format!("no price is configured for capability `{capability}` model `{model}`")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_price_wins() {
        let t = PriceTable::from_settings([
            ("currency", "USD-micros"),
            ("default", "7"),
            ("price.text-to-image", "5/1000"),
            ("price.text-to-image.sdxl", "9/1000"),
        ])
        .expect("valid");
        assert_eq!(t.currency, "USD-micros");
        assert_eq!(
            t.quote("text-to-image", "sdxl").map(|p| p.price_per_unit),
            Ok(9)
        );
        assert_eq!(
            t.quote("text-to-image", "other"),
            Ok(UnitPrice {
                price_per_unit: 5,
                pixels_per_unit: 1000
            })
        );
        assert_eq!(
            t.quote("upscale", ""),
            Ok(UnitPrice {
                price_per_unit: 7,
                pixels_per_unit: 1
            })
        );
    }

    #[test]
    fn errors_are_clear() {
        assert!(PriceTable::from_settings([("price.x", "1/0")])
            .unwrap_err()
            .contains("at least 1"));
        assert!(PriceTable::from_settings([("prize.x", "1")])
            .unwrap_err()
            .contains("unknown config key"));
        assert!(PriceTable::from_settings([("price.", "1")]).is_err());
        let t = PriceTable::from_settings([("price.a", "1")]).expect("valid");
        assert!(t.quote("b", "m").unwrap_err().contains("`b`"));
    }
}
