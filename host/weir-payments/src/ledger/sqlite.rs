//! The ledger in an embedded SQLite file (WAL), the single-node default.
//!
//! One connection, owned by a thread of its own: each ledger operation is handed to that
//! thread whole and runs there as one transaction, so it costs one hand-over between threads
//! however many statements it runs (a reservation with a top-up runs five), and no async
//! worker ever waits on the disk. Writers are serialised by SQLite's write lock, taken at the
//! start of every write transaction (`BEGIN IMMEDIATE`); a second process on the same file
//! waits for it (busy timeout).

use std::path::Path;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::oneshot;

use super::tx::{Arg, Backend, Op, Row, Tx, Value};
use super::{Durability, LedgerError};

/// Work for the connection's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The ledger in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteLedger {
    /// Operations for the connection's thread; it ends when the last clone is dropped.
    jobs: mpsc::Sender<Job>,
    /// Recorded on reservations; see [`SqliteLedger::owned_by`].
    owner: String,
}

fn err(source: impl std::error::Error + Send + Sync + 'static) -> LedgerError {
    LedgerError::Database {
        backend: "sqlite",
        source: Box::new(source),
    }
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
        migrate(path).await?;
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || connect(&path, durability))
            .await
            .map_err(|e| LedgerError::Task {
                backend: "sqlite",
                reason: e.to_string(),
            })??;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("weir-ledger".to_owned())
            .spawn(move || {
                let mut conn = conn;
                for job in queue {
                    job(&mut conn);
                }
            })
            .map_err(err)?;
        Ok(SqliteLedger {
            jobs,
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
}

/// Create the file when absent and bring its schema up to date (the migration history is
/// kept in `_sqlx_migrations`, as it always has been).
async fn migrate(path: &Path) -> Result<(), LedgerError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(err)?;
    let migrated = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
    pool.close().await;
    migrated.map_err(|source| LedgerError::Migrate {
        backend: "sqlite",
        source,
    })
}

/// The operations' connection.
fn connect(path: &Path, durability: Durability) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    Ok(conn)
}

#[async_trait::async_trait]
impl Backend for SqliteLedger {
    const NAME: &'static str = "sqlite";

    fn owner(&self) -> &str {
        &self.owner
    }

    async fn run<R: Send + 'static>(&self, write: bool, op: Op<R>) -> Result<R, LedgerError> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // A caller that went away while this waited in the queue gets nothing done.
            if !done.is_closed() {
                let result = run_on(conn, write, op, &done);
                let _ = done.send(result);
            }
        });
        let stopped = |_| LedgerError::Task {
            backend: "sqlite",
            reason: "the ledger's connection thread has stopped".to_owned(),
        };
        self.jobs.send(job).map_err(|_| stopped(()))?;
        answer.await.map_err(|_| stopped(()))?
    }
}

/// Run `op` in one transaction on `conn`: committed when it succeeds and its caller still
/// waits for the answer, rolled back otherwise.
fn run_on<R>(
    conn: &mut Connection,
    write: bool,
    op: Op<R>,
    done: &oneshot::Sender<Result<R, LedgerError>>,
) -> Result<R, LedgerError> {
    if !conn.is_autocommit() {
        // Never expected (every path below ends its transaction); a leftover one would
        // otherwise fail every later BEGIN.
        conn.execute_batch("ROLLBACK").map_err(err)?;
    }
    let begin = if write { "BEGIN IMMEDIATE" } else { "BEGIN" };
    conn.execute_batch(begin).map_err(err)?;
    let result = {
        let mut tx = SqliteTx { conn: &mut *conn };
        let mut step = op(&mut tx);
        // Every statement runs synchronously on this thread: the operation is ready at once.
        match step.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(LedgerError::Task {
                backend: "sqlite",
                reason: "a ledger operation waited on something other than its connection"
                    .to_owned(),
            }),
        }
    };
    let end = match &result {
        Ok(_) if !done.is_closed() => "COMMIT",
        _ => "ROLLBACK",
    };
    conn.execute_batch(end).map_err(err)?;
    if end == "ROLLBACK" && result.is_ok() {
        return Err(LedgerError::Task {
            backend: "sqlite",
            reason: "the caller went away; rolled back".to_owned(),
        });
    }
    result
}

/// A transaction open on the connection's thread.
struct SqliteTx<'c> {
    conn: &'c mut Connection,
}

impl SqliteTx<'_> {
    /// A cached statement for `sql` with `args` bound to its `$N` placeholders.
    fn bound(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<rusqlite::CachedStatement<'_>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err)?;
        for index in 1..=stmt.parameter_count() {
            let position = stmt
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=args.len()).contains(n))
                .ok_or(rusqlite::Error::InvalidParameterCount(index, args.len()))
                .map_err(err)?;
            stmt.raw_bind_parameter(index, args[position - 1])
                .map_err(err)?;
        }
        Ok(stmt)
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(n) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*n)),
        })
    }
}

#[async_trait::async_trait]
impl Tx for SqliteTx<'_> {
    fn locks_rows(&self) -> bool {
        false
    }

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, LedgerError> {
        let mut stmt = self.bound(sql, args)?;
        let changed = stmt.raw_execute().map_err(err)?;
        Ok(changed as u64)
    }

    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, LedgerError> {
        let mut stmt = self.bound(sql, args)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    _ => Value::Null,
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
