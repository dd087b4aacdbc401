//! Weir's payments.
//!
//! - [`cost`]: what `units` of work cost at a price, exactly (rounded up, never a float).
//! - [`Ledger`]: the persistent ledger, a trait with two backends, [`SqliteLedger`] (WAL, the
//!   single-node default) and [`PostgresLedger`] (shared by several gateways or orchestrators),
//!   chosen by URL with [`open_ledger`]. The orchestrator side keeps balances per
//!   (sender, capability), reserves the cost of a job before running it and settles or releases
//!   the reservation afterwards, so nobody is charged without a result and a crash never loses
//!   a credit. The gateway side records what it holds with and spent at each orchestrator per
//!   (orchestrator, capability, model). Every movement carries a caller-chosen id: a retried
//!   credit or spend applies once.
//! - [`credit`]: signed off-chain payments (the `Weir-Payment` header) and the sender's wallet.
//! - [`trust`]: which senders an orchestrator takes credits from.
//! - [`LedgerSnapshot`]: balances and totals of the node's ledgers copied into memory and kept
//!   current, for components' read-only `payments` view (no database read per call).

pub mod credit;
mod ledger;
mod snapshot;
pub mod trust;

pub use ledger::{
    open as open_ledger, redact_url, Balance, BalanceRow, Durability, Ledger, LedgerError,
    LedgerOptions, PostgresLedger, Reservation, SqliteLedger, TotalRow, Totals,
};
pub use snapshot::{LedgerSnapshot, SnapshotView};

/// A price: `price_per_unit` base units buy `pixels_per_unit` units of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPrice {
    /// Base units per `pixels_per_unit`.
    pub price_per_unit: u64,
    /// Units of work one `price_per_unit` buys (at least 1).
    pub pixels_per_unit: u64,
}

impl UnitPrice {
    /// Compares the rates of two prices (base units per unit of work), exactly: `1/2` and
    /// `2/4` are equal. Structural equality (`==`) still compares the fields.
    pub fn cmp_rate(&self, other: &UnitPrice) -> std::cmp::Ordering {
        let lhs = u128::from(self.price_per_unit) * u128::from(other.pixels_per_unit);
        let rhs = u128::from(other.price_per_unit) * u128::from(self.pixels_per_unit);
        lhs.cmp(&rhs)
    }

    /// Whether this price's rate is higher than `limit`'s.
    pub fn exceeds(&self, limit: &UnitPrice) -> bool {
        self.cmp_rate(limit) == std::cmp::Ordering::Greater
    }
}

/// The cost of `units` at `price`, in base units, rounded up; `None` on overflow of `i64`
/// (the ledger's range) or a zero unit size.
pub fn cost(units: u64, price: UnitPrice) -> Option<u64> {
    if price.pixels_per_unit == 0 {
        return None;
    }
    let total = u128::from(units) * u128::from(price.price_per_unit);
    let amount = total.div_ceil(u128::from(price.pixels_per_unit));
    u64::try_from(amount).ok().filter(|a| *a <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_compare_exactly_across_unit_sizes() {
        let p = |ppu, px| UnitPrice {
            price_per_unit: ppu,
            pixels_per_unit: px,
        };
        use std::cmp::Ordering::*;
        assert_eq!(p(1, 2).cmp_rate(&p(2, 4)), Equal);
        assert_eq!(p(3, 1).cmp_rate(&p(2, 1)), Greater);
        assert_eq!(p(1, 3).cmp_rate(&p(1, 2)), Less);
        assert_eq!(p(u64::MAX, 1).cmp_rate(&p(u64::MAX - 1, 1)), Greater);
        assert!(p(5, 4).exceeds(&p(1, 1)));
        assert!(!p(4, 4).exceeds(&p(1, 1)));
    }

    #[test]
    fn cost_is_exact_and_rounds_up() {
        let p = |ppu, px| UnitPrice {
            price_per_unit: ppu,
            pixels_per_unit: px,
        };
        assert_eq!(cost(512 * 512, p(4_768_371, 1_000_000)), Some(1_250_000));
        assert_eq!(cost(3, p(1, 2)), Some(2));
        assert_eq!(cost(0, p(5, 1)), Some(0));
        assert_eq!(cost(1, p(5, 0)), None);
        assert_eq!(cost(u64::MAX, p(u64::MAX, 1)), None);
        assert_eq!(cost(u64::MAX, p(1, u64::MAX)), Some(1));
    }
}
