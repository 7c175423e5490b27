//! [`SqliteLog`]: the decision log in an embedded SQLite database file (the default store).

use super::any::{decode_row, encode, expected_version, sql_limit};
use super::{Created, DecisionLog, IdempotencyKey, LogError};
use crate::record::{TxRecord, now_millis};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr};
use std::str::FromStr;
use std::time::Duration;
use twopc::wire::{TransactionId, TransactionState};

/// The schema, applied by [`SqliteLog::connect`].
const MIGRATION_SQL: &str = include_str!("../../../migrations/coordinator/sqlite/0001_log.sql");

/// Connections in the pool of a file database: readers run in parallel under WAL, writers are
/// serialized by SQLite itself (waiting up to [`BUSY_TIMEOUT`]).
const MAX_CONNECTIONS: u32 = 4;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `SELECT` of every column of `twopc_transactions`, followed by the rest of the query.
macro_rules! select_tx {
    ($rest:literal) => {
        concat!(
            "SELECT id, state, decision, reason, timeout_ms, created_at, deadline, decided_at, \
             completed_at, participants, version FROM twopc_transactions ",
            $rest
        )
    };
}

const INSERT_SQL: &str = "INSERT INTO twopc_transactions \
     (id, state, decision, reason, timeout_ms, created_at, deadline, decided_at, completed_at, \
     participants, version) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING";

const UPDATE_SQL: &str = "UPDATE twopc_transactions SET state = ?, decision = ?, reason = ?, \
     timeout_ms = ?, created_at = ?, deadline = ?, decided_at = ?, completed_at = ?, \
     participants = ?, version = ? WHERE id = ? AND version = ?";

const INSERT_KEY_SQL: &str = "INSERT INTO twopc_idempotency_keys \
     (key, request_hash, transaction_id, created_at) VALUES (?, ?, ?, ?) \
     ON CONFLICT (key) DO NOTHING";

const SELECT_KEY_SQL: &str =
    "SELECT request_hash, transaction_id FROM twopc_idempotency_keys WHERE key = ?";

const GET_SQL: &str = select_tx!("WHERE id = ?");

/// All records, newest first (index `twopc_transactions_created`).
pub(super) const LIST_ALL_SQL: &str = select_tx!("ORDER BY created_at DESC, id DESC LIMIT ?");

/// Records in one state, newest first (index `twopc_transactions_state_created`).
pub(super) const LIST_STATE_SQL: &str =
    select_tx!("WHERE state = ? ORDER BY created_at DESC, id DESC LIMIT ?");

/// Unfinished records, oldest first. The `WHERE` is the partial index's predicate word for word,
/// so SQLite can answer from `twopc_transactions_unfinished`.
pub(super) const UNFINISHED_SQL: &str = select_tx!(
    "WHERE state NOT IN ('committed', 'aborted') ORDER BY created_at ASC, id ASC LIMIT ?"
);

/// The decision log in an SQLite database file.
///
/// Made for one coordinator process per file: SQLite serializes writers, and every write is a
/// compare-and-set on the record's version, so several tasks (or even processes on one host)
/// may share it safely, but several hosts need [`super::PostgresLog`].
#[derive(Debug, Clone)]
pub struct SqliteLog {
    pool: SqlitePool,
}

impl SqliteLog {
    /// Opens the database at `url` (`sqlite://PATH` or `sqlite:PATH`), creating the file if
    /// missing (its directory must exist), and brings its schema up to date.
    ///
    /// `sqlite::memory:` is accepted for tests, but it is not durable: everything is lost when
    /// the log is dropped. Any other scheme is [`LogError::UnsupportedUrl`].
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let in_memory = match parse_url(url) {
            Some(UrlKind::File) => false,
            Some(UrlKind::Memory) => true,
            None => return Err(LogError::UnsupportedUrl(url.to_owned())),
        };
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            // FULL syncs the write-ahead log on every commit, so a transaction's decision
            // (and everything else) is on stable storage when `create`/`update` returns and
            // survives power loss, not just a crash of the process. NORMAL, the usual WAL
            // companion, may lose the last commits on power loss: not acceptable for a
            // commit decision that participants have been told about.
            .synchronous(SqliteSynchronous::Full);
        let pool = if in_memory {
            // One connection, never closed: an in-memory database lives only as long as a
            // connection to it (and shared-cache connections would lock each other out).
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            // WAL: readers do not block the writer nor each other, and a commit is one
            // sequential append (plus its fsync) rather than a rollback-journal dance.
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?
        };
        migrator().run(&pool).await?;
        if !in_memory {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&pool)
                .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(
                    journal_mode = %mode,
                    "SQLite decision log is not in WAL mode (unsupported by the file system?); \
                     commits stay durable but readers may block the writer"
                );
            }
        }
        tracing::info!(url, in_memory, "opened SQLite decision log");
        Ok(Self { pool })
    }

    /// The connection pool, for health checks and tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts the transaction row; `false` when the id exists.
    async fn insert_tx<'c, E>(executor: E, record: &TxRecord) -> Result<bool, LogError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        let row = encode(record)?;
        let done = sqlx::query(INSERT_SQL)
            .bind(&row.id)
            .bind(row.state)
            .bind(row.decision)
            .bind(row.reason)
            .bind(row.timeout_ms)
            .bind(row.created_at)
            .bind(row.deadline)
            .bind(row.decided_at)
            .bind(row.completed_at)
            .bind(&row.participants)
            .bind(row.version)
            .execute(executor)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The create path with an idempotency key: key and transaction in one local transaction.
    async fn create_with_key(
        &self,
        record: &TxRecord,
        key: &IdempotencyKey,
    ) -> Result<Created, LogError> {
        // IMMEDIATE takes the write lock up front: this transaction reads (the key row) before
        // it may write, and a deferred one could fail with SQLITE_BUSY when upgrading its read
        // snapshot after another writer committed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(INSERT_KEY_SQL)
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(record.id.to_string())
            .bind(now_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if inserted {
            if !Self::insert_tx(&mut *tx, record).await? {
                tx.rollback().await?;
                return Err(LogError::Duplicate(record.id));
            }
            tx.commit().await?;
            tracing::debug!(id = %record.id, key = %key.key, "created transaction with idempotency key");
            return Ok(Created::New);
        }
        let row = sqlx::query(SELECT_KEY_SQL)
            .bind(&key.key)
            .fetch_one(&mut *tx)
            .await?;
        let hash: String = row.try_get("request_hash")?;
        let existing_id: String = row.try_get("transaction_id")?;
        if hash != key.request_hash {
            tx.rollback().await?;
            return Err(LogError::IdempotencyKeyReused(key.key.clone()));
        }
        let existing = sqlx::query(GET_SQL)
            .bind(&existing_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        match existing {
            Some(row) => {
                let record = decode_row(&row)?;
                tracing::debug!(id = %record.id, key = %key.key, "idempotency key seen before");
                Ok(Created::Existing(record))
            }
            None => Err(LogError::Corrupt {
                id: existing_id,
                message: format!("idempotency key '{}' names a missing transaction", key.key),
            }),
        }
    }
}

impl DecisionLog for SqliteLog {
    async fn create(
        &self,
        record: &TxRecord,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, LogError> {
        match key {
            Some(key) => self.create_with_key(record, key).await,
            None => {
                if Self::insert_tx(&self.pool, record).await? {
                    tracing::debug!(id = %record.id, "created transaction");
                    Ok(Created::New)
                } else {
                    Err(LogError::Duplicate(record.id))
                }
            }
        }
    }

    async fn get(&self, id: TransactionId) -> Result<Option<TxRecord>, LogError> {
        let row = sqlx::query(GET_SQL)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_row).transpose()
    }

    async fn update(&self, record: &TxRecord) -> Result<(), LogError> {
        let expected = expected_version(record)?;
        let row = encode(record)?;
        let done = sqlx::query(UPDATE_SQL)
            .bind(row.state)
            .bind(row.decision)
            .bind(row.reason)
            .bind(row.timeout_ms)
            .bind(row.created_at)
            .bind(row.deadline)
            .bind(row.decided_at)
            .bind(row.completed_at)
            .bind(&row.participants)
            .bind(row.version)
            .bind(&row.id)
            .bind(expected)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            tracing::debug!(id = %record.id, expected, "compare-and-set update lost");
            Err(LogError::Conflict {
                id: record.id,
                expected,
            })
        }
    }

    async fn list(
        &self,
        state: Option<TransactionState>,
        limit: u32,
    ) -> Result<Vec<TxRecord>, LogError> {
        let rows = match state {
            Some(state) => {
                sqlx::query(LIST_STATE_SQL)
                    .bind(state.as_str())
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(LIST_ALL_SQL)
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(decode_row).collect()
    }

    async fn unfinished(&self, limit: u32) -> Result<Vec<TxRecord>, LogError> {
        let rows = sqlx::query(UNFINISHED_SQL)
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }
}

/// The migrator of the SQLite schema.
fn migrator() -> Migrator {
    let mut migrator = Migrator::with_migrations(vec![Migration::new(
        1,
        "log".into(),
        MigrationType::Simple,
        MIGRATION_SQL.into_sql_str(),
        false,
    )]);
    migrator.dangerous_set_table_name("_twopc_coordinator_migrations");
    migrator
}

/// What an `sqlite:` URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    /// A database file.
    File,
    /// An in-memory database.
    Memory,
}

/// Classifies an `sqlite:` URL; `None` for another scheme or an empty path (which SQLite would
/// open as a private temporary database per connection).
fn parse_url(url: &str) -> Option<UrlKind> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" || params.split('&').any(|p| p == "mode=memory") {
        Some(UrlKind::Memory)
    } else if path.is_empty() {
        None
    } else {
        Some(UrlKind::File)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified() {
        assert_eq!(
            parse_url("sqlite:///var/lib/twopc/log.db"),
            Some(UrlKind::File)
        );
        assert_eq!(parse_url("sqlite://log.db"), Some(UrlKind::File));
        assert_eq!(parse_url("sqlite:log.db"), Some(UrlKind::File));
        assert_eq!(parse_url("sqlite::memory:"), Some(UrlKind::Memory));
        assert_eq!(parse_url("sqlite://?mode=memory"), Some(UrlKind::Memory));
        assert_eq!(parse_url("sqlite://"), None);
        assert_eq!(parse_url("postgres://localhost/db"), None);
        assert_eq!(parse_url("log.db"), None);
    }
}
