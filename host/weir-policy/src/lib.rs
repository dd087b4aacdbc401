//! The logic of Weir's default router and pricing policies.
//!
//! Plain Rust with no dependencies: the `default-router` and `default-pricing` components
//! (guests/, wasm32) wrap it for the WASM host, and `weir bench policy` (crate `weir-bench`)
//! compiles the very same code natively as the reference the guests are measured against.

pub mod pricing;
pub mod router;

use std::cmp::Ordering;

/// Compare two prices per unit of work (`a_ppu / a_units` against `b_ppu / b_units`) exactly,
/// by cross-multiplying in 128 bits. A zero unit count is treated as one.
pub fn cmp_unit_price(a_ppu: u64, a_units: u64, b_ppu: u64, b_units: u64) -> Ordering {
    let lhs = u128::from(a_ppu) * u128::from(b_units.max(1));
    let rhs = u128::from(b_ppu) * u128::from(a_units.max(1));
    lhs.cmp(&rhs)
}

/// Parse `key = value` settings into a typed value, naming the key on failure.
pub(crate) fn parse_setting<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("config `{key}` = {raw:?} is not a valid value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_price_comparison_is_exact() {
        assert_eq!(cmp_unit_price(1, 3, 1, 3), Ordering::Equal);
        assert_eq!(cmp_unit_price(2, 6, 1, 3), Ordering::Equal);
        assert_eq!(cmp_unit_price(1, 2, 1, 3), Ordering::Greater);
        assert_eq!(cmp_unit_price(u64::MAX, 1, u64::MAX, 2), Ordering::Greater);
        assert_eq!(cmp_unit_price(5, 0, 5, 1), Ordering::Equal);
    }
}
