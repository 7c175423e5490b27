//! [`AnyLog`]: the store chosen by the database URL, plus the row encoding both stores share.

use super::{Created, DecisionLog, IdempotencyKey, LogError, PostgresLog, SqliteLog, Unfinished};
use crate::record::{Millis, ParticipantRecord, TxRecord};
use twopc::wire::{Decision, TransactionId, TransactionState};

/// A decision log in whichever store the URL names.
#[derive(Debug, Clone)]
pub enum AnyLog {
    /// Embedded SQLite (`sqlite://PATH`, `sqlite:PATH`).
    Sqlite(SqliteLog),
    /// PostgreSQL (`postgres://…`, `postgresql://…`).
    Postgres(PostgresLog),
}

impl AnyLog {
    /// Connects to the store the URL's scheme names and brings its schema up to date.
    ///
    /// `sqlite:` URLs open [`SqliteLog`]; `postgres://` and `postgresql://` open [`PostgresLog`];
    /// anything else is [`LogError::UnsupportedUrl`].
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteLog::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PostgresLog::connect(url).await?))
        } else {
            Err(LogError::UnsupportedUrl(url.to_owned()))
        }
    }
}

impl DecisionLog for AnyLog {
    fn write_stats(&self) -> Option<(u64, u64)> {
        match self {
            Self::Sqlite(log) => log.write_stats(),
            Self::Postgres(log) => log.write_stats(),
        }
    }

    async fn create(
        &self,
        record: &TxRecord,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, LogError> {
        match self {
            Self::Sqlite(log) => log.create(record, key).await,
            Self::Postgres(log) => log.create(record, key).await,
        }
    }

    async fn get(&self, id: TransactionId) -> Result<Option<TxRecord>, LogError> {
        match self {
            Self::Sqlite(log) => log.get(id).await,
            Self::Postgres(log) => log.get(id).await,
        }
    }

    async fn update(&self, record: &TxRecord) -> Result<(), LogError> {
        match self {
            Self::Sqlite(log) => log.update(record).await,
            Self::Postgres(log) => log.update(record).await,
        }
    }

    async fn list(
        &self,
        state: Option<TransactionState>,
        limit: u32,
    ) -> Result<Vec<TxRecord>, LogError> {
        match self {
            Self::Sqlite(log) => log.list(state, limit).await,
            Self::Postgres(log) => log.list(state, limit).await,
        }
    }

    async fn unfinished_after(
        &self,
        after: Option<(Millis, TransactionId)>,
        limit: u32,
    ) -> Result<Vec<TxRecord>, LogError> {
        match self {
            Self::Sqlite(log) => log.unfinished_after(after, limit).await,
            Self::Postgres(log) => log.unfinished_after(after, limit).await,
        }
    }

    async fn unfinished_page(
        &self,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<Unfinished>, LogError> {
        match self {
            Self::Sqlite(log) => log.unfinished_page(after, limit).await,
            Self::Postgres(log) => log.unfinished_page(after, limit).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row encoding shared by both stores. Both keep the same columns; only the SQL types of `id`
// (TEXT / UUID) and `participants` (TEXT / JSONB) differ, and the PostgreSQL queries cast those
// to and from text, so one encoding serves both.

/// A record's column values, ready to bind.
pub(super) struct EncodedRow<'a> {
    /// `id`, canonical hyphenated UUID.
    pub id: String,
    /// `state`.
    pub state: &'static str,
    /// `decision`.
    pub decision: Option<&'static str>,
    /// `reason`.
    pub reason: Option<&'a str>,
    /// `timeout_ms`.
    pub timeout_ms: i64,
    /// `created_at`.
    pub created_at: i64,
    /// `deadline`.
    pub deadline: i64,
    /// `decided_at`.
    pub decided_at: Option<i64>,
    /// `completed_at`.
    pub completed_at: Option<i64>,
    /// `participants` as JSON text.
    pub participants: String,
    /// `version`.
    pub version: i64,
}

/// Encodes a record into column values.
pub(super) fn encode(record: &TxRecord) -> Result<EncodedRow<'_>, LogError> {
    let timeout_ms = i64::try_from(record.timeout_ms).map_err(|e| {
        LogError::Database(sqlx::Error::Encode(
            format!(
                "timeout_ms {} does not fit a BIGINT: {e}",
                record.timeout_ms
            )
            .into(),
        ))
    })?;
    let participants = serde_json::to_string(&record.participants)
        .map_err(|e| LogError::Database(sqlx::Error::Encode(Box::new(e))))?;
    Ok(EncodedRow {
        id: record.id.to_string(),
        state: record.state.as_str(),
        decision: record.decision.map(Decision::as_str),
        reason: record.reason.as_deref(),
        timeout_ms,
        created_at: record.created_at,
        deadline: record.deadline,
        decided_at: record.decided_at,
        completed_at: record.completed_at,
        participants,
        version: record.version,
    })
}

/// A row as read, before its values are checked.
pub(super) struct RawRow {
    /// `id` as text.
    pub id: String,
    /// `state`.
    pub state: String,
    /// `decision`.
    pub decision: Option<String>,
    /// `reason`.
    pub reason: Option<String>,
    /// `timeout_ms`.
    pub timeout_ms: i64,
    /// `created_at`.
    pub created_at: i64,
    /// `deadline`.
    pub deadline: i64,
    /// `decided_at`.
    pub decided_at: Option<i64>,
    /// `completed_at`.
    pub completed_at: Option<i64>,
    /// `participants` as JSON text.
    pub participants: String,
    /// `version`.
    pub version: i64,
}

/// Reads the shared columns of a `twopc_transactions` row (selected with `id` and
/// `participants` as text); a value of the wrong type or an unexpected NULL is
/// [`LogError::Corrupt`].
pub(super) fn raw_row<R>(row: &R) -> Result<RawRow, LogError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id").map_err(|e| LogError::Corrupt {
        id: "<unreadable>".to_owned(),
        message: e.to_string(),
    })?;
    let corrupt = |e: sqlx::Error| LogError::Corrupt {
        id: id.clone(),
        message: e.to_string(),
    };
    Ok(RawRow {
        state: row.try_get("state").map_err(corrupt)?,
        decision: row.try_get("decision").map_err(corrupt)?,
        reason: row.try_get("reason").map_err(corrupt)?,
        timeout_ms: row.try_get("timeout_ms").map_err(corrupt)?,
        created_at: row.try_get("created_at").map_err(corrupt)?,
        deadline: row.try_get("deadline").map_err(corrupt)?,
        decided_at: row.try_get("decided_at").map_err(corrupt)?,
        completed_at: row.try_get("completed_at").map_err(corrupt)?,
        participants: row.try_get("participants").map_err(corrupt)?,
        version: row.try_get("version").map_err(corrupt)?,
        id,
    })
}

/// Checks and converts a raw row into a record; anything invalid is [`LogError::Corrupt`].
pub(super) fn decode(raw: RawRow) -> Result<TxRecord, LogError> {
    let corrupt = |message: String| LogError::Corrupt {
        id: raw.id.clone(),
        message,
    };
    let id: TransactionId = raw
        .id
        .parse()
        .map_err(|e| corrupt(format!("bad id: {e}")))?;
    let state: TransactionState = raw
        .state
        .parse()
        .map_err(|e| corrupt(format!("bad state: {e}")))?;
    let decision = match raw.decision.as_deref() {
        None => None,
        Some("commit") => Some(Decision::Commit),
        Some("abort") => Some(Decision::Abort),
        Some(other) => return Err(corrupt(format!("bad decision '{other}'"))),
    };
    let timeout_ms = u64::try_from(raw.timeout_ms)
        .map_err(|_| corrupt(format!("negative timeout_ms {}", raw.timeout_ms)))?;
    let participants: Vec<ParticipantRecord> = serde_json::from_str(&raw.participants)
        .map_err(|e| corrupt(format!("bad participants JSON: {e}")))?;
    Ok(TxRecord {
        id,
        state,
        decision,
        reason: raw.reason,
        timeout_ms,
        created_at: raw.created_at,
        deadline: raw.deadline,
        decided_at: raw.decided_at,
        completed_at: raw.completed_at,
        participants,
        version: raw.version,
    })
}

/// Reads and decodes one row.
pub(super) fn decode_row<R>(row: &R) -> Result<TxRecord, LogError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    decode(raw_row(row)?)
}

/// A row of an unfinished page: the record, or, if only its key columns can be read, what is
/// wrong with it. A row whose id or creation time cannot be read fails the page.
pub(super) fn decode_unfinished<R>(row: &R) -> Result<Unfinished, LogError>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    match decode_row(row) {
        Ok(record) => Ok(Unfinished::Record(record)),
        Err(LogError::Corrupt { id, message }) => {
            let created_at: i64 = row.try_get("created_at").map_err(|e| LogError::Corrupt {
                id: id.clone(),
                message: format!("{message}; created_at unreadable too: {e}"),
            })?;
            Ok(Unfinished::Corrupt {
                created_at,
                id,
                message,
            })
        }
        Err(e) => Err(e),
    }
}

/// The version a compare-and-set update of `record` expects to replace.
pub(super) fn expected_version(record: &TxRecord) -> Result<i64, LogError> {
    record
        .version
        .checked_sub(1)
        .ok_or_else(|| LogError::Conflict {
            id: record.id,
            expected: record.version,
        })
}

/// An SQL `LIMIT` value.
pub(super) fn sql_limit(limit: u32) -> i64 {
    i64::from(limit)
}
