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

impl Ledger {
    /// Open (creating if needed) the ledger database at `path` and apply the schema.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
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
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, LedgerError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
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
        let value = to_i64(amount)?;
        let now = now_ms();
        let mut tx = self.write_tx().await?;
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
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let same = sqlx::query("SELECT 1 FROM entries WHERE id = ? AND kind = 'credit' AND party = ? AND capability = ? AND amount = ?")
                .bind(id)
                .bind(sender)
                .bind(capability)
                .bind(value)
                .fetch_optional(&mut *tx)
                .await?;
            if same.is_none() {
                return Err(LedgerError::Conflict(id.to_owned()));
            }
        } else {
            sqlx::query(
                "INSERT INTO balances (sender, capability, balance) VALUES (?, ?, ?)
                 ON CONFLICT (sender, capability) DO UPDATE SET balance = balance + excluded.balance",
            )
            .bind(sender)
            .bind(capability)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.balance(sender, capability).await
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
        let value = to_i64(amount)?;
        let units_value = to_i64(units)?;
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let existing =
            sqlx::query("SELECT party, capability, amount, state FROM entries WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(row) = existing {
            let (party, cap, held, state): (String, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if party == sender && cap == capability && held == value && state == "reserved" {
                return Ok(Reservation {
                    id: id.to_owned(),
                    sender: party,
                    capability: cap,
                    amount,
                });
            }
            return Err(LedgerError::Conflict(id.to_owned()));
        }
        let taken = sqlx::query("UPDATE balances SET balance = balance - ? WHERE sender = ? AND capability = ? AND balance >= ?")
            .bind(value)
            .bind(sender)
            .bind(capability)
            .bind(value)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if taken == 0 && amount > 0 {
            tx.rollback().await?;
            let balance = self.balance(sender, capability).await?.amount;
            return Err(LedgerError::Insufficient {
                sender: sender.to_owned(),
                capability: capability.to_owned(),
                balance,
                needed: amount,
            });
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation {
            id: id.to_owned(),
            sender: sender.to_owned(),
            capability: capability.to_owned(),
            amount,
        })
    }

    /// The job produced its result: the reserved amount is spent for good.
    pub async fn settle(&self, id: &str) -> Result<(), LedgerError> {
        let done = sqlx::query("UPDATE entries SET state = 'settled', updated_ms = ? WHERE id = ? AND state = 'reserved'")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if done == 0 {
            return Err(LedgerError::NoReservation(id.to_owned()));
        }
        Ok(())
    }

    /// The job failed or was canceled: the reserved amount goes back to the balance.
    pub async fn release(&self, id: &str) -> Result<(), LedgerError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE entries SET state = 'released', updated_ms = ? WHERE id = ? AND state = 'reserved'
             RETURNING party, capability, amount",
        )
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| LedgerError::NoReservation(id.to_owned()))?;
        let (party, capability, amount): (String, String, i64) =
            (row.get(0), row.get(1), row.get(2));
        sqlx::query(
            "INSERT INTO balances (sender, capability, balance) VALUES (?, ?, ?)
             ON CONFLICT (sender, capability) DO UPDATE SET balance = balance + excluded.balance",
        )
        .bind(&party)
        .bind(&capability)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
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

    /// Gateway side: record that job `id` cost `amount` with `orchestrator`. Idempotent by id.
    pub async fn record_spend(
        &self,
        id: &str,
        orchestrator: &str,
        capability: &str,
        model: &str,
        units: u64,
        amount: u64,
    ) -> Result<(), LedgerError> {
        let value = to_i64(amount)?;
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO entries (id, kind, party, capability, model, units, amount, state, created_ms, updated_ms)
             VALUES (?, 'spend', ?, ?, ?, ?, ?, 'applied', ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(orchestrator)
        .bind(capability)
        .bind(model)
        .bind(to_i64(units)?)
        .bind(value)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            let same = sqlx::query("SELECT 1 FROM entries WHERE id = ? AND kind = 'spend' AND party = ? AND amount = ?")
                .bind(id)
                .bind(orchestrator)
                .bind(value)
                .fetch_optional(&self.pool)
                .await?;
            if same.is_none() {
                return Err(LedgerError::Conflict(id.to_owned()));
            }
        }
        Ok(())
    }

    /// Gateway side: total spent with `orchestrator` for a capability and model.
    pub async fn spent(
        &self,
        orchestrator: &str,
        capability: &str,
        model: &str,
    ) -> Result<u64, LedgerError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(amount) FROM entries WHERE kind = 'spend' AND party = ? AND capability = ? AND model = ?",
        )
        .bind(orchestrator)
        .bind(capability)
        .bind(model)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.map(to_u64).unwrap_or(0))
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
            l.settle("job-1").await,
            Err(LedgerError::NoReservation(_))
        ));
        l.reserve("job-3", "bob", "t2i", "sdxl", 10, 100)
            .await
            .expect("reserve");
        l.settle("job-3").await.expect("settle");
        assert!(matches!(
            l.release("job-3").await,
            Err(LedgerError::NoReservation(_))
        ));
        assert_eq!(l.balance("bob", "t2i").await.expect("b").amount, 0);
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
            l.record_spend("g-1", "orch-a", "upscale", "x4", 65536, 42)
                .await
                .expect("spend");
            l.record_spend("g-1", "orch-a", "upscale", "x4", 65536, 42)
                .await
                .expect("retry");
            l.record_spend("g-2", "orch-a", "upscale", "x4", 65536, 8)
                .await
                .expect("spend");
        }
        let l = Ledger::open(&path).await.expect("reopen");
        assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 300);
        assert_eq!(l.spent("orch-a", "upscale", "x4").await.expect("spent"), 50);
        assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 1);
        assert_eq!(l.balance("dave", "upscale").await.expect("b").amount, 500);
        assert_eq!(l.release_stale(Duration::ZERO).await.expect("stale"), 0);
    }
}
