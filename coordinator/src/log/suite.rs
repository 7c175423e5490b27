//! One test suite for every [`DecisionLog`] store.
//!
//! The checks are generic async functions over `L: DecisionLog`; the `suite!` macro runs each of
//! them against SQLite (a file in a temporary directory) and PostgreSQL (a database of its own,
//! created from `TWOPC_TEST_POSTGRES_URL` and dropped afterwards). Every check gets two log
//! instances on the same database with separate pools, standing in for two coordinator
//! processes; what one writes the other must read.
//!
//! Without `TWOPC_TEST_POSTGRES_URL` the PostgreSQL tests print a note and pass, except under
//! `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{
    AnyLog, Created, DecisionLog, IdempotencyKey, LogError, PostgresLog, SqliteLog, Unfinished,
};
use crate::record::{ParticipantRecord, TxRecord};
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Barrier;
use twopc::wire::{Decision, ParticipantState, TransactionId, TransactionState, VoteKind};

/// A fixed instant (2023-11-14T22:13:20Z) so that orderings are deterministic.
const T0: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn participant(
    name: &str,
    payload: Value,
    vote: Option<VoteKind>,
    state: ParticipantState,
) -> ParticipantRecord {
    ParticipantRecord {
        name: name.to_owned(),
        url: format!("http://{name}.internal:8080/twopc"),
        payload,
        vote,
        state,
        one_phase: false,
    }
}

/// An active record with no participants created at `created_at`.
fn record_at(created_at: i64) -> TxRecord {
    TxRecord::new(TransactionId::new(), 30_000, created_at)
}

/// A record with every field set and every kind of participant.
fn full_record() -> TxRecord {
    let mut rec = TxRecord::new(TransactionId::new(), 5_000, T0);
    rec.state = TransactionState::Committing;
    rec.decision = Some(Decision::Commit);
    rec.reason = Some("operator said \"go\" — ok ✓".to_owned());
    rec.decided_at = Some(T0 + 120);
    rec.completed_at = Some(T0 + 250);
    rec.participants = vec![
        participant(
            "bank-a",
            json!({
                "account": "alice",
                "amount": -125,
                "fraction": 2.5,
                "memo": "rent 'quoted' \"double\" \\ ✓",
                "nested": {"list": [1, 2.5, null, true, "x"], "empty": {}, "none": null},
                "big": 9_007_199_254_740_993_u64
            }),
            Some(VoteKind::Commit),
            ParticipantState::Prepared,
        ),
        participant(
            "bank-b",
            Value::Null,
            Some(VoteKind::ReadOnly),
            ParticipantState::ReadOnly,
        ),
        participant(
            "ledger",
            json!([1, "two", {"three": 3}]),
            Some(VoteKind::Abort),
            ParticipantState::Aborted,
        ),
        participant("audit", json!("a string"), None, ParticipantState::Pending),
        participant(
            "shipping",
            json!({}),
            Some(VoteKind::Commit),
            ParticipantState::Committed,
        ),
    ];
    rec
}

fn key(key: &str, hash: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: key.to_owned(),
        request_hash: hash.to_owned(),
    }
}

async fn get_some<L: DecisionLog>(log: &L, id: TransactionId) -> TxRecord {
    log.get(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("transaction {id} not found"))
}

async fn count_all<L: DecisionLog>(log: &L) -> usize {
    log.list(None, 10_000).await.expect("list").len()
}

// ---------------------------------------------------------------------------------------------
// The generic checks

/// `create` then `get` gives back every field, through another instance too.
async fn create_get_round_trips_every_field<L: DecisionLog + Clone>(log: L, other: L) {
    let full = full_record();
    assert_eq!(log.create(&full, None).await.expect("create"), Created::New);
    assert_eq!(get_some(&log, full.id).await, full);
    assert_eq!(get_some(&other, full.id).await, full);

    // Every optional field absent.
    let bare = record_at(T0 + 1);
    assert!(bare.decision.is_none() && bare.reason.is_none() && bare.decided_at.is_none());
    log.create(&bare, None).await.expect("create bare");
    assert_eq!(get_some(&other, bare.id).await, bare);

    // Every state and decision survives its encoding; a large timeout and a non-zero version too.
    for (i, state) in TransactionState::ALL.into_iter().enumerate() {
        let mut rec = record_at(T0 + 10 + i as i64);
        rec.state = state;
        rec.decision = state.decision();
        rec.timeout_ms = i64::MAX as u64;
        rec.version = 7;
        log.create(&rec, None).await.expect("create state");
        assert_eq!(get_some(&other, rec.id).await, rec, "state {state}");
    }
}

/// A value the columns cannot hold is an error, not a panic or a silent truncation.
async fn unstorable_values_are_refused<L: DecisionLog + Clone>(log: L, other: L) {
    let mut huge = record_at(T0);
    huge.timeout_ms = u64::MAX;
    // PostgreSQL reports the database error itself; SQLite's group-commit writer fails the
    // batch it was in with it.
    assert!(matches!(
        log.create(&huge, None).await,
        Err(LogError::Database(_) | LogError::BatchFailed(_))
    ));
    assert!(other.get(huge.id).await.expect("get").is_none());

    let ok = record_at(T0);
    log.create(&ok, None).await.expect("create");
    let mut bad = ok.clone();
    bad.timeout_ms = u64::MAX;
    bad.version = 1;
    assert!(matches!(
        log.update(&bad).await,
        Err(LogError::Database(_) | LogError::BatchFailed(_))
    ));
    assert_eq!(get_some(&other, ok.id).await, ok);
}

/// `get` of an unknown id is `None`, not an error.
async fn get_unknown_is_none<L: DecisionLog + Clone>(log: L, other: L) {
    log.create(&record_at(T0), None).await.expect("create");
    assert!(log.get(TransactionId::new()).await.expect("get").is_none());
    assert!(
        other
            .get(TransactionId::new())
            .await
            .expect("get")
            .is_none()
    );
}

/// `update` is compare-and-set on the version: it replaces every field and bumps the version;
/// a stale or skipping writer gets `Conflict` and changes nothing.
async fn update_is_compare_and_set<L: DecisionLog + Clone>(log: L, other: L) {
    let mut v0 = record_at(T0);
    v0.participants = vec![participant(
        "bank-a",
        json!({"amount": 10}),
        None,
        ParticipantState::Pending,
    )];
    log.create(&v0, None).await.expect("create");

    let mut v1 = full_record();
    v1.id = v0.id;
    v1.version = 1;
    log.update(&v1).await.expect("update to version 1");
    assert_eq!(get_some(&other, v0.id).await, v1);

    // A writer that still holds version 0 loses.
    let mut stale = v0.clone();
    stale.state = TransactionState::Aborting;
    stale.decision = Some(Decision::Abort);
    stale.version = 1;
    match other.update(&stale).await {
        Err(LogError::Conflict { id, expected }) => {
            assert_eq!(id, v0.id);
            assert_eq!(expected, 0);
        }
        res => panic!("stale update: expected Conflict, got {res:?}"),
    }
    // A writer that skips a version loses too.
    let mut skipping = v1.clone();
    skipping.version = 3;
    assert!(matches!(
        log.update(&skipping).await,
        Err(LogError::Conflict { expected: 2, .. })
    ));
    // Version 0 (nothing to replace) and an unknown id are conflicts as well.
    let mut zero = v1.clone();
    zero.version = 0;
    assert!(matches!(
        log.update(&zero).await,
        Err(LogError::Conflict { .. })
    ));
    let mut unknown = v1.clone();
    unknown.id = TransactionId::new();
    unknown.version = 1;
    assert!(matches!(
        log.update(&unknown).await,
        Err(LogError::Conflict { .. })
    ));
    assert!(log.get(unknown.id).await.expect("get").is_none());
    assert_eq!(get_some(&log, v0.id).await, v1, "losers changed nothing");

    // The winner's successor applies.
    let mut v2 = v1.clone();
    v2.state = TransactionState::Committed;
    v2.completed_at = Some(T0 + 999);
    v2.reason = None;
    v2.participants.pop();
    v2.version = 2;
    other.update(&v2).await.expect("update to version 2");
    assert_eq!(get_some(&log, v0.id).await, v2);
}

/// A second create with the same id is `Duplicate` and leaves the first alone; with a new
/// idempotency key, the key is not kept either.
async fn create_duplicate_id_fails<L: DecisionLog + Clone>(log: L, other: L) {
    let first = full_record();
    log.create(&first, None).await.expect("create");

    let mut again = record_at(T0 + 5);
    again.id = first.id;
    match other.create(&again, None).await {
        Err(LogError::Duplicate(id)) => assert_eq!(id, first.id),
        res => panic!("expected Duplicate, got {res:?}"),
    }
    let k = key("dup-key", "hash-1");
    assert!(matches!(
        other.create(&again, Some(&k)).await,
        Err(LogError::Duplicate(id)) if id == first.id
    ));
    assert_eq!(get_some(&log, first.id).await, first);
    assert_eq!(count_all(&log).await, 1);

    // The key was rolled back with the failed insert: it is free for a new transaction.
    let fresh = record_at(T0 + 6);
    assert_eq!(
        log.create(&fresh, Some(&k))
            .await
            .expect("create with freed key"),
        Created::New
    );
    assert_eq!(get_some(&other, fresh.id).await, fresh);
}

/// The same key with the same request hash creates one transaction and then answers it,
/// in its current state.
async fn idempotency_key_same_request_returns_existing<L: DecisionLog + Clone>(log: L, other: L) {
    let before = count_all(&log).await;
    let k = key("order-42", "sha256:aaaa");
    let first = full_record();
    assert_eq!(
        log.create(&first, Some(&k)).await.expect("first create"),
        Created::New
    );

    let second = record_at(T0 + 100);
    match other
        .create(&second, Some(&k))
        .await
        .expect("second create")
    {
        Created::Existing(rec) => assert_eq!(rec, first),
        Created::New => panic!("a second transaction was created for one idempotency key"),
    }
    assert!(log.get(second.id).await.expect("get").is_none());
    assert_eq!(count_all(&log).await, before + 1);

    // After an update the key answers the transaction as it is now.
    let mut updated = first.clone();
    updated.state = TransactionState::Committed;
    updated.version = 1;
    log.update(&updated).await.expect("update");
    match log.create(&second, Some(&k)).await.expect("third create") {
        Created::Existing(rec) => assert_eq!(rec, updated),
        Created::New => panic!("a second transaction was created for one idempotency key"),
    }

    // Another key is another transaction.
    let third = record_at(T0 + 200);
    assert_eq!(
        log.create(&third, Some(&key("order-43", "sha256:aaaa")))
            .await
            .expect("other key"),
        Created::New
    );
    assert_eq!(count_all(&other).await, before + 2);
}

/// The same key with another request hash is refused and writes nothing.
async fn idempotency_key_other_request_is_refused<L: DecisionLog + Clone>(log: L, other: L) {
    let before = count_all(&log).await;
    let first = record_at(T0);
    log.create(&first, Some(&key("k-1", "hash-a")))
        .await
        .expect("create");

    let second = record_at(T0 + 1);
    match other.create(&second, Some(&key("k-1", "hash-b"))).await {
        Err(LogError::IdempotencyKeyReused(k)) => assert_eq!(k, "k-1"),
        res => panic!("expected IdempotencyKeyReused, got {res:?}"),
    }
    assert!(log.get(second.id).await.expect("get").is_none());
    assert_eq!(count_all(&log).await, before + 1);
    // The key still belongs to the first request.
    assert_eq!(
        log.create(&second, Some(&key("k-1", "hash-a")))
            .await
            .expect("retry"),
        Created::Existing(first)
    );
}

/// Concurrent creates with one key, through two instances, make exactly one transaction.
async fn concurrent_creates_with_one_key_make_one_transaction<L: DecisionLog + Clone>(
    log: L,
    other: L,
) {
    const TASKS: usize = 8;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let log = if i % 2 == 0 {
            log.clone()
        } else {
            other.clone()
        };
        let barrier = Arc::clone(&barrier);
        let mut rec = record_at(T0 + i as i64);
        rec.reason = Some(format!("task {i}"));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let res = log.create(&rec, Some(&key("shared", "same-hash"))).await;
            (rec, res)
        }));
    }
    let mut new = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        let (rec, res) = task.await.expect("task");
        match res.expect("create") {
            Created::New => new.push(rec),
            Created::Existing(found) => existing.push(found),
        }
    }
    assert_eq!(new.len(), 1, "exactly one create inserts");
    let winner = &new[0];
    assert_eq!(existing.len(), TASKS - 1);
    for found in &existing {
        assert_eq!(found, winner, "every other create answers the winner");
    }
    let all = log.list(None, 100).await.expect("list");
    assert_eq!(all, vec![winner.clone()]);
}

/// `list` is newest first (ties by id, descending), filters by state and honours the limit.
async fn list_filters_orders_and_limits<L: DecisionLog + Clone>(log: L, other: L) {
    let states = [
        TransactionState::Active,
        TransactionState::Committed,
        TransactionState::Active,
        TransactionState::Aborted,
        TransactionState::Preparing,
        TransactionState::Active,
    ];
    let mut all = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        // Shuffled creation times, one tie.
        let created = T0 + [30, 10, 50, 20, 40, 30][i];
        let mut rec = record_at(created);
        rec.state = state;
        log.create(&rec, None).await.expect("create");
        all.push(rec);
    }
    let newest_first = |mut recs: Vec<TxRecord>| {
        recs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        recs
    };

    let expected = newest_first(all.clone());
    assert_eq!(other.list(None, 100).await.expect("list"), expected);
    assert_eq!(
        other.list(None, 3).await.expect("list limit"),
        expected[..3].to_vec()
    );
    assert!(other.list(None, 0).await.expect("list 0").is_empty());

    let active = newest_first(
        all.iter()
            .filter(|r| r.state == TransactionState::Active)
            .cloned()
            .collect(),
    );
    assert_eq!(active.len(), 3);
    assert_eq!(
        other
            .list(Some(TransactionState::Active), 100)
            .await
            .expect("list active"),
        active
    );
    assert_eq!(
        other
            .list(Some(TransactionState::Active), 2)
            .await
            .expect("list active limit"),
        active[..2].to_vec()
    );
    assert!(
        other
            .list(Some(TransactionState::Committing), 100)
            .await
            .expect("list committing")
            .is_empty()
    );

    // The state filter follows updates.
    let mut moved = active[0].clone();
    moved.state = TransactionState::Committing;
    moved.version = 1;
    log.update(&moved).await.expect("update");
    assert_eq!(
        other
            .list(Some(TransactionState::Committing), 100)
            .await
            .expect("list committing"),
        vec![moved]
    );
    assert_eq!(
        other
            .list(Some(TransactionState::Active), 100)
            .await
            .expect("list active")
            .len(),
        2
    );
}

/// `unfinished` is every record not committed or aborted, oldest first, up to the limit.
async fn unfinished_is_non_final_oldest_first<L: DecisionLog + Clone>(log: L, other: L) {
    let mut all = Vec::new();
    for (i, state) in TransactionState::ALL
        .into_iter()
        .chain(TransactionState::ALL)
        .enumerate()
    {
        // Creation times run backwards against insertion order, with one tie.
        let created = T0 + 1_000 - 10 * i as i64 + if i == 7 { 10 } else { 0 };
        let mut rec = record_at(created);
        rec.state = state;
        rec.decision = state.decision();
        log.create(&rec, None).await.expect("create");
        all.push(rec);
    }
    let mut expected: Vec<TxRecord> = all
        .iter()
        .filter(|r| !r.state.is_final())
        .cloned()
        .collect();
    expected.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    assert_eq!(expected.len(), 8);

    assert_eq!(other.unfinished(100).await.expect("unfinished"), expected);
    assert_eq!(
        other.unfinished(3).await.expect("unfinished limit"),
        expected[..3].to_vec()
    );

    // Paging with a (created_at, id) cursor visits each exactly once, in order, ties included.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = other.unfinished_after(cursor, 3).await.expect("page");
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|r| (r.created_at, r.id));
        paged.extend(page);
    }
    assert_eq!(paged, expected);

    // Finishing one removes it.
    let mut done = expected[0].clone();
    done.state = TransactionState::Aborted;
    done.decision = Some(Decision::Abort);
    done.completed_at = Some(T0 + 5_000);
    done.version = 1;
    log.update(&done).await.expect("update");
    assert_eq!(
        other.unfinished(100).await.expect("unfinished"),
        expected[1..].to_vec()
    );
}

/// Many tasks race to replace the same version: in every round exactly one wins and the stored
/// record is the winner's.
async fn racing_updates_have_one_winner_per_version<L: DecisionLog + Clone>(log: L, other: L) {
    const TASKS: usize = 8;
    const ROUNDS: i64 = 6;
    let mut current = record_at(T0);
    log.create(&current, None).await.expect("create");
    for round in 1..=ROUNDS {
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let log = if t % 2 == 0 {
                log.clone()
            } else {
                other.clone()
            };
            let barrier = Arc::clone(&barrier);
            let mut candidate = current.clone();
            candidate.version = current.version + 1;
            candidate.reason = Some(format!("round {round}, task {t}"));
            candidate.participants.push(participant(
                &format!("r{round}-t{t}"),
                json!({"round": round, "task": t}),
                Some(VoteKind::Commit),
                ParticipantState::Prepared,
            ));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let res = log.update(&candidate).await;
                (candidate, res)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (candidate, res) = task.await.expect("task");
            match res {
                Ok(()) => winners.push(candidate),
                Err(LogError::Conflict { id, expected }) => {
                    assert_eq!(id, current.id);
                    assert_eq!(expected, current.version);
                }
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        let stored = get_some(&log, current.id).await;
        assert_eq!(
            stored, winners[0],
            "round {round}: the winner's record is stored"
        );
        current = stored;
    }
    assert_eq!(current.version, ROUNDS);
    assert_eq!(current.participants.len(), ROUNDS as usize);
}

/// Read-modify-write loops that retry on `Conflict` lose no update: every version from 1 to
/// the total is won exactly once and every task's change is in the final record.
async fn retrying_writers_lose_no_update<L: DecisionLog + Clone>(log: L, other: L) {
    const TASKS: usize = 6;
    const EACH: usize = 4;
    let base = record_at(T0);
    log.create(&base, None).await.expect("create");
    let id = base.id;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = if t % 2 == 0 {
            log.clone()
        } else {
            other.clone()
        };
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut won = Vec::new();
            let mut conflicts = 0_u32;
            for i in 0..EACH {
                loop {
                    let mut rec = log.get(id).await.expect("get").expect("exists");
                    rec.participants.push(participant(
                        &format!("t{t}-{i}"),
                        Value::Null,
                        None,
                        ParticipantState::Pending,
                    ));
                    rec.version += 1;
                    match log.update(&rec).await {
                        Ok(()) => {
                            won.push(rec.version);
                            break;
                        }
                        Err(LogError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("task {t}: unexpected error {e}"),
                    }
                }
            }
            (won, conflicts)
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        let (won, _conflicts) = task.await.expect("task");
        versions.extend(won);
    }
    versions.sort_unstable();
    let total = (TASKS * EACH) as i64;
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());

    let last = get_some(&log, id).await;
    assert_eq!(last.version, total);
    let names: BTreeSet<String> = last.participants.iter().map(|p| p.name.clone()).collect();
    let expected: BTreeSet<String> = (0..TASKS)
        .flat_map(|t| (0..EACH).map(move |i| format!("t{t}-{i}")))
        .collect();
    assert_eq!(last.participants.len(), TASKS * EACH, "no duplicates");
    assert_eq!(names, expected, "no lost update");
}

/// Runs every check against both stores.
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let db = super::SqliteDb::new();
                    super::$check(db.open().await, db.open().await).await;
                }
            )*
        }

        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::on_postgres(|url| async move {
                        let log = super::open_pg(&url).await;
                        let other = super::open_pg(&url).await;
                        super::$check(log, other).await;
                    })
                    .await;
                }
            )*
        }
    };
}

suite!(
    create_get_round_trips_every_field,
    get_unknown_is_none,
    unstorable_values_are_refused,
    update_is_compare_and_set,
    create_duplicate_id_fails,
    idempotency_key_same_request_returns_existing,
    idempotency_key_other_request_is_refused,
    concurrent_creates_with_one_key_make_one_transaction,
    list_filters_orders_and_limits,
    unfinished_is_non_final_oldest_first,
    racing_updates_have_one_winner_per_version,
    retrying_writers_lose_no_update,
);

// ---------------------------------------------------------------------------------------------
// SQLite harness and SQLite-only checks

/// A database file in a temporary directory, removed on drop.
struct SqliteDb {
    dir: tempfile::TempDir,
    url: String,
}

impl SqliteDb {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        Self { dir, url }
    }

    async fn open(&self) -> SqliteLog {
        SqliteLog::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

#[tokio::test]
async fn sqlite_data_survives_close_and_reopen() {
    let db = SqliteDb::new();
    let log = db.open().await;
    let kept = full_record();
    log.create(&kept, Some(&key("reopen", "h")))
        .await
        .expect("create");
    let mut updated = record_at(T0 + 1);
    log.create(&updated, None).await.expect("create");
    updated.state = TransactionState::Aborting;
    updated.decision = Some(Decision::Abort);
    updated.reason = Some("timed out".into());
    updated.decided_at = Some(T0 + 40);
    updated.version = 1;
    log.update(&updated).await.expect("update");
    log.close().await;
    drop(log);

    // Reopening runs the (already applied) migration again, which must be a no-op.
    let log = db.open().await;
    assert_eq!(get_some(&log, kept.id).await, kept);
    assert_eq!(get_some(&log, updated.id).await, updated);
    assert_eq!(
        log.list(None, 10).await.expect("list"),
        vec![updated.clone(), kept.clone()]
    );
    assert_eq!(
        log.create(&record_at(T0), Some(&key("reopen", "h")))
            .await
            .expect("key after reopen"),
        Created::Existing(kept)
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _twopc_coordinator_migrations WHERE success")
            .fetch_one(log.pool())
            .await
            .expect("migrations table");
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn sqlite_every_connection_is_wal_with_full_sync() {
    let db = SqliteDb::new();
    let log = db.open().await;
    let max = log.pool().options().get_max_connections();
    assert!(max > 1, "readers need more than one connection");
    // Hold every connection of the pool at once, so each one is checked.
    let mut conns = Vec::new();
    for _ in 0..max {
        conns.push(log.pool().acquire().await.expect("acquire"));
    }
    for conn in &mut conns {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous must be FULL");
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .expect("busy_timeout");
        assert!(busy >= 1_000, "busy timeout {busy} ms");
    }
    assert!(db.dir.path().join("log.db-wal").exists(), "WAL file exists");
}

#[tokio::test]
async fn sqlite_queries_use_their_indexes() {
    let db = SqliteDb::new();
    let log = db.open().await;
    for (sql, index) in [
        (
            super::sqlite::UNFINISHED_SQL,
            "twopc_transactions_unfinished",
        ),
        (
            super::sqlite::LIST_STATE_SQL,
            "twopc_transactions_state_created",
        ),
        (super::sqlite::LIST_ALL_SQL, "twopc_transactions_created"),
    ] {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query(AssertSqlSafe(explain));
        if sql.contains("state = ?") {
            q = q.bind("active");
        }
        let rows = q.bind(10_i64).fetch_all(log.pool()).await.expect("explain");
        let plan: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
            .collect();
        assert!(
            plan.iter().any(|d| d.contains(index)),
            "plan for {sql} does not use {index}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|d| d.contains("TEMP B-TREE")),
            "plan for {sql} sorts: {plan:?}"
        );
    }
}

#[tokio::test]
async fn sqlite_connect_accepts_its_url_forms_and_refuses_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `sqlite:PATH` (the harness uses `sqlite://PATH`); the file is created.
    let path = dir.path().join("plain.db");
    assert!(!path.exists());
    let plain = SqliteLog::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("sqlite:PATH");
    assert!(path.exists());
    let rec = full_record();
    plain.create(&rec, None).await.expect("create");
    assert_eq!(get_some(&plain, rec.id).await, rec);

    // In memory: works (for tests), keeps data while open.
    let memory = SqliteLog::connect("sqlite::memory:").await.expect("memory");
    create_get_round_trips_every_field(memory.clone(), memory.clone()).await;
    idempotency_key_same_request_returns_existing(memory.clone(), memory).await;

    for url in [
        "postgres://localhost/db",
        "sqlite://",
        "file.db",
        "mysql://x",
    ] {
        assert!(
            matches!(SqliteLog::connect(url).await, Err(LogError::UnsupportedUrl(u)) if u == url),
            "{url}"
        );
    }
    // A missing directory is an error, not a panic.
    let missing = format!("sqlite://{}/no/such/dir/log.db", dir.path().display());
    assert!(matches!(
        SqliteLog::connect(&missing).await,
        Err(LogError::Database(_))
    ));
}

#[tokio::test]
async fn sqlite_idempotency_keys_belong_to_their_transaction() {
    let db = SqliteDb::new();
    let log = db.open().await;
    let orphan = sqlx::query(
        "INSERT INTO twopc_idempotency_keys (key, request_hash, transaction_id, created_at) \
         VALUES ('orphan', 'h', ?, 0)",
    )
    .bind(TransactionId::new().to_string())
    .execute(log.pool())
    .await;
    assert!(orphan.is_err(), "a key must name an existing transaction");

    let first = record_at(T0);
    log.create(&first, Some(&key("k", "h")))
        .await
        .expect("create");
    sqlx::query("DELETE FROM twopc_transactions WHERE id = ?")
        .bind(first.id.to_string())
        .execute(log.pool())
        .await
        .expect("delete");
    // The key went with its transaction.
    let second = record_at(T0 + 1);
    assert_eq!(
        log.create(&second, Some(&key("k", "other")))
            .await
            .expect("create"),
        Created::New
    );
}

/// `unfinished_page` answers the unreadable row as `Corrupt` (named by its stored id) beside the
/// good one, and pages past it with its cursor.
async fn assert_page_skips_the_corrupt_row<L: DecisionLog>(log: &L, good: &TxRecord, bad: &str) {
    let page = log.unfinished_page(None, 100).await.expect("page");
    assert_eq!(page.len(), 2, "{page:?}");
    assert!(
        page.iter()
            .any(|u| matches!(u, Unfinished::Record(r) if r == good)),
        "{page:?}"
    );
    let corrupt = page
        .iter()
        .find(|u| matches!(u, Unfinished::Corrupt { id, .. } if id == bad))
        .unwrap_or_else(|| panic!("no corrupt entry for {bad}: {page:?}"));
    let rest = log
        .unfinished_page(Some(corrupt.cursor()), 100)
        .await
        .expect("page after");
    assert!(
        rest.iter().all(|u| u.cursor() > corrupt.cursor()),
        "{rest:?}"
    );
}

#[tokio::test]
async fn sqlite_corrupt_rows_are_errors_naming_the_row() {
    let db = SqliteDb::new();
    let log = db.open().await;
    let good = record_at(T0);
    log.create(&good, None).await.expect("create");
    let cases: [(&str, Option<&str>, i64, &str); 6] = [
        ("done", None, 1, "[]"),
        ("active", Some("maybe"), 1, "[]"),
        ("active", None, -5, "[]"),
        ("active", None, 1, "not json"),
        ("active", None, 1, r#"{"x": 1}"#),
        (
            "active",
            None,
            1,
            r#"[{"name": "a", "url": "http://a", "state": "zombie"}]"#,
        ),
    ];
    for (state, decision, timeout, participants) in cases {
        let id = TransactionId::new();
        sqlx::query(
            "INSERT INTO twopc_transactions (id, state, decision, reason, timeout_ms, created_at, \
             deadline, decided_at, completed_at, participants, version) \
             VALUES (?, ?, ?, NULL, ?, ?, ?, NULL, NULL, ?, 0)",
        )
        .bind(id.to_string())
        .bind(state)
        .bind(decision)
        .bind(timeout)
        .bind(T0)
        .bind(T0 + 1)
        .bind(participants)
        .execute(log.pool())
        .await
        .expect("insert corrupt row");
        match log.get(id).await {
            Err(LogError::Corrupt { id: bad, .. }) => assert_eq!(bad, id.to_string()),
            res => panic!("row {state}/{decision:?}/{timeout}/{participants}: got {res:?}"),
        }
        assert!(matches!(
            log.list(None, 100).await,
            Err(LogError::Corrupt { .. })
        ));
        assert!(matches!(
            log.unfinished(100).await,
            Err(LogError::Corrupt { .. })
        ));
        assert_page_skips_the_corrupt_row(&log, &good, &id.to_string()).await;
        sqlx::query("DELETE FROM twopc_transactions WHERE id = ?")
            .bind(id.to_string())
            .execute(log.pool())
            .await
            .expect("delete");
    }
    // An id that is no UUID, and a NULL where a value belongs.
    sqlx::query(
        "INSERT INTO twopc_transactions (id, state, decision, reason, timeout_ms, created_at, \
         deadline, decided_at, completed_at, participants, version) \
         VALUES ('not-a-uuid', 'active', NULL, NULL, 1, 1, 1, NULL, NULL, '[]', 0)",
    )
    .execute(log.pool())
    .await
    .expect("insert");
    assert!(matches!(
        log.list(None, 100).await,
        Err(LogError::Corrupt { id, .. }) if id == "not-a-uuid"
    ));
    assert_page_skips_the_corrupt_row(&log, &good, "not-a-uuid").await;
    sqlx::query(
        "UPDATE twopc_transactions SET id = ?, timeout_ms = 'soon' WHERE id = 'not-a-uuid'",
    )
    .bind(TransactionId::new().to_string())
    .execute(log.pool())
    .await
    .expect("update");
    assert!(matches!(
        log.unfinished(100).await,
        Err(LogError::Corrupt { .. })
    ));
    // The good row is still readable on its own.
    assert_eq!(get_some(&log, good.id).await, good);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL harness and PostgreSQL-only checks

/// The server URL for PostgreSQL tests; `None` (after a note) when unset outside CI.
fn postgres_url() -> Option<String> {
    match std::env::var("TWOPC_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("TWOPC_TEST_POSTGRES_URL must be set in CI");
            }
            eprintln!("note: TWOPC_TEST_POSTGRES_URL is not set; skipping a PostgreSQL test");
            None
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs `test` with the URL of a new, empty database, and drops the database afterwards
/// (also when the test panics).
async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(server) = postgres_url() else {
        return;
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TWOPC_TEST_POSTGRES_URL: {e}"));
    // Only hex digits after a fixed prefix: safe to splice into the statement.
    let name = format!("twopc_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    let outcome = tokio::spawn(test(with_database(&server, &name))).await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
    admin.close().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

async fn open_pg(url: &str) -> PostgresLog {
    PostgresLog::connect(url)
        .await
        .unwrap_or_else(|e| panic!("open PostgreSQL log: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_coordinators_starting_together_migrate_once() {
    on_postgres(|url| async move {
        // Three "processes" connect to a fresh database at once; the migration lock lets one
        // apply the schema and the others find it applied.
        let (a, b, c) = tokio::join!(
            PostgresLog::connect(&url),
            PostgresLog::connect(&url),
            PostgresLog::connect(&url)
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _twopc_coordinator_migrations WHERE success")
                .fetch_one(a.pool())
                .await
                .expect("migrations table");
        assert_eq!(applied, 1);
        let rec = full_record();
        a.create(&rec, None).await.expect("create");
        assert_eq!(get_some(&b, rec.id).await, rec);
        assert_eq!(get_some(&c, rec.id).await, rec);

        // `from_pool` on a migrated database works too.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("pool");
        let d = PostgresLog::from_pool(pool).await.expect("from_pool");
        assert_eq!(get_some(&d, rec.id).await, rec);
        assert!(matches!(
            PostgresLog::connect("sqlite://x.db").await,
            Err(LogError::UnsupportedUrl(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_ids_as_uuid_and_participants_as_jsonb() {
    on_postgres(|url| async move {
        let log = open_pg(&url).await;
        let rec = full_record();
        log.create(&rec, None).await.expect("create");
        let (id_type, participants_type): (String, String) = sqlx::query_as(
            "SELECT pg_typeof(id)::text, pg_typeof(participants)::text FROM twopc_transactions",
        )
        .fetch_one(log.pool())
        .await
        .expect("types");
        assert_eq!(id_type, "uuid");
        assert_eq!(participants_type, "jsonb");
        let amount: i64 = sqlx::query_scalar(
            "SELECT (participants -> 0 -> 'payload' ->> 'amount')::bigint FROM twopc_transactions",
        )
        .fetch_one(log.pool())
        .await
        .expect("jsonb path");
        assert_eq!(amount, -125);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queries_use_their_indexes() {
    on_postgres(|url| async move {
        let log = open_pg(&url).await;
        let mut conn = log.pool().acquire().await.expect("acquire");
        // On a near-empty table the planner prefers a scan and a sort; forbid those to see
        // whether an index answers both the filter and the order.
        for setting in [
            "SET enable_seqscan = off",
            "SET enable_bitmapscan = off",
            "SET enable_sort = off",
            "SET enable_incremental_sort = off",
        ] {
            sqlx::query(setting).execute(&mut *conn).await.expect("set");
        }
        for (sql, index) in [
            (
                super::postgres::UNFINISHED_SQL,
                "twopc_transactions_unfinished",
            ),
            (
                super::postgres::LIST_STATE_SQL,
                "twopc_transactions_state_created",
            ),
            (super::postgres::LIST_ALL_SQL, "twopc_transactions_created"),
        ] {
            let mut query =
                sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("EXPLAIN {sql}")));
            if sql.contains("state = $1") {
                query = query.bind("active");
            }
            let plan = query
                .bind(10_i64)
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
            assert!(
                plan.iter().any(|l| l.contains(index)),
                "plan for {sql} does not use {index}: {plan:#?}"
            );
            assert!(
                !plan.iter().any(|l| l.contains("Sort")),
                "plan for {sql} sorts: {plan:#?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idempotency_keys_belong_to_their_transaction() {
    on_postgres(|url| async move {
        let log = open_pg(&url).await;
        let orphan = sqlx::query(
            "INSERT INTO twopc_idempotency_keys (key, request_hash, transaction_id, created_at) \
             VALUES ('orphan', 'h', $1::uuid, 0)",
        )
        .bind(TransactionId::new().to_string())
        .execute(log.pool())
        .await;
        assert!(orphan.is_err(), "a key must name an existing transaction");

        let first = record_at(T0);
        log.create(&first, Some(&key("k", "h")))
            .await
            .expect("create");
        sqlx::query("DELETE FROM twopc_transactions WHERE id = $1::uuid")
            .bind(first.id.to_string())
            .execute(log.pool())
            .await
            .expect("delete");
        // The key went with its transaction.
        let second = record_at(T0 + 1);
        assert_eq!(
            log.create(&second, Some(&key("k", "other")))
                .await
                .expect("create"),
            Created::New
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_corrupt_rows_are_errors_naming_the_row() {
    on_postgres(|url| async move {
        let log = open_pg(&url).await;
        let good = record_at(T0);
        log.create(&good, None).await.expect("create");
        let cases: [(&str, Option<&str>, i64, &str); 5] = [
            ("done", None, 1, "[]"),
            ("active", Some("maybe"), 1, "[]"),
            ("active", None, -5, "[]"),
            ("active", None, 1, r#"{"x": 1}"#),
            (
                "active",
                None,
                1,
                r#"[{"name": "a", "url": "http://a", "state": "zombie"}]"#,
            ),
        ];
        for (state, decision, timeout, participants) in cases {
            let id = TransactionId::new();
            sqlx::query(
                "INSERT INTO twopc_transactions (id, state, decision, reason, timeout_ms, \
                 created_at, deadline, decided_at, completed_at, participants, version) \
                 VALUES ($1::uuid, $2, $3, NULL, $4, $5, $6, NULL, NULL, $7::jsonb, 0)",
            )
            .bind(id.to_string())
            .bind(state)
            .bind(decision)
            .bind(timeout)
            .bind(T0)
            .bind(T0 + 1)
            .bind(participants)
            .execute(log.pool())
            .await
            .expect("insert corrupt row");
            match log.get(id).await {
                Err(LogError::Corrupt { id: bad, .. }) => assert_eq!(bad, id.to_string()),
                res => panic!("row {state}/{decision:?}/{timeout}/{participants}: got {res:?}"),
            }
            assert!(matches!(
                log.list(None, 100).await,
                Err(LogError::Corrupt { .. })
            ));
            assert!(matches!(
                log.unfinished(100).await,
                Err(LogError::Corrupt { .. })
            ));
            assert_page_skips_the_corrupt_row(&log, &good, &id.to_string()).await;
            sqlx::query("DELETE FROM twopc_transactions WHERE id = $1::uuid")
                .bind(id.to_string())
                .execute(log.pool())
                .await
                .expect("delete");
        }
        assert_eq!(get_some(&log, good.id).await, good);
        assert_eq!(log.list(None, 100).await.expect("list"), vec![good]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// AnyLog

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_log_chooses_the_store_by_scheme() {
    let db = SqliteDb::new();
    let a = AnyLog::connect(&db.url).await.expect("sqlite");
    assert!(matches!(a, AnyLog::Sqlite(_)));
    let b = AnyLog::connect(&db.url).await.expect("sqlite");
    create_get_round_trips_every_field(a.clone(), b.clone()).await;
    racing_updates_have_one_winner_per_version(a.clone(), b.clone()).await;
    idempotency_key_other_request_is_refused(a, b).await;

    for url in [
        "mysql://localhost/db",
        "file.db",
        "",
        "postgre://x",
        "SQLITE:x",
    ] {
        assert!(
            matches!(AnyLog::connect(url).await, Err(LogError::UnsupportedUrl(u)) if u == url),
            "{url}"
        );
    }

    on_postgres(|url| async move {
        let a = AnyLog::connect(&url).await.expect("postgres");
        assert!(matches!(a, AnyLog::Postgres(_)));
        let alt = url.replacen("postgres://", "postgresql://", 1);
        let b = AnyLog::connect(&alt).await.expect("postgresql");
        assert!(matches!(b, AnyLog::Postgres(_)));
        create_get_round_trips_every_field(a.clone(), b.clone()).await;
        racing_updates_have_one_winner_per_version(a.clone(), b.clone()).await;
        idempotency_key_other_request_is_refused(a, b).await;
    })
    .await;
}
