//! [`PostgresLog`]: the decision log in PostgreSQL, for shared or highly available deployments.

use super::any::{decode_row, decode_unfinished, encode, expected_version, sql_limit};
use super::{Created, DecisionLog, IdempotencyKey, LogError, Unfinished};
use crate::record::{Millis, TxRecord, now_millis};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Row, SqlSafeStr};
use twopc::wire::{TransactionId, TransactionState};

/// The schema, applied by [`PostgresLog::connect`] and [`PostgresLog::from_pool`].
const MIGRATION_SQL: &str = include_str!("../../../migrations/coordinator/postgres/0001_log.sql");

/// Connections in the pool [`PostgresLog::connect`] opens.
const MAX_CONNECTIONS: u32 = 8;

/// `SELECT` of every column of `twopc_transactions` (id and participants as text), followed by
/// the rest of the query. The text `id` is an output column of the same name, so an `ORDER BY`
/// must say `twopc_transactions.id` to sort by the UUID column (and use the indexes).
macro_rules! select_tx {
    ($rest:literal) => {
        concat!(
            "SELECT id::text AS id, state, decision, reason, timeout_ms, created_at, deadline, \
             decided_at, completed_at, participants::text AS participants, version \
             FROM twopc_transactions ",
            $rest
        )
    };
}

const INSERT_SQL: &str = "INSERT INTO twopc_transactions \
     (id, state, decision, reason, timeout_ms, created_at, deadline, decided_at, completed_at, \
     participants, version) \
     VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11) \
     ON CONFLICT (id) DO NOTHING";

const UPDATE_SQL: &str = "UPDATE twopc_transactions SET state = $1, decision = $2, reason = $3, \
     timeout_ms = $4, created_at = $5, deadline = $6, decided_at = $7, completed_at = $8, \
     participants = $9::jsonb, version = $10 WHERE id = $11::uuid AND version = $12";

const INSERT_KEY_SQL: &str = "INSERT INTO twopc_idempotency_keys \
     (key, request_hash, transaction_id, created_at) VALUES ($1, $2, $3::uuid, $4) \
     ON CONFLICT (key) DO NOTHING";

const SELECT_KEY_SQL: &str = "SELECT request_hash, transaction_id::text AS transaction_id \
     FROM twopc_idempotency_keys WHERE key = $1";

const GET_SQL: &str = select_tx!("WHERE id = $1::uuid");

/// All records, newest first (index `twopc_transactions_created`).
pub(super) const LIST_ALL_SQL: &str =
    select_tx!("ORDER BY created_at DESC, twopc_transactions.id DESC LIMIT $1");

/// Records in one state, newest first (index `twopc_transactions_state_created`).
pub(super) const LIST_STATE_SQL: &str =
    select_tx!("WHERE state = $1 ORDER BY created_at DESC, twopc_transactions.id DESC LIMIT $2");

/// Unfinished records, oldest first. The `WHERE` is the partial index's predicate, so the
/// planner can answer from `twopc_transactions_unfinished`.
pub(super) const UNFINISHED_SQL: &str = select_tx!(
    "WHERE state NOT IN ('committed', 'aborted') \
     ORDER BY created_at ASC, twopc_transactions.id ASC LIMIT $1"
);

/// Unfinished records after a `(created_at, id)` cursor, oldest first.
pub(super) const UNFINISHED_AFTER_SQL: &str = select_tx!(
    "WHERE state NOT IN ('committed', 'aborted') \
     AND (created_at, twopc_transactions.id) > ($1, $2::uuid) \
     ORDER BY created_at ASC, twopc_transactions.id ASC LIMIT $3"
);

/// The decision log in a PostgreSQL database.
///
/// Keeps no state in the process: every write is a single-row compare-and-set or one local
/// transaction, so several coordinator processes may share one database. Commits use the
/// server's `synchronous_commit` (on by default: the WAL is flushed before the commit returns).
#[derive(Debug, Clone)]
pub struct PostgresLog {
    pool: PgPool,
}

impl PostgresLog {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(LogError::UnsupportedUrl(url.to_owned()));
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool and brings the schema up to date.
    ///
    /// The migration runs under sqlx's advisory lock, so coordinators starting together on one
    /// database apply it once.
    pub async fn from_pool(pool: PgPool) -> Result<Self, LogError> {
        migrator().run(&pool).await?;
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await?;
        if sync.eq_ignore_ascii_case("off") {
            tracing::warn!(
                "PostgreSQL synchronous_commit is off: a logged commit decision may be lost \
                 if the database server crashes"
            );
        }
        tracing::info!(synchronous_commit = %sync, "opened PostgreSQL decision log");
        Ok(Self { pool })
    }

    /// The unfinished rows after `after` (raw `(created_at, id)`), oldest first.
    async fn unfinished_rows(
        &self,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<sqlx::postgres::PgRow>, LogError> {
        Ok(match after {
            None => {
                sqlx::query(UNFINISHED_SQL)
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some((created_at, id)) => {
                sqlx::query(UNFINISHED_AFTER_SQL)
                    .bind(created_at)
                    .bind(id)
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        })
    }

    /// The connection pool, for health checks and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts the transaction row; `false` when the id exists.
    async fn insert_tx<'c, E>(executor: E, record: &TxRecord) -> Result<bool, LogError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
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
        let mut tx = self.pool.begin().await?;
        // A concurrent, uncommitted insert of the same key makes this statement wait for that
        // transaction's outcome: then it inserts (the other rolled back) or does nothing (the
        // other committed, and the SELECT below, a new statement under READ COMMITTED, sees it).
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

impl DecisionLog for PostgresLog {
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
        // Under READ COMMITTED a concurrent writer of the same row makes this wait and then
        // re-check `version` against the committed row: exactly one of them matches.
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

    async fn unfinished_after(
        &self,
        after: Option<(Millis, TransactionId)>,
        limit: u32,
    ) -> Result<Vec<TxRecord>, LogError> {
        let after = after.map(|(created_at, id)| (created_at, id.to_string()));
        let rows = self.unfinished_rows(after, limit).await?;
        rows.iter().map(decode_row).collect()
    }

    async fn unfinished_page(
        &self,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<Unfinished>, LogError> {
        let rows = self.unfinished_rows(after, limit).await?;
        rows.iter().map(decode_unfinished).collect()
    }
}

/// The migrator of the PostgreSQL schema.
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
