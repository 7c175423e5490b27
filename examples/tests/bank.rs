//! The bank example: transfers through the participant API on each backend, the accounts
//! endpoints, and both binaries run as processes.

// Test helpers outside `#[test]` functions: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tower::ServiceExt as _;
use twopc::testing::{Server, with_database};
use twopc::wire::{CreateTransaction, ParticipantSpec, PrepareRequest, TransactionView};
use twopc::{LocalState, TransactionId, TransactionState};
use twopc_examples::bank::{Account, Bank, credit, debit};

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {bytes:?}"));
    (status, value)
}

fn prepare(id: TransactionId, participant: &str, payload: Value) -> Value {
    serde_json::to_value(PrepareRequest {
        transaction_id: id,
        participant: participant.into(),
        payload,
        coordinator: "http://127.0.0.1:9".into(),
        deadline_ms: 5_000,
    })
    .unwrap()
}

fn outcome(id: TransactionId, participant: &str) -> Value {
    json!({ "transaction_id": id, "participant": participant })
}

fn account(id: &str, balance: i64, held: i64) -> Account {
    Account {
        id: id.into(),
        balance,
        held,
    }
}

/// A transfer, refused prepares and an aborted debit, all through the HTTP participant API.
async fn transfers_through_the_participant_api(url: String) {
    let bank = Bank::open(&url).await.unwrap();
    bank.open_account("alice", 100).await.unwrap();
    bank.open_account("bob", 50).await.unwrap();
    let app = bank.router();

    // alice pays bob 30: both prepare, the debit is held, then both commit.
    let t = TransactionId::new();
    let (status, vote) = call(
        &app,
        "POST",
        "/prepare",
        Some(prepare(t, "from", debit("alice", 30))),
    )
    .await;
    assert_eq!(
        (status, vote),
        (StatusCode::OK, json!({ "vote": "commit" }))
    );
    let (_, vote) = call(
        &app,
        "POST",
        "/prepare",
        Some(prepare(t, "to", credit("bob", 30))),
    )
    .await;
    assert_eq!(vote, json!({ "vote": "commit" }));
    assert_eq!(
        bank.accounts().await.unwrap(),
        vec![account("alice", 100, 30), account("bob", 50, 0)]
    );
    for name in ["from", "to"] {
        let (status, body) = call(&app, "POST", "/commit", Some(outcome(t, name))).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({ "state": "committed" }))
        );
    }
    assert_eq!(
        bank.accounts().await.unwrap(),
        vec![account("alice", 70, 0), account("bob", 80, 0)]
    );
    let rows = bank.participant_rows().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.state == LocalState::Committed && r.transaction_id == t)
    );

    // Refusals: each an abort vote with a reason, nothing held.
    for (payload, reason) in [
        (debit("alice", 1000), "insufficient funds in account alice"),
        (debit("carol", 5), "unknown account carol"),
        (credit("carol", 5), "unknown account carol"),
        (debit("alice", 0), "amount must be positive, got 0"),
        (credit("bob", -3), "amount must be positive, got -3"),
    ] {
        let (status, vote) = call(
            &app,
            "POST",
            "/prepare",
            Some(prepare(TransactionId::new(), "p", payload)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(vote, json!({ "vote": "abort", "reason": reason }));
    }
    assert_eq!(
        bank.accounts().await.unwrap(),
        vec![account("alice", 70, 0), account("bob", 80, 0)]
    );

    // What is held is not available to another debit, and an abort releases it.
    let held = TransactionId::new();
    let (_, vote) = call(
        &app,
        "POST",
        "/prepare",
        Some(prepare(held, "from", debit("alice", 50))),
    )
    .await;
    assert_eq!(vote, json!({ "vote": "commit" }));
    let (_, vote) = call(
        &app,
        "POST",
        "/prepare",
        Some(prepare(TransactionId::new(), "from", debit("alice", 30))),
    )
    .await;
    assert_eq!(vote["vote"], "abort", "only 20 of alice's 70 are free");
    let (status, body) = call(&app, "POST", "/abort", Some(outcome(held, "from"))).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "state": "aborted" }))
    );
    let accounts = bank.accounts().await.unwrap();
    assert_eq!(
        accounts,
        vec![account("alice", 70, 0), account("bob", 80, 0)]
    );
    assert_eq!(
        accounts.iter().map(|a| a.balance).sum::<i64>(),
        150,
        "money is conserved"
    );

    // A payload that is not a bank operation at all is a 400.
    let (status, body) = call(
        &app,
        "POST",
        "/prepare",
        Some(prepare(TransactionId::new(), "p", json!({ "op": "steal" }))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_payload");
}

#[tokio::test]
async fn sqlite_transfers_through_the_participant_api() {
    let dir = tempfile::tempdir().unwrap();
    transfers_through_the_participant_api(format!(
        "sqlite://{}",
        dir.path().join("bank.db").display()
    ))
    .await;
}

#[tokio::test]
async fn postgres_transfers_through_the_participant_api() {
    with_database(Server::Postgres, transfers_through_the_participant_api).await;
}

#[tokio::test]
async fn mysql_transfers_through_the_participant_api() {
    with_database(Server::MySql, transfers_through_the_participant_api).await;
}

#[tokio::test]
async fn accounts_endpoints_and_reseeding() {
    let dir = tempfile::tempdir().unwrap();
    let bank = Bank::open(&format!(
        "sqlite://{}",
        dir.path().join("bank.db").display()
    ))
    .await
    .unwrap();
    let app = bank.router();
    let (status, body) = call(
        &app,
        "POST",
        "/accounts",
        Some(json!({ "id": "dora", "balance": 40 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "id": "dora", "balance": 40, "held": 0 }));
    // Opening again never overwrites: a restarted service with the same seed keeps its money.
    let (_, body) = call(
        &app,
        "POST",
        "/accounts",
        Some(json!({ "id": "dora", "balance": 999 })),
    )
    .await;
    assert_eq!(body["balance"], 40);
    let (status, body) = call(
        &app,
        "POST",
        "/accounts",
        Some(json!({ "id": "eve", "balance": -1 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_account");
    let (status, body) = call(&app, "POST", "/accounts", Some(json!({ "id": "eve" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request");
    let (status, body) = call(&app, "GET", "/accounts", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "accounts": [{ "id": "dora", "balance": 40, "held": 0 }] })
    );

    assert!(Bank::open("redis://127.0.0.1").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// The binaries as processes.

/// Starts `bank-participant` on a free port; answers the child and its base URL.
async fn start_participant(database: &str) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bank-participant"))
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(["--seed", "alice=100,bob=50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("bank-participant did not report its address")
        .unwrap()
        .expect("bank-participant closed stdout without a line");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, base)
}

async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("bank-participant did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "bank-participant exited with {status}");
}

#[tokio::test]
async fn participant_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("bank-a.db").display());
    let (child, base) = start_participant(&database).await;
    let http = reqwest::Client::new();

    let t = TransactionId::new();
    let vote: Value = http
        .post(format!("{base}/prepare"))
        .json(&prepare(t, "from", debit("alice", 30)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vote, json!({ "vote": "commit" }));
    let committed = http
        .post(format!("{base}/commit"))
        .json(&outcome(t, "from"))
        .send()
        .await
        .unwrap();
    assert_eq!(committed.status(), reqwest::StatusCode::OK);
    terminate(child).await;

    // Restarted with the same --seed: alice keeps the 70 she has, not the seeded 100.
    let (child, base) = start_participant(&database).await;
    let accounts: Value = http
        .get(format!("{base}/accounts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        accounts,
        json!({ "accounts": [
            { "id": "alice", "balance": 70, "held": 0 },
            { "id": "bob", "balance": 50, "held": 0 },
        ] })
    );
    terminate(child).await;
}

/// A coordinator stand-in for `bank-transfer`: records the body, answers a fixed transaction.
async fn fake_coordinator(
    answer: TransactionState,
) -> (String, Arc<Mutex<Option<(Value, Option<String>)>>>) {
    let seen = Arc::new(Mutex::new(None));
    let recorded = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/v1/transactions",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let recorded = Arc::clone(&recorded);
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .map(|v| v.to_str().unwrap().to_owned());
                    *recorded.lock().unwrap() = Some((body, key));
                    let view = TransactionView {
                        id: TransactionId::new(),
                        state: answer,
                        decision: answer.decision(),
                        reason: (answer == TransactionState::Aborted)
                            .then(|| "from voted abort".to_owned()),
                        created_at: "2026-01-01T00:00:00Z".into(),
                        decided_at: None,
                        completed_at: None,
                        participants: vec![],
                    };
                    (StatusCode::CREATED, axum::Json(view))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn run_transfer(coordinator: &str, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bank-transfer"))
        .args(["--coordinator", coordinator])
        .args(["--from-url", "http://127.0.0.1:7801", "--from", "alice"])
        .args([
            "--to-url",
            "http://127.0.0.1:7802",
            "--to",
            "bob",
            "--amount",
            "30",
        ])
        .args(extra)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn transfer_binary_posts_a_one_shot_commit() {
    let (url, seen) = fake_coordinator(TransactionState::Committed).await;
    let out = run_transfer(&url, &["--idempotency-key", "transfer-1"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: TransactionView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed.state, TransactionState::Committed);

    let (body, key) = seen.lock().unwrap().take().unwrap();
    assert_eq!(key.as_deref(), Some("transfer-1"));
    let body: CreateTransaction = serde_json::from_value(body).unwrap();
    assert_eq!(
        body,
        CreateTransaction {
            timeout_ms: None,
            commit: Some(true),
            participants: Some(vec![
                ParticipantSpec {
                    name: "from".into(),
                    url: "http://127.0.0.1:7801".into(),
                    payload: debit("alice", 30),
                },
                ParticipantSpec {
                    name: "to".into(),
                    url: "http://127.0.0.1:7802".into(),
                    payload: credit("bob", 30),
                },
            ]),
        }
    );
}

#[tokio::test]
async fn transfer_binary_exits_1_when_aborted_and_2_when_unreachable() {
    let (url, _) = fake_coordinator(TransactionState::Aborted).await;
    let out = run_transfer(&url, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let printed: TransactionView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed.reason.as_deref(), Some("from voted abort"));

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = run_transfer(&closed, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
