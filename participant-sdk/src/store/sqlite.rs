//! The state table on SQLite.

use super::{Sql, StateStore, decode_row_fn, row_methods, state_columns};
use crate::error::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// How long a connection waits for SQLite's write lock before failing with "database is locked".
/// Local transactions are short (a handler and one row), so queueing behind many is the norm.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SQL: Sql = Sql {
    insert: "INSERT INTO twopc_participant_state \
             (participant, transaction_id, state, vote, reason, payload, coordinator, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (participant, transaction_id) DO NOTHING",
    // SQLite has no row locks: `BEGIN IMMEDIATE` already holds the database's write lock.
    get_for_update: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = ? AND transaction_id = ?"
    ),
    get_for_share: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = ? AND transaction_id = ?"
    ),
    update: "UPDATE twopc_participant_state SET state = ?, vote = ?, reason = ?, updated_at_ms = ? \
             WHERE participant = ? AND transaction_id = ?",
    get: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = ? AND transaction_id = ?"
    ),
    in_doubt: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE state = 'prepared' AND updated_at_ms <= ? \
          ORDER BY updated_at_ms LIMIT ?"
    ),
    list: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state ORDER BY created_at_ms, participant, transaction_id LIMIT ?"
    ),
};

decode_row_fn!(SqliteRow);

/// The participant state table in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The pool, shared with the service.
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `url` (e.g. `sqlite://bank-a.db`), creating the file if missing, in
    /// WAL mode with `synchronous=FULL` (a prepared vote must survive a power loss) and a busy timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = Self::connect_options(url)?;
        let pool = SqlitePoolOptions::new().connect_with(options).await?;
        Ok(Self { pool })
    }

    /// The connect options [`connect`](Self::connect) uses, for a service that builds its own pool.
    pub fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
        Ok(SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT))
    }

    /// Uses an existing pool (the service's own).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

impl StateStore for SqliteStore {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrator(include_str!(
            "../../../migrations/participant/sqlite/0001_state.sql"
        ))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock now: a deferred transaction that reads first and writes
        // later fails with SQLITE_BUSY when another writer got in between.
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    row_methods!(SQL);
}
