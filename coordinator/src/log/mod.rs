//! The decision log: where the coordinator keeps every transaction, durably.
//!
//! One trait, two stores: embedded SQLite (the default) and PostgreSQL. Every write after the
//! first is compare-and-set on the record's `version`, so the trait does not assume a single
//! writer (several coordinators may later share one PostgreSQL log).

use crate::record::{Millis, TxRecord};
use std::future::Future;
use twopc::wire::{TransactionId, TransactionState};

mod any;
mod postgres;
mod sqlite;

pub use any::AnyLog;
pub use postgres::PostgresLog;
pub use sqlite::SqliteLog;

#[cfg(test)]
mod suite;

/// An idempotency key with a hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's `Idempotency-Key` header.
    pub key: String,
    /// A hash of the request body, to detect the key reused for another request.
    pub request_hash: String,
}

/// What [`DecisionLog::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The record was inserted.
    New,
    /// The idempotency key was seen before with the same request: this is the transaction it made.
    Existing(TxRecord),
}

/// Errors of the decision log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A compare-and-set write found another version than expected.
    #[error("transaction {id} was changed concurrently (expected version {expected})")]
    Conflict {
        /// The transaction.
        id: TransactionId,
        /// The version the writer expected to replace.
        expected: i64,
    },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key '{0}' was already used with a different request")]
    IdempotencyKeyReused(String),
    /// A transaction with this id already exists.
    #[error("transaction {0} already exists")]
    Duplicate(TransactionId),
    /// A stored row could not be decoded.
    #[error("corrupt log row for transaction {id}: {message}")]
    Corrupt {
        /// The row's id as stored.
        id: String,
        /// What was wrong.
        message: String,
    },
    /// A group-commit batch failed as a whole; nothing in it was written.
    #[error("decision log write failed: {0}")]
    BatchFailed(String),
    /// A one-shot commit's decision could not be written: unless the write landed after all,
    /// the transaction aborts (presumed abort).
    #[error(
        "the decision of transaction {0} could not be logged; it aborts unless the write landed \
         after all: ask GET /v1/transactions/{0} later"
    )]
    DecisionNotLogged(TransactionId),
    /// The log's writer task is gone (the log was closed).
    #[error("decision log is closed")]
    WriterGone,
    /// The URL does not name a supported store.
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("decision log database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite writer's connection failed to open.
    #[error("decision log database error (SQLite writer): {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema migration failed.
    #[error("decision log migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One row of a page of unfinished records: the record, or why its row could not be read.
#[derive(Debug)]
pub enum Unfinished {
    /// A readable record.
    Record(TxRecord),
    /// A row that does not decode (written by another version, or edited by hand).
    Corrupt {
        /// Its creation time, as stored.
        created_at: Millis,
        /// Its id, as stored.
        id: String,
        /// What was wrong with it.
        message: String,
    },
}

impl Unfinished {
    /// The `(created_at, id)` of the row, to page on from it.
    pub fn cursor(&self) -> (Millis, String) {
        match self {
            Self::Record(r) => (r.created_at, r.id.to_string()),
            Self::Corrupt { created_at, id, .. } => (*created_at, id.clone()),
        }
    }
}

/// The durable store of transaction records.
pub trait DecisionLog: Send + Sync + 'static {
    /// Inserts a new record (version 0). With a key: if the key is new, records it with the
    /// transaction in the same local transaction; if it is known with the same request hash,
    /// inserts nothing and returns the existing record; with another hash, fails with
    /// [`LogError::IdempotencyKeyReused`].
    fn create(
        &self,
        record: &TxRecord,
        key: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Created, LogError>> + Send;

    /// The record with this id.
    fn get(
        &self,
        id: TransactionId,
    ) -> impl Future<Output = Result<Option<TxRecord>, LogError>> + Send;

    /// Replaces the stored record whose version is `record.version - 1` with `record`, durably.
    /// Fails with [`LogError::Conflict`] when the stored version differs.
    fn update(&self, record: &TxRecord) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Records newest first, optionally only those in `state`, at most `limit`.
    fn list(
        &self,
        state: Option<TransactionState>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TxRecord>, LogError>> + Send;

    /// Group-commit counters `(batches committed, writes in them)`, for stores that batch.
    fn write_stats(&self) -> Option<(u64, u64)> {
        None
    }

    /// Records not yet committed or aborted, oldest first, at most `limit`.
    fn unfinished(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TxRecord>, LogError>> + Send {
        self.unfinished_after(None, limit)
    }

    /// Like [`DecisionLog::unfinished`], but only records after `after` (a record's
    /// `(created_at, id)`) in that order: pages through any number of unfinished records.
    fn unfinished_after(
        &self,
        after: Option<(Millis, TransactionId)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TxRecord>, LogError>> + Send;

    /// Like [`DecisionLog::unfinished_after`], but a row that does not decode comes back as
    /// [`Unfinished::Corrupt`] instead of failing the page, so that one bad row does not stop
    /// recovery; `after` is [`Unfinished::cursor`] of the last row seen.
    fn unfinished_page(
        &self,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Unfinished>, LogError>> + Send;
}
