//! The participant SDK's behaviour, written once and run on SQLite, PostgreSQL and MariaDB/MySQL
//! (see `twopc::testing` for how the server databases are chosen).

// Test helpers outside `#[test]` functions: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{MySql, Postgres, Sqlite, Transaction};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Barrier;
use tower::ServiceExt as _;
use twopc::participant::TOMBSTONE_REASON;
use twopc::testing::{Server, with_database};
use twopc::wire::{
    ErrorBody, OnePhaseOutcome, OutcomeRequest, OutcomeResponse, ParticipantState, ParticipantView,
    PrepareRequest, TransactionView, VoteKind,
};
use twopc::{
    Applied, Handler, HandlerError, LocalState, MySqlStore, Participant, ParticipantError,
    PostgresStore, ResolverAction, ResolverConfig, SqliteStore, StateStore, TransactionId,
    TransactionState, Vote,
};

/// The participant name most tests use.
const NAME: &str = "alpha";
/// A coordinator URL nothing listens on (tests that need one serve their own).
const NO_COORDINATOR: &str = "http://127.0.0.1:9";

// ---------------------------------------------------------------------------------------------
// The test handler: its behaviour is chosen by the payload; it counts its invocations and writes
// one `effects` row per handler run, so tests see what committed and what rolled back.

#[derive(Debug, Deserialize)]
struct TestOp {
    /// What prepare answers.
    vote: TestVote,
    /// How long prepare holds its local transaction open (to make races real).
    #[serde(default)]
    sleep_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TestVote {
    Commit,
    ReadOnly,
    Abort,
    /// Runs a failing statement, then votes abort (on PostgreSQL the transaction is then in the
    /// failed state until the SDK rolls back to its savepoint).
    AbortAfterError,
    /// Returns an error.
    Error,
}

#[derive(Default)]
struct TestHandler {
    prepares: AtomicUsize,
    commits: AtomicUsize,
    aborts: AtomicUsize,
}

macro_rules! test_handler {
    ($db:ty, $insert:literal) => {
        impl Handler<$db> for TestHandler {
            type Payload = TestOp;

            async fn prepare(
                &self,
                tx: &mut Transaction<'static, $db>,
                id: TransactionId,
                op: &TestOp,
            ) -> Result<Vote, HandlerError> {
                self.prepares.fetch_add(1, Ordering::SeqCst);
                if !matches!(op.vote, TestVote::ReadOnly) {
                    sqlx::query($insert)
                        .bind(id.to_string())
                        .bind("prepare")
                        .execute(&mut **tx)
                        .await?;
                }
                if op.sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(op.sleep_ms)).await;
                }
                match op.vote {
                    TestVote::Commit => Ok(Vote::Commit),
                    TestVote::ReadOnly => Ok(Vote::ReadOnly),
                    TestVote::Abort => Ok(Vote::Abort {
                        reason: "test says no".into(),
                    }),
                    TestVote::AbortAfterError => {
                        let failed = sqlx::query("SELECT * FROM no_such_table")
                            .execute(&mut **tx)
                            .await;
                        assert!(failed.is_err(), "the statement was meant to fail");
                        Ok(Vote::Abort {
                            reason: "statement failed".into(),
                        })
                    }
                    TestVote::Error => Err(HandlerError::msg("test handler failed")),
                }
            }

            async fn commit(
                &self,
                tx: &mut Transaction<'static, $db>,
                id: TransactionId,
                _op: &TestOp,
            ) -> Result<(), HandlerError> {
                self.commits.fetch_add(1, Ordering::SeqCst);
                sqlx::query($insert)
                    .bind(id.to_string())
                    .bind("commit")
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn abort(
                &self,
                tx: &mut Transaction<'static, $db>,
                id: TransactionId,
                _op: &TestOp,
            ) -> Result<(), HandlerError> {
                self.aborts.fetch_add(1, Ordering::SeqCst);
                sqlx::query($insert)
                    .bind(id.to_string())
                    .bind("abort")
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    };
}

test_handler!(
    Sqlite,
    "INSERT INTO effects (transaction_id, phase) VALUES (?, ?)"
);
test_handler!(
    Postgres,
    "INSERT INTO effects (transaction_id, phase) VALUES ($1, $2)"
);
test_handler!(
    MySql,
    "INSERT INTO effects (transaction_id, phase) VALUES (?, ?)"
);

// ---------------------------------------------------------------------------------------------
// What differs per backend in the tests themselves.

trait Backend: StateStore {
    /// Creates the test handler's `effects` table.
    fn create_effects(&self) -> impl Future<Output = ()> + Send;
    /// How many `effects` rows the transaction has for `phase`.
    fn effects(&self, id: TransactionId, phase: &str) -> impl Future<Output = i64> + Send;
    /// Runs a migration of "the service" through sqlx's default `_sqlx_migrations` table.
    fn run_service_migration(&self) -> impl Future<Output = ()> + Send;
}

macro_rules! backend {
    ($store:ty, $create:literal, $count:literal) => {
        impl Backend for $store {
            async fn create_effects(&self) {
                sqlx::query($create).execute(self.pool()).await.unwrap();
            }

            async fn effects(&self, id: TransactionId, phase: &str) -> i64 {
                sqlx::query_scalar($count)
                    .bind(id.to_string())
                    .bind(phase)
                    .fetch_one(self.pool())
                    .await
                    .unwrap()
            }

            async fn run_service_migration(&self) {
                use sqlx::SqlSafeStr as _;
                use sqlx::migrate::{Migration, MigrationType, Migrator};
                let service = Migrator::with_migrations(vec![Migration::new(
                    1,
                    "the service's own first migration".into(),
                    MigrationType::Simple,
                    "CREATE TABLE service_things (id INTEGER NOT NULL)".into_sql_str(),
                    false,
                )]);
                service.run(self.pool()).await.unwrap();
            }
        }
    };
}

backend!(
    SqliteStore,
    "CREATE TABLE effects (transaction_id TEXT NOT NULL, phase TEXT NOT NULL)",
    "SELECT COUNT(*) FROM effects WHERE transaction_id = ? AND phase = ?"
);
backend!(
    PostgresStore,
    "CREATE TABLE effects (transaction_id TEXT NOT NULL, phase TEXT NOT NULL)",
    "SELECT COUNT(*) FROM effects WHERE transaction_id = $1 AND phase = $2"
);
backend!(
    MySqlStore,
    "CREATE TABLE effects (transaction_id VARCHAR(64) NOT NULL, phase VARCHAR(16) NOT NULL)",
    "SELECT COUNT(*) FROM effects WHERE transaction_id = ? AND phase = ?"
);

/// One test's participant on a fresh database.
struct Fx<S: Backend>
where
    TestHandler: Handler<S::Db>,
{
    p: Arc<Participant<S, TestHandler>>,
}

impl<S: Backend> Fx<S>
where
    TestHandler: Handler<S::Db>,
{
    async fn new(store: S) -> Self {
        store.migrate().await.unwrap();
        store.create_effects().await;
        Self {
            p: Arc::new(Participant::new(store, TestHandler::default())),
        }
    }

    fn store(&self) -> &S {
        self.p.store()
    }

    fn prepares(&self) -> usize {
        self.p.handler().prepares.load(Ordering::SeqCst)
    }

    fn commits(&self) -> usize {
        self.p.handler().commits.load(Ordering::SeqCst)
    }

    fn aborts(&self) -> usize {
        self.p.handler().aborts.load(Ordering::SeqCst)
    }

    async fn effects(&self, id: TransactionId, phase: &str) -> i64 {
        self.store().effects(id, phase).await
    }

    async fn state(&self, id: TransactionId) -> Option<LocalState> {
        self.p.get(NAME, id).await.unwrap().map(|r| r.state)
    }
}

fn prepare_req(id: TransactionId, payload: Value) -> PrepareRequest {
    prepare_req_at(id, payload, NO_COORDINATOR)
}

fn prepare_req_at(id: TransactionId, payload: Value, coordinator: &str) -> PrepareRequest {
    PrepareRequest {
        transaction_id: id,
        participant: NAME.into(),
        payload,
        coordinator: coordinator.into(),
        deadline_ms: 5_000,
    }
}

fn outcome(id: TransactionId) -> OutcomeRequest {
    OutcomeRequest {
        transaction_id: id,
        participant: NAME.into(),
    }
}

fn vote(v: &str) -> Value {
    json!({ "vote": v })
}

// ---------------------------------------------------------------------------------------------
// The suite.

async fn prepare_then_commit<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap(),
        Vote::Commit
    );
    let row = fx.p.get(NAME, id).await.unwrap().unwrap();
    assert_eq!(row.state, LocalState::Prepared);
    assert_eq!(row.vote, Some(VoteKind::Commit));
    assert_eq!(row.coordinator.as_deref(), Some(NO_COORDINATOR));
    let stored: Value = serde_json::from_str(row.payload.as_deref().unwrap()).unwrap();
    assert_eq!(stored, vote("commit"));
    assert_eq!(fx.effects(id, "prepare").await, 1);

    assert_eq!(fx.p.commit(&outcome(id)).await.unwrap(), Applied::Ran);
    assert_eq!(fx.state(id).await, Some(LocalState::Committed));
    assert_eq!(fx.effects(id, "commit").await, 1);
    assert_eq!((fx.prepares(), fx.commits(), fx.aborts()), (1, 1, 0));
}

async fn prepare_then_abort<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap(),
        Vote::Commit
    );
    assert_eq!(fx.p.abort(&outcome(id)).await.unwrap(), Applied::Ran);
    let row = fx.p.get(NAME, id).await.unwrap().unwrap();
    assert_eq!(row.state, LocalState::Aborted);
    assert_eq!(
        row.vote,
        Some(VoteKind::Commit),
        "the first vote stays recorded"
    );
    assert_eq!(fx.effects(id, "abort").await, 1);
    assert_eq!((fx.prepares(), fx.commits(), fx.aborts()), (1, 0, 1));
}

async fn abort_vote_rolls_back_and_is_repeated<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let refused = Vote::Abort {
        reason: "test says no".into(),
    };
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("abort"))).await.unwrap(),
        refused
    );
    assert_eq!(
        fx.effects(id, "prepare").await,
        0,
        "the handler's write was rolled back"
    );
    let row = fx.p.get(NAME, id).await.unwrap().unwrap();
    assert_eq!(row.state, LocalState::Aborted);
    assert_eq!(row.vote, Some(VoteKind::Abort));
    assert_eq!(row.reason.as_deref(), Some("test says no"));

    // Repeated, even with a payload that would now vote commit: the first vote stands.
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap(),
        refused
    );
    assert_eq!(fx.prepares(), 1);
    assert_eq!(
        fx.p.abort(&outcome(id)).await.unwrap(),
        Applied::AlreadyDone
    );
    assert_eq!(
        fx.aborts(),
        0,
        "the abort handler runs only for prepared transactions"
    );
}

async fn abort_vote_after_failed_statement<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let answer =
        fx.p.prepare(&prepare_req(id, vote("abort_after_error")))
            .await
            .unwrap();
    assert_eq!(
        answer,
        Vote::Abort {
            reason: "statement failed".into()
        }
    );
    assert_eq!(fx.state(id).await, Some(LocalState::Aborted));
    assert_eq!(fx.effects(id, "prepare").await, 0);
}

async fn read_only<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("read_only")))
            .await
            .unwrap(),
        Vote::ReadOnly
    );
    let row = fx.p.get(NAME, id).await.unwrap().unwrap();
    assert_eq!(row.state, LocalState::ReadOnly);
    assert_eq!(row.vote, Some(VoteKind::ReadOnly));
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap(),
        Vote::ReadOnly
    );
    assert_eq!(
        fx.p.commit(&outcome(id)).await.unwrap(),
        Applied::AlreadyDone
    );
    // A coordinator that lost the read-only vote aborts; that is acknowledged, not refused.
    assert_eq!(
        fx.p.abort(&outcome(id)).await.unwrap(),
        Applied::AlreadyDone
    );
    assert_eq!((fx.prepares(), fx.commits(), fx.aborts()), (1, 0, 0));
    assert!(fx.p.resolve_once(Duration::ZERO).await.unwrap().is_empty());
}

async fn repeats_are_idempotent<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let committed = TransactionId::new();
    for _ in 0..3 {
        let v =
            fx.p.prepare(&prepare_req(committed, vote("commit")))
                .await
                .unwrap();
        assert_eq!(v, Vote::Commit);
    }
    assert_eq!(
        fx.p.commit(&outcome(committed)).await.unwrap(),
        Applied::Ran
    );
    assert_eq!(
        fx.p.commit(&outcome(committed)).await.unwrap(),
        Applied::AlreadyDone
    );
    let late =
        fx.p.prepare(&prepare_req(committed, vote("commit")))
            .await
            .unwrap();
    assert_eq!(late, Vote::Commit);
    assert_eq!(fx.effects(committed, "prepare").await, 1);
    assert_eq!(fx.effects(committed, "commit").await, 1);

    let aborted = TransactionId::new();
    fx.p.prepare(&prepare_req(aborted, vote("commit")))
        .await
        .unwrap();
    assert_eq!(fx.p.abort(&outcome(aborted)).await.unwrap(), Applied::Ran);
    assert_eq!(
        fx.p.abort(&outcome(aborted)).await.unwrap(),
        Applied::AlreadyDone
    );
    assert_eq!(fx.effects(aborted, "abort").await, 1);
    assert_eq!((fx.prepares(), fx.commits(), fx.aborts()), (2, 1, 1));
}

async fn tombstone_then_late_prepare<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    assert_eq!(fx.p.abort(&outcome(id)).await.unwrap(), Applied::Tombstone);
    let row = fx.p.get(NAME, id).await.unwrap().unwrap();
    assert_eq!(row.state, LocalState::Aborted);
    assert!(row.is_tombstone());
    assert_eq!(
        fx.p.abort(&outcome(id)).await.unwrap(),
        Applied::AlreadyDone
    );

    let late =
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap();
    assert_eq!(
        late,
        Vote::Abort {
            reason: TOMBSTONE_REASON.into()
        }
    );
    assert_eq!(
        fx.prepares(),
        0,
        "a tombstoned transaction never reaches the handler"
    );
    let err = fx.p.commit(&outcome(id)).await.unwrap_err();
    assert!(matches!(err, ParticipantError::Conflict { .. }), "{err:?}");
}

async fn one_phase_commits_in_one_local_transaction<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let req = prepare_req(id, vote("commit"));
    assert_eq!(
        fx.p.commit_one_phase(&req).await.unwrap(),
        OnePhaseOutcome::Committed
    );
    assert_eq!(fx.state(id).await, Some(LocalState::Committed));
    assert_eq!(
        (
            fx.effects(id, "prepare").await,
            fx.effects(id, "commit").await
        ),
        (1, 1)
    );
    // A repeat answers the same and runs nothing; a later abort conflicts, a commit is done.
    assert_eq!(
        fx.p.commit_one_phase(&req).await.unwrap(),
        OnePhaseOutcome::Committed
    );
    assert_eq!((fx.prepares(), fx.commits(), fx.aborts()), (1, 1, 0));
    let err = fx.p.abort(&outcome(id)).await.unwrap_err();
    assert!(matches!(err, ParticipantError::Conflict { .. }), "{err:?}");
    assert_eq!(
        fx.p.commit(&outcome(id)).await.unwrap(),
        Applied::AlreadyDone
    );

    // Read-only: committed, nothing to run.
    let ro = TransactionId::new();
    assert_eq!(
        fx.p.commit_one_phase(&prepare_req(ro, vote("read_only")))
            .await
            .unwrap(),
        OnePhaseOutcome::Committed
    );
    assert_eq!(fx.state(ro).await, Some(LocalState::ReadOnly));
    assert_eq!(fx.commits(), 1, "no commit handler for a read-only vote");
}

async fn one_phase_refusal_and_tombstone_abort<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    // A refusal rolls back what the handler wrote and is repeated.
    let id = TransactionId::new();
    let req = prepare_req(id, vote("abort"));
    let refused = OnePhaseOutcome::Aborted {
        reason: "test says no".into(),
    };
    assert_eq!(fx.p.commit_one_phase(&req).await.unwrap(), refused);
    assert_eq!(fx.state(id).await, Some(LocalState::Aborted));
    assert_eq!(fx.effects(id, "prepare").await, 0, "rolled back");
    assert_eq!(fx.p.commit_one_phase(&req).await.unwrap(), refused);
    assert_eq!((fx.prepares(), fx.commits()), (1, 0));

    // An abort that came first leaves a tombstone: the late call answers aborted.
    let late = TransactionId::new();
    assert_eq!(
        fx.p.abort(&outcome(late)).await.unwrap(),
        Applied::Tombstone
    );
    assert_eq!(
        fx.p.commit_one_phase(&prepare_req(late, vote("commit")))
            .await
            .unwrap(),
        OnePhaseOutcome::Aborted {
            reason: TOMBSTONE_REASON.into()
        }
    );
    assert_eq!(
        fx.prepares(),
        1,
        "a tombstoned transaction never reaches the handler"
    );

    // A handler error records nothing (the coordinator asks again).
    let failing = TransactionId::new();
    let err =
        fx.p.commit_one_phase(&prepare_req(failing, vote("error")))
            .await
            .unwrap_err();
    assert!(matches!(err, ParticipantError::Handler { .. }), "{err:?}");
    assert_eq!(fx.state(failing).await, None);

    // Prepared by a two-phase prepare: the one-phase call conflicts and changes nothing.
    let prepared = TransactionId::new();
    fx.p.prepare(&prepare_req(prepared, vote("commit")))
        .await
        .unwrap();
    let err =
        fx.p.commit_one_phase(&prepare_req(prepared, vote("commit")))
            .await
            .unwrap_err();
    assert!(matches!(err, ParticipantError::Conflict { .. }), "{err:?}");
    assert_eq!(fx.state(prepared).await, Some(LocalState::Prepared));
}

async fn commit_unknown_is_404<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let err = fx.p.commit(&outcome(id)).await.unwrap_err();
    assert!(
        matches!(err, ParticipantError::UnknownTransaction { .. }),
        "{err:?}"
    );
    assert_eq!(err.status(), 404);
    assert_eq!(fx.state(id).await, None, "a refused commit records nothing");
}

async fn commit_after_abort_conflicts<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    fx.p.prepare(&prepare_req(id, vote("commit")))
        .await
        .unwrap();
    fx.p.abort(&outcome(id)).await.unwrap();
    let err = fx.p.commit(&outcome(id)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ParticipantError::Conflict {
                state: LocalState::Aborted,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), 409);
    assert_eq!(fx.commits(), 0);
}

async fn abort_after_commit_conflicts<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    fx.p.prepare(&prepare_req(id, vote("commit")))
        .await
        .unwrap();
    fx.p.commit(&outcome(id)).await.unwrap();
    let err = fx.p.abort(&outcome(id)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ParticipantError::Conflict {
                state: LocalState::Committed,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fx.aborts(), 0);
    assert_eq!(fx.state(id).await, Some(LocalState::Committed));
}

async fn handler_error_records_nothing<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let err =
        fx.p.prepare(&prepare_req(id, vote("error")))
            .await
            .unwrap_err();
    assert!(matches!(err, ParticipantError::Handler { .. }), "{err:?}");
    assert_eq!(err.status(), 500);
    assert_eq!(fx.state(id).await, None);
    assert_eq!(fx.effects(id, "prepare").await, 0);
    // Nothing was recorded, so the next prepare runs the handler afresh.
    assert_eq!(
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap(),
        Vote::Commit
    );
    assert_eq!(fx.prepares(), 2);
}

async fn bad_payload_is_refused<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let id = TransactionId::new();
    let err =
        fx.p.prepare(&prepare_req(id, json!({ "vote": 17 })))
            .await
            .unwrap_err();
    assert!(matches!(err, ParticipantError::BadPayload(_)), "{err:?}");
    assert_eq!(err.status(), 400);
    assert_eq!(fx.state(id).await, None);
    assert_eq!(fx.prepares(), 0);
}

async fn concurrent_prepares_run_the_handler_once<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    const RACERS: usize = 8;
    let id = TransactionId::new();
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let p = Arc::clone(&fx.p);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let payload = json!({ "vote": "commit", "sleep_ms": 300 });
            p.prepare(&prepare_req(id, payload)).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Vote::Commit);
    }
    assert_eq!(fx.prepares(), 1, "the handler ran more than once");
    assert_eq!(fx.effects(id, "prepare").await, 1);
}

async fn concurrent_outcomes_run_the_handler_once<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    // Duplicate aborts (and commits) arrive together when the coordinator retries a call that is
    // still running. On MySQL the aborts' duplicate-key shared locks deadlock when upgraded; the
    // SDK must absorb that by running the local transaction again.
    const RACERS: usize = 6;
    for op in ["abort", "commit"] {
        let id = TransactionId::new();
        fx.p.prepare(&prepare_req(id, vote("commit")))
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for _ in 0..RACERS {
            let (p, barrier) = (Arc::clone(&fx.p), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                if op == "abort" {
                    p.abort(&outcome(id)).await
                } else {
                    p.commit(&outcome(id)).await
                }
            }));
        }
        let mut ran = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Applied::Ran) => ran += 1,
                Ok(Applied::AlreadyDone) => {}
                other => panic!("{op}: unexpected answer {other:?}"),
            }
        }
        assert_eq!(
            ran, 1,
            "{op}: the handler's effect must be recorded exactly once"
        );
        assert_eq!(fx.effects(id, op).await, 1);
    }
}

async fn prepare_racing_abort_is_consistent<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let (mut prepare_first, mut abort_first) = (0, 0);
    for _ in 0..6 {
        let id = TransactionId::new();
        let barrier = Arc::new(Barrier::new(2));
        let (p, b) = (Arc::clone(&fx.p), Arc::clone(&barrier));
        let prepare = tokio::spawn(async move {
            b.wait().await;
            let payload = json!({ "vote": "commit", "sleep_ms": 50 });
            p.prepare(&prepare_req(id, payload)).await
        });
        let (p, b) = (Arc::clone(&fx.p), Arc::clone(&barrier));
        let abort = tokio::spawn(async move {
            b.wait().await;
            p.abort(&outcome(id)).await
        });
        let voted = prepare.await.unwrap().unwrap();
        let applied = abort.await.unwrap().unwrap();
        match (&voted, applied) {
            (Vote::Commit, Applied::Ran) => {
                prepare_first += 1;
                assert_eq!(fx.effects(id, "prepare").await, 1);
                assert_eq!(fx.effects(id, "abort").await, 1);
            }
            (Vote::Abort { reason }, Applied::Tombstone) if reason == TOMBSTONE_REASON => {
                abort_first += 1;
                assert_eq!(fx.effects(id, "prepare").await, 0);
                assert_eq!(fx.effects(id, "abort").await, 0);
            }
            other => panic!("inconsistent outcome of the race: {other:?}"),
        }
        assert_eq!(fx.state(id).await, Some(LocalState::Aborted));
    }
    eprintln!("prepare won {prepare_first} races, abort won {abort_first}");
}

async fn migrations_keep_to_their_own_table<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    // The service's own version 1 in `_sqlx_migrations` and the SDK's version 1 in
    // `_twopc_participant_migrations` do not see each other; both migrators run again cleanly.
    fx.store().run_service_migration().await;
    fx.store().migrate().await.unwrap();
    fx.store().run_service_migration().await;
}

// ---------------------------------------------------------------------------------------------
// The in-doubt resolver against a fake coordinator.

#[derive(Clone, Default)]
struct FakeCoordinator {
    states: Arc<std::sync::Mutex<HashMap<TransactionId, TransactionState>>>,
    inquiries: Arc<AtomicUsize>,
}

impl FakeCoordinator {
    fn set(&self, id: TransactionId, state: TransactionState) {
        self.states.lock().unwrap().insert(id, state);
    }

    /// Serves `GET /v1/transactions/{id}` on 127.0.0.1; answers its base URL.
    async fn serve(&self) -> String {
        let app = axum::Router::new()
            .route("/v1/transactions/{id}", axum::routing::get(inquiry))
            // Like the real coordinator: unknown routes get a JSON 404 with another code.
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(ErrorBody::new("not_found", "no such route")),
                )
            })
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

async fn inquiry(State(fake): State<FakeCoordinator>, Path(id): Path<TransactionId>) -> Response {
    fake.inquiries.fetch_add(1, Ordering::SeqCst);
    let state = fake.states.lock().unwrap().get(&id).copied();
    match state {
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(ErrorBody::new(
                "transaction_not_found",
                "no such transaction",
            )),
        )
            .into_response(),
        Some(state) => axum::Json(TransactionView {
            id,
            state,
            decision: state.decision(),
            reason: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            decided_at: None,
            completed_at: None,
            participants: vec![ParticipantView {
                name: NAME.into(),
                url: "http://127.0.0.1:1".into(),
                vote: Some(VoteKind::Commit),
                state: ParticipantState::Prepared,
            }],
        })
        .into_response(),
    }
}

async fn resolver_applies_the_coordinators_answers<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let fake = FakeCoordinator::default();
    let url = fake.serve().await;
    let unknown = TransactionId::new();
    let committing = TransactionId::new();
    let aborted = TransactionId::new();
    let preparing = TransactionId::new();
    let wrong_url = TransactionId::new();
    let closed_port = TransactionId::new();
    fake.set(committing, TransactionState::Committing);
    fake.set(aborted, TransactionState::Aborted);
    fake.set(preparing, TransactionState::Preparing);
    fake.set(wrong_url, TransactionState::Aborted);
    fake.set(closed_port, TransactionState::Aborted);

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for (id, coordinator) in [
        (unknown, url.clone()),
        (committing, url.clone()),
        (aborted, url.clone()),
        (preparing, url.clone()),
        // Every path there is a JSON 404 `not_found` (a mistyped base URL): not the
        // coordinator's `transaction_not_found`, so no presumed abort.
        (wrong_url, format!("{url}/not-the-coordinator")),
        (closed_port, closed),
    ] {
        let req = prepare_req_at(id, vote("commit"), &coordinator);
        assert_eq!(fx.p.prepare(&req).await.unwrap(), Vote::Commit);
    }

    // Nothing has been prepared for an hour yet.
    assert!(
        fx.p.resolve_once(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(fake.inquiries.load(Ordering::SeqCst), 0);

    let done = fx.p.resolve_once(Duration::ZERO).await.unwrap();
    let action = |id: TransactionId| {
        done.iter()
            .find(|r| r.transaction_id == id)
            .map(|r| r.action.clone())
            .unwrap_or_else(|| panic!("no resolution for {id}"))
    };
    assert_eq!(done.len(), 6);
    assert_eq!(action(unknown), ResolverAction::PresumedAborted);
    assert_eq!(action(committing), ResolverAction::Committed);
    assert_eq!(action(aborted), ResolverAction::Aborted);
    assert_eq!(
        action(preparing),
        ResolverAction::LeftOpen(TransactionState::Preparing)
    );
    assert!(matches!(action(wrong_url), ResolverAction::Unreachable(_)));
    assert!(matches!(
        action(closed_port),
        ResolverAction::Unreachable(_)
    ));

    assert_eq!(fx.state(unknown).await, Some(LocalState::Aborted));
    assert_eq!(fx.effects(unknown, "abort").await, 1);
    assert_eq!(fx.state(committing).await, Some(LocalState::Committed));
    assert_eq!(fx.effects(committing, "commit").await, 1);
    assert_eq!(fx.state(aborted).await, Some(LocalState::Aborted));
    for open in [preparing, wrong_url, closed_port] {
        assert_eq!(fx.state(open).await, Some(LocalState::Prepared));
    }

    // Next round: only the three still prepared are asked about again.
    let again = fx.p.resolve_once(Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 3);
}

async fn spawned_resolver_resolves_until_shutdown<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let fake = FakeCoordinator::default();
    let url = fake.serve().await;
    let id = TransactionId::new();
    fake.set(id, TransactionState::Committed);
    fx.p.prepare(&prepare_req_at(id, vote("commit"), &url))
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ResolverConfig {
        in_doubt_after: Duration::from_millis(50),
        interval: Duration::from_millis(20),
    };
    let resolver = Arc::clone(&fx.p).spawn_resolver(config, async move {
        let _ = stopped.await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.state(id).await != Some(LocalState::Committed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resolver never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), resolver)
        .await
        .expect("the resolver did not stop on shutdown")
        .unwrap();
    assert_eq!(fx.effects(id, "commit").await, 1);
}

// ---------------------------------------------------------------------------------------------
// The router, driven without a socket.

async fn call(app: &axum::Router, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{path} answered {status} with a non-JSON body ({e}): {bytes:?}")
    });
    (status, value)
}

fn error_code(body: &Value) -> String {
    let parsed: ErrorBody = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not the error shape ({e}): {body}"));
    parsed.error.code
}

async fn router_answers_in_wire_shapes<S: Backend>(fx: Fx<S>)
where
    TestHandler: Handler<S::Db>,
{
    let app = Arc::clone(&fx.p).router();
    let id = TransactionId::new();
    let prepare = |v: &str| serde_json::to_string(&prepare_req(id, vote(v))).unwrap();
    let outcome_body = serde_json::to_string(&outcome(id)).unwrap();

    let (status, body) = call(&app, "/prepare", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_json");

    let (status, body) = call(&app, "/prepare", &format!(r#"{{"transaction_id":"{id}"}}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_request");

    let (status, body) = call(&app, "/prepare", &prepare("no_such_vote")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_payload");

    let (status, body) = call(&app, "/commit", &outcome_body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "unknown_transaction");

    let (status, body) = call(&app, "/prepare", &prepare("error")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&body), "handler_failed");

    let (status, body) = call(&app, "/prepare", &prepare("commit")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "vote": "commit" }));

    let (status, body) = call(&app, "/commit", &outcome_body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: OutcomeResponse = serde_json::from_value(body).unwrap();
    assert_eq!(answer.state, "committed");

    let (status, body) = call(&app, "/abort", &outcome_body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "outcome_conflict");

    let solo = TransactionId::new();
    let one_phase = serde_json::to_string(&prepare_req(solo, vote("commit"))).unwrap();
    let (status, body) = call(&app, "/commit-one-phase", &one_phase).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "state": "committed" }));
    let refused = serde_json::to_string(&prepare_req(TransactionId::new(), vote("abort"))).unwrap();
    let (status, body) = call(&app, "/commit-one-phase", &refused).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "state": "aborted", "reason": "test says no" })
    );

    let never_seen = serde_json::to_string(&outcome(TransactionId::new())).unwrap();
    let (status, body) = call(&app, "/abort", &never_seen).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "state": "aborted" }));

    let refused = serde_json::to_string(&prepare_req(TransactionId::new(), vote("abort"))).unwrap();
    let (status, body) = call(&app, "/prepare", &refused).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "vote": "abort", "reason": "test says no" }));

    // Without a JSON content type: still the JSON error shape.
    let req = Request::post("/prepare")
        .body(Body::from(prepare("commit")))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(error_code(&body), "unsupported_media_type");

    // Under a base path.
    let nested = Arc::clone(&fx.p).router_at("/twopc/");
    let other = TransactionId::new();
    let req = serde_json::to_string(&prepare_req(other, vote("commit"))).unwrap();
    let (status, body) = call(&nested, "/twopc/prepare", &req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fx.state(other).await, Some(LocalState::Prepared));
}

// ---------------------------------------------------------------------------------------------
// Running the suite on each backend.

async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Fx<SqliteStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    // The file does not exist yet: `connect` must create it.
    let url = format!("sqlite://{}", dir.path().join("participant.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    body(Fx::new(store.clone()).await).await;
    store.pool().close().await;
}

async fn on_server<S, F, Fut>(server: Server, connect: fn(String) -> ConnectFut<S>, body: F)
where
    S: Backend,
    TestHandler: Handler<S::Db>,
    F: FnOnce(Fx<S>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_database(server, move |url| async move {
        let store = connect(url).await;
        body(Fx::new(store.clone()).await).await;
        store.pool().close().await;
    })
    .await;
}

type ConnectFut<S> = std::pin::Pin<Box<dyn Future<Output = S> + Send>>;

fn connect_postgres(url: String) -> ConnectFut<PostgresStore> {
    Box::pin(async move { PostgresStore::connect(&url).await.unwrap() })
}

fn connect_mysql(url: String) -> ConnectFut<MySqlStore> {
    Box::pin(async move { MySqlStore::connect(&url).await.unwrap() })
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_sqlite(super::$test::<twopc::SqliteStore>).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_server(
                        twopc::testing::Server::Postgres,
                        super::connect_postgres,
                        super::$test::<twopc::PostgresStore>,
                    )
                    .await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_server(
                        twopc::testing::Server::MySql,
                        super::connect_mysql,
                        super::$test::<twopc::MySqlStore>,
                    )
                    .await;
                }
            )*
        }
    };
}

suite!(
    prepare_then_commit,
    prepare_then_abort,
    abort_vote_rolls_back_and_is_repeated,
    abort_vote_after_failed_statement,
    read_only,
    repeats_are_idempotent,
    tombstone_then_late_prepare,
    one_phase_commits_in_one_local_transaction,
    one_phase_refusal_and_tombstone_abort,
    commit_unknown_is_404,
    commit_after_abort_conflicts,
    abort_after_commit_conflicts,
    handler_error_records_nothing,
    bad_payload_is_refused,
    concurrent_prepares_run_the_handler_once,
    concurrent_outcomes_run_the_handler_once,
    prepare_racing_abort_is_consistent,
    migrations_keep_to_their_own_table,
    resolver_applies_the_coordinators_answers,
    spawned_resolver_resolves_until_shutdown,
    router_answers_in_wire_shapes,
);
