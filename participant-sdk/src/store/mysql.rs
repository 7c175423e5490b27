//! The state table on MySQL / MariaDB (InnoDB).

use super::{Sql, StateStore, decode_row_fn, row_methods, state_columns};
use crate::error::StoreError;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, Transaction};

const SQL: Sql = Sql {
    // INSERT IGNORE waits for a concurrent insert of the same key and then takes a shared lock on
    // the committed duplicate. (IGNORE also turns data errors into warnings, which is why the
    // participant flows check the length of participant names before they get here.)
    insert: "INSERT IGNORE INTO twopc_participant_state \
             (participant, transaction_id, state, vote, reason, payload, coordinator, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    get_for_update: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = ? AND transaction_id = ? FOR UPDATE"
    ),
    // `LOCK IN SHARE MODE` rather than `FOR SHARE`: MariaDB does not know the latter.
    get_for_share: concat!(
        "SELECT ",
        state_columns!(),
        " FROM twopc_participant_state WHERE participant = ? AND transaction_id = ? LOCK IN SHARE MODE"
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

decode_row_fn!(MySqlRow);

/// The participant state table in a MySQL or MariaDB database.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    /// The pool, shared with the service.
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connects a pool to `url` (e.g. `mysql://root@127.0.0.1:3306/bank`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = MySqlPoolOptions::new().connect(url).await?;
        Ok(Self { pool })
    }

    /// Uses an existing pool (the service's own).
    pub fn from_pool(pool: MySqlPool) -> Self {
        Self { pool }
    }
}

impl StateStore for MySqlStore {
    type Db = MySql;

    fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrator(include_str!(
            "../../../migrations/participant/mysql/0001_state.sql"
        ))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, MySql>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    row_methods!(SQL);
}
