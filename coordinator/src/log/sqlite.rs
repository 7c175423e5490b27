//! [`SqliteLog`]: the decision log in an embedded SQLite database file (the default store).

use super::any::{decode_row, encode, expected_version, sql_limit};
use super::{Created, DecisionLog, IdempotencyKey, LogError};
use crate::record::{Millis, TxRecord, now_millis};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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

/// Unfinished records after a `(created_at, id)` cursor, oldest first (same partial index,
/// entered by a row-value range).
pub(super) const UNFINISHED_AFTER_SQL: &str = select_tx!(
    "WHERE state NOT IN ('committed', 'aborted') AND (created_at, id) > (?, ?) \
     ORDER BY created_at ASC, id ASC LIMIT ?"
);

/// The decision log in an SQLite database file.
///
/// Made for one coordinator process per file: SQLite serializes writers, and every write is a
/// compare-and-set on the record's version, so several tasks (or even processes on one host)
/// may share it safely, but several hosts need [`super::PostgresLog`].
#[derive(Debug, Clone)]
pub struct SqliteLog {
    /// Readers (and the writer task's connection) come from here.
    pool: SqlitePool,
    /// Queue of the writer task that group-commits every write.
    writer: mpsc::Sender<WriteOp>,
    /// Counters of the writer task.
    stats: Arc<WriterStats>,
}

/// What the writer task has done: batches committed (one fsync each) and writes in them.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Committed batches.
    pub batches: AtomicU64,
    /// Writes in committed batches.
    pub writes: AtomicU64,
}

/// Most writes committed together (one fsync) in one batch.
const MAX_BATCH: usize = 512;

/// A write waiting for the writer task.
#[derive(Debug)]
enum WriteOp {
    /// [`DecisionLog::create`].
    Create {
        record: TxRecord,
        key: Option<IdempotencyKey>,
        reply: oneshot::Sender<Result<Created, LogError>>,
    },
    /// [`DecisionLog::update`].
    Update {
        record: TxRecord,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// A batch member's result, held until the batch's commit is durable.
enum Done {
    Create(
        oneshot::Sender<Result<Created, LogError>>,
        Result<Created, LogError>,
    ),
    Update(oneshot::Sender<Result<(), LogError>>, Result<(), LogError>),
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
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        let stats = Arc::new(WriterStats::default());
        tokio::spawn(write_loop(pool.clone(), queue, stats.clone()));
        Ok(Self {
            pool,
            writer,
            stats,
        })
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
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

    /// Hands a write to the writer task and waits until it is durable.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> WriteOp,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(make(reply))
            .await
            .map_err(|_| LogError::WriterGone)?;
        answer.await.map_err(|_| LogError::WriterGone)?
    }
}

/// The writer task: takes every write queued so far (up to [`MAX_BATCH`]), runs them in one
/// local transaction and answers them after its commit. Concurrent decisions thus share one
/// fsync (group commit) without weakening durability: nobody hears "done" before the batch is
/// on disk.
async fn write_loop(pool: SqlitePool, mut queue: mpsc::Receiver<WriteOp>, stats: Arc<WriterStats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        run_batch(&pool, &mut batch, &stats).await;
    }
}

async fn run_batch(pool: &SqlitePool, batch: &mut Vec<WriteOp>, stats: &WriterStats) {
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch.drain(..).map(|op| op.into_done_err()), &e),
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut failed: Option<sqlx::Error> = None;
    for op in batch.drain(..) {
        if failed.is_some() {
            done.push(op.into_unrun());
            continue;
        }
        let d = match op {
            WriteOp::Create { record, key, reply } => {
                Done::Create(reply, create_in(&mut tx, &record, key.as_ref()).await)
            }
            WriteOp::Update { record, reply } => {
                Done::Update(reply, update_in(&mut tx, &record).await)
            }
        };
        // A database error (I/O, disk full, ...) may have rolled the whole transaction back
        // inside SQLite, and the statements after it would then run in autocommit mode, each
        // durable on its own while its caller hears "failed". So one such error fails the whole
        // batch: roll back, answer every write with the error, write nothing. (A lost
        // compare-and-set, a duplicate id or a reused key are answers, not failures.)
        if let Some(e) = d.database_error() {
            failed = Some(e);
        }
        done.push(d);
    }
    if let Some(e) = failed {
        if let Err(rollback) = tx.rollback().await {
            tracing::warn!(error = %rollback, "rolling back a failed decision-log batch failed");
        }
        return fail_all(done.into_iter().map(|d| d.into_err_target()), &e);
    }
    let writes = done.len() as u64;
    match tx.commit().await {
        Ok(()) => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(writes, Ordering::Relaxed);
            for d in done {
                match d {
                    Done::Create(reply, r) => {
                        let _ = reply.send(r);
                    }
                    Done::Update(reply, r) => {
                        let _ = reply.send(r);
                    }
                }
            }
        }
        Err(e) => fail_all(done.into_iter().map(|d| d.into_err_target()), &e),
    }
}

/// Where to send a failure of the whole batch.
enum ReplyTo {
    Create(oneshot::Sender<Result<Created, LogError>>),
    Update(oneshot::Sender<Result<(), LogError>>),
}

impl WriteOp {
    fn into_done_err(self) -> ReplyTo {
        match self {
            WriteOp::Create { reply, .. } => ReplyTo::Create(reply),
            WriteOp::Update { reply, .. } => ReplyTo::Update(reply),
        }
    }
}

impl WriteOp {
    /// A write that was not run because the batch had already failed.
    fn into_unrun(self) -> Done {
        match self {
            WriteOp::Create { reply, .. } => Done::Create(reply, Err(LogError::WriterGone)),
            WriteOp::Update { reply, .. } => Done::Update(reply, Err(LogError::WriterGone)),
        }
    }
}

impl Done {
    /// The database failure this write met, if any (a copy: `sqlx::Error` is not `Clone`).
    fn database_error(&self) -> Option<sqlx::Error> {
        let result = match self {
            Done::Create(_, Err(e)) | Done::Update(_, Err(e)) => e,
            _ => return None,
        };
        match result {
            LogError::Database(e) => Some(sqlx::Error::Protocol(e.to_string())),
            _ => None,
        }
    }

    fn into_err_target(self) -> ReplyTo {
        match self {
            Done::Create(reply, _) => ReplyTo::Create(reply),
            Done::Update(reply, _) => ReplyTo::Update(reply),
        }
    }
}

fn fail_all(targets: impl Iterator<Item = ReplyTo>, error: &sqlx::Error) {
    tracing::error!(%error, "decision log batch failed; nothing in it was written");
    for t in targets {
        let e = LogError::BatchFailed(error.to_string());
        match t {
            ReplyTo::Create(reply) => {
                let _ = reply.send(Err(e));
            }
            ReplyTo::Update(reply) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// One create inside a batch, in a savepoint so that a failed create leaves no key row behind.
async fn create_in(
    conn: &mut SqliteConnection,
    record: &TxRecord,
    key: Option<&IdempotencyKey>,
) -> Result<Created, LogError> {
    let Some(key) = key else {
        return if SqliteLog::insert_tx(&mut *conn, record).await? {
            Ok(Created::New)
        } else {
            Err(LogError::Duplicate(record.id))
        };
    };
    sqlx::query("SAVEPOINT twopc_create")
        .execute(&mut *conn)
        .await?;
    let result = create_with_key(conn, record, key).await;
    let end = if matches!(result, Ok(Created::New)) {
        "RELEASE twopc_create"
    } else {
        "ROLLBACK TO twopc_create"
    };
    sqlx::query(end).execute(&mut *conn).await?;
    if end.starts_with("ROLLBACK") {
        sqlx::query("RELEASE twopc_create")
            .execute(&mut *conn)
            .await?;
    }
    result
}

/// The create path with an idempotency key: the key row first (it serializes creates with one
/// key), then the transaction; or the transaction the key made before.
async fn create_with_key(
    conn: &mut SqliteConnection,
    record: &TxRecord,
    key: &IdempotencyKey,
) -> Result<Created, LogError> {
    let inserted = sqlx::query(INSERT_KEY_SQL)
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(record.id.to_string())
        .bind(now_millis())
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    if inserted {
        if !SqliteLog::insert_tx(&mut *conn, record).await? {
            return Err(LogError::Duplicate(record.id));
        }
        tracing::debug!(id = %record.id, key = %key.key, "created transaction with idempotency key");
        return Ok(Created::New);
    }
    let row = sqlx::query(SELECT_KEY_SQL)
        .bind(&key.key)
        .fetch_one(&mut *conn)
        .await?;
    let hash: String = row.try_get("request_hash")?;
    let existing_id: String = row.try_get("transaction_id")?;
    if hash != key.request_hash {
        return Err(LogError::IdempotencyKeyReused(key.key.clone()));
    }
    let existing = sqlx::query(GET_SQL)
        .bind(&existing_id)
        .fetch_optional(&mut *conn)
        .await?;
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

/// One compare-and-set update inside a batch.
async fn update_in(conn: &mut SqliteConnection, record: &TxRecord) -> Result<(), LogError> {
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
        .execute(&mut *conn)
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

impl DecisionLog for SqliteLog {
    fn write_stats(&self) -> Option<(u64, u64)> {
        Some((
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.writes.load(Ordering::Relaxed),
        ))
    }

    async fn create(
        &self,
        record: &TxRecord,
        key: Option<&IdempotencyKey>,
    ) -> Result<Created, LogError> {
        let (record, key) = (record.clone(), key.cloned());
        self.submit(|reply| WriteOp::Create { record, key, reply })
            .await
    }

    async fn get(&self, id: TransactionId) -> Result<Option<TxRecord>, LogError> {
        let row = sqlx::query(GET_SQL)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_row).transpose()
    }

    async fn update(&self, record: &TxRecord) -> Result<(), LogError> {
        let record = record.clone();
        self.submit(|reply| WriteOp::Update { record, reply }).await
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
        let rows = match after {
            None => {
                sqlx::query(UNFINISHED_SQL)
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some((created_at, id)) => {
                sqlx::query(UNFINISHED_AFTER_SQL)
                    .bind(created_at)
                    .bind(id.to_string())
                    .bind(sql_limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
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

    /// A write that fails in the database fails its whole batch: nothing of the batch is
    /// written, and every caller hears so (no write is durable while its caller hears "failed").
    #[tokio::test]
    async fn a_failed_write_fails_its_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let log = SqliteLog::connect(&url).await.unwrap();
        let good_a = TxRecord::new(TransactionId::new(), 1000, now_millis());
        // timeout_ms beyond i64 cannot be stored: the write fails in the database layer.
        let bad = TxRecord::new(TransactionId::new(), u64::MAX, now_millis());
        let good_b = TxRecord::new(TransactionId::new(), 1000, now_millis());
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for record in [good_a.clone(), bad, good_b.clone()] {
            let (reply, answer) = oneshot::channel();
            batch.push(WriteOp::Create {
                record,
                key: None,
                reply,
            });
            answers.push(answer);
        }
        run_batch(log.pool(), &mut batch, &WriterStats::default()).await;
        for answer in answers {
            assert!(matches!(
                answer.await.unwrap(),
                Err(LogError::BatchFailed(_))
            ));
        }
        assert_eq!(log.get(good_a.id).await.unwrap(), None);
        assert_eq!(log.get(good_b.id).await.unwrap(), None);
        // The log still works afterwards.
        log.create(&good_a, None).await.unwrap();
        assert!(log.get(good_a.id).await.unwrap().is_some());
    }

    /// Concurrent writes share commits: fewer batches (fsyncs) than writes, and every write
    /// is there afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let log = SqliteLog::connect(&url).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let rec = TxRecord::new(TransactionId::new(), 1000, now_millis());
                log.create(&rec, None).await.unwrap();
                let mut next = rec.clone();
                next.version = 1;
                next.state = TransactionState::Aborted;
                log.update(&next).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let writes = log.writer_stats().writes.load(Ordering::Relaxed);
        let batches = log.writer_stats().batches.load(Ordering::Relaxed);
        assert_eq!(writes, 400);
        assert!(batches < writes, "{batches} batches for {writes} writes");
        let reopened = SqliteLog::connect(&url).await.unwrap();
        let all = reopened
            .list(Some(TransactionState::Aborted), 1000)
            .await
            .unwrap();
        assert_eq!(all.len(), 200);
    }

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
