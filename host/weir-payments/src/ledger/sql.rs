//! The ledger's SQL, written once for both backends: the steps of a transaction as functions
//! over [`Tx`], and [`Ledger`] for every [`Backend`], each method one transaction.
//!
//! Placeholders are `$N`, which SQLite and PostgreSQL both read; sums are cast to `BIGINT`
//! (PostgreSQL sums 64-bit integers into `NUMERIC`). A read that a later write in the same
//! transaction depends on locks its row where the database locks rows (`FOR UPDATE` on
//! PostgreSQL; SQLite's write transaction already holds the only write lock).

use std::time::Duration;

use super::tx::{op, Backend, Tx};
use super::{
    insufficient, now_ms, to_i64, to_u64, Balance, BalanceRow, Ledger, LedgerError, Reservation,
    TotalRow, Totals,
};

/// Apply credit `id`; `true` when applied now, `false` when it was already.
async fn credit_in(
    tx: &mut dyn Tx,
    id: &str,
    sender: &str,
    capability: &str,
    amount: u64,
) -> Result<bool, LedgerError> {
    let value = to_i64(amount)?;
    let inserted = tx
        .execute(
            "INSERT INTO entries (id, kind, party, capability, amount, state, created_ms, updated_ms)
             VALUES ($1, 'credit', $2, $3, $4, 'applied', $5, $5) ON CONFLICT (id) DO NOTHING",
            &[id.into(), sender.into(), capability.into(), value.into(), now_ms().into()],
        )
        .await?;
    if inserted == 0 {
        let same = tx
            .row(
                "SELECT 1 FROM entries WHERE id = $1 AND kind = 'credit' AND party = $2
                 AND capability = $3 AND amount = $4",
                &[id.into(), sender.into(), capability.into(), value.into()],
            )
            .await?;
        if same.is_none() {
            return Err(LedgerError::Conflict(id.to_owned()));
        }
        return Ok(false);
    }
    add_to_balance(tx, sender, capability, value).await?;
    Ok(true)
}

/// What a reservation is for.
struct Job {
    id: String,
    sender: String,
    capability: String,
    model: String,
    units: u64,
    amount: u64,
}

impl Job {
    fn new(id: &str, sender: &str, capability: &str, model: &str, units: u64, amount: u64) -> Job {
        let [id, sender, capability, model] = owned([id, sender, capability, model]);
        Job {
            id,
            sender,
            capability,
            model,
            units,
            amount,
        }
    }
}

/// Reserve `job.amount` for `job`, made by `owner`. A short balance is
/// [`LedgerError::Insufficient`], and the transaction is rolled back, undoing the entry
/// written here.
async fn reserve_in(tx: &mut dyn Tx, owner: &str, job: &Job) -> Result<Reservation, LedgerError> {
    let value = to_i64(job.amount)?;
    let now = now_ms();
    // The entry first: a concurrent reservation of the same id waits on it here.
    let inserted = tx
        .execute(
            "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms, owner)
             VALUES ($1, 'reservation', $2, $3, $4, $5, $6, 'reserved', $7, $7, $8)
             ON CONFLICT (id) DO NOTHING",
            &[
                (&job.id).into(),
                (&job.sender).into(),
                (&job.capability).into(),
                (&job.model).into(),
                to_i64(job.units)?.into(),
                value.into(),
                now.into(),
                owner.into(),
            ],
        )
        .await?;
    let reservation = Reservation {
        id: job.id.clone(),
        sender: job.sender.clone(),
        capability: job.capability.clone(),
        amount: job.amount,
    };
    if inserted == 0 {
        let mut row = tx
            .row(
                "SELECT party, capability, amount, state FROM entries WHERE id = $1",
                &[(&job.id).into()],
            )
            .await?
            .ok_or_else(|| LedgerError::Conflict(job.id.clone()))?;
        let same = row.text(0)? == job.sender
            && row.text(1)? == job.capability
            && row.int(2)? == value
            && row.text(3)? == "reserved";
        return if same {
            Ok(reservation)
        } else {
            Err(LedgerError::Conflict(job.id.clone()))
        };
    }
    // One conditional update: atomic against every other writer of this balance.
    let taken = tx
        .execute(
            "UPDATE balances SET balance = balance - $1
             WHERE sender = $2 AND capability = $3 AND balance >= $1",
            &[value.into(), (&job.sender).into(), (&job.capability).into()],
        )
        .await?;
    if taken == 0 && job.amount > 0 {
        let balance = balance_in(tx, &job.sender, &job.capability).await?;
        return Err(insufficient(
            &job.sender,
            &job.capability,
            balance,
            job.amount,
        ));
    }
    Ok(reservation)
}

/// Release reservation `id`: its amount goes back to the balance.
async fn release_in(tx: &mut dyn Tx, id: &str) -> Result<(), LedgerError> {
    let mut row = tx
        .row(
            "UPDATE entries SET state = 'released', updated_ms = $1
             WHERE id = $2 AND state = 'reserved' RETURNING party, capability, amount",
            &[now_ms().into(), id.into()],
        )
        .await?
        .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
    let (party, capability, amount) = (row.text(0)?, row.text(1)?, row.int(2)?);
    add_to_balance(tx, &party, &capability, amount).await
}

/// Take back credit `credit_id` (nothing when it was never applied).
async fn revoke_in(tx: &mut dyn Tx, credit_id: &str) -> Result<(), LedgerError> {
    let Some(mut row) = tx
        .row(
            "DELETE FROM entries WHERE id = $1 AND kind = 'credit'
             RETURNING party, capability, amount",
            &[credit_id.into()],
        )
        .await?
    else {
        return Ok(());
    };
    let (party, capability, amount) = (row.text(0)?, row.text(1)?, row.int(2)?);
    // Never fails the CHECK: the release before it gave back at least this much.
    tx.execute(
        "UPDATE balances SET balance = balance - $1 WHERE sender = $2 AND capability = $3",
        &[amount.into(), (&party).into(), (&capability).into()],
    )
    .await?;
    Ok(())
}

/// Add `amount` to a balance, creating it when absent.
async fn add_to_balance(
    tx: &mut dyn Tx,
    party: &str,
    capability: &str,
    amount: i64,
) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO balances (sender, capability, balance) VALUES ($1, $2, $3)
         ON CONFLICT (sender, capability) DO UPDATE SET balance = balances.balance + excluded.balance",
        &[party.into(), capability.into(), amount.into()],
    )
    .await?;
    Ok(())
}

/// A balance (zero when absent), locked until the transaction ends where the database locks
/// rows.
async fn balance_in(tx: &mut dyn Tx, party: &str, capability: &str) -> Result<u64, LedgerError> {
    let sql = if tx.locks_rows() {
        "SELECT balance FROM balances WHERE sender = $1 AND capability = $2 FOR UPDATE"
    } else {
        "SELECT balance FROM balances WHERE sender = $1 AND capability = $2"
    };
    match tx.row(sql, &[party.into(), capability.into()]).await? {
        Some(row) => Ok(to_u64(row.int(0)?)),
        None => Ok(0),
    }
}

/// What settling a reservation did.
struct Settled {
    party: String,
    model: String,
    units: i64,
    charged: i64,
    balance: i64,
}

/// Mark reservation `id` settled at `charge` (at most what it held) and return the rest to its
/// balance.
async fn settle_in(tx: &mut dyn Tx, id: &str, charge: u64) -> Result<Settled, LedgerError> {
    let mut row = tx
        .row(
            "UPDATE entries SET state = 'settled', updated_ms = $1
             WHERE id = $2 AND kind = 'reservation' AND state = 'reserved'
             RETURNING party, capability, model, units, amount",
            &[now_ms().into(), id.into()],
        )
        .await?
        .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
    let (party, capability, model) = (row.text(0)?, row.text(1)?, row.text(2)?);
    let (units, reserved) = (row.int(3)?, row.int(4)?);
    let charged = reserved.min(to_i64(charge)?);
    if charged != reserved {
        // The settled reservation records what was charged.
        tx.execute(
            "UPDATE entries SET amount = $1 WHERE id = $2 AND kind = 'reservation'",
            &[charged.into(), id.into()],
        )
        .await?;
    }
    // What was held but not charged returns to the balance.
    let balance = match tx
        .row(
            "UPDATE balances SET balance = balance + $1
             WHERE sender = $2 AND capability = $3 RETURNING balance",
            &[
                (reserved - charged).into(),
                (&party).into(),
                (&capability).into(),
            ],
        )
        .await?
    {
        Some(row) => row.int(0)?,
        None => 0,
    };
    Ok(Settled {
        party,
        model,
        units,
        charged,
        balance,
    })
}

/// Record a spend (or a correction) `id`.
async fn spend_in(
    tx: &mut dyn Tx,
    id: &str,
    party: &str,
    capability: &str,
    model: &str,
    (units, amount): (i64, i64),
) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
         VALUES ($1, 'spend', $2, $3, $4, $5, $6, 'applied', $7, $7)",
        &[
            id.into(),
            party.into(),
            capability.into(),
            model.into(),
            units.into(),
            amount.into(),
            now_ms().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Owned copies of the arguments an operation moves onto its transaction.
fn owned<const N: usize>(args: [&str; N]) -> [String; N] {
    args.map(str::to_owned)
}

#[async_trait::async_trait]
impl<B: Backend> Ledger for B {
    fn backend(&self) -> &'static str {
        B::NAME
    }

    async fn credit(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        amount: u64,
    ) -> Result<Balance, LedgerError> {
        let [id, sender, capability] = owned([id, sender, capability]);
        let balance = self
            .run(
                true,
                op(move |tx| {
                    Box::pin(async move {
                        credit_in(tx, &id, &sender, &capability, amount).await?;
                        balance_in(tx, &sender, &capability).await
                    })
                }),
            )
            .await?;
        Ok(Balance { amount: balance })
    }

    async fn credit_and_reserve(
        &self,
        credit_id: &str,
        amount: u64,
        id: &str,
        sender: &str,
        capability: &str,
        model: &str,
        units: u64,
        cost: u64,
    ) -> Result<(Reservation, bool), LedgerError> {
        let owner = self.owner().to_owned();
        let credit_id = credit_id.to_owned();
        let job = Job::new(id, sender, capability, model, units, cost);
        self.run(
            true,
            op(move |tx| {
                Box::pin(async move {
                    let (sender, capability) = (&job.sender, &job.capability);
                    let applied = credit_in(tx, &credit_id, sender, capability, amount).await?;
                    match reserve_in(tx, &owner, &job).await {
                        Ok(reservation) => Ok((reservation, applied)),
                        // The credit is rolled back with the reservation: the balance the
                        // sender holds is the one without it.
                        Err(LedgerError::Insufficient {
                            sender,
                            capability,
                            balance,
                            needed,
                        }) if applied => Err(LedgerError::Insufficient {
                            sender,
                            capability,
                            balance: balance.saturating_sub(amount),
                            needed,
                        }),
                        Err(e) => Err(e),
                    }
                })
            }),
        )
        .await
    }

    async fn reserve(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        model: &str,
        units: u64,
        amount: u64,
    ) -> Result<Reservation, LedgerError> {
        let owner = self.owner().to_owned();
        let job = Job::new(id, sender, capability, model, units, amount);
        self.run(
            true,
            op(move |tx| Box::pin(async move { reserve_in(tx, &owner, &job).await })),
        )
        .await
    }

    async fn reserve_with_topup(
        &self,
        credit_id: &str,
        id: &str,
        party: &str,
        capability: &str,
        model: &str,
        units: u64,
        cost: u64,
    ) -> Result<(Reservation, u64), LedgerError> {
        let owner = self.owner().to_owned();
        let credit_id = credit_id.to_owned();
        let job = Job::new(id, party, capability, model, units, cost);
        self.run(
            true,
            op(move |tx| {
                Box::pin(async move {
                    let (party, capability) = (&job.sender, &job.capability);
                    // Locked: no other top-up sees this balance until this one commits.
                    let held = balance_in(tx, party, capability).await?;
                    let topup = cost.saturating_sub(held);
                    if topup > 0 {
                        credit_in(tx, &credit_id, party, capability, topup).await?;
                    }
                    Ok((reserve_in(tx, &owner, &job).await?, topup))
                })
            }),
        )
        .await
    }

    async fn settle_charged(
        &self,
        id: &str,
        charge: u64,
        spend: Option<(&str, &str)>,
    ) -> Result<Balance, LedgerError> {
        let id = id.to_owned();
        let spend = spend.map(|(spend_id, capability)| owned([spend_id, capability]));
        let balance = self
            .run(
                true,
                op(move |tx| {
                    Box::pin(async move {
                        let s = settle_in(tx, &id, charge).await?;
                        if let Some([spend_id, capability]) = &spend {
                            let amounts = (s.units, s.charged);
                            spend_in(tx, spend_id, &s.party, capability, &s.model, amounts).await?;
                        }
                        Ok(s.balance)
                    })
                }),
            )
            .await?;
        Ok(Balance {
            amount: to_u64(balance),
        })
    }

    async fn release(&self, id: &str) -> Result<(), LedgerError> {
        self.release_and_revoke(id, None).await
    }

    async fn release_and_revoke(
        &self,
        id: &str,
        credit_id: Option<&str>,
    ) -> Result<(), LedgerError> {
        let id = id.to_owned();
        let credit_id = credit_id.map(str::to_owned);
        self.run(
            true,
            op(move |tx| {
                Box::pin(async move {
                    release_in(tx, &id).await?;
                    if let Some(credit_id) = &credit_id {
                        revoke_in(tx, credit_id).await?;
                    }
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn write_down(&self, party: &str, capability: &str, to: u64) -> Result<u64, LedgerError> {
        let [party, capability] = owned([party, capability]);
        self.run(
            true,
            op(move |tx| {
                Box::pin(async move {
                    let held = balance_in(tx, &party, &capability).await?;
                    if held <= to {
                        return Ok(0);
                    }
                    let lost = held - to;
                    tx.execute(
                        "UPDATE balances SET balance = $1 WHERE sender = $2 AND capability = $3",
                        &[to_i64(to)?.into(), (&party).into(), (&capability).into()],
                    )
                    .await?;
                    let id = format!("correction-{:032x}", rand::random::<u128>());
                    let amounts = (0, to_i64(lost)?);
                    spend_in(
                        tx,
                        &id,
                        &party,
                        &capability,
                        "(balance correction)",
                        amounts,
                    )
                    .await?;
                    Ok(lost)
                })
            }),
        )
        .await
    }

    async fn release_stale(&self, age: Duration) -> Result<usize, LedgerError> {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let owner = self.owner().to_owned();
        let ids = self
            .run(
                false,
                op(move |tx| {
                    Box::pin(async move {
                        let rows = tx
                            .rows(
                                "SELECT id FROM entries WHERE state = 'reserved' AND created_ms <= $1
                                 AND (owner = $2 OR owner = '')",
                                &[cutoff.into(), (&owner).into()],
                            )
                            .await?;
                        rows.into_iter().map(|mut r| r.text(0)).collect::<Result<Vec<_>, _>>()
                    })
                }),
            )
            .await?;
        let mut released = 0;
        for id in ids {
            match self.release(&id).await {
                Ok(()) => released += 1,
                // Settled or released concurrently: nothing to do.
                Err(LedgerError::NoReservation(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if released > 0 {
            tracing::warn!(
                released,
                backend = B::NAME,
                "released reservations left open by an earlier run"
            );
        }
        Ok(released)
    }

    async fn balance(&self, sender: &str, capability: &str) -> Result<Balance, LedgerError> {
        let [sender, capability] = owned([sender, capability]);
        let amount = self
            .run(
                false,
                op(move |tx| {
                    Box::pin(async move {
                        let row = tx
                            .row(
                                "SELECT balance FROM balances WHERE sender = $1 AND capability = $2",
                                &[(&sender).into(), (&capability).into()],
                            )
                            .await?;
                        row.map(|r| r.int(0).map(to_u64)).unwrap_or(Ok(0))
                    })
                }),
            )
            .await?;
        Ok(Balance { amount })
    }

    async fn totals(&self, what: Totals) -> Result<Vec<TotalRow>, LedgerError> {
        let sql = match what {
            Totals::Spent => {
                "SELECT party, capability, model, COUNT(*), CAST(SUM(amount) AS BIGINT)
                 FROM entries WHERE kind = 'spend'
                 GROUP BY party, capability, model ORDER BY party, capability, model"
            }
            // A settled reservation's amount is what was charged.
            Totals::Charged => {
                "SELECT party, capability, model, COUNT(*), CAST(SUM(amount) AS BIGINT)
                 FROM entries WHERE kind = 'reservation' AND state = 'settled'
                 GROUP BY party, capability, model ORDER BY party, capability, model"
            }
        };
        self.run(
            false,
            op(move |tx| {
                Box::pin(async move {
                    let rows = tx.rows(sql, &[]).await?;
                    rows.into_iter().map(total_row).collect()
                })
            }),
        )
        .await
    }

    async fn balances(&self) -> Result<Vec<BalanceRow>, LedgerError> {
        self.run(
            false,
            op(move |tx| {
                Box::pin(async move {
                    let sql = "SELECT sender, capability, balance FROM balances";
                    let rows = tx.rows(sql, &[]).await?;
                    rows.into_iter().map(balance_row).collect()
                })
            }),
        )
        .await
    }
}

/// One row of [`Ledger::balances`] from its query.
fn balance_row(mut r: super::tx::Row) -> Result<BalanceRow, LedgerError> {
    Ok(BalanceRow {
        party: r.text(0)?,
        account: r.text(1)?,
        amount: to_u64(r.int(2)?),
    })
}

/// One row of [`Ledger::totals`] from its query.
fn total_row(mut r: super::tx::Row) -> Result<TotalRow, LedgerError> {
    Ok(TotalRow {
        party: r.text(0)?,
        capability: r.text(1)?,
        model: r.text(2)?,
        jobs: to_u64(r.int(3)?),
        amount: to_u64(r.opt_int(4)?.unwrap_or(0)),
    })
}
