//! The ledger in an embedded SQLite file (WAL), the single-node default.
//!
//! One connection, owned by a thread of its own: each ledger operation is handed to that
//! thread whole, so it costs one hand-over between threads however many statements it runs
//! (a reservation with a top-up runs five), and no async worker ever waits on the disk.
//! Operations that queue up while one commits are committed together (group commit), each in
//! a savepoint of its own. Writers are serialised by SQLite's write lock, taken at the start
//! of every transaction (`BEGIN IMMEDIATE`); a second process on the same file waits for it
//! (busy timeout).

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

/// An operation for the connection's thread: given the connection inside the batch's
/// transaction (or why the batch could not begin), it runs and answers how to finish once
/// the batch's commit is known.
type Job = Box<dyn FnOnce(Result<&mut Connection, &str>) -> Finish + Send>;

/// Answers an operation's caller once its batch's commit succeeded or failed.
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;

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
            .spawn(move || serve(conn, queue))
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

    /// Every operation runs in a write transaction (`write` makes no difference: reads are
    /// as cheap inside the batch's transaction).
    async fn run<R: Send + 'static>(&self, _write: bool, op: Op<R>) -> Result<R, LedgerError> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                // A caller that went away while this waited in the queue gets nothing done.
                Ok(_) if done.is_closed() => return Box::new(|_| {}),
                Ok(conn) => run_in_savepoint(conn, op, &done),
                Err(batch) => Err(task(batch)),
            };
            Box::new(move |committed: Result<(), String>| {
                let answer = match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(batch)) => Err(task(&batch)),
                    (Err(e), _) => Err(e),
                };
                let _ = done.send(answer);
            })
        });
        let stopped = || task("the ledger's connection thread has stopped");
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn task(reason: &str) -> LedgerError {
    LedgerError::Task {
        backend: "sqlite",
        reason: reason.to_owned(),
    }
}

/// Most operations committed together.
const MAX_BATCH: usize = 64;

/// The connection's thread: operations queued together run in one transaction, each inside
/// a savepoint of its own (so each is still all or nothing), and are committed together:
/// one WAL write and checkpoint share for the whole batch instead of one per operation. No
/// operation is answered before the commit that holds it.
fn serve(mut conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let began = begin(&mut conn);
        let mut finishes = Vec::with_capacity(batch.len());
        for job in batch {
            match &began {
                // SQLite rolled the whole transaction back (an I/O error, a full disk): the
                // batch fails at its commit; the rest of it is not run.
                Ok(()) if conn.is_autocommit() => {
                    finishes.push(job(Err("the batch was rolled back")))
                }
                Ok(()) => finishes.push(job(Ok(&mut conn))),
                Err(why) => finishes.push(job(Err(why))),
            }
        }
        let committed = match began {
            Ok(()) => control(&conn, "COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                format!("commit: {e}")
            }),
            Err(why) => Err(why),
        };
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

/// Run a transaction-control statement, prepared once.
fn control(conn: &Connection, sql: &'static str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Begin a batch's write transaction (ending one a failure left open).
fn begin(conn: &mut Connection) -> Result<(), String> {
    if !conn.is_autocommit() {
        // Never expected (every batch ends its transaction); a leftover one would otherwise
        // fail every later BEGIN.
        let _ = conn.execute_batch("ROLLBACK");
    }
    control(conn, "BEGIN IMMEDIATE").map_err(|e| format!("begin: {e}"))
}

/// Run `op` inside a savepoint of the batch's transaction: kept when it succeeds and its
/// caller still waits for the answer, undone otherwise.
fn run_in_savepoint<R>(
    conn: &mut Connection,
    op: Op<R>,
    done: &oneshot::Sender<Result<R, LedgerError>>,
) -> Result<R, LedgerError> {
    control(conn, "SAVEPOINT op").map_err(err)?;
    let result = {
        let mut tx = SqliteTx { conn: &mut *conn };
        let mut step = op(&mut tx);
        // Every statement runs synchronously on this thread: the operation is ready at once.
        match step.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(task(
                "a ledger operation waited on something other than its connection",
            )),
        }
    };
    let keep = result.is_ok() && !done.is_closed();
    if conn.is_autocommit() {
        // SQLite already rolled the whole transaction back; the batch's commit reports it.
        return result;
    }
    if !keep {
        control(conn, "ROLLBACK TO op").map_err(err)?;
    }
    control(conn, "RELEASE op").map_err(err)?;
    match result {
        Ok(_) if !keep => Err(task("the caller went away; rolled back")),
        other => other,
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SqliteLedger;
    use crate::ledger::{Ledger, LedgerError};

    /// Operations queued together share one commit, yet each is all or nothing: failures in
    /// the same batch (a conflicting credit, short balances) undo only themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn operations_committed_together_stay_all_or_nothing_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let ledger = Arc::new(SqliteLedger::open(&path).await.expect("open"));
        ledger.credit("c0", "s", "cap", 5).await.expect("credit");
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let ledger = Arc::clone(&ledger);
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        // c0 again with another amount: a conflict; the other 19 apply.
                        ledger
                            .credit(&format!("c{i}"), "s", "cap", 1)
                            .await
                            .map(|_| ())
                    } else {
                        ledger
                            .reserve(&format!("r{i}"), "s", "cap", "m", 1, 1_000)
                            .await
                            .map(|_| ())
                    }
                })
            })
            .collect();
        let (mut applied, mut conflicts, mut short) = (0, 0, 0);
        for task in tasks {
            match task.await.expect("task") {
                Ok(()) => applied += 1,
                Err(LedgerError::Conflict(_)) => conflicts += 1,
                Err(LedgerError::Insufficient { .. }) => short += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!((applied, conflicts, short), (19, 1, 20));
        assert_eq!(
            ledger.balance("s", "cap").await.expect("balance").amount,
            24
        );
        drop(ledger);
        let reopened = SqliteLedger::open(&path).await.expect("reopen");
        assert_eq!(
            reopened.balance("s", "cap").await.expect("balance").amount,
            24
        );
    }
}
