//! Crash tests: the coordinator and bank participants as real processes, killed with SIGKILL
//! exactly inside the protocol's windows (fail points), then restarted; the money must add up.
//!
//! Bank A keeps its accounts in PostgreSQL and bank B in MariaDB when `TWOPC_TEST_POSTGRES_URL`
//! and `TWOPC_TEST_MYSQL_URL` are set (always in CI), in SQLite otherwise. The coordinator's log
//! is SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::Duration;
use twopc::{LocalState, TransactionId};
use twopc_tests::db::{Kind, TestDb};
use twopc_tests::{BankNode, CoordinatorNode, Harness, eventually, post_json};

const WAIT: Duration = Duration::from_secs(30);

fn harness() -> Harness {
    Harness {
        exe: env!("CARGO_BIN_EXE_twopc-testnode").to_owned(),
    }
}

/// Databases of one test: the coordinator's log and the two banks'.
struct Dbs {
    log: TestDb,
    a: TestDb,
    b: TestDb,
}

async fn dbs() -> Dbs {
    let or_sqlite = |kind: Kind, label: &'static str| async move {
        match TestDb::create(kind, label).await {
            Some(db) => db,
            None => TestDb::create(Kind::Sqlite, label).await.unwrap(),
        }
    };
    Dbs {
        log: TestDb::create(Kind::Sqlite, "twopc").await.unwrap(),
        a: or_sqlite(Kind::Postgres, "bank-a").await,
        b: or_sqlite(Kind::MySql, "bank-b").await,
    }
}

/// A coordinator (with `failpoints`) and banks A (alice=100) and B (bob=50).
async fn cluster(
    dbs: &Dbs,
    failpoints: Option<&str>,
    in_doubt_after_ms: u64,
) -> (CoordinatorNode, BankNode, BankNode) {
    let h = harness();
    let c = h.coordinator(&dbs.log.url, failpoints).await;
    let a = h
        .bank("bank-a", &dbs.a.url, "alice=100", in_doubt_after_ms)
        .await;
    let b = h
        .bank("bank-b", &dbs.b.url, "bob=50", in_doubt_after_ms)
        .await;
    (c, a, b)
}

fn transfer(a: &BankNode, b: &BankNode, amount: i64) -> Value {
    json!({
        "commit": true,
        "timeout_ms": 5000,
        "participants": [
            a.participant(twopc_examples::bank::debit("alice", amount)),
            b.participant(twopc_examples::bank::credit("bob", amount)),
        ]
    })
}

fn tx_id(tx: &Value) -> TransactionId {
    tx["id"].as_str().unwrap().parse().unwrap()
}

/// Checks balances and that nothing is held.
async fn assert_money(a: &BankNode, b: &BankNode, alice: i64, bob: i64) {
    let (sa, sb) = (a.snapshot().await, b.snapshot().await);
    assert_eq!(sa.account("alice"), (alice, 0), "alice (balance, held)");
    assert_eq!(sb.account("bob"), (bob, 0), "bob (balance, held)");
}

async fn wait_for_local_state(bank: &BankNode, id: TransactionId, state: LocalState) {
    eventually(&format!("{} {id} {state:?}", bank.name), WAIT, || async {
        (bank.snapshot().await.state_of(id) == Some(state)).then_some(())
    })
    .await;
}

/// (a) Killed after the commit decision is logged, before any commit is sent: after the
/// restart every participant commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_decision_commits_everywhere_after_restart() {
    let dbs = dbs().await;
    let (mut c, a, b) = cluster(&dbs, Some("after_commit_decision=pause"), 600_000).await;
    let (status, tx) = post_json(
        &format!("{}/v1/transactions", c.url),
        &transfer(&a, &b, 30),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{tx}");
    assert_eq!(
        tx["state"], "committing",
        "decided, but no commit may have been sent: {tx}"
    );
    c.proc
        .wait_for_line("failpoint after_commit_decision reached", WAIT)
        .await;
    let id = tx_id(&tx);
    // Both prepared and holding, nothing committed yet.
    assert_eq!(a.snapshot().await.state_of(id), Some(LocalState::Prepared));
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Prepared));
    assert_eq!(a.snapshot().await.account("alice"), (100, 30));

    c.kill9();
    c.restart(None).await;
    let done = c.wait_for_state(&id.to_string(), "committed", WAIT).await;
    assert_eq!(done["decision"], "commit");
    assert_eq!(a.snapshot().await.state_of(id), Some(LocalState::Committed));
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Committed));
    assert_money(&a, &b, 70, 80).await;
}

/// The newest transaction the coordinator lists as `preparing` (logged or not yet).
async fn preparing_id(c: &CoordinatorNode) -> TransactionId {
    let listed = reqwest::get(format!("{}/v1/transactions?state=preparing", c.url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    tx_id(&listed["transactions"][0])
}

/// Starts a transfer of 30 (with `key` as its `Idempotency-Key`, if any) on a coordinator that
/// pauses before the decision; answers the hanging call (the kill ends it) and the id, found
/// among the `preparing` transactions.
async fn transfer_paused_before_decision(
    c: &CoordinatorNode,
    a: &BankNode,
    b: &BankNode,
    key: Option<&'static str>,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    TransactionId,
) {
    let url = format!("{}/v1/transactions", c.url);
    let body = transfer(a, b, 30);
    let pending = tokio::spawn(async move {
        let mut request = reqwest::Client::new().post(url).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await
    });
    c.proc
        .wait_for_line("failpoint before_decision reached", WAIT)
        .await;
    (pending, preparing_id(c).await)
}

/// (b) Killed after the prepares, before the decision, of a one-shot commit without an
/// idempotency key, which is first logged with its decision: while the coordinator is alive,
/// participants that ask hear "still preparing"; after the kill there is no record, and
/// asking gets them the 404 that means abort (presumed abort). Nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_decision_aborts_everywhere_after_restart() {
    let dbs = dbs().await;
    // Participants ask about a prepared transaction after 300 ms.
    let (mut c, a, b) = cluster(&dbs, Some("before_decision=pause"), 300).await;
    let (pending, id) = transfer_paused_before_decision(&c, &a, &b, None).await;
    // Long enough for both to have asked a few times: they stay prepared, holding.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get(&id.to_string()).await["state"], "preparing");
    assert_eq!(
        a.snapshot().await.account("alice"),
        (100, 30),
        "alice's 30 are held"
    );
    assert_eq!(a.snapshot().await.state_of(id), Some(LocalState::Prepared));
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Prepared));

    c.kill9();
    assert!(
        pending.await.unwrap().is_err(),
        "the killed coordinator cannot have answered"
    );
    c.restart(None).await;
    wait_for_local_state(&a, id, LocalState::Aborted).await;
    wait_for_local_state(&b, id, LocalState::Aborted).await;
    let status = reqwest::get(format!("{}/v1/transactions/{id}", c.url))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "nothing was logged: no record means abort");
    assert_money(&a, &b, 100, 50).await;
}

/// (b') The same crash with an `Idempotency-Key`, whose transaction is logged before the
/// prepares: after the restart recovery finds it undecided and aborts it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_decision_of_a_keyed_commit_aborts_everywhere_after_restart() {
    let dbs = dbs().await;
    let (mut c, a, b) = cluster(&dbs, Some("before_decision=pause"), 600_000).await;
    let (pending, id) = transfer_paused_before_decision(&c, &a, &b, Some("crash-b-prime")).await;
    assert_eq!(
        a.snapshot().await.account("alice"),
        (100, 30),
        "alice's 30 are held"
    );
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Prepared));

    c.kill9();
    assert!(
        pending.await.unwrap().is_err(),
        "the killed coordinator cannot have answered"
    );
    c.restart(None).await;
    let done = c.wait_for_state(&id.to_string(), "aborted", WAIT).await;
    assert_eq!(done["decision"], "abort");
    assert!(
        done["reason"].as_str().unwrap().contains("presumed abort"),
        "{done}"
    );
    assert_eq!(a.snapshot().await.state_of(id), Some(LocalState::Aborted));
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Aborted));
    assert_money(&a, &b, 100, 50).await;
}

/// (c) A participant down during phase two: the coordinator keeps retrying and completes once
/// it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_down_in_phase_two_is_retried_until_it_is_back() {
    let dbs = dbs().await;
    let (mut c, a, mut b) = cluster(&dbs, Some("after_commit_decision=pause"), 600_000).await;
    let (_, tx) = post_json(
        &format!("{}/v1/transactions", c.url),
        &transfer(&a, &b, 30),
        &[],
    )
    .await;
    c.proc
        .wait_for_line("failpoint after_commit_decision reached", WAIT)
        .await;
    let id = tx_id(&tx);
    // Bank B goes down holding its prepared transfer; the coordinator restarts into phase two.
    b.kill9();
    c.restart(None).await;
    wait_for_local_state(&a, id, LocalState::Committed).await;
    c.proc
        .wait_for_line("commit not acknowledged yet; retrying", WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tx = c.get(&id.to_string()).await;
    assert_eq!(tx["state"], "committing", "B has not acknowledged: {tx}");
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Prepared));

    b.start().await;
    c.wait_for_state(&id.to_string(), "committed", WAIT).await;
    assert_eq!(b.snapshot().await.state_of(id), Some(LocalState::Committed));
    assert_money(&a, &b, 70, 80).await;
}

/// (d) Duplicate prepare, commit and abort calls change nothing; (e) an abort before the
/// prepare leaves a tombstone, so the late prepare votes abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_late_participant_calls_change_nothing() {
    let dbs = dbs().await;
    let (_c, a, _b) = cluster(&dbs, None, 600_000).await;
    let call = |verb: &'static str, id: TransactionId, payload: Value| {
        let url = format!("{}/{verb}", a.url);
        async move {
            let body = json!({"transaction_id": id, "participant": "bank-a", "payload": payload,
                              "coordinator": "http://127.0.0.1:9", "deadline_ms": 5000});
            post_json(&url, &body, &[]).await
        }
    };
    let debit = twopc_examples::bank::debit("alice", 30);

    // (d) prepare twice: one reservation, the same vote.
    let t1 = TransactionId::new();
    assert_eq!(
        call("prepare", t1, debit.clone()).await,
        (200, json!({"vote": "commit"}))
    );
    assert_eq!(
        call("prepare", t1, debit.clone()).await,
        (200, json!({"vote": "commit"}))
    );
    assert_eq!(a.snapshot().await.account("alice"), (100, 30));
    // commit twice: applied once.
    assert_eq!(call("commit", t1, Value::Null).await.0, 200);
    assert_eq!(call("commit", t1, Value::Null).await.0, 200);
    assert_eq!(a.snapshot().await.account("alice"), (70, 0));
    // a prepare after the commit repeats the vote and reserves nothing; abort is refused.
    assert_eq!(
        call("prepare", t1, debit.clone()).await,
        (200, json!({"vote": "commit"}))
    );
    assert_eq!(call("abort", t1, Value::Null).await.0, 409);
    assert_eq!(a.snapshot().await.account("alice"), (70, 0));

    // prepare + abort twice: released once.
    let t2 = TransactionId::new();
    assert_eq!(call("prepare", t2, debit.clone()).await.0, 200);
    assert_eq!(call("abort", t2, Value::Null).await.0, 200);
    assert_eq!(call("abort", t2, Value::Null).await.0, 200);
    assert_eq!(call("commit", t2, Value::Null).await.0, 409);
    assert_eq!(a.snapshot().await.account("alice"), (70, 0));

    // (e) abort before prepare, then the late prepare votes abort and holds nothing.
    let t3 = TransactionId::new();
    assert_eq!(call("abort", t3, Value::Null).await.0, 200);
    let (status, vote) = call("prepare", t3, debit.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(vote["vote"], "abort", "{vote}");
    assert_eq!(a.snapshot().await.account("alice"), (70, 0));
    assert_eq!(a.snapshot().await.state_of(t3), Some(LocalState::Aborted));

    // A commit for a transaction never prepared is refused, not acknowledged.
    assert_eq!(
        call("commit", TransactionId::new(), Value::Null).await.0,
        404
    );
}

/// (f) The same Idempotency-Key twice gives one transaction, also across a coordinator crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_one_transaction_across_a_crash() {
    let dbs = dbs().await;
    let (mut c, a, b) = cluster(&dbs, None, 600_000).await;
    let body = transfer(&a, &b, 30);
    let key = [("Idempotency-Key", "transfer-2026-11-25-0001")];
    let (s1, t1) = post_json(&format!("{}/v1/transactions", c.url), &body, &key).await;
    assert_eq!((s1, t1["state"].as_str()), (201, Some("committed")), "{t1}");
    c.kill9();
    c.restart(None).await;
    let (s2, t2) = post_json(&format!("{}/v1/transactions", c.url), &body, &key).await;
    assert_eq!(s2, 200, "{t2}");
    assert_eq!(t1["id"], t2["id"]);
    let all = reqwest::get(format!("{}/v1/transactions", c.url))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(all["transactions"].as_array().unwrap().len(), 1);
    assert_money(&a, &b, 70, 80).await;
}

/// (g) A participant in doubt whose commit never arrives resolves itself by asking the
/// coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_in_doubt_resolve_by_inquiry() {
    let dbs = dbs().await;
    // The driver freezes after logging the decision: no commit is ever sent.
    let (mut c, a, b) = cluster(&dbs, Some("after_commit_decision=pause"), 500).await;
    let (_, tx) = post_json(
        &format!("{}/v1/transactions", c.url),
        &transfer(&a, &b, 30),
        &[],
    )
    .await;
    let id = tx_id(&tx);
    c.proc
        .wait_for_line("failpoint after_commit_decision reached", WAIT)
        .await;
    wait_for_local_state(&a, id, LocalState::Committed).await;
    wait_for_local_state(&b, id, LocalState::Committed).await;
    assert!(
        c.proc.is_running(),
        "resolved while the coordinator is up but silent"
    );
    assert_eq!(c.get(&id.to_string()).await["state"], "committing");
    assert_money(&a, &b, 70, 80).await;
    // The coordinator's own delivery after a restart finds them committed: nothing changes.
    c.restart(None).await;
    c.wait_for_state(&id.to_string(), "committed", WAIT).await;
    assert_money(&a, &b, 70, 80).await;
}

/// (h) One-phase commit: killed after the only participant committed, before the coordinator
/// logged its answer. After the restart recovery asks again, hears the same answer (the call is
/// idempotent) and logs it: the money moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_answer_lost_in_a_crash_is_asked_again() {
    let dbs = dbs().await;
    let (mut c, a, _b) = cluster(&dbs, Some("after_one_phase_answer=pause"), 600_000).await;
    let url = format!("{}/v1/transactions", c.url);
    let body = json!({
        "commit": true,
        "participants": [a.participant(twopc_examples::bank::debit("alice", 30))],
    });
    let pending =
        tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await });
    c.proc
        .wait_for_line("failpoint after_one_phase_answer reached", WAIT)
        .await;
    let id = preparing_id(&c).await;
    // The participant decided and committed in one local transaction; the log does not know.
    assert_eq!(a.snapshot().await.state_of(id), Some(LocalState::Committed));
    assert_eq!(a.snapshot().await.account("alice"), (70, 0));

    c.kill9();
    assert!(pending.await.unwrap().is_err());
    c.restart(None).await;
    let done = c.wait_for_state(&id.to_string(), "committed", WAIT).await;
    assert_eq!(done["decision"], "commit");
    assert_eq!(done["participants"][0]["state"], "committed");
    assert_eq!(a.snapshot().await.account("alice"), (70, 0), "moved once");
}

/// `twopc serve` with two bank processes: a transfer commits, one with insufficient funds
/// aborts with the reason, and both read the same after the coordinator restarts. (The client
/// hears the outcome as the completion is being logged; killed before that write, the restarted
/// coordinator shows `committing` until recovery has re-delivered, then the same record with a
/// later `completed_at`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_survive_a_coordinator_restart() {
    let dbs = dbs().await;
    let (mut c, a, b) = cluster(&dbs, None, 600_000).await;
    let url = format!("{}/v1/transactions", c.url);
    let (_, ok) = post_json(&url, &transfer(&a, &b, 30), &[]).await;
    assert_eq!(ok["state"], "committed", "{ok}");
    let (_, refused) = post_json(&url, &transfer(&a, &b, 500), &[]).await;
    assert_eq!(refused["state"], "aborted", "{refused}");
    assert_eq!(
        refused["reason"],
        "participant bank-a voted abort: insufficient funds in account alice"
    );
    c.kill9();
    c.restart(None).await;
    for mut before in [ok, refused] {
        let id = before["id"].as_str().unwrap().to_owned();
        let state = before["state"].as_str().unwrap().to_owned();
        let mut after = c.wait_for_state(&id, &state, WAIT).await;
        let (was, is) = (before["completed_at"].take(), after["completed_at"].take());
        assert!(is.as_str().unwrap() >= was.as_str().unwrap(), "{was} {is}");
        assert_eq!(after, before);
    }
    assert_money(&a, &b, 70, 80).await;
}
