//! The state table on PostgreSQL.

use super::{Sql, StateStore, decode_row_fn, row_methods, state_columns};
use crate::error::StoreError;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Transaction};

const SQL: Sql = Sql {
    insert: "INSERT INTO twopc_participant_state \
             (participant, transaction_id, state, vote, reason, payload, coordinator, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (participant, transaction_id) DO NOTHING",
    get_for_update: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = $1 AND transaction_id = $2 FOR UPDATE"
    ),
    get_for_share: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = $1 AND transaction_id = $2 FOR SHARE"
    ),
    update: "UPDATE twopc_participant_state SET state = $1, vote = $2, reason = $3, updated_at_ms = $4 \
             WHERE participant = $5 AND transaction_id = $6",
    get: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = $1 AND transaction_id = $2"
    ),
    in_doubt: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE state = 'prepared' AND updated_at_ms <= $1 \
          ORDER BY updated_at_ms LIMIT $2"
    ),
    list: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state ORDER BY created_at_ms, participant, transaction_id LIMIT $1"
    ),
};

decode_row_fn!(PgRow);

/// The participant state table in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// The pool, shared with the service.
    pool: PgPool,
}

impl PostgresStore {
    /// Connects a pool to `url` (e.g. `postgres://user@host/db`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new().connect(url).await?;
        Ok(Self { pool })
    }

    /// Uses an existing pool (the service's own).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl StateStore for PostgresStore {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrator(include_str!(
            "../../../migrations/participant/postgres/0001_state.sql"
        ))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    row_methods!(SQL);
}
