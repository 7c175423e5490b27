//! The prepared-state table `twopc_participant_state` and one store per database backend.
//!
//! Every method that changes a row takes the caller's open local transaction, so the service's
//! handler and the state change commit (or roll back) together.

mod mysql;
mod postgres;
mod sqlite;

pub use mysql::MySqlStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::error::StoreError;
use crate::participant::machine::LocalState;
use crate::wire::{TransactionId, VoteKind};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::future::Future;

/// A backend of the participant state table.
pub trait StateStore: Clone + Send + Sync + 'static {
    /// The sqlx database this store lives in.
    type Db: sqlx::Database;

    /// The pool, shared with the service that embeds the SDK.
    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Creates or upgrades the state table (bookkeeping in `_twopc_participant_migrations`).
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Begins a local transaction that will write a state row (SQLite: `BEGIN IMMEDIATE`, so the
    /// write lock is taken up front and concurrent writers queue instead of failing to upgrade).
    fn begin(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, StoreError>> + Send;

    /// Inserts `row` unless a row with its key exists; true when it inserted.
    ///
    /// This is the first statement of every local transaction that may create a row: it takes the
    /// key's lock, so a concurrent transaction inserting the same key waits for this one to finish
    /// and then sees its committed row (it must not check first and insert afterwards).
    fn insert_if_absent(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        row: &NewRow<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads a row and locks it for update (`SELECT .. FOR UPDATE`; SQLite holds the database
    /// write lock already).
    fn get_for_update(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        participant: &str,
        id: TransactionId,
    ) -> impl Future<Output = Result<Option<StateRow>, StoreError>> + Send;

    /// Reads a row with a shared lock: reads the latest committed version (on MySQL a plain read
    /// would see the transaction's snapshot) without upgrading the shared lock an
    /// [`insert_if_absent`](Self::insert_if_absent) that found a duplicate holds on MySQL, which
    /// would deadlock against other readers of the same key.
    fn get_for_share(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        participant: &str,
        id: TransactionId,
    ) -> impl Future<Output = Result<Option<StateRow>, StoreError>> + Send;

    /// Sets a row's state, vote, reason and `updated_at_ms`.
    fn update(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        participant: &str,
        id: TransactionId,
        change: &RowChange<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the savepoint the prepare handler's writes can be rolled back to.
    fn savepoint(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rolls back to the savepoint of [`savepoint`](Self::savepoint), undoing the handler's writes.
    fn rollback_to_savepoint(
        &self,
        tx: &mut sqlx::Transaction<'static, Self::Db>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads a row outside any local transaction.
    fn get(
        &self,
        participant: &str,
        id: TransactionId,
    ) -> impl Future<Output = Result<Option<StateRow>, StoreError>> + Send;

    /// Rows in state `prepared` last updated at or before `updated_before_ms`, oldest first.
    fn list_in_doubt(
        &self,
        updated_before_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StateRow>, StoreError>> + Send;

    /// Every row, oldest first, at most `limit` (for tests and tools).
    fn list(&self, limit: i64) -> impl Future<Output = Result<Vec<StateRow>, StoreError>> + Send;
}

/// One row of `twopc_participant_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// The participant name the coordinator gave.
    pub participant: String,
    /// The global transaction.
    pub transaction_id: TransactionId,
    /// Where the transaction stands here.
    pub state: LocalState,
    /// The vote given at prepare; `None` for a tombstone (abort seen before any prepare).
    pub vote: Option<VoteKind>,
    /// Why the participant voted abort.
    pub reason: Option<String>,
    /// The prepare payload as JSON text (`None` for a tombstone).
    pub payload: Option<String>,
    /// The coordinator's base URL for in-doubt inquiries (`None` for a tombstone).
    pub coordinator: Option<String>,
    /// When the row was created (unix milliseconds).
    pub created_at_ms: i64,
    /// When the row last changed (unix milliseconds).
    pub updated_at_ms: i64,
}

impl StateRow {
    /// True for an abort recorded before any prepare.
    pub fn is_tombstone(&self) -> bool {
        self.vote.is_none()
    }

    /// Builds a row from its column values, checking the ones the SDK constrains.
    #[allow(clippy::too_many_arguments, reason = "one argument per column")]
    pub(crate) fn from_columns(
        participant: String,
        transaction_id: String,
        state: String,
        vote: Option<String>,
        reason: Option<String>,
        payload: Option<String>,
        coordinator: Option<String>,
        created_at_ms: i64,
        updated_at_ms: i64,
    ) -> Result<Self, StoreError> {
        let corrupt = |message: String| StoreError::CorruptRow {
            participant: participant.clone(),
            transaction_id: transaction_id.clone(),
            message,
        };
        let id = transaction_id
            .parse::<TransactionId>()
            .map_err(|e| corrupt(format!("transaction_id is not a UUID: {e}")))?;
        let vote = match vote.as_deref() {
            None => None,
            Some("commit") => Some(VoteKind::Commit),
            Some("read_only") => Some(VoteKind::ReadOnly),
            Some("abort") => Some(VoteKind::Abort),
            Some(other) => return Err(corrupt(format!("unknown vote '{other}'"))),
        };
        let state = LocalState::from_column(&state, vote == Some(VoteKind::ReadOnly))
            .ok_or_else(|| corrupt(format!("unknown state '{state}'")))?;
        Ok(Self {
            participant,
            transaction_id: id,
            state,
            vote,
            reason,
            payload,
            coordinator,
            created_at_ms,
            updated_at_ms,
        })
    }
}

/// A row to insert with [`StateStore::insert_if_absent`].
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// The participant name.
    pub participant: &'a str,
    /// The global transaction.
    pub transaction_id: TransactionId,
    /// Its first state (`Prepared` before the prepare handler runs, `Aborted` for a tombstone).
    pub state: LocalState,
    /// Its vote, if already known.
    pub vote: Option<VoteKind>,
    /// The abort reason, if any.
    pub reason: Option<&'a str>,
    /// The payload as JSON text.
    pub payload: Option<&'a str>,
    /// The coordinator's base URL.
    pub coordinator: Option<&'a str>,
    /// Creation time (unix milliseconds), also the first `updated_at_ms`.
    pub now_ms: i64,
}

/// A change of state, vote and reason made with [`StateStore::update`].
#[derive(Debug, Clone, Copy)]
pub struct RowChange<'a> {
    /// The new state.
    pub state: LocalState,
    /// The vote to record.
    pub vote: Option<VoteKind>,
    /// The reason to record.
    pub reason: Option<&'a str>,
    /// The update time (unix milliseconds).
    pub now_ms: i64,
}

/// The current time in unix milliseconds, as stored in the table.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The stored name of a vote.
pub(crate) fn vote_column(vote: Option<VoteKind>) -> Option<&'static str> {
    vote.map(VoteKind::as_str)
}

/// The migrator for one backend's state table migration.
pub(crate) fn migrator(sql: &'static str) -> Migrator {
    let mut migrator = Migrator::with_migrations(vec![Migration::new(
        1,
        "twopc participant state".into(),
        MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )]);
    // The SDK keeps its own migration bookkeeping: the service usually runs its own sqlx
    // migrations in the same database, and sqlx refuses to migrate when `_sqlx_migrations` lists a
    // version its migrator does not know (our version 1 would also collide with the service's).
    migrator.dangerous_set_table_name("_twopc_participant_migrations");
    migrator
}

/// The columns every SELECT of a state row returns, in [`StateRow::from_columns`] order.
macro_rules! state_columns {
    () => {
        "participant, transaction_id, state, vote, reason, payload, coordinator, created_at_ms, updated_at_ms"
    };
}
pub(crate) use state_columns;

/// The SQL of one backend, each statement binding its parameters in the documented order.
pub(crate) struct Sql {
    /// Insert-if-absent: participant, transaction_id, state, vote, reason, payload, coordinator,
    /// created_at_ms, updated_at_ms.
    pub insert: &'static str,
    /// Locking read for update: participant, transaction_id.
    pub get_for_update: &'static str,
    /// Locking read in share mode: participant, transaction_id.
    pub get_for_share: &'static str,
    /// Update: state, vote, reason, updated_at_ms, participant, transaction_id.
    pub update: &'static str,
    /// Plain read: participant, transaction_id.
    pub get: &'static str,
    /// In-doubt rows: updated_at_ms cut-off, limit.
    pub in_doubt: &'static str,
    /// All rows: limit.
    pub list: &'static str,
}

/// Implements the row methods of [`StateStore`] for a concrete backend from its [`Sql`].
macro_rules! row_methods {
    ($sql:expr) => {
        async fn insert_if_absent(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
            row: &$crate::store::NewRow<'_>,
        ) -> Result<bool, $crate::error::StoreError> {
            let done = sqlx::query($sql.insert)
                .bind(row.participant)
                .bind(row.transaction_id.to_string())
                .bind(row.state.column())
                .bind($crate::store::vote_column(row.vote))
                .bind(row.reason)
                .bind(row.payload)
                .bind(row.coordinator)
                .bind(row.now_ms)
                .bind(row.now_ms)
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn get_for_update(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
            participant: &str,
            id: $crate::wire::TransactionId,
        ) -> Result<Option<$crate::store::StateRow>, $crate::error::StoreError> {
            sqlx::query($sql.get_for_update)
                .bind(participant)
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| decode_row(&r))
                .transpose()
        }

        async fn get_for_share(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
            participant: &str,
            id: $crate::wire::TransactionId,
        ) -> Result<Option<$crate::store::StateRow>, $crate::error::StoreError> {
            sqlx::query($sql.get_for_share)
                .bind(participant)
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| decode_row(&r))
                .transpose()
        }

        async fn update(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
            participant: &str,
            id: $crate::wire::TransactionId,
            change: &$crate::store::RowChange<'_>,
        ) -> Result<(), $crate::error::StoreError> {
            let done = sqlx::query($sql.update)
                .bind(change.state.column())
                .bind($crate::store::vote_column(change.vote))
                .bind(change.reason)
                .bind(change.now_ms)
                .bind(participant)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 1 {
                Ok(())
            } else {
                Err($crate::error::StoreError::RowVanished {
                    participant: participant.to_owned(),
                    transaction_id: id,
                })
            }
        }

        async fn savepoint(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
        ) -> Result<(), $crate::error::StoreError> {
            // The savepoint taken before the prepare handler runs.
            sqlx::query("SAVEPOINT twopc_handler")
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn rollback_to_savepoint(
            &self,
            tx: &mut sqlx::Transaction<'static, Self::Db>,
        ) -> Result<(), $crate::error::StoreError> {
            sqlx::query("ROLLBACK TO SAVEPOINT twopc_handler")
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn get(
            &self,
            participant: &str,
            id: $crate::wire::TransactionId,
        ) -> Result<Option<$crate::store::StateRow>, $crate::error::StoreError> {
            sqlx::query($sql.get)
                .bind(participant)
                .bind(id.to_string())
                .fetch_optional(self.pool())
                .await?
                .map(|r| decode_row(&r))
                .transpose()
        }

        async fn list_in_doubt(
            &self,
            updated_before_ms: i64,
            limit: i64,
        ) -> Result<Vec<$crate::store::StateRow>, $crate::error::StoreError> {
            sqlx::query($sql.in_doubt)
                .bind(updated_before_ms)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(decode_row)
                .collect()
        }

        async fn list(
            &self,
            limit: i64,
        ) -> Result<Vec<$crate::store::StateRow>, $crate::error::StoreError> {
            sqlx::query($sql.list)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(decode_row)
                .collect()
        }
    };
}
pub(crate) use row_methods;

/// Defines `decode_row` for a concrete backend's row type.
macro_rules! decode_row_fn {
    ($row:ty) => {
        fn decode_row(r: &$row) -> Result<$crate::store::StateRow, $crate::error::StoreError> {
            use sqlx::Row as _;
            $crate::store::StateRow::from_columns(
                r.try_get("participant")?,
                r.try_get("transaction_id")?,
                r.try_get("state")?,
                r.try_get("vote")?,
                r.try_get("reason")?,
                r.try_get("payload")?,
                r.try_get("coordinator")?,
                r.try_get("created_at_ms")?,
                r.try_get("updated_at_ms")?,
            )
        }
    };
}
pub(crate) use decode_row_fn;
