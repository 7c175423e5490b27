//! [`SqliteLog`]: the decision log in an embedded SQLite database file (the default store).

use super::any::{
    RawRow, decode, decode_row, decode_unfinished, encode, expected_version, sql_limit,
};
use super::{Created, DecisionLog, IdempotencyKey, LogError, Unfinished};
use crate::record::{Millis, TxRecord, now_millis};
use rusqlite::{Connection, OpenFlags, params};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use twopc::wire::{TransactionId, TransactionState};

/// The schema, applied by [`SqliteLog::connect`].
const MIGRATION_SQL: &str = include_str!("../../../migrations/coordinator/sqlite/0001_log.sql");

/// Connections in the pool of a file database: readers run in parallel under WAL (the writer
/// thread has a connection of its own; SQLite serializes writers, waiting up to
/// [`BUSY_TIMEOUT`]).
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
    /// Readers come from here (and the migrator).
    pool: SqlitePool,
    /// Queue of the writer thread that group-commits every write.
    writer: mpsc::Sender<Msg>,
    /// Counters of the writer thread.
    stats: Arc<WriterStats>,
}

/// What the writer thread has done: batches committed (one fsync each) and writes in them.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Committed batches.
    pub batches: AtomicU64,
    /// Writes in committed batches.
    pub writes: AtomicU64,
}

/// Most writes committed together (one fsync) in one batch.
const MAX_BATCH: usize = 512;

/// A message to the writer thread.
#[derive(Debug)]
enum Msg {
    /// A write to group-commit.
    Write(WriteOp),
    /// [`SqliteLog::close`]: commit what came before, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// A write waiting for the writer thread.
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

/// Where the writer thread opens its connection: the database the pool opened.
#[derive(Debug, Clone)]
struct WriterTarget {
    /// The file name as sqlx passes it to SQLite (with `SQLITE_OPEN_URI`, like sqlx).
    path: PathBuf,
    /// A named in-memory database in shared cache, rather than a file.
    in_memory: bool,
}

impl SqliteLog {
    /// Opens the database at `url` (`sqlite://PATH` or `sqlite:PATH`), creating the file if
    /// missing (its directory must exist), and brings its schema up to date.
    ///
    /// `sqlite::memory:` is accepted for tests, but it is not durable: everything is lost when
    /// the log is dropped. Any other scheme, and the URL parameters `vfs`, `immutable` and
    /// `mode=ro` (the writer could not honour them), are [`LogError::UnsupportedUrl`].
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let in_memory = match parse_url(url) {
            Some(UrlKind::File) => false,
            Some(UrlKind::Memory) => true,
            None => return Err(LogError::UnsupportedUrl(url.to_owned())),
        };
        let mut options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            // FULL syncs the write-ahead log on every commit, so a transaction's decision
            // (and everything else) is on stable storage when `create`/`update` returns and
            // survives power loss, not just a crash of the process. NORMAL, the usual WAL
            // companion, may lose the last commits on power loss: not acceptable for a
            // commit decision that participants have been told about.
            .synchronous(SqliteSynchronous::Full);
        if in_memory {
            // The writer thread opens its own connection (through rusqlite): to see the
            // pool's database it must be a named in-memory database in shared cache.
            // (`sqlite::memory:` is named by sqlx; `?mode=memory` without a name is not.)
            if options.get_filename().as_os_str().is_empty() {
                options = options.filename(format!("file:twopc-log-{}", uuid::Uuid::new_v4()));
            }
            options = options.shared_cache(true);
        }
        let target = WriterTarget {
            path: options.get_filename().to_path_buf(),
            in_memory,
        };
        let pool = if in_memory {
            // One connection, never closed: an in-memory database lives only as long as a
            // connection to it. (The writer's connection shares its cache; both wait for the
            // other's table locks through `sqlite3_unlock_notify`, see `open_writer`.)
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
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        let stats = Arc::new(WriterStats::default());
        start_writer(target, queue, stats.clone()).await?;
        tracing::info!(url, in_memory, "opened SQLite decision log");
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

    /// The unfinished rows after `after` (raw `(created_at, id)`), oldest first.
    async fn unfinished_rows(
        &self,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, LogError> {
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
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Stops the writer thread (after committing the writes queued before this call) and closes
    /// every connection; later calls fail ([`LogError::WriterGone`] for writes).
    pub async fn close(&self) {
        let (ack, closed) = oneshot::channel();
        if self.writer.send(Msg::Close(ack)).await.is_ok() {
            // An error means the thread is gone already: closed all the same.
            let _ = closed.await;
        }
        self.pool.close().await;
    }

    /// Hands a write to the writer thread and waits until it is durable.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> WriteOp,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Msg::Write(make(reply)))
            .await
            .map_err(|_| LogError::WriterGone)?;
        answer.await.map_err(|_| LogError::WriterGone)?
    }
}

/// Starts the writer thread on its own connection to `target` and waits until that is open.
///
/// The writer owns its connection on a plain OS thread, so a batch of N writes costs no
/// hand-off per statement (sqlx sends each statement to its connection's worker thread and
/// waits for the answer): one wake-up to take the batch, one per answer.
async fn start_writer(
    target: WriterTarget,
    queue: mpsc::Receiver<Msg>,
    stats: Arc<WriterStats>,
) -> Result<(), LogError> {
    let (opened, ready) = oneshot::channel();
    std::thread::Builder::new()
        .name("twopc-log-writer".to_owned())
        .spawn(move || match open_writer(&target) {
            Ok(conn) => {
                let _ = opened.send(Ok(()));
                write_loop(conn, queue, &stats);
            }
            Err(e) => {
                let _ = opened.send(Err(e));
            }
        })
        // What sqlx answers when it cannot start a connection's worker thread.
        .map_err(|e| LogError::Database(sqlx::Error::Io(e)))?;
    ready.await.map_err(|_| LogError::WriterGone)??;
    Ok(())
}

/// Opens the writer's connection with the pool's settings: busy timeout, `synchronous=FULL`,
/// foreign keys on (sqlx's default) and WAL for a file.
fn open_writer(target: &WriterTarget) -> rusqlite::Result<Connection> {
    // No SQLITE_OPEN_CREATE: the pool has created the database and its schema.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= if target.in_memory {
        OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE
    } else {
        OpenFlags::SQLITE_OPEN_PRIVATE_CACHE
    };
    let conn = Connection::open_with_flags(&target.path, flags)?;
    // (In shared cache a table lock is SQLITE_LOCKED, not BUSY: rusqlite's `unlock_notify`
    // feature waits for it as sqlx does.)
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
    if !target.in_memory {
        // Already WAL (the pool set it and it is persistent) unless the file system cannot;
        // the pool has warned about that.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    }
    Ok(conn)
}

/// The writer thread: takes every write queued so far (up to [`MAX_BATCH`]), runs them in one
/// local transaction and answers them after its commit. Concurrent decisions thus share one
/// fsync (group commit) without weakening durability: nobody hears "done" before the batch is
/// on disk.
fn write_loop(conn: Connection, mut queue: mpsc::Receiver<Msg>, stats: &WriterStats) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = Vec::new();
    while queue.blocking_recv_many(&mut received, MAX_BATCH) > 0 {
        for msg in received.drain(..) {
            match msg {
                Msg::Write(op) if closing.is_empty() => batch.push(op),
                Msg::Write(op) => op.refuse(),
                Msg::Close(ack) => closing.push(ack),
            }
        }
        if !batch.is_empty() {
            run_batch(&conn, &mut batch, stats);
        }
        if !closing.is_empty() {
            break;
        }
    }
    // Closed (or every sender dropped): refuse what is still queued, then close.
    queue.close();
    while let Ok(msg) = queue.try_recv() {
        match msg {
            Msg::Write(op) => op.refuse(),
            Msg::Close(ack) => closing.push(ack),
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the decision log's writer connection failed");
    }
    for ack in closing {
        let _ = ack.send(());
    }
}

/// A database failure inside a batch: the whole batch is rolled back and fails with it.
#[derive(Debug)]
struct BatchError(String);

impl From<rusqlite::Error> for BatchError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

impl BatchError {
    /// A record that cannot be encoded into columns: a database error, as with sqlx's binds.
    fn encode(e: LogError) -> Self {
        Self(e.to_string())
    }
}

/// A write's outcome inside a batch: `Err` fails the whole batch; `Ok` holds the write's own
/// answer (a lost compare-and-set, a duplicate id or a reused key are answers, not failures).
type Step<T> = Result<Result<T, LogError>, BatchError>;

/// Runs one statement without parameters nor rows (cached: `BEGIN IMMEDIATE`, `COMMIT`, ...).
fn exec(conn: &Connection, sql: &str) -> Result<(), BatchError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn run_batch(conn: &Connection, batch: &mut Vec<WriteOp>, stats: &WriterStats) {
    let mut done = Vec::with_capacity(batch.len());
    let mut failed = exec(conn, "BEGIN IMMEDIATE").err();
    for op in batch.drain(..) {
        if failed.is_some() {
            done.push(op.into_unrun());
            continue;
        }
        // A database error (I/O, disk full, ...) may have rolled the whole transaction back
        // inside SQLite, and the statements after it would then run in autocommit mode, each
        // durable on its own while its caller hears "failed". So one such error fails the whole
        // batch: roll back, answer every write with the error, write nothing.
        done.push(match op {
            WriteOp::Create { record, key, reply } => Done::Create(
                reply,
                settle(create_in(conn, &record, key.as_ref()), &mut failed),
            ),
            WriteOp::Update { record, reply } => {
                Done::Update(reply, settle(update_in(conn, &record), &mut failed))
            }
        });
    }
    if failed.is_none() {
        failed = exec(conn, "COMMIT").err();
    }
    if let Some(e) = failed {
        // A failed COMMIT (a deferred foreign key, SQLITE_BUSY without WAL, ...) leaves the
        // transaction open; a failed statement may have ended it already.
        if !conn.is_autocommit()
            && let Err(rollback) = exec(conn, "ROLLBACK")
        {
            tracing::warn!(error = %rollback.0, "rolling back a failed decision-log batch failed");
        }
        return fail_all(done, &e);
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.writes.fetch_add(done.len() as u64, Ordering::Relaxed);
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

/// A write's answer, or a placeholder (replaced by the batch's failure) after recording it.
fn settle<T>(step: Step<T>, failed: &mut Option<BatchError>) -> Result<T, LogError> {
    step.unwrap_or_else(|e| {
        *failed = Some(e);
        Err(LogError::WriterGone)
    })
}

impl WriteOp {
    /// A write that was not run because the batch had already failed.
    fn into_unrun(self) -> Done {
        match self {
            WriteOp::Create { reply, .. } => Done::Create(reply, Err(LogError::WriterGone)),
            WriteOp::Update { reply, .. } => Done::Update(reply, Err(LogError::WriterGone)),
        }
    }

    /// Answers a write that came after [`SqliteLog::close`].
    fn refuse(self) {
        match self {
            WriteOp::Create { reply, .. } => {
                let _ = reply.send(Err(LogError::WriterGone));
            }
            WriteOp::Update { reply, .. } => {
                let _ = reply.send(Err(LogError::WriterGone));
            }
        }
    }
}

/// Answers every write of a failed batch with its failure: none of them was written.
fn fail_all(done: Vec<Done>, error: &BatchError) {
    tracing::error!(error = %error.0, "decision log batch failed; nothing in it was written");
    for d in done {
        let e = LogError::BatchFailed(error.0.clone());
        match d {
            Done::Create(reply, _) => {
                let _ = reply.send(Err(e));
            }
            Done::Update(reply, _) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Inserts the transaction row; `false` when the id exists.
fn insert_tx(conn: &Connection, record: &TxRecord) -> Result<bool, BatchError> {
    let row = encode(record).map_err(BatchError::encode)?;
    let inserted = conn.prepare_cached(INSERT_SQL)?.execute(params![
        row.id,
        row.state,
        row.decision,
        row.reason,
        row.timeout_ms,
        row.created_at,
        row.deadline,
        row.decided_at,
        row.completed_at,
        row.participants,
        row.version,
    ])?;
    Ok(inserted == 1)
}

/// One create inside a batch, in a savepoint so that a failed create leaves no key row behind.
fn create_in(conn: &Connection, record: &TxRecord, key: Option<&IdempotencyKey>) -> Step<Created> {
    let Some(key) = key else {
        return Ok(if insert_tx(conn, record)? {
            Ok(Created::New)
        } else {
            Err(LogError::Duplicate(record.id))
        });
    };
    exec(conn, "SAVEPOINT twopc_create")?;
    let result = create_with_key(conn, record, key)?;
    if !matches!(result, Ok(Created::New)) {
        exec(conn, "ROLLBACK TO twopc_create")?;
    }
    exec(conn, "RELEASE twopc_create")?;
    Ok(result)
}

/// The create path with an idempotency key: the key row first (it serializes creates with one
/// key), then the transaction; or the transaction the key made before.
fn create_with_key(conn: &Connection, record: &TxRecord, key: &IdempotencyKey) -> Step<Created> {
    let inserted = conn.prepare_cached(INSERT_KEY_SQL)?.execute(params![
        key.key,
        key.request_hash,
        record.id.to_string(),
        now_millis(),
    ])? == 1;
    if inserted {
        if !insert_tx(conn, record)? {
            return Ok(Err(LogError::Duplicate(record.id)));
        }
        tracing::debug!(id = %record.id, key = %key.key, "created transaction with idempotency key");
        return Ok(Ok(Created::New));
    }
    let (hash, existing_id): (String, String) = conn
        .prepare_cached(SELECT_KEY_SQL)?
        .query_row(params![key.key], |row| {
            Ok((row.get("request_hash")?, row.get("transaction_id")?))
        })?;
    if hash != key.request_hash {
        return Ok(Err(LogError::IdempotencyKeyReused(key.key.clone())));
    }
    let mut select = conn.prepare_cached(GET_SQL)?;
    let mut rows = select.query(params![existing_id])?;
    Ok(match rows.next()? {
        Some(row) => raw_row(row).and_then(decode).map(|record| {
            tracing::debug!(id = %record.id, key = %key.key, "idempotency key seen before");
            Created::Existing(record)
        }),
        None => Err(LogError::Corrupt {
            id: existing_id,
            message: format!("idempotency key '{}' names a missing transaction", key.key),
        }),
    })
}

/// Reads the columns of a `twopc_transactions` row; a value of the wrong type or an unexpected
/// NULL is [`LogError::Corrupt`] (as [`super::any::raw_row`] does for sqlx rows).
fn raw_row(row: &rusqlite::Row<'_>) -> Result<RawRow, LogError> {
    let id: String = row.get("id").map_err(|e| LogError::Corrupt {
        id: "<unreadable>".to_owned(),
        message: e.to_string(),
    })?;
    let corrupt = |e: rusqlite::Error| LogError::Corrupt {
        id: id.clone(),
        message: e.to_string(),
    };
    Ok(RawRow {
        state: row.get("state").map_err(corrupt)?,
        decision: row.get("decision").map_err(corrupt)?,
        reason: row.get("reason").map_err(corrupt)?,
        timeout_ms: row.get("timeout_ms").map_err(corrupt)?,
        created_at: row.get("created_at").map_err(corrupt)?,
        deadline: row.get("deadline").map_err(corrupt)?,
        decided_at: row.get("decided_at").map_err(corrupt)?,
        completed_at: row.get("completed_at").map_err(corrupt)?,
        participants: row.get("participants").map_err(corrupt)?,
        version: row.get("version").map_err(corrupt)?,
        id,
    })
}

/// One compare-and-set update inside a batch.
fn update_in(conn: &Connection, record: &TxRecord) -> Step<()> {
    let expected = match expected_version(record) {
        Ok(expected) => expected,
        Err(lost) => return Ok(Err(lost)),
    };
    let row = encode(record).map_err(BatchError::encode)?;
    let updated = conn.prepare_cached(UPDATE_SQL)?.execute(params![
        row.state,
        row.decision,
        row.reason,
        row.timeout_ms,
        row.created_at,
        row.deadline,
        row.decided_at,
        row.completed_at,
        row.participants,
        row.version,
        row.id,
        expected,
    ])?;
    Ok(if updated == 1 {
        Ok(())
    } else {
        tracing::debug!(id = %record.id, expected, "compare-and-set update lost");
        Err(LogError::Conflict {
            id: record.id,
            expected,
        })
    })
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

/// Classifies an `sqlite:` URL; `None` for another scheme, an empty path (which SQLite would
/// open as a private temporary database per connection), or a parameter that changes how the
/// file is opened (`vfs`, `immutable`, `mode=ro`): the writer's own connection would not follow
/// it, and two connections to one file must agree on its VFS and locking.
fn parse_url(url: &str) -> Option<UrlKind> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let unfollowed =
        |p: &str| p.starts_with("vfs=") || p.starts_with("immutable=") || p == "mode=ro";
    if params.split('&').any(unfollowed) {
        return None;
    }
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
        // A writer connection of the test's own, to run one known batch on.
        let writer = open_writer(&WriterTarget {
            path: dir.path().join("log.db"),
            in_memory: false,
        })
        .unwrap();
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
        run_batch(&writer, &mut batch, &WriterStats::default());
        assert!(writer.is_autocommit(), "the failed batch is rolled back");
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

    /// The writer's connection has the pool's settings.
    #[tokio::test]
    async fn the_writer_connection_has_the_pools_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let _log = SqliteLog::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let writer = open_writer(&WriterTarget {
            path,
            in_memory: false,
        })
        .unwrap();
        let pragma = |name: &str| -> String {
            writer
                .query_row(&format!("PRAGMA {name}"), [], |row| {
                    row.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        // 2 = FULL.
        assert_eq!(pragma("synchronous"), "Integer(2)");
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
    }

    /// In memory, the pool (reads) and the writer thread see one database, and their table
    /// locks wait for each other instead of failing, under concurrent reads and writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_reads_and_writes_share_one_database() {
        for url in ["sqlite::memory:", "sqlite://?mode=memory"] {
            let log = SqliteLog::connect(url).await.unwrap();
            let other = SqliteLog::connect(url).await.unwrap();
            let mut tasks = Vec::new();
            for _ in 0..50 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let rec = TxRecord::new(TransactionId::new(), 1000, now_millis());
                    log.create(&rec, None).await.unwrap();
                    assert_eq!(log.get(rec.id).await.unwrap(), Some(rec.clone()));
                    let mut next = rec.clone();
                    next.version = 1;
                    next.state = TransactionState::Aborted;
                    log.update(&next).await.unwrap();
                    assert!(!log.list(None, 100).await.unwrap().is_empty());
                    assert_eq!(log.get(rec.id).await.unwrap(), Some(next));
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let aborted = log.list(Some(TransactionState::Aborted), 100).await;
            assert_eq!(aborted.unwrap().len(), 50, "{url}");
            // Each connect is a database of its own.
            assert!(other.list(None, 100).await.unwrap().is_empty(), "{url}");
        }
    }

    /// `close` commits what was queued before it, stops the writer thread, and later writes
    /// fail at once instead of waiting.
    #[tokio::test]
    async fn close_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let log = SqliteLog::connect(&url).await.unwrap();
        let before = TxRecord::new(TransactionId::new(), 1000, now_millis());
        let (queued, closed) = tokio::join!(log.create(&before, None), log.close());
        let () = closed;
        assert!(matches!(queued, Ok(Created::New)), "{queued:?}");
        let after = TxRecord::new(TransactionId::new(), 1000, now_millis());
        assert!(matches!(
            log.create(&after, None).await,
            Err(LogError::WriterGone)
        ));
        assert!(matches!(
            log.update(&before).await,
            Err(LogError::WriterGone)
        ));
        // Closing again is harmless.
        log.close().await;
        let reopened = SqliteLog::connect(&url).await.unwrap();
        assert_eq!(reopened.get(before.id).await.unwrap(), Some(before));
        assert_eq!(reopened.get(after.id).await.unwrap(), None);
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
        assert_eq!(parse_url("sqlite://log.db?mode=rwc"), Some(UrlKind::File));
        assert_eq!(parse_url("sqlite://log.db?vfs=unix-dotfile"), None);
        assert_eq!(parse_url("sqlite://log.db?immutable=1"), None);
        assert_eq!(parse_url("sqlite://log.db?mode=ro"), None);
        assert_eq!(parse_url("postgres://localhost/db"), None);
        assert_eq!(parse_url("log.db"), None);
    }
}
