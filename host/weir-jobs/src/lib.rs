//! Async generation jobs: a durable queue behind one store trait ([`store::JobStore`]) with
//! SQLite and PostgreSQL backends, leases with heartbeats, retries with backoff, Standard
//! Webhooks delivery ([`webhook`]) and egress that refuses private networks ([`egress`]).

pub mod catalog;
pub mod egress;
pub mod store;
pub mod webhook;

pub use store::{Job, JobState, JobStore, NewJob, PostgresJobs, SqliteJobs, StoreError};
