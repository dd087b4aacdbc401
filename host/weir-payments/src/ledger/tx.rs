//! What a ledger backend offers the ledger's SQL: a transaction that runs statements
//! ([`Tx`]), and a way to run a whole ledger operation inside one ([`Backend::run`]).
//!
//! The operations are written once, in [`super::sql`], as functions over `&mut dyn Tx`. A
//! backend decides where they run: PostgreSQL awaits each statement on a pooled connection;
//! SQLite runs the whole operation on its connection's own thread, so an operation costs one
//! hand-over between threads instead of one per statement.

use std::future::Future;
use std::pin::Pin;

use super::LedgerError;

/// A statement argument, bound to the `$N` placeholder at its position (`$1` is the first).
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// Text.
    Text(&'a str),
    /// A 64-bit integer.
    Int(i64),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Text(s)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Text(s)
    }
}

impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

/// One row of a result, its values in column order.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// The integer in column `i`.
    pub fn int(&self, i: usize) -> Result<i64, LedgerError> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => Err(LedgerError::Column(i)),
        }
    }

    /// The integer in column `i`, `None` when it is `NULL` (a sum of no rows).
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, LedgerError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// The text in column `i`.
    pub fn text(&mut self, i: usize) -> Result<String, LedgerError> {
        match self.0.get_mut(i) {
            Some(Value::Text(s)) => Ok(std::mem::take(s)),
            _ => Err(LedgerError::Column(i)),
        }
    }
}

/// One open transaction of a backend.
#[async_trait::async_trait]
pub trait Tx: Send {
    /// Whether a read locks the rows it reads until the transaction ends (`SELECT … FOR
    /// UPDATE` on PostgreSQL). Where it does not (SQLite), the transaction already holds the
    /// database's only write lock.
    fn locks_rows(&self) -> bool;

    /// Run a statement; the number of rows it changed.
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, LedgerError>;

    /// Run a statement; every row it returned.
    async fn rows(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Row>, LedgerError>;

    /// Run a statement; its first row, if any.
    async fn row(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, LedgerError> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }
}

/// The future of an operation running inside a transaction.
pub type Step<'t, R> = Pin<Box<dyn Future<Output = Result<R, LedgerError>> + Send + 't>>;

/// A ledger operation: given the transaction, its future.
pub type Op<R> = Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> Step<'t, R> + Send>;

/// Wraps a closure as an [`Op`] (naming the signature lets the closure borrow its argument).
pub fn op<R, F>(f: F) -> Op<R>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> Step<'t, R> + Send + 'static,
{
    Box::new(f)
}

/// A ledger backend: where operations run.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    const NAME: &'static str;

    /// Who makes this ledger's reservations (see [`super::LedgerOptions::owner`]).
    fn owner(&self) -> &str;

    /// Run `op` in one transaction: committed when it returns `Ok`, rolled back when it
    /// returns an error or its caller goes away before the commit. `write` takes the write
    /// lock up front where the database has one.
    async fn run<R: Send + 'static>(&self, write: bool, op: Op<R>) -> Result<R, LedgerError>;
}
