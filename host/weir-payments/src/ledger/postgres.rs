//! The ledger in PostgreSQL, shared by every process that connects to it.
//!
//! Race-free without serialising everything: a reservation takes its cost with one
//! conditional `UPDATE … WHERE balance >= $n` (under `READ COMMITTED` an update that waited
//! for a concurrent one re-checks its condition on the row that one left), and the
//! read-then-write movements (top-ups, write-downs) read the balance with `FOR UPDATE`, so a
//! second one waits for the first to commit and then sees its result.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row as _, ValueRef as _};

use super::tx::{Arg, Backend, Op, Row, Tx, Value};
use super::LedgerError;

/// The ledger in a PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct PostgresLedger {
    pool: PgPool,
    /// Recorded on reservations; see [`PostgresLedger::owned_by`].
    owner: String,
}

/// Whether `schema` is a plain identifier (it is spliced into `CREATE SCHEMA`).
fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
}

impl PostgresLedger {
    /// Connect to `url` with up to `connections`, keep the tables in `schema` (created when
    /// absent; lowercase letters, digits and `_`) and bring them up to date. Concurrent
    /// processes starting together create and migrate it once.
    pub async fn connect(
        url: &str,
        schema: &str,
        connections: u32,
    ) -> Result<PostgresLedger, LedgerError> {
        if !valid_schema(schema) {
            return Err(LedgerError::Config(format!(
                "PostgreSQL schema `{schema}` must be lowercase letters, digits and `_`"
            )));
        }
        let options = PgConnectOptions::from_str(url).map_err(err)?;
        create_schema(&options, schema).await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.options([("search_path", schema)]))
            .await
            .map_err(err)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                backend: "postgres",
                source,
            })?;
        Ok(PostgresLedger {
            pool,
            owner: String::new(),
        })
    }

    /// The pool (tests and tools that read the tables directly).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This ledger's reservations belong to `owner`, which should stay the same across
    /// restarts of one node and differ between nodes sharing the store: only its own (and
    /// nobody's, the default) are released by [`release_stale`](super::Ledger::release_stale).
    pub fn owned_by(mut self, owner: &str) -> PostgresLedger {
        owner.clone_into(&mut self.owner);
        self
    }
}

/// `CREATE SCHEMA IF NOT EXISTS`, under a transaction-scoped advisory lock: two processes
/// racing to create the same schema would otherwise fail on a unique index.
async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), LedgerError> {
    let mut conn = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(err)?;
    let mut tx = conn.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('weir ledger schema'))")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    conn.close().await.map_err(err)
}

fn err(source: sqlx::Error) -> LedgerError {
    LedgerError::Database {
        backend: "postgres",
        source: Box::new(source),
    }
}

#[async_trait::async_trait]
impl Backend for PostgresLedger {
    const NAME: &'static str = "postgres";

    fn owner(&self) -> &str {
        &self.owner
    }

    async fn run<R: Send + 'static>(&self, write: bool, op: Op<R>) -> Result<R, LedgerError> {
        if !write {
            let mut conn = self.pool.acquire().await.map_err(err)?;
            return op(&mut PgTx(&mut conn)).await;
        }
        // Begun on a task of its own, so that a caller dropped during the `BEGIN` never leaves
        // a pooled connection inside a transaction nobody owns. A `Transaction` dropped
        // unfinished (its caller went away) is rolled back.
        let pool = self.pool.clone();
        let mut tx = tokio::spawn(async move { pool.begin().await })
            .await
            .map_err(|e| LedgerError::Task {
                backend: "postgres",
                reason: e.to_string(),
            })?
            .map_err(err)?;
        match op(&mut PgTx(&mut tx)).await {
            Ok(value) => {
                tx.commit().await.map_err(err)?;
                Ok(value)
            }
            Err(e) => {
                tx.rollback().await.map_err(err)?;
                Err(e)
            }
        }
    }
}

/// Statements on one connection (inside a transaction when the operation writes).
struct PgTx<'c>(&'c mut PgConnection);

/// `sql` with `args` bound in order.
fn bound<'q>(sql: &'static str, args: &[Arg<'q>]) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Text(s) => q.bind(s),
        Arg::Int(n) => q.bind(n),
    })
}

/// A result row as values: every ledger column is `BIGINT` or `TEXT`.
fn values(row: &PgRow) -> Result<Row, LedgerError> {
    let mut values = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let value = if row.try_get_raw(i).map_err(err)?.is_null() {
            Value::Null
        } else if let Ok(n) = row.try_get::<i64, _>(i) {
            Value::Int(n)
        } else if let Ok(n) = row.try_get::<i32, _>(i) {
            Value::Int(i64::from(n))
        } else {
            Value::Text(row.try_get::<String, _>(i).map_err(err)?)
        };
        values.push(value);
    }
    Ok(Row(values))
}

#[async_trait::async_trait]
impl Tx for PgTx<'_> {
    fn locks_rows(&self) -> bool {
        true
    }

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, LedgerError> {
        let done = bound(sql, args).execute(&mut *self.0).await.map_err(err)?;
        Ok(done.rows_affected())
    }

    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, LedgerError> {
        let rows = bound(sql, args)
            .fetch_all(&mut *self.0)
            .await
            .map_err(err)?;
        rows.iter().map(values).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schemas_are_plain_identifiers() {
        assert!(valid_schema("weir_ledger_gateway"));
        for bad in ["", "a;drop", "Upper", "1st", "a b", "\"q\""] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
