//! The SDK's error types: of the state store, of the participant flows and of the coordinator client.

use crate::participant::HandlerError;
use crate::participant::machine::{LocalState, Op};
use crate::wire::TransactionId;

/// An error of the participant state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or refused a statement.
    #[error("participant state database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The state table's migration failed.
    #[error("migrating the participant state table failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row of `twopc_participant_state` holds a value the SDK never writes.
    #[error(
        "invalid row in twopc_participant_state for ({participant}, {transaction_id}): {message}"
    )]
    CorruptRow {
        /// The row's participant column.
        participant: String,
        /// The row's transaction_id column, as stored.
        transaction_id: String,
        /// What is wrong with it.
        message: String,
    },
    /// A state row the current local transaction found or inserted was gone when read or updated.
    #[error("state row ({participant}, {transaction_id}) vanished during the local transaction")]
    RowVanished {
        /// The row's participant.
        participant: String,
        /// The row's transaction.
        transaction_id: TransactionId,
    },
}

impl StoreError {
    /// True for failures that retrying the whole local transaction may cure (deadlock,
    /// serialization failure, SQLite busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => is_transient_sqlx(e),
            // Deleted under the transaction's feet (a cleanup job): running again sees the truth.
            Self::RowVanished { .. } => true,
            Self::Migrate(_) | Self::CorruptRow { .. } => false,
        }
    }
}

/// True when a database error is a deadlock, a serialization failure or SQLite being busy:
/// the local transaction was rolled back and may simply be run again.
pub(crate) fn is_transient_sqlx(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    match db.code().as_deref() {
        // SQLSTATE serialization_failure (PostgreSQL; MySQL/MariaDB report deadlock 1213 with it)
        // and deadlock_detected (PostgreSQL).
        Some("40001" | "40P01") => true,
        // SQLite result codes: BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, LOCKED, LOCKED_SHAREDCACHE.
        Some("5" | "261" | "517" | "6" | "262") => true,
        _ => false,
    }
}

/// An error of a participant flow (prepare, commit, abort, the in-doubt resolver).
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// The request is malformed (e.g. a participant name too long to store). HTTP 400.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prepare payload does not deserialize into the handler's payload type. HTTP 400.
    #[error("the payload does not fit this participant: {0}")]
    BadPayload(#[source] serde_json::Error),
    /// Commit of a transaction this participant never prepared. HTTP 404.
    #[error("participant '{participant}' knows no transaction {transaction_id}")]
    UnknownTransaction {
        /// The participant name of the request.
        participant: String,
        /// The transaction of the request.
        transaction_id: TransactionId,
    },
    /// Commit of an aborted transaction or abort of a committed one. HTTP 409.
    #[error(
        "cannot {op} transaction {transaction_id} at participant '{participant}': it is already {state}"
    )]
    Conflict {
        /// The participant name of the request.
        participant: String,
        /// The transaction of the request.
        transaction_id: TransactionId,
        /// The operation that was refused.
        op: Op,
        /// The state the transaction is in.
        state: LocalState,
    },
    /// The service's handler failed; the local transaction was rolled back. HTTP 500.
    #[error("the {op} handler failed: {source}")]
    Handler {
        /// The handler that failed.
        op: Op,
        /// Its error.
        #[source]
        source: HandlerError,
    },
    /// The payload stored at prepare no longer deserializes into the handler's payload type. HTTP 500.
    #[error(
        "the payload stored for transaction {transaction_id} no longer fits the handler: {source}"
    )]
    StoredPayload {
        /// The transaction.
        transaction_id: TransactionId,
        /// The deserialization error.
        #[source]
        source: serde_json::Error,
    },
    /// The state store failed. HTTP 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state machine chose a step the flow cannot take (a bug). HTTP 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ParticipantError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) | Self::BadPayload(_) => 400,
            Self::UnknownTransaction { .. } => 404,
            Self::Conflict { .. } => 409,
            Self::Handler { .. }
            | Self::StoredPayload { .. }
            | Self::Store(_)
            | Self::Internal(_) => 500,
        }
    }

    /// The stable snake_case code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::BadPayload(_) => "invalid_payload",
            Self::UnknownTransaction { .. } => "unknown_transaction",
            Self::Conflict { .. } => "outcome_conflict",
            Self::Handler { .. } => "handler_failed",
            Self::StoredPayload { .. } | Self::Store(_) | Self::Internal(_) => "internal_error",
        }
    }

    /// True when running the whole local transaction again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Handler { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for ParticipantError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

/// An error of the coordinator client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator answered with an error (`{"error": {"code", "message"}}`).
    #[error("coordinator answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code (`unexpected_response` when the body was not the JSON error shape).
        code: String,
        /// The error message (or the start of the body).
        message: String,
    },
    /// The coordinator could not be reached or the connection failed.
    #[error("coordinator unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// A successful answer whose body is not what the API documents.
    #[error("coordinator sent an invalid {status} answer: {message}")]
    InvalidResponse {
        /// HTTP status.
        status: u16,
        /// What did not parse.
        message: String,
    },
}
