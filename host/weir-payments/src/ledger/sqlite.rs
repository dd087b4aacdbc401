//! The ledger in an embedded SQLite file (WAL), the single-node default.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::Durability;

/// The ledger in a SQLite file. Writers are serialised by SQLite's write lock, taken at the
/// start of every write transaction.
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
    /// Recorded on reservations; see [`SqliteLedger::owned_by`].
    owner: String,
}

impl SqliteLedger {
    /// Open (creating if needed) the ledger database at `path` with [`Durability::Process`].
    pub async fn open(path: &Path) -> Result<SqliteLedger, LedgerError> {
        SqliteLedger::open_with(path, Durability::default()).await
    }

    /// Open (creating if needed) the ledger database at `path` and apply the schema.
    pub async fn open_with(
        path: &Path,
        durability: Durability,
    ) -> Result<SqliteLedger, LedgerError> {
        let options = SqliteConnectOptions::new()
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
            .await
            .map_err(Self::err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                backend: "sqlite",
                source,
            })?;
        Ok(SqliteLedger {
            pool,
            owner: String::new(),
        })
    }

    /// This ledger's reservations belong to `owner`, which should stay the same across
    /// restarts of one node and differ between nodes sharing the store: only its own (and
    /// nobody's, the default) are released by [`release_stale`](super::Ledger::release_stale).
    pub fn owned_by(mut self, owner: &str) -> SqliteLedger {
        owner.clone_into(&mut self.owner);
        self
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
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, LedgerError> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|e| LedgerError::Task {
                backend: "sqlite",
                reason: e.to_string(),
            })?
            .map_err(Self::err)
    }
}

super::sql::sql_ledger!(SqliteLedger, sqlx::Sqlite, "sqlite", "");
