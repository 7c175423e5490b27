//! Kit tests: the SDK's bank must pass every check; an in-memory reference participant passes
//! too, and each bug switched on in it must fail exactly the check named for that rule.

use super::*;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use twopc_examples::bank::{self, Bank};

/// Bugs the reference participant can be given, one rule each.
#[derive(Debug, Clone, Copy, Default)]
struct Bugs {
    /// A repeated prepare votes abort ("already prepared") instead of repeating the vote.
    repeat_prepare_votes_abort: bool,
    /// Commit of an unknown transaction answers 200.
    acknowledge_unknown_commit: bool,
    /// Abort of an unknown transaction records nothing.
    no_tombstone: bool,
    /// Malformed requests answer 200 `{}`.
    accept_malformed: bool,
    /// Commit of an aborted and abort of a committed transaction answer 200.
    acknowledge_conflicts: bool,
    /// Errors are plain text.
    plain_text_errors: bool,
    /// Offers no one-phase commit (answers 404 for it).
    no_one_phase: bool,
    /// A repeated one-phase commit answers `aborted` ("already done").
    one_phase_repeat_aborts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Prepared,
    VotedAbort,
    Committed,
    Aborted,
    Tombstone,
}

/// An in-memory participant: payload `{"ok": true}` votes commit, `{"ok": false}` votes abort.
struct Reference {
    bugs: Bugs,
    rows: Mutex<HashMap<String, Row>>,
}

#[derive(Clone, Copy)]
enum Op {
    Prepare,
    Commit,
    Abort,
    OnePhase,
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl Reference {
    fn error(&self, status: StatusCode, code: &str) -> Response {
        if self.bugs.plain_text_errors {
            return (
                status,
                [(header::CONTENT_TYPE, "text/plain")],
                code.to_owned(),
            )
                .into_response();
        }
        answer(status, json!({"error": {"code": code, "message": code}}))
    }

    fn handle(&self, op: Op, body: &[u8]) -> Response {
        let parsed: Option<(String, Value)> =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                let id = v.get("transaction_id")?.as_str()?;
                uuid::Uuid::parse_str(id).ok()?;
                v.get("participant")?.as_str()?;
                Some((
                    id.to_owned(),
                    v.get("payload").cloned().unwrap_or(Value::Null),
                ))
            });
        let Some((id, payload)) = parsed else {
            if self.bugs.accept_malformed {
                return answer(StatusCode::OK, json!({}));
            }
            return self.error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let row = rows.get(&id).copied();
        match op {
            Op::Prepare => {
                let vote = match row {
                    Some(_) if self.bugs.repeat_prepare_votes_abort => {
                        json!({"vote": "abort", "reason": "already prepared"})
                    }
                    Some(Row::Prepared | Row::Committed) => json!({"vote": "commit"}),
                    Some(Row::VotedAbort) => json!({"vote": "abort", "reason": "refused"}),
                    // Prepared, then aborted: the vote first given.
                    Some(Row::Aborted) => json!({"vote": "commit"}),
                    Some(Row::Tombstone) => {
                        json!({"vote": "abort", "reason": "aborted before prepare"})
                    }
                    None => match payload.get("ok").and_then(Value::as_bool) {
                        Some(true) => {
                            rows.insert(id, Row::Prepared);
                            json!({"vote": "commit"})
                        }
                        Some(false) => {
                            rows.insert(id, Row::VotedAbort);
                            json!({"vote": "abort", "reason": "refused"})
                        }
                        None => return self.error(StatusCode::BAD_REQUEST, "invalid_payload"),
                    },
                };
                answer(StatusCode::OK, vote)
            }
            Op::OnePhase => {
                let aborted = |reason: &str| json!({"state": "aborted", "reason": reason});
                let body = match row {
                    Some(Row::Committed) if self.bugs.one_phase_repeat_aborts => {
                        aborted("already done")
                    }
                    Some(Row::Committed) => json!({"state": "committed"}),
                    Some(Row::VotedAbort | Row::Aborted) => aborted("refused"),
                    Some(Row::Tombstone) => aborted("aborted before prepare"),
                    Some(Row::Prepared) => {
                        return self.error(StatusCode::CONFLICT, "outcome_conflict");
                    }
                    None => match payload.get("ok").and_then(Value::as_bool) {
                        Some(true) => {
                            rows.insert(id, Row::Committed);
                            json!({"state": "committed"})
                        }
                        Some(false) => {
                            rows.insert(id, Row::VotedAbort);
                            aborted("refused")
                        }
                        None => return self.error(StatusCode::BAD_REQUEST, "invalid_payload"),
                    },
                };
                answer(StatusCode::OK, body)
            }
            Op::Commit => match row {
                Some(Row::Prepared) => {
                    rows.insert(id, Row::Committed);
                    answer(StatusCode::OK, json!({"state": "committed"}))
                }
                Some(Row::Committed) => answer(StatusCode::OK, json!({"state": "committed"})),
                None if self.bugs.acknowledge_unknown_commit => {
                    answer(StatusCode::OK, json!({"state": "committed"}))
                }
                None => self.error(StatusCode::NOT_FOUND, "unknown_transaction"),
                Some(_) if self.bugs.acknowledge_conflicts => {
                    answer(StatusCode::OK, json!({"state": "committed"}))
                }
                Some(_) => self.error(StatusCode::CONFLICT, "outcome_conflict"),
            },
            Op::Abort => match row {
                Some(Row::Prepared) => {
                    rows.insert(id, Row::Aborted);
                    answer(StatusCode::OK, json!({"state": "aborted"}))
                }
                Some(Row::Aborted | Row::Tombstone | Row::VotedAbort) => {
                    answer(StatusCode::OK, json!({"state": "aborted"}))
                }
                None => {
                    if !self.bugs.no_tombstone {
                        rows.insert(id, Row::Tombstone);
                    }
                    answer(StatusCode::OK, json!({"state": "aborted"}))
                }
                Some(Row::Committed) if self.bugs.acknowledge_conflicts => {
                    answer(StatusCode::OK, json!({"state": "aborted"}))
                }
                Some(Row::Committed) => self.error(StatusCode::CONFLICT, "outcome_conflict"),
            },
        }
    }
}

/// Serves a reference participant with `bugs` on 127.0.0.1:0; answers its base URL.
async fn reference(bugs: Bugs) -> String {
    let state = Arc::new(Reference {
        bugs,
        rows: Mutex::new(HashMap::new()),
    });
    let route = |op: Op| {
        post(move |State(s): State<Arc<Reference>>, body: Bytes| async move { s.handle(op, &body) })
    };
    let mut app = Router::new()
        .route("/prepare", route(Op::Prepare))
        .route("/commit", route(Op::Commit))
        .route("/abort", route(Op::Abort));
    if !bugs.no_one_phase {
        app = app.route("/commit-one-phase", route(Op::OnePhase));
    }
    let app = app.with_state(state);
    serve(app).await
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn config(url: &str) -> KitConfig {
    let mut config = KitConfig::new(url, json!({"ok": true}));
    config.abort_payload = Some(json!({"ok": false}));
    config
}

#[tokio::test]
async fn the_sdk_bank_passes_every_check_and_holds_nothing_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bank.db").display());
    let bank = Bank::open(&db).await.unwrap();
    bank.open_account("alice", 100).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let served = bank.clone();
    tokio::spawn(async move { served.serve(listener, std::future::pending()).await });

    let mut config = KitConfig::new(&url, bank::credit("alice", 1));
    config.abort_payload = Some(bank::debit("alice", 1_000_000));
    let report = run(&config).await.unwrap();
    let lines: Vec<String> = report.checks.iter().map(CheckResult::line).collect();
    assert!(report.passed, "{lines:#?}");
    assert_eq!(report.counts.passed, CHECKS.len(), "{lines:#?}");
    assert_eq!(report.participant, url.trim_end_matches('/'));

    let accounts = bank.accounts().await.unwrap();
    assert_eq!(accounts.len(), 1);
    // Three checks commit the payload (a credit of 1; one of them in one phase); everything
    // else was aborted.
    assert_eq!((accounts[0].balance, accounts[0].held), (103, 0));
    let rows = bank.participant_rows().await.unwrap();
    assert!(rows.iter().all(|r| r.participant == "conformance"));
    assert!(
        rows.iter().all(|r| r.state != twopc::LocalState::Prepared),
        "the kit left a prepared transaction: {rows:?}"
    );
}

#[tokio::test]
async fn a_correct_participant_passes_and_the_abort_payload_check_is_skipped_without_one() {
    let url = reference(Bugs::default()).await;
    let report = run(&config(&url)).await.unwrap();
    assert!(report.passed, "{:?}", report.failed());

    let plain = run(&KitConfig::new(&url, json!({"ok": true})))
        .await
        .unwrap();
    assert!(plain.passed, "{:?}", plain.failed());
    let skipped = plain.check("abort_payload_refused").unwrap();
    assert_eq!(skipped.verdict, Verdict::Skip);
    assert_eq!(plain.counts.skipped, 1);
    assert!(skipped.line().starts_with("SKIP abort_payload_refused"));

    // Without the optional one-phase call: skipped, and its 404 is not judged.
    let url = reference(Bugs {
        no_one_phase: true,
        ..Bugs::default()
    })
    .await;
    let report = run(&config(&url)).await.unwrap();
    assert!(report.passed, "{:?}", report.failed());
    let skipped = report.check("one_phase_optional").unwrap();
    assert_eq!(skipped.verdict, Verdict::Skip);
    assert!(skipped.detail.contains("not offered"), "{}", skipped.detail);
}

#[tokio::test]
async fn each_broken_rule_fails_exactly_the_check_named_for_it() {
    let cases: [(Bugs, &[&str]); 7] = [
        (
            Bugs {
                repeat_prepare_votes_abort: true,
                ..Bugs::default()
            },
            &["prepare_idempotent"],
        ),
        (
            Bugs {
                acknowledge_unknown_commit: true,
                ..Bugs::default()
            },
            &["commit_unknown_refused"],
        ),
        (
            Bugs {
                no_tombstone: true,
                ..Bugs::default()
            },
            &["abort_unknown_tombstone"],
        ),
        (
            Bugs {
                accept_malformed: true,
                ..Bugs::default()
            },
            &["malformed_request_rejected", "answers_documented"],
        ),
        (
            Bugs {
                acknowledge_conflicts: true,
                ..Bugs::default()
            },
            // Also the abort after a one-phase commit.
            &[
                "abort_after_commit_refused",
                "commit_after_abort_refused",
                "one_phase_optional",
            ],
        ),
        (
            Bugs {
                one_phase_repeat_aborts: true,
                ..Bugs::default()
            },
            &["one_phase_optional"],
        ),
        (
            Bugs {
                plain_text_errors: true,
                ..Bugs::default()
            },
            &["answers_documented"],
        ),
    ];
    for (bugs, expected) in cases {
        let url = reference(bugs).await;
        let report = run(&config(&url)).await.unwrap();
        assert!(!report.passed, "{bugs:?} passed");
        assert_eq!(report.failed(), expected, "{bugs:?}");
        for name in expected {
            let check = report.check(name).unwrap();
            let line = check.line();
            assert!(line.starts_with(&format!("FAIL {name}: ")), "{line}");
            assert!(
                !check.exchanges.is_empty(),
                "{name} failed without evidence"
            );
            assert!(line.contains("[evidence: POST /"), "{line}");
        }
    }
}

#[tokio::test]
async fn the_evidence_shows_the_request_and_the_answer() {
    let url = reference(Bugs {
        acknowledge_unknown_commit: true,
        ..Bugs::default()
    })
    .await;
    let report = run(&config(&url)).await.unwrap();
    let check = report.check("commit_unknown_refused").unwrap();
    let exchange = &check.exchanges[0];
    assert_eq!((exchange.method, exchange.path), ("POST", "/commit"));
    assert_eq!(exchange.status, Some(200));
    let sent: Value = serde_json::from_str(&exchange.request).unwrap();
    assert_eq!(sent["participant"], "conformance");
    let id = uuid::Uuid::parse_str(sent["transaction_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "fresh ids are UUID v7");
    assert!(
        check.detail.contains("acknowledged a commit"),
        "{}",
        check.detail
    );
    assert!(
        check.line().contains(r#"-> 200 {"state":"committed"}"#),
        "{}",
        check.line()
    );
}

#[tokio::test]
async fn a_participant_that_does_not_answer_fails_every_check_with_the_transport_error() {
    // Bind and drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = config(&url);
    config.timeout = Duration::from_millis(500);
    let report = run(&config).await.unwrap();
    assert_eq!(report.counts.passed, 0);
    assert_eq!(report.counts.failed, CHECKS.len());
    let line = report.check("prepare_idempotent").unwrap().line();
    assert!(line.contains("no answer"), "{line}");
}

#[tokio::test]
async fn urls_that_are_not_http_base_urls_are_refused_before_any_request() {
    for bad in [
        "localhost:7801",
        "ftp://host/x",
        "http://host/?a=1",
        "not a url",
    ] {
        let err = run(&KitConfig::new(bad, json!({}))).await.unwrap_err();
        assert!(
            matches!(err, ConformanceError::InvalidUrl { .. }),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn the_command_prints_one_line_per_check_or_json_and_fails_when_a_check_fails() {
    let good = reference(Bugs::default()).await;
    let args = |url: &str, json: bool| CheckArgs {
        url: url.to_owned(),
        payload: json!({"ok": true}),
        abort_payload: Some(json!({"ok": false})),
        json,
        coordinator: DEFAULT_COORDINATOR_URL.to_owned(),
        timeout_ms: 2000,
    };
    let mut out = Vec::new();
    command(args(&good, false), &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), CHECKS.len() + 1, "{text}");
    for ((name, _), line) in CHECKS.iter().zip(&lines) {
        assert_eq!(*line, format!("PASS {name}"));
    }
    assert!(lines[CHECKS.len()].ends_with("12 of 12 checks passed, 0 failed, 0 skipped"));

    let bad = reference(Bugs {
        repeat_prepare_votes_abort: true,
        ..Bugs::default()
    })
    .await;
    let mut out = Vec::new();
    let err = command(args(&bad, true), &mut out).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConformanceError::ChecksFailed {
                failed: 1,
                total: 12,
                ..
            }
        ),
        "{err}"
    );
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["counts"]["failed"], 1);
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], "prepare_idempotent");
    assert_eq!(failed[0]["exchanges"][1]["status"], 200);
}

#[test]
fn every_check_has_a_rule_and_a_unique_name() {
    let mut names: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CHECKS.len());
    assert!(CHECKS.iter().all(|(_, rule)| !rule.is_empty()));
}
