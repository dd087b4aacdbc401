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

/// Charge `ms` of time at `price_per_ms` to `sender`'s balance in `account`, as ledger entry
/// `id` (unique per debit). Live streams and streamed batch answers of BYOC capabilities are
/// paid this way, interval by interval, from the balance their payments credited.
pub(crate) async fn debit_time(
    ledger: &dyn Ledger,
    id: &str,
    sender: &str,
    account: &str,
    price_per_ms: UnitPrice,
    ms: u64,
) -> Debited {
    let cost = weir_payments::cost(ms, price_per_ms).unwrap_or(u64::MAX);
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
