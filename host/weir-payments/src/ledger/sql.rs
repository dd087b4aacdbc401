//! The ledger's SQL, written once for both backends ([`sql_ledger!`]).
//!
//! Placeholders are `$N`, which SQLite and PostgreSQL both read; sums are cast to `BIGINT`
//! (PostgreSQL sums 64-bit integers into `NUMERIC`). What differs is passed in: the database,
//! the backend's name, and the lock a read takes when a write in the same transaction depends
//! on it (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the only write
//! lock).

/// Implements the transaction steps and [`Ledger`](super::Ledger) for `$ty`, a backend with
/// a `pool` field of `$db` and a `write_tx` method beginning a write transaction.
macro_rules! sql_ledger {
    ($ty:ty, $db:ty, $backend:literal, $lock:literal) => {
        use sqlx::Row as _;
        use $crate::ledger::{
            insufficient, now_ms, to_i64, to_u64, Balance, Ledger, LedgerError, Outcome,
            Reservation, TotalRow, Totals,
        };

        impl $ty {
            fn err(source: sqlx::Error) -> LedgerError {
                LedgerError::Database {
                    backend: $backend,
                    source,
                }
            }

            /// Apply credit `id` inside `tx`; `true` when applied now, `false` when it was already.
            async fn credit_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
                sender: &str,
                capability: &str,
                amount: u64,
            ) -> Result<bool, LedgerError> {
                let value = to_i64(amount)?;
                let now = now_ms();
                let inserted = sqlx::query(
                    "INSERT INTO entries (id, kind, party, capability, amount, state, created_ms, updated_ms)
                     VALUES ($1, 'credit', $2, $3, $4, 'applied', $5, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(sender)
                .bind(capability)
                .bind(value)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if inserted == 0 {
                    let same = sqlx::query(
                        "SELECT 1 FROM entries WHERE id = $1 AND kind = 'credit' AND party = $2
                         AND capability = $3 AND amount = $4",
                    )
                    .bind(id)
                    .bind(sender)
                    .bind(capability)
                    .bind(value)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(Self::err)?;
                    if same.is_none() {
                        return Err(LedgerError::Conflict(id.to_owned()));
                    }
                    return Ok(false);
                }
                Self::add_to_balance(tx, sender, capability, value).await?;
                Ok(true)
            }

            /// Reserve inside `tx`. The inner `Err` is the balance when it is short; the caller
            /// then rolls `tx` back (see [`Self::finish`]), undoing the entry written here.
            #[allow(clippy::too_many_arguments)]
            async fn reserve_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
                sender: &str,
                capability: &str,
                model: &str,
                units: u64,
                amount: u64,
            ) -> Result<Outcome, LedgerError> {
                let value = to_i64(amount)?;
                let now = now_ms();
                // The entry first: a concurrent reservation of the same id waits on it here.
                let inserted = sqlx::query(
                    "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms, owner)
                     VALUES ($1, 'reservation', $2, $3, $4, $5, $6, 'reserved', $7, $7, $8)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(sender)
                .bind(capability)
                .bind(model)
                .bind(to_i64(units)?)
                .bind(value)
                .bind(now)
                .bind(&self.owner)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                let reservation = Reservation {
                    id: id.to_owned(),
                    sender: sender.to_owned(),
                    capability: capability.to_owned(),
                    amount,
                };
                if inserted == 0 {
                    let row = sqlx::query(
                        "SELECT party, capability, amount, state FROM entries WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(Self::err)?;
                    let (party, cap, held, state): (String, String, i64, String) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    if party == sender && cap == capability && held == value && state == "reserved" {
                        return Ok(Ok(reservation));
                    }
                    return Err(LedgerError::Conflict(id.to_owned()));
                }
                // One conditional update: atomic against every other writer of this balance.
                let taken = sqlx::query(
                    "UPDATE balances SET balance = balance - $1
                     WHERE sender = $2 AND capability = $3 AND balance >= $1",
                )
                .bind(value)
                .bind(sender)
                .bind(capability)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?
                .rows_affected();
                if taken == 0 && amount > 0 {
                    return Ok(Err(Self::balance_in(tx, sender, capability).await?));
                }
                Ok(Ok(reservation))
            }

            /// Commit `tx` when the reservation was made; roll it back (undoing everything it
            /// did) and report the shortfall when the balance was short.
            async fn finish(
                tx: sqlx::Transaction<'static, $db>,
                outcome: Outcome,
                sender: &str,
                capability: &str,
                needed: u64,
            ) -> Result<Reservation, LedgerError> {
                match outcome {
                    Ok(reservation) => {
                        tx.commit().await.map_err(Self::err)?;
                        Ok(reservation)
                    }
                    Err(balance) => {
                        tx.rollback().await.map_err(Self::err)?;
                        Err(insufficient(sender, capability, balance, needed))
                    }
                }
            }

            /// Release reservation `id` inside `tx`.
            async fn release_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
            ) -> Result<(), LedgerError> {
                let row = sqlx::query(
                    "UPDATE entries SET state = 'released', updated_ms = $1
                     WHERE id = $2 AND state = 'reserved' RETURNING party, capability, amount",
                )
                .bind(now_ms())
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(Self::err)?
                .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
                let (party, capability, amount): (String, String, i64) =
                    (row.get(0), row.get(1), row.get(2));
                Self::add_to_balance(tx, &party, &capability, amount).await
            }

            /// Take back credit `credit_id` inside `tx` (nothing when it was never applied).
            async fn revoke_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                credit_id: &str,
            ) -> Result<(), LedgerError> {
                let Some(row) = sqlx::query(
                    "DELETE FROM entries WHERE id = $1 AND kind = 'credit'
                     RETURNING party, capability, amount",
                )
                .bind(credit_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(Self::err)?
                else {
                    return Ok(());
                };
                let (party, capability, amount): (String, String, i64) =
                    (row.get(0), row.get(1), row.get(2));
                // Never fails the CHECK: the release before it gave back at least this much.
                sqlx::query(
                    "UPDATE balances SET balance = balance - $1 WHERE sender = $2 AND capability = $3",
                )
                .bind(amount)
                .bind(&party)
                .bind(&capability)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?;
                Ok(())
            }

            /// Add `amount` to a balance inside `tx`, creating it when absent.
            async fn add_to_balance(
                tx: &mut sqlx::Transaction<'static, $db>,
                party: &str,
                capability: &str,
                amount: i64,
            ) -> Result<(), LedgerError> {
                sqlx::query(
                    "INSERT INTO balances (sender, capability, balance) VALUES ($1, $2, $3)
                     ON CONFLICT (sender, capability) DO UPDATE SET balance = balances.balance + excluded.balance",
                )
                .bind(party)
                .bind(capability)
                .bind(amount)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?;
                Ok(())
            }

            /// A balance read inside `tx` (zero when absent), locked until `tx` ends where the
            /// database locks rows.
            async fn balance_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                party: &str,
                capability: &str,
            ) -> Result<u64, LedgerError> {
                let balance: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT balance FROM balances WHERE sender = $1 AND capability = $2",
                    $lock
                ))
                .bind(party)
                .bind(capability)
                .fetch_optional(&mut **tx)
                .await
                .map_err(Self::err)?;
                Ok(balance.map(to_u64).unwrap_or(0))
            }

            /// Mark reservation `id` settled at `charge` (at most what it held) and return the
            /// rest to its balance, inside `tx`. Returns (party, model, units, charged, balance).
            async fn settle_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
                charge: u64,
            ) -> Result<(String, String, i64, i64, i64), LedgerError> {
                let row = sqlx::query(
                    "UPDATE entries SET state = 'settled', updated_ms = $1
                     WHERE id = $2 AND kind = 'reservation' AND state = 'reserved'
                     RETURNING party, capability, model, units, amount",
                )
                .bind(now_ms())
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(Self::err)?
                .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
                let (party, capability, model, units, reserved): (String, String, String, i64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                let charged = reserved.min(to_i64(charge)?);
                if charged != reserved {
                    // The settled reservation records what was charged.
                    sqlx::query("UPDATE entries SET amount = $1 WHERE id = $2 AND kind = 'reservation'")
                        .bind(charged)
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(Self::err)?;
                }
                // What was held but not charged returns to the balance.
                let balance: i64 = sqlx::query_scalar(
                    "UPDATE balances SET balance = balance + $1
                     WHERE sender = $2 AND capability = $3 RETURNING balance",
                )
                .bind(reserved - charged)
                .bind(&party)
                .bind(&capability)
                .fetch_optional(&mut **tx)
                .await
                .map_err(Self::err)?
                .unwrap_or(0);
                Ok((party, model, units, charged, balance))
            }

            /// Record a spend (or a correction) inside `tx`.
            #[allow(clippy::too_many_arguments)]
            async fn spend_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
                party: &str,
                capability: &str,
                model: &str,
                units: i64,
                amount: i64,
            ) -> Result<(), LedgerError> {
                let now = now_ms();
                sqlx::query(
                    "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
                     VALUES ($1, 'spend', $2, $3, $4, $5, $6, 'applied', $7, $7)",
                )
                .bind(id)
                .bind(party)
                .bind(capability)
                .bind(model)
                .bind(units)
                .bind(amount)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(Self::err)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl Ledger for $ty {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn credit(
                &self,
                id: &str,
                sender: &str,
                capability: &str,
                amount: u64,
            ) -> Result<Balance, LedgerError> {
                let mut tx = self.write_tx().await?;
                Self::credit_in(&mut tx, id, sender, capability, amount).await?;
                tx.commit().await.map_err(Self::err)?;
                self.balance(sender, capability).await
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
                let mut tx = self.write_tx().await?;
                let applied = Self::credit_in(&mut tx, credit_id, sender, capability, amount).await?;
                let outcome =
                    self.reserve_in(&mut tx, id, sender, capability, model, units, cost).await?;
                let reservation = Self::finish(tx, outcome, sender, capability, cost).await?;
                Ok((reservation, applied))
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
                let mut tx = self.write_tx().await?;
                let outcome =
                    self.reserve_in(&mut tx, id, sender, capability, model, units, amount).await?;
                Self::finish(tx, outcome, sender, capability, amount).await
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
                let mut tx = self.write_tx().await?;
                // Locked: no other top-up sees this balance until this one commits.
                let held = Self::balance_in(&mut tx, party, capability).await?;
                let topup = cost.saturating_sub(held);
                if topup > 0 {
                    Self::credit_in(&mut tx, credit_id, party, capability, topup).await?;
                }
                let outcome =
                    self.reserve_in(&mut tx, id, party, capability, model, units, cost).await?;
                let reservation = Self::finish(tx, outcome, party, capability, cost).await?;
                Ok((reservation, topup))
            }

            async fn settle_charged(
                &self,
                id: &str,
                charge: u64,
                spend: Option<(&str, &str)>,
            ) -> Result<Balance, LedgerError> {
                let mut tx = self.write_tx().await?;
                let (party, model, units, charged, balance) =
                    Self::settle_in(&mut tx, id, charge).await?;
                if let Some((spend_id, spend_capability)) = spend {
                    Self::spend_in(&mut tx, spend_id, &party, spend_capability, &model, units, charged)
                        .await?;
                }
                tx.commit().await.map_err(Self::err)?;
                Ok(Balance {
                    amount: to_u64(balance),
                })
            }

            async fn release(&self, id: &str) -> Result<(), LedgerError> {
                let mut tx = self.write_tx().await?;
                Self::release_in(&mut tx, id).await?;
                tx.commit().await.map_err(Self::err)
            }

            async fn release_and_revoke(
                &self,
                id: &str,
                credit_id: Option<&str>,
            ) -> Result<(), LedgerError> {
                let mut tx = self.write_tx().await?;
                Self::release_in(&mut tx, id).await?;
                if let Some(credit_id) = credit_id {
                    Self::revoke_in(&mut tx, credit_id).await?;
                }
                tx.commit().await.map_err(Self::err)
            }

            async fn write_down(
                &self,
                party: &str,
                capability: &str,
                to: u64,
            ) -> Result<u64, LedgerError> {
                let mut tx = self.write_tx().await?;
                let held = Self::balance_in(&mut tx, party, capability).await?;
                if held <= to {
                    tx.commit().await.map_err(Self::err)?;
                    return Ok(0);
                }
                let lost = held - to;
                sqlx::query("UPDATE balances SET balance = $1 WHERE sender = $2 AND capability = $3")
                    .bind(i64::try_from(to).unwrap_or(i64::MAX))
                    .bind(party)
                    .bind(capability)
                    .execute(&mut *tx)
                    .await
                    .map_err(Self::err)?;
                let id = format!("correction-{:032x}", rand::random::<u128>());
                let amount = i64::try_from(lost).unwrap_or(i64::MAX);
                Self::spend_in(&mut tx, &id, party, capability, "(balance correction)", 0, amount)
                    .await?;
                tx.commit().await.map_err(Self::err)?;
                Ok(lost)
            }

            async fn release_stale(&self, age: std::time::Duration) -> Result<usize, LedgerError> {
                let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM entries WHERE state = 'reserved' AND created_ms <= $1
                     AND (owner = $2 OR owner = '')",
                )
                .bind(cutoff)
                .bind(&self.owner)
                .fetch_all(&self.pool)
                .await
                .map_err(Self::err)?;
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
                        backend = $backend,
                        "released reservations left open by an earlier run"
                    );
                }
                Ok(released)
            }

            async fn balance(&self, sender: &str, capability: &str) -> Result<Balance, LedgerError> {
                let balance: Option<i64> = sqlx::query_scalar(
                    "SELECT balance FROM balances WHERE sender = $1 AND capability = $2",
                )
                .bind(sender)
                .bind(capability)
                .fetch_optional(&self.pool)
                .await
                .map_err(Self::err)?;
                Ok(Balance {
                    amount: balance.map(to_u64).unwrap_or(0),
                })
            }

            async fn totals(&self, what: Totals) -> Result<Vec<TotalRow>, LedgerError> {
                let sql = match what {
                    Totals::Spent => "SELECT party, capability, model, COUNT(*), CAST(SUM(amount) AS BIGINT)
                        FROM entries WHERE kind = 'spend'
                        GROUP BY party, capability, model ORDER BY party, capability, model",
                    // A settled reservation's amount is what was charged.
                    Totals::Charged => "SELECT party, capability, model, COUNT(*), CAST(SUM(amount) AS BIGINT)
                        FROM entries WHERE kind = 'reservation' AND state = 'settled'
                        GROUP BY party, capability, model ORDER BY party, capability, model",
                };
                let rows = sqlx::query(sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Self::err)?;
                Ok(rows
                    .into_iter()
                    .map(|r| TotalRow {
                        party: r.get(0),
                        capability: r.get(1),
                        model: r.get(2),
                        jobs: to_u64(r.get::<i64, _>(3)),
                        amount: to_u64(r.get::<Option<i64>, _>(4).unwrap_or(0)),
                    })
                    .collect())
            }
        }
    };
}

pub(super) use sql_ledger;
