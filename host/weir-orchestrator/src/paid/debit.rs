//! Paying time-priced work as it runs: debits from a balance credited ahead.

use weir_payments::{Ledger, UnitPrice};
use weir_protocol::byoc::BYOC_MODEL;

/// What a debit of stream or job time did.
pub(crate) enum Debited {
    /// `cost` was charged; `balance` is left.
    Charged { cost: u64, balance: u64 },
    /// The balance (`balance`) was short of `needed`; nothing was charged.
    Short { balance: u64, needed: u64 },
    /// The ledger failed (logged); nothing was charged.
    Failed,
}

/// The time a job or stream was charged so far at one price and what it cost. Each debit
/// prices the whole time and takes off what was charged before, so rounding up happens once,
/// not once per debit (1,001 ms at 5 per second is 6 alone, but 5 of every second together).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meter {
    /// Time charged.
    pub(crate) ms: u64,
    /// What it cost.
    pub(crate) charged: u64,
}

impl Meter {
    /// What `ms` more at `price_per_ms` costs beyond what is charged already.
    pub(crate) fn due(&self, ms: u64, price_per_ms: UnitPrice) -> u64 {
        let total = weir_payments::cost(self.ms.saturating_add(ms), price_per_ms);
        total.unwrap_or(u64::MAX).saturating_sub(self.charged)
    }
}

/// Charge `ms` more of time at `price_per_ms` to `sender`'s balance in `account`, as ledger
/// entry `id` (unique per debit), and count it on `meter`. Live streams and streamed batch
/// answers of BYOC capabilities are paid this way, interval by interval, from the balance
/// their payments credited.
pub(crate) async fn debit_time(
    ledger: &dyn Ledger,
    id: &str,
    (sender, account): (&str, &str),
    meter: &mut Meter,
    price_per_ms: UnitPrice,
    ms: u64,
) -> Debited {
    let cost = meter.due(ms, price_per_ms);
    let debited = debit(ledger, id, sender, account, ms, cost).await;
    if let Debited::Charged { cost, .. } = debited {
        meter.ms = meter.ms.saturating_add(ms);
        meter.charged = meter.charged.saturating_add(cost);
    }
    debited
}

/// Charge `cost` (for `ms` of time) to the balance; nothing to charge reads the balance.
async fn debit(
    ledger: &dyn Ledger,
    id: &str,
    sender: &str,
    account: &str,
    ms: u64,
    cost: u64,
) -> Debited {
    if cost == 0 {
        return match ledger.balance(sender, account).await {
            Ok(b) => Debited::Charged {
                cost: 0,
                balance: b.amount,
            },
            Err(e) => {
                tracing::error!(debit = %id, error = %e, "could not read a balance");
                Debited::Failed
            }
        };
    }
    match ledger
        .reserve(id, sender, account, BYOC_MODEL, ms, cost)
        .await
    {
        Ok(_) => match ledger.settle_charged(id, cost, None).await {
            Ok(balance) => Debited::Charged {
                cost,
                balance: balance.amount,
            },
            Err(e) => {
                tracing::error!(debit = %id, error = %e, "could not settle a debit");
                Debited::Failed
            }
        },
        Err(weir_payments::LedgerError::Insufficient {
            balance, needed, ..
        }) => Debited::Short { balance, needed },
        Err(e) => {
            tracing::error!(debit = %id, error = %e, "could not debit");
            Debited::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up_happens_once_over_many_debits() {
        let per_ms = UnitPrice {
            price_per_unit: 5,
            pixels_per_unit: 1000,
        };
        let mut meter = Meter::default();
        for _ in 0..10 {
            let due = meter.due(1001, per_ms);
            meter.ms += 1001;
            meter.charged += due;
        }
        // 10,010 ms at 5 per second: 50.05, rounded up once.
        assert_eq!(meter.charged, 51);
        // Nothing more is due for no more time.
        assert_eq!(meter.due(0, per_ms), 0);
    }
}
