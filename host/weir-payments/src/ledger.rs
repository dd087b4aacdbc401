//! The persistent ledger (SQLite in WAL mode).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The sender's balance does not cover the amount.
    #[error(
        "insufficient balance for {capability}: {sender} holds {balance}, the job needs {needed}"
    )]
    Insufficient {
        /// Who.
        sender: String,
        /// For what.
        capability: String,
        /// What they hold.
        balance: u64,
        /// What the job costs.
        needed: u64,
    },
    /// The id was already used for a different movement.
    #[error("entry `{0}` already exists with different content")]
    Conflict(String),
    /// No reservation with that id is open.
    #[error("no open reservation `{0}`")]
    NoReservation(String),
    /// An amount does not fit the ledger's integer range.
    #[error("amount {0} is out of range")]
    OutOfRange(u64),
    /// The database failed.
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    /// The task that began a transaction failed (the runtime is shutting down).
    #[error("ledger task: {0}")]
    Task(String),
    /// The schema could not be applied.
    #[error("ledger migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A sender's balance for a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Base units held.
    pub amount: u64,
}

/// An open reservation: the cost of a job held back from a balance until it is settled or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The job id it was made for.
    pub id: String,
    /// Sender charged.
    pub sender: String,
    /// Capability.
    pub capability: String,
    /// Amount held.
    pub amount: u64,
}

/// Which totals [`Ledger::totals`] sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Totals {
    /// Gateway side: what was spent with each orchestrator.
    Spent,
    /// Orchestrator side: what each sender was charged for finished jobs.
    Charged,
}

/// One row of [`Ledger::totals`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TotalRow {
    /// Orchestrator (gateway side) or sender (orchestrator side).
    pub party: String,
    /// Capability or account key.
    pub capability: String,
    /// Model.
    pub model: String,
    /// Number of jobs.
    pub jobs: u64,
    /// Sum in base units.
    pub amount: u64,
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_i64(amount: u64) -> Result<i64, LedgerError> {
    i64::try_from(amount).map_err(|_| LedgerError::OutOfRange(amount))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Apply credit `id` inside `tx`; `true` when applied now, `false` when it was already.
async fn credit_in(
    tx: &mut Tx,
    id: &str,
    sender: &str,
    capability: &str,
    amount: u64,
) -> Result<bool, LedgerError> {
    let value = to_i64(amount)?;
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO entries (id, kind, party, capability, amount, state, created_ms, updated_ms)
         VALUES (?, 'credit', ?, ?, ?, 'applied', ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(sender)
    .bind(capability)
    .bind(value)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let same = sqlx::query("SELECT 1 FROM entries WHERE id = ? AND kind = 'credit' AND party = ? AND capability = ? AND amount = ?")
            .bind(id)
            .bind(sender)
            .bind(capability)
            .bind(value)
            .fetch_optional(&mut **tx)
            .await?;
        if same.is_none() {
            return Err(LedgerError::Conflict(id.to_owned()));
        }
        return Ok(false);
    }
    add_to_balance(tx, sender, capability, value).await?;
    Ok(true)
}

/// Reserve inside `tx`. The inner `Err` is the balance when it is short (nothing changed).
async fn reserve_in(
    tx: &mut Tx,
    id: &str,
    sender: &str,
    capability: &str,
    model: &str,
    units: u64,
    amount: u64,
) -> Result<Result<Reservation, u64>, LedgerError> {
    let value = to_i64(amount)?;
    let units_value = to_i64(units)?;
    let now = now_ms();
    let existing = sqlx::query("SELECT party, capability, amount, state FROM entries WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = existing {
        let (party, cap, held, state): (String, String, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if party == sender && cap == capability && held == value && state == "reserved" {
            return Ok(Ok(Reservation {
                id: id.to_owned(),
                sender: party,
                capability: cap,
                amount,
            }));
        }
        return Err(LedgerError::Conflict(id.to_owned()));
    }
    let taken = sqlx::query(
        "UPDATE balances SET balance = balance - ? WHERE sender = ? AND capability = ? AND balance >= ?",
    )
    .bind(value)
    .bind(sender)
    .bind(capability)
    .bind(value)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if taken == 0 && amount > 0 {
        return Ok(Err(balance_in(tx, sender, capability).await?));
    }
    sqlx::query(
        "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
         VALUES (?, 'reservation', ?, ?, ?, ?, ?, 'reserved', ?, ?)",
    )
    .bind(id)
    .bind(sender)
    .bind(capability)
    .bind(model)
    .bind(units_value)
    .bind(value)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(Ok(Reservation {
        id: id.to_owned(),
        sender: sender.to_owned(),
        capability: capability.to_owned(),
        amount,
    }))
}

/// Commit `tx` when the reservation was made; roll it back (undoing everything it did) and
/// report the shortfall when the balance was short.
async fn finish(
    tx: Tx,
    outcome: Result<Reservation, u64>,
    sender: &str,
    capability: &str,
    needed: u64,
) -> Result<Reservation, LedgerError> {
    match outcome {
        Ok(reservation) => {
            tx.commit().await?;
            Ok(reservation)
        }
        Err(balance) => {
            tx.rollback().await?;
            Err(LedgerError::Insufficient {
                sender: sender.to_owned(),
                capability: capability.to_owned(),
                balance,
                needed,
            })
        }
    }
}

/// Release reservation `id` inside `tx`.
async fn release_in(tx: &mut Tx, id: &str) -> Result<(), LedgerError> {
    let row = sqlx::query(
        "UPDATE entries SET state = 'released', updated_ms = ? WHERE id = ? AND state = 'reserved'
         RETURNING party, capability, amount",
    )
    .bind(now_ms())
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
    let (party, capability, amount): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    add_to_balance(tx, &party, &capability, amount).await
}

/// Add `amount` to a balance inside `tx`, creating it when absent.
async fn add_to_balance(
    tx: &mut Tx,
    party: &str,
    capability: &str,
    amount: i64,
) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO balances (sender, capability, balance) VALUES (?, ?, ?)
         ON CONFLICT (sender, capability) DO UPDATE SET balance = balance + excluded.balance",
    )
    .bind(party)
    .bind(capability)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A balance read inside `tx` (zero when absent).
async fn balance_in(tx: &mut Tx, party: &str, capability: &str) -> Result<u64, LedgerError> {
    let balance: Option<i64> =
        sqlx::query_scalar("SELECT balance FROM balances WHERE sender = ? AND capability = ?")
            .bind(party)
            .bind(capability)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(balance.map(to_u64).unwrap_or(0))
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A committed change survives the process crashing (WAL, `synchronous = NORMAL`); a power
    /// loss may roll back the last commits, never corrupt the file.
    #[default]
    Process,
    /// A committed change is on disk before the commit returns (`synchronous = FULL`): it also
    /// survives power loss, at one fsync per commit.
    Power,
}

impl Ledger {
    /// Open (creating if needed) the ledger database at `path` with [`Durability::Process`].
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_with(path, Durability::default()).await
    }

    /// Open (creating if needed) the ledger database at `path` and apply the schema.
    pub async fn open_with(path: &Path, durability: Durability) -> Result<Ledger, LedgerError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Process => SqliteSynchronous::Normal,
                Durability::Power => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Ledger { pool })
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so a
    /// transaction that reads and then writes never deadlocks with another writer.
    ///
    /// The transaction is begun on a task of its own. A caller dropped while SQLite runs the
    /// `BEGIN` (a client that went away, a cancelled job) would otherwise leave the pooled
    /// connection inside a transaction that no `Transaction` value owns, so nothing rolls it
    /// back and every later write on that connection fails ("begin_with at non-zero
    /// transaction depth"). On its own task the `BEGIN` completes, and a `Transaction` nobody
    /// awaits any more is dropped there, which rolls it back.
    async fn write_tx(&self) -> Result<Tx, LedgerError> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|e| LedgerError::Task(e.to_string()))?
            .map_err(LedgerError::from)
    }

    /// Add `amount` to `sender`'s balance for `capability`. Applying the same `id` again is a
    /// no-op; reusing it for different content is a conflict.
    pub async fn credit(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        amount: u64,
    ) -> Result<Balance, LedgerError> {
        let mut tx = self.write_tx().await?;
        credit_in(&mut tx, id, sender, capability, amount).await?;
        tx.commit().await?;
        self.balance(sender, capability).await
    }

    /// Credit `amount` under `credit_id` (idempotent, as [`Ledger::credit`]) and reserve
    /// `cost` for job `id`, in one transaction: on [`LedgerError::Insufficient`] neither
    /// happens. Returns the reservation and whether this call applied the credit.
    #[allow(clippy::too_many_arguments)]
    pub async fn credit_and_reserve(
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
        let applied = credit_in(&mut tx, credit_id, sender, capability, amount).await?;
        let outcome = reserve_in(&mut tx, id, sender, capability, model, units, cost).await?;
        let reservation = finish(tx, outcome, sender, capability, cost).await?;
        Ok((reservation, applied))
    }

    /// Release reservation `id` and take back credit `credit_id` (the payment that came with
    /// the job), in one transaction, so the balance is as if the job never came.
    pub async fn release_and_revoke(
        &self,
        id: &str,
        credit_id: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.write_tx().await?;
        release_in(&mut tx, id).await?;
        if let Some(credit_id) = credit_id {
            let Some(row) = sqlx::query(
                "DELETE FROM entries WHERE id = ? AND kind = 'credit' RETURNING party, capability, amount",
            )
            .bind(credit_id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                tx.commit().await?;
                return Ok(());
            };
            let (party, capability, amount): (String, String, i64) =
                (row.get(0), row.get(1), row.get(2));
            // Never fails the CHECK: the release above gave back at least this much.
            sqlx::query(
                "UPDATE balances SET balance = balance - ? WHERE sender = ? AND capability = ?",
            )
            .bind(amount)
            .bind(&party)
            .bind(&capability)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Totals per (party, capability, model): gateway spend (`spend` entries) or, on the
    /// orchestrator side, settled reservations (what senders were charged).
    pub async fn totals(&self, what: Totals) -> Result<Vec<TotalRow>, LedgerError> {
        let sql = match what {
            Totals::Spent => "SELECT party, capability, model, COUNT(*), SUM(amount) FROM entries WHERE kind = 'spend' GROUP BY party, capability, model ORDER BY party, capability, model",
            // A settled reservation's amount is what was charged.
            Totals::Charged => "SELECT party, capability, model, COUNT(*), SUM(amount) FROM entries WHERE kind = 'reservation' AND state = 'settled' GROUP BY party, capability, model ORDER BY party, capability, model",
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
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

    /// `sender`'s balance for `capability` (zero when never credited).
    pub async fn balance(&self, sender: &str, capability: &str) -> Result<Balance, LedgerError> {
        let row = sqlx::query("SELECT balance FROM balances WHERE sender = ? AND capability = ?")
            .bind(sender)
            .bind(capability)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Balance {
            amount: row.map(|r| to_u64(r.get::<i64, _>(0))).unwrap_or(0),
        })
    }

    /// Hold `amount` of `sender`'s balance for job `id` before running it. Atomic: two jobs can
    /// never both spend the same credit. Fails with [`LedgerError::Insufficient`] and changes
    /// nothing when the balance is short. Reserving an id that is already open returns it.
    pub async fn reserve(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        model: &str,
        units: u64,
        amount: u64,
    ) -> Result<Reservation, LedgerError> {
        let mut tx = self.write_tx().await?;
        let outcome = reserve_in(&mut tx, id, sender, capability, model, units, amount).await?;
        finish(tx, outcome, sender, capability, amount).await
    }

    /// Settle job `id` at `charge` (at most what was reserved; the rest goes back to the
    /// balance) in one transaction, optionally recording it as spend `spend_id` under
    /// `spend_capability` (gateway side), and return the balance after it.
    pub async fn settle_charged(
        &self,
        id: &str,
        charge: u64,
        spend: Option<(&str, &str)>,
    ) -> Result<Balance, LedgerError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE entries SET state = 'settled', updated_ms = ? WHERE id = ? AND kind = 'reservation' AND state = 'reserved'
             RETURNING party, capability, model, units, amount",
        )
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
        let (party, capability, model, units, reserved): (String, String, String, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let charged = reserved.min(to_i64(charge)?);
        if charged != reserved {
            // The settled reservation records what was charged.
            sqlx::query("UPDATE entries SET amount = ? WHERE id = ? AND kind = 'reservation'")
                .bind(charged)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        // What was held but not charged returns to the balance.
        let balance: i64 = sqlx::query_scalar(
            "UPDATE balances SET balance = balance + ? WHERE sender = ? AND capability = ? RETURNING balance",
        )
        .bind(reserved - charged)
        .bind(&party)
        .bind(&capability)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(0);
        if let Some((spend_id, spend_capability)) = spend {
            let now = now_ms();
            sqlx::query(
                "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
                 VALUES (?, 'spend', ?, ?, ?, ?, ?, 'applied', ?, ?)",
            )
            .bind(spend_id)
            .bind(&party)
            .bind(spend_capability)
            .bind(&model)
            .bind(units)
            .bind(charged)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Balance {
            amount: to_u64(balance),
        })
    }

    /// Reserve `cost` for job `id`, first crediting (under `credit_id`) whatever the balance
    /// lacks, in one transaction. Returns the reservation and the amount credited (what the
    /// sender must pay now).
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve_with_topup(
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
        let topup = cost.saturating_sub(balance_in(&mut tx, party, capability).await?);
        if topup > 0 {
            credit_in(&mut tx, credit_id, party, capability, topup).await?;
        }
        let outcome = reserve_in(&mut tx, id, party, capability, model, units, cost).await?;
        let reservation = finish(tx, outcome, party, capability, cost).await?;
        Ok((reservation, topup))
    }

    /// The job failed or was canceled: the reserved amount goes back to the balance.
    pub async fn release(&self, id: &str) -> Result<(), LedgerError> {
        let mut tx = self.write_tx().await?;
        release_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lower what `party` holds for `capability` to `to` when the ledger believes more (the other
    /// side lost a payment, e.g. one whose request a crash cut off). Never raises it. The
    /// difference is recorded as a spend on model `(balance correction)`; returns it.
    pub async fn write_down(
        &self,
        party: &str,
        capability: &str,
        to: u64,
    ) -> Result<u64, LedgerError> {
        let mut tx = self.write_tx().await?;
        let held = balance_in(&mut tx, party, capability).await?;
        if held <= to {
            tx.commit().await?;
            return Ok(0);
        }
        let lost = held - to;
        sqlx::query("UPDATE balances SET balance = ? WHERE sender = ? AND capability = ?")
            .bind(i64::try_from(to).unwrap_or(i64::MAX))
            .bind(party)
            .bind(capability)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
             VALUES (?, 'spend', ?, ?, '(balance correction)', 0, ?, 'applied', ?, ?)",
        )
        .bind(format!("correction-{:032x}", rand::random::<u128>()))
        .bind(party)
        .bind(capability)
        .bind(i64::try_from(lost).unwrap_or(i64::MAX))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(lost)
    }

    /// Release every reservation older than `age` (after a crash, its job never finished).
    /// Returns how many were released.
    pub async fn release_stale(&self, age: Duration) -> Result<usize, LedgerError> {
        let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM entries WHERE state = 'reserved' AND created_ms <= ?",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
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
                "released reservations left open by an earlier run"
            );
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ledger() -> (Ledger, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("ledger.db"))
            .await
            .expect("open");
        (ledger, dir)
    }

    /// A caller dropped at any point of a write (a client that went away, a cancelled job)
    /// must leave every pooled connection usable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_cut_off_at_any_point_leave_the_ledger_usable() {
        let (l, _d) = ledger().await;
        for i in 0..2000u64 {
            let cut = std::time::Duration::from_micros(i % 300);
            let _ = tokio::time::timeout(cut, l.credit(&format!("c{i}"), "a", "cap", 1)).await;
        }
        // Every connection of the pool must start a new write transaction.
        for i in 0..16u64 {
            l.credit(&format!("after{i}"), "a", "cap", 1)
                .await
                .expect("a write after cut-off writes");
        }
    }

    #[tokio::test]
    async fn a_balance_is_written_down_never_up() {
        let (l, _dir) = ledger().await;
        let (_, topup) = l
            .reserve_with_topup("c1", "j1", "o", "cap", "m", 1, 100)
            .await
            .expect("reserve");
        assert_eq!(topup, 100);
        l.release("j1").await.expect("release");
        assert_eq!(l.write_down("o", "cap", 500).await.expect("up"), 0);
        assert_eq!(l.write_down("o", "cap", 30).await.expect("down"), 70);
        let (_, topup) = l
            .reserve_with_topup("c2", "j2", "o", "cap", "m", 1, 100)
            .await
            .expect("reserve");
        assert_eq!(topup, 70, "the next payment makes up what was written off");
    }

    #[tokio::test]
    async fn credits_apply_once_per_id() {
        let (l, _d) = ledger().await;
        assert_eq!(
            l.credit("pay-1", "alice", "upscale", 100)
                .await
                .expect("credit")
                .amount,
            100
        );
        assert_eq!(
            l.credit("pay-1", "alice", "upscale", 100)
                .await
                .expect("retry")
                .amount,
            100
        );
        assert!(matches!(
            l.credit("pay-1", "alice", "upscale", 999).await,
            Err(LedgerError::Conflict(_))
        ));
        assert_eq!(
            l.credit("pay-2", "alice", "upscale", 50)
                .await
                .expect("credit")
                .amount,
            150
        );
        assert_eq!(l.balance("alice", "llm").await.expect("balance").amount, 0);
    }

    #[tokio::test]
    async fn reservations_settle_or_release_and_never_overdraw() {
        let (l, _d) = ledger().await;
        l.credit("pay", "bob", "t2i", 100).await.expect("credit");
        l.reserve("job-1", "bob", "t2i", "sdxl", 10, 70)
            .await
            .expect("reserve");
        assert_eq!(l.balance("bob", "t2i").await.expect("b").amount, 30);
        let err = l
            .reserve("job-2", "bob", "t2i", "sdxl", 10, 40)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Insufficient {
                    balance: 30,
                    needed: 40,
                    ..
                }
            ),
            "{err}"
        );
        // A retried reserve of the same job is the same reservation.
        l.reserve("job-1", "bob", "t2i", "sdxl", 10, 70)
            .await
            .expect("idempotent");
        assert_eq!(l.balance("bob", "t2i").await.expect("b").amount, 30);
        l.release("job-1").await.expect("release");
        assert_eq!(l.balance("bob", "t2i").await.expect("b").amount, 100);
        assert!(matches!(
            l.settle_charged("job-1", 70, None).await,
            Err(LedgerError::NoReservation(_))
        ));
        l.reserve("job-3", "bob", "t2i", "sdxl", 10, 100)
            .await
            .expect("reserve");
        l.settle_charged("job-3", 100, None).await.expect("settle");
        assert!(matches!(
            l.release("job-3").await,
            Err(LedgerError::NoReservation(_))
        ));
        assert_eq!(l.balance("bob", "t2i").await.expect("b").amount, 0);
    }

    #[tokio::test]
    async fn a_job_without_a_result_leaves_the_balance_as_it_was() {
        let (l, _d) = ledger().await;
        l.credit("old", "erin", "llm", 30).await.expect("credit");
        // Pay 70 more with the job, reserve 100; the job fails: both go back atomically.
        let (_, applied) = l
            .credit_and_reserve("p1", 70, "j1", "erin", "llm", "m", 1, 100)
            .await
            .expect("reserve");
        assert!(applied);
        assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 0);
        l.release_and_revoke("j1", Some("p1"))
            .await
            .expect("release");
        assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 30);
        // Short even with the payment: nothing is applied.
        let err = l
            .credit_and_reserve("p2", 10, "j2", "erin", "llm", "m", 1, 100)
            .await
            .expect_err("short");
        assert!(
            matches!(
                err,
                LedgerError::Insufficient {
                    balance: 40,
                    needed: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(l.balance("erin", "llm").await.expect("b").amount, 30);
        // The gateway side pays only what the balance lacks.
        let (_, topup) = l
            .reserve_with_topup("p3", "j3", "erin", "llm", "m", 1, 100)
            .await
            .expect("reserve");
        assert_eq!(topup, 70);
        let after = l.settle_charged("j3", 90, None).await.expect("settle");
        assert_eq!(after.amount, 10);
        // A job charged less than it held counts at its charge.
        let charged = l.totals(Totals::Charged).await.expect("totals");
        assert_eq!(charged.iter().map(|r| r.amount).sum::<u64>(), 90);
    }

    #[tokio::test]
    async fn concurrent_reservations_spend_each_credit_once() {
        let (l, _d) = ledger().await;
        l.credit("pay", "carol", "llm", 1_000)
            .await
            .expect("credit");
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.reserve(&format!("job-{i}"), "carol", "llm", "m", 1, 100)
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(_) => ok += 1,
                Err(LedgerError::Insufficient { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(l.balance("carol", "llm").await.expect("b").amount, 0);
    }

    #[tokio::test]
    async fn state_survives_reopening_and_stale_reservations_are_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        {
            let l = Ledger::open(&path).await.expect("open");
            l.credit("pay", "dave", "upscale", 500)
                .await
                .expect("credit");
            l.reserve("job", "dave", "upscale", "x4", 1, 200)
                .await
                .expect("reserve");
            // Gateway side: two jobs with orch-a, one charged less than reserved.
            for (job, charge) in [("g-1", 42), ("g-2", 8)] {
                l.reserve_with_topup(
                    &format!("{job}-pay"),
                    job,
                    "orch-a",
                    "upscale/x4",
                    "x4",
                    65536,
                    42,
                )
                .await
                .expect("reserve");
                l.settle_charged(job, charge, Some((&format!("{job}-spend"), "upscale")))
                    .await
                    .expect("settle");
            }
        }
        let l = Ledger::open(&path).await.expect("reopen");
        assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 300);
        let spent = l.totals(Totals::Spent).await.expect("totals");
        assert_eq!((spent[0].jobs, spent[0].amount), (2, 50));
        // g-2 was charged 8 of the 42 it reserved: 34 came back to the balance.
        assert_eq!(
            l.balance("orch-a", "upscale/x4").await.expect("b").amount,
            34
        );
        assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 1);
        assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 500);
        assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 0);
    }
}
