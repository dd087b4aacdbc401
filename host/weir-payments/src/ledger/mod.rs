//! The persistent ledger: one [`Ledger`] trait, two backends that share their SQL and differ
//! only in dialect and locking.
//!
//! - [`SqliteLedger`]: an embedded SQLite file in WAL mode, the single-node default. Every
//!   write transaction takes the write lock up front (`BEGIN IMMEDIATE`), so writers are
//!   serialised.
//! - [`PostgresLedger`]: PostgreSQL, shared by several gateways (or orchestrators) behind a load
//!   balancer. Reservations take a balance with one conditional `UPDATE … WHERE balance >= $n`
//!   (PostgreSQL re-checks the condition on the newest row after waiting for its lock), and the
//!   read-then-write movements (top-ups, write-downs) lock the balance row
//!   (`SELECT … FOR UPDATE`) first, so no credit is ever spent twice, whichever process spends
//!   it.
//!
//! [`open`] picks the backend by URL.

mod postgres;
mod sql;
mod sqlite;
mod tx;

#[cfg(test)]
mod contract;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use postgres::PostgresLedger;
pub use sqlite::SqliteLedger;

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
    #[error("ledger database ({backend}): {source}")]
    Database {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row held a value of an unexpected type (a schema the ledger does not know).
    #[error("ledger row: column {0} holds an unexpected value")]
    Column(usize),
    /// The task that began a transaction failed (the runtime is shutting down).
    #[error("ledger task ({backend}): {reason}")]
    Task {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The schema could not be applied.
    #[error("ledger migrations ({backend}): {source}")]
    Migrate {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
    /// The ledger URL or options cannot be used.
    #[error("ledger configuration: {0}")]
    Config(String),
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

/// One row of [`Ledger::balances`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceRow {
    /// Sender (orchestrator side) or orchestrator (gateway side).
    pub party: String,
    /// The account: `capability/model`, or a capability.
    pub account: String,
    /// Base units held.
    pub amount: u64,
}

/// How hard a commit waits for the disk (SQLite; PostgreSQL follows its server's
/// `synchronous_commit`).
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

/// Balances, reservations and spend, behind one interface for every backend.
///
/// Every movement carries a caller-chosen id: a retried credit or spend applies once, and an
/// id reused for different content is a [`LedgerError::Conflict`]. Implementations must keep
/// each method atomic across every process sharing the store: two reservations never spend
/// the same credit.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Add `amount` to `sender`'s balance for `capability`. Applying the same `id` again is a
    /// no-op; reusing it for different content is a conflict.
    async fn credit(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        amount: u64,
    ) -> Result<Balance, LedgerError>;

    /// Credit `amount` under `credit_id` (idempotent, as [`Ledger::credit`]) and reserve
    /// `cost` for job `id`, in one transaction: on [`LedgerError::Insufficient`] neither
    /// happens, and its balance is the one held without the credit. Returns the reservation
    /// and whether this call applied the credit.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Reservation, bool), LedgerError>;

    /// Hold `amount` of `sender`'s balance for job `id` before running it. Atomic: two jobs can
    /// never both spend the same credit. Fails with [`LedgerError::Insufficient`] and changes
    /// nothing when the balance is short. Reserving an id that is already open returns it.
    async fn reserve(
        &self,
        id: &str,
        sender: &str,
        capability: &str,
        model: &str,
        units: u64,
        amount: u64,
    ) -> Result<Reservation, LedgerError>;

    /// Reserve `cost` for job `id`, first crediting (under `credit_id`) whatever the balance
    /// lacks, in one transaction. Returns the reservation and the amount credited (what the
    /// sender must pay now).
    #[allow(clippy::too_many_arguments)]
    async fn reserve_with_topup(
        &self,
        credit_id: &str,
        id: &str,
        party: &str,
        capability: &str,
        model: &str,
        units: u64,
        cost: u64,
    ) -> Result<(Reservation, u64), LedgerError>;

    /// Settle job `id` at `charge` (at most what was reserved; the rest goes back to the
    /// balance) in one transaction, optionally recording it as spend `spend_id` under
    /// `spend_capability` (gateway side), and return the balance after it.
    async fn settle_charged(
        &self,
        id: &str,
        charge: u64,
        spend: Option<(&str, &str)>,
    ) -> Result<Balance, LedgerError>;

    /// The job failed or was canceled: the reserved amount goes back to the balance.
    async fn release(&self, id: &str) -> Result<(), LedgerError>;

    /// Release reservation `id` and take back credit `credit_id` (the payment that came with
    /// the job), in one transaction, so the balance is as if the job never came.
    async fn release_and_revoke(
        &self,
        id: &str,
        credit_id: Option<&str>,
    ) -> Result<(), LedgerError>;

    /// Lower what `party` holds for `capability` to `to` when the ledger believes more (the other
    /// side lost a payment, e.g. one whose request a crash cut off). Never raises it. The
    /// difference is recorded as a spend on model `(balance correction)`; returns it.
    async fn write_down(&self, party: &str, capability: &str, to: u64) -> Result<u64, LedgerError>;

    /// Release every reservation older than `age` that this ledger's owner (or nobody) made:
    /// after a crash, its job never finished. Reservations of other processes sharing the
    /// store are theirs to settle. Returns how many were released.
    async fn release_stale(&self, age: Duration) -> Result<usize, LedgerError>;

    /// `sender`'s balance for `capability` (zero when never credited).
    async fn balance(&self, sender: &str, capability: &str) -> Result<Balance, LedgerError>;

    /// Totals per (party, capability, model): gateway spend (`spend` entries) or, on the
    /// orchestrator side, settled reservations (what senders were charged).
    async fn totals(&self, what: Totals) -> Result<Vec<TotalRow>, LedgerError>;

    /// Every balance (party and account), in no particular order.
    async fn balances(&self) -> Result<Vec<BalanceRow>, LedgerError>;
}

/// How [`open`] opens a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerOptions {
    /// SQLite commit durability (ignored by PostgreSQL).
    pub durability: Durability,
    /// PostgreSQL schema holding the tables (created when absent), so several ledgers (a
    /// gateway's and an orchestrator's) can share one database. Letters, digits and `_`.
    pub schema: String,
    /// PostgreSQL connections at most.
    pub connections: u32,
    /// Who makes the reservations (stable across restarts of one node, different for each
    /// node sharing the store): [`Ledger::release_stale`] releases only this owner's.
    pub owner: String,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            durability: Durability::default(),
            schema: "public".to_owned(),
            connections: 16,
            owner: String::new(),
        }
    }
}

/// Open a ledger from a URL: `postgres://…` (or `postgresql://…`), or `sqlite://PATH` (or a
/// bare path) for a SQLite file, created when absent. The schema is brought up to date.
pub async fn open(url: &str, options: &LedgerOptions) -> Result<Arc<dyn Ledger>, LedgerError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let ledger = PostgresLedger::connect(url, &options.schema, options.connections).await?;
        Ok(Arc::new(ledger.owned_by(&options.owner)))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.is_empty() {
            return Err(LedgerError::Config(format!("`{url}` names no file")));
        }
        let ledger =
            SqliteLedger::open_with(std::path::Path::new(path), options.durability).await?;
        Ok(Arc::new(ledger.owned_by(&options.owner)))
    }
}

/// `url` without its password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
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

fn insufficient(sender: &str, capability: &str, balance: u64, needed: u64) -> LedgerError {
    LedgerError::Insufficient {
        sender: sender.to_owned(),
        capability: capability.to_owned(),
        balance,
        needed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact_url("postgres://weir:secret@db.example:5432/ledger"),
            "postgres://weir@db.example:5432/ledger"
        );
        assert_eq!(
            redact_url("postgres://db.example/ledger"),
            "postgres://db.example/ledger"
        );
        assert_eq!(redact_url("sqlite:///var/a@b.db"), "sqlite:///var/a@b.db");
    }
}
