//! API tests: the router driven in-process (`oneshot`), a SQLite log in a temporary directory,
//! and a scripted participant served on 127.0.0.1:0.

use super::*;
use crate::driver::{Driver, DriverSettings};
use crate::log::{AnyLog, DecisionLog};
use axum::body::Body;
use axum::http::{Request, Response};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::ServiceExt;

struct Fixture {
    app: Router,
    log: Arc<AnyLog>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let log = Arc::new(AnyLog::connect(&url).await.unwrap());
    let driver = Driver::new(
        log.clone(),
        reqwest::Client::new(),
        DriverSettings {
            advertise_url: "http://127.0.0.1:1".into(),
        },
    );
    let coordinator = Coordinator::new(Arc::new(driver), Duration::from_secs(2));
    let app = router(Arc::new(AppState {
        coordinator,
        metrics: Metrics::default(),
    }));
    Fixture {
        app,
        log,
        _dir: dir,
    }
}

/// A participant that votes by payload: `{"vote":"abort"}` votes abort, anything else commit.
/// Counts calls per verb.
#[derive(Default)]
struct Scripted {
    prepares: AtomicUsize,
    commits: AtomicUsize,
    aborts: AtomicUsize,
}

async fn scripted_participant() -> (String, Arc<Scripted>) {
    let counts = Arc::new(Scripted::default());
    let c = counts.clone();
    let app = Router::new()
        .route(
            "/prepare",
            post({
                let c = c.clone();
                move |Json(body): Json<Value>| async move {
                    c.prepares.fetch_add(1, Ordering::SeqCst);
                    if body["payload"]["vote"] == "abort" {
                        Json(json!({"vote": "abort", "reason": "scripted refusal"}))
                    } else {
                        Json(json!({"vote": "commit"}))
                    }
                }
            }),
        )
        .route(
            "/commit",
            post({
                let c = c.clone();
                move || async move {
                    c.commits.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"state": "committed"}))
                }
            }),
        )
        .route(
            "/abort",
            post(move || async move {
                c.aborts.fetch_add(1, Ordering::SeqCst);
                Json(json!({"state": "aborted"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, counts)
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    call_with(app, method, uri, body, &[]).await
}

async fn call_with(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default())
        .unwrap();
    let res: Response<Body> = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn logged(log: &AnyLog) -> usize {
    log.list(None, 1000).await.unwrap().len()
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_writes_nothing() {
    let f = fixture().await;
    let p = |name: &str, url: &str| json!({"name": name, "url": url, "payload": {}});
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            r#"{"timeout_ms": "soon"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            r#"{"timeout": 5}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            r#"{"timeout_ms": 0}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            r#"{"timeout_ms": 999999999999}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            json!({"participants": [p("a", "ftp://h/x")]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_participant_url",
        ),
        (
            json!({"participants": [p("a", "not a url")]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_participant_url",
        ),
        (
            json!({"participants": [p("a", "http://h"), p("a", "http://g")]}).to_string(),
            StatusCode::BAD_REQUEST,
            "duplicate_participant",
        ),
        (
            json!({"participants": [p("bad name", "http://h")]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_participant_name",
        ),
        (
            json!({"participants": [], "commit": true}).to_string(),
            StatusCode::BAD_REQUEST,
            "no_participants",
        ),
        (
            json!({"commit": true}).to_string(),
            StatusCode::BAD_REQUEST,
            "no_participants",
        ),
    ];
    for (body, status, code) in cases {
        let (got, value) = call(&f.app, "POST", "/v1/transactions", Some(&body)).await;
        assert_eq!(got, status, "{body}: {value}");
        assert_error_shape(&value, code);
    }
    assert_eq!(
        logged(&f.log).await,
        0,
        "a refused request wrote to the log"
    );

    let unknown = uuid::Uuid::now_v7();
    for (method, uri) in [
        ("GET", format!("/v1/transactions/{unknown}")),
        ("POST", format!("/v1/transactions/{unknown}/commit")),
        ("POST", format!("/v1/transactions/{unknown}/abort")),
    ] {
        let (status, value) = call(&f.app, method, &uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_error_shape(&value, "transaction_not_found");
    }
    for bad in [
        "/v1/transactions/42",
        "/v1/transactions/%FF",
        "/v1/transactions/%FF/commit",
    ] {
        let method = if bad.ends_with("commit") {
            "POST"
        } else {
            "GET"
        };
        let (status, value) = call(&f.app, method, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_error_shape(&value, "invalid_transaction_id");
    }
    let (status, value) = call(&f.app, "GET", "/v1/transactions?state=done", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&value, "invalid_state");
    let (status, value) = call(&f.app, "GET", "/v1/transactions?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&value, "invalid_limit");
    let (status, value) = call(&f.app, "GET", "/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&value, "not_found");
    assert_eq!(logged(&f.log).await, 0);
}

#[tokio::test]
async fn enlist_validates_and_commit_needs_participants() {
    let f = fixture().await;
    let (status, tx) = call(&f.app, "POST", "/v1/transactions", Some("{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(tx["state"], "active");
    let id = tx["id"].as_str().unwrap().to_owned();

    let (status, value) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/commit"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_shape(&value, "no_participants");

    let enlist = format!("/v1/transactions/{id}/participants");
    let (status, value) = call(
        &f.app,
        "POST",
        &enlist,
        Some(r#"{"name":"a","url":"gopher://x"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&value, "invalid_participant_url");
    let (status, value) = call(
        &f.app,
        "POST",
        &enlist,
        Some(r#"{"name":"a","url":"http://127.0.0.1:9"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    assert_eq!(value["participants"][0]["state"], "pending");
    let (status, value) = call(
        &f.app,
        "POST",
        &enlist,
        Some(r#"{"name":"a","url":"http://127.0.0.1:9"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&value, "duplicate_participant");

    let (_, after) = call(&f.app, "GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(after["participants"].as_array().unwrap().len(), 1);
    assert_eq!(logged(&f.log).await, 1);
}

#[tokio::test]
async fn one_shot_commit_commits_everywhere() {
    let f = fixture().await;
    let (url, counts) = scripted_participant().await;
    let body = json!({"commit": true, "participants": [
        {"name": "a", "url": url, "payload": {}},
        {"name": "b", "url": format!("{url}/"), "payload": {"x": 1}},
    ]});
    let (status, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{tx}");
    assert_eq!(tx["state"], "committed");
    assert_eq!(tx["decision"], "commit");
    assert!(tx["decided_at"].is_string() && tx["completed_at"].is_string());
    assert_eq!(tx["participants"][0]["vote"], "commit");
    assert_eq!(tx["participants"][1]["state"], "committed");
    assert_eq!(counts.prepares.load(Ordering::SeqCst), 2);
    assert_eq!(counts.commits.load(Ordering::SeqCst), 2);
    assert_eq!(counts.aborts.load(Ordering::SeqCst), 0);

    let id = tx["id"].as_str().unwrap();
    let (status, again) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/commit"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "committed");
    let (status, value) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/abort"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_shape(&value, "already_committed");
    let (status, value) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/participants"),
        Some(r#"{"name":"c","url":"http://127.0.0.1:9"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error_shape(&value, "transaction_not_active");
    assert_eq!(
        counts.prepares.load(Ordering::SeqCst),
        2,
        "repeats sent nothing"
    );

    let (_, listed) = call(&f.app, "GET", "/v1/transactions?state=committed", None).await;
    assert_eq!(listed["transactions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_abort_vote_aborts_with_its_reason() {
    let f = fixture().await;
    let (url, counts) = scripted_participant().await;
    let body = json!({"commit": true, "participants": [
        {"name": "a", "url": url, "payload": {}},
        {"name": "b", "url": url, "payload": {"vote": "abort"}},
    ]});
    let (status, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(tx["state"], "aborted", "{tx}");
    assert_eq!(tx["reason"], "participant b voted abort: scripted refusal");
    assert_eq!(counts.commits.load(Ordering::SeqCst), 0);
    // a voted commit (or had not answered yet): it must be told to abort.
    assert!(tx["participants"][0]["state"] == "aborted");
    assert!(counts.aborts.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn an_unreachable_participant_decides_abort_and_is_sent_the_abort() {
    let f = fixture().await;
    let (url, _) = scripted_participant().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let body = json!({"commit": true, "timeout_ms": 2000, "participants": [
        {"name": "a", "url": url},
        {"name": "b", "url": dead_url},
    ]});
    let (_, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(tx["decision"], "abort", "{tx}");
    assert!(
        tx["reason"]
            .as_str()
            .unwrap()
            .starts_with("participant b did not vote: prepare call failed"),
        "{tx}"
    );
    // b never answered: it may have prepared, so it is sent the abort as well; the abort to
    // an unreachable b is retried in the background, so the answer is `aborting`.
    assert_eq!(tx["participants"][1]["vote"], serde_json::Value::Null);
    assert_eq!(tx["state"], "aborting", "{tx}");
}

#[tokio::test]
async fn the_same_idempotency_key_gives_one_transaction() {
    let f = fixture().await;
    let (url, counts) = scripted_participant().await;
    let body = json!({"commit": true, "participants": [{"name": "a", "url": url}]}).to_string();
    let key = [("idempotency-key", "transfer-42")];
    let (s1, t1) = call_with(&f.app, "POST", "/v1/transactions", Some(&body), &key).await;
    let (s2, t2) = call_with(&f.app, "POST", "/v1/transactions", Some(&body), &key).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(t1["id"], t2["id"]);
    assert_eq!(t2["state"], "committed");
    assert_eq!(counts.prepares.load(Ordering::SeqCst), 1);
    assert_eq!(logged(&f.log).await, 1);

    let other = json!({"commit": true, "participants": [{"name": "zz", "url": url}]}).to_string();
    let (s3, v3) = call_with(&f.app, "POST", "/v1/transactions", Some(&other), &key).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_error_shape(&v3, "idempotency_key_reused");
    assert_eq!(logged(&f.log).await, 1);
}

#[tokio::test]
async fn abort_of_an_active_transaction_sends_nothing() {
    let f = fixture().await;
    let (url, counts) = scripted_participant().await;
    let body = json!({"participants": [{"name": "a", "url": url}]}).to_string();
    let (_, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body)).await;
    let id = tx["id"].as_str().unwrap();
    let (status, aborted) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/abort"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(aborted["state"], "aborted");
    let (status, again) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/abort"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "aborted");
    let (_, committed) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/commit"),
        None,
    )
    .await;
    assert_eq!(committed["state"], "aborted");
    assert_eq!(counts.prepares.load(Ordering::SeqCst), 0);
    assert_eq!(counts.aborts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn healthz_and_metrics_answer() {
    let f = fixture().await;
    let (status, body) = call(&f.app, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let res = f.app.clone().oneshot(req).await.unwrap();
    let text = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.contains("twopc_transactions_created_total 0"),
        "{text}"
    );
}

/// Abort while prepares are out: answered `aborting` at once (not after the slow prepare), and
/// the commit call that was waiting ends `aborted`; the slow participant is sent the abort.
#[tokio::test]
async fn abort_while_preparing_answers_without_waiting_for_slow_prepares() {
    let f = fixture().await;
    let aborts = Arc::new(AtomicUsize::new(0));
    let seen = aborts.clone();
    let slow = Router::new()
        .route(
            "/prepare",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Json(json!({"vote": "commit"}))
            }),
        )
        .route(
            "/abort",
            post(move || async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Json(json!({"state": "aborted"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, slow).await });

    let body = json!({"timeout_ms": 10000, "participants": [{"name": "slow", "url": url}]});
    let (_, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    let id = tx["id"].as_str().unwrap().to_owned();
    let app = f.app.clone();
    let commit_uri = format!("/v1/transactions/{id}/commit");
    let committing = tokio::spawn(async move { call(&app, "POST", &commit_uri, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, aborted) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/abort"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(aborted["state"], "aborting", "{aborted}");
    assert_eq!(aborted["reason"], "aborted by client");
    let (_, after) = committing.await.unwrap();
    assert_eq!(after["state"], "aborted", "{after}");
    assert_eq!(aborts.load(Ordering::SeqCst), 1);
}

/// A participant whose prepare takes `delay` and votes commit; it keeps the transaction ids
/// it was asked to prepare and counts commits and aborts.
#[derive(Default)]
struct Slow {
    ids: std::sync::Mutex<Vec<String>>,
    commits: AtomicUsize,
    aborts: AtomicUsize,
}

async fn slow_participant(delay: Duration) -> (String, Arc<Slow>) {
    let seen = Arc::new(Slow::default());
    let (p, c, a) = (seen.clone(), seen.clone(), seen.clone());
    let app = Router::new()
        .route(
            "/prepare",
            post(move |Json(body): Json<Value>| async move {
                let id = body["transaction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                p.ids.lock().unwrap().push(id);
                tokio::time::sleep(delay).await;
                Json(json!({"vote": "commit"}))
            }),
        )
        .route(
            "/commit",
            post(move || async move {
                c.commits.fetch_add(1, Ordering::SeqCst);
                Json(json!({"state": "committed"}))
            }),
        )
        .route(
            "/abort",
            post(move || async move {
                a.aborts.fetch_add(1, Ordering::SeqCst);
                Json(json!({"state": "aborted"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Starts a one-shot commit (no idempotency key) with the slow participant at `url` and a
/// scripted one, and waits until the slow one holds its prepare; returns the call and the
/// transaction id.
async fn one_shot_in_prepare(
    f: &Fixture,
    url: &str,
    seen: &Slow,
) -> (tokio::task::JoinHandle<(StatusCode, Value)>, String) {
    let (other, _) = scripted_participant().await;
    let body = json!({"commit": true, "participants": [
        {"name": "slow", "url": url}, {"name": "other", "url": other}]});
    let app = f.app.clone();
    let call = tokio::spawn(async move {
        call(&app, "POST", "/v1/transactions", Some(&body.to_string())).await
    });
    for _ in 0..200 {
        if let Some(id) = seen.ids.lock().unwrap().first() {
            return (call, id.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the participant was never asked to prepare");
}

/// Presumed abort: a one-shot commit is first logged with its decision. Before that the
/// in-flight registry answers for it (a participant asking gets `preparing`, never a 404
/// that would mean abort); afterwards the log does.
#[tokio::test]
async fn a_one_shot_commit_is_first_logged_with_its_decision() {
    let f = fixture().await;
    let (url, seen) = slow_participant(Duration::from_millis(600)).await;
    let (call_handle, id) = one_shot_in_prepare(&f, &url, &seen).await;

    assert_eq!(
        logged(&f.log).await,
        0,
        "nothing is logged before the decision"
    );
    let (status, during) = call(&f.app, "GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{during}");
    assert_eq!(during["state"], "preparing", "{during}");

    let (status, done) = call_handle.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{done}");
    assert_eq!(done["state"], "committed", "{done}");
    assert_eq!(seen.commits.load(Ordering::SeqCst), 1);
    let (_, after) = call(&f.app, "GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(after["state"], "committed", "{after}");
    assert_eq!(logged(&f.log).await, 1);
}

/// A client's abort of a one-shot commit that is not logged yet logs the abort; the driver's
/// decision then loses to it and follows the log: aborted, and the participant is sent the
/// abort.
#[tokio::test]
async fn an_abort_before_the_first_log_write_wins() {
    let f = fixture().await;
    let (url, seen) = slow_participant(Duration::from_millis(600)).await;
    let (call_handle, id) = one_shot_in_prepare(&f, &url, &seen).await;

    let (status, aborted) = call(
        &f.app,
        "POST",
        &format!("/v1/transactions/{id}/abort"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{aborted}");
    assert_eq!(aborted["state"], "aborting", "{aborted}");
    let (_, done) = call_handle.await.unwrap();
    assert_eq!(done["state"], "aborted", "{done}");
    assert_eq!(done["reason"], "aborted by client", "{done}");
    assert_eq!(seen.aborts.load(Ordering::SeqCst), 1);
    assert_eq!(seen.commits.load(Ordering::SeqCst), 0);
}

/// The log fails when the decision is written: the client hears 503 at once (not after the
/// deadline), and anyone asking hears "ask later" (the driver goes on trying to log an abort),
/// never a 404 that a participant would take for an abort.
#[tokio::test]
async fn a_failed_decision_write_answers_503_and_keeps_the_transaction_in_doubt() {
    let f = fixture().await;
    let (url, seen) = slow_participant(Duration::from_millis(400)).await;
    let (call_handle, id) = one_shot_in_prepare(&f, &url, &seen).await;
    match &*f.log {
        AnyLog::Sqlite(log) => log.close().await,
        AnyLog::Postgres(_) => unreachable!("the fixture uses SQLite"),
    }
    let started = std::time::Instant::now();
    let (status, body) = call_handle.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error_shape(&body, "log_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // With its log down the coordinator cannot say more than "ask later": a 503, not the 404
    // that means "no record, abort".
    let (status, during) = call(&f.app, "GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{during}");
    assert_error_shape(&during, "log_unavailable");
    assert_eq!(seen.commits.load(Ordering::SeqCst), 0);
}

/// A participant offering the one-phase commit: `{"vote":"abort"}` in the payload refuses.
/// Counts one-phase calls and any two-phase call.
async fn one_phase_participant() -> (String, Arc<Scripted>) {
    let counts = Arc::new(Scripted::default());
    let (one, two) = (counts.clone(), counts.clone());
    let app = Router::new()
        .route(
            "/commit-one-phase",
            post(move |Json(body): Json<Value>| async move {
                one.commits.fetch_add(1, Ordering::SeqCst);
                if body["payload"]["vote"] == "abort" {
                    Json(json!({"state": "aborted", "reason": "scripted refusal"}))
                } else {
                    Json(json!({"state": "committed"}))
                }
            }),
        )
        .route(
            "/prepare",
            post(move || async move {
                two.prepares.fetch_add(1, Ordering::SeqCst);
                Json(json!({"vote": "commit"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, counts)
}

/// A single participant that offers it commits in one phase: one call, no prepare, and the
/// outcome is logged.
#[tokio::test]
async fn a_single_participant_commits_in_one_phase() {
    let f = fixture().await;
    let (url, seen) = one_phase_participant().await;
    let body = json!({"commit": true, "participants": [{"name": "solo", "url": url}]});
    let (status, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{tx}");
    assert_eq!(tx["state"], "committed", "{tx}");
    assert_eq!(tx["participants"][0]["state"], "committed", "{tx}");
    assert_eq!(seen.commits.load(Ordering::SeqCst), 1, "one one-phase call");
    assert_eq!(seen.prepares.load(Ordering::SeqCst), 0, "no prepare");
    let id = tx["id"].as_str().unwrap();
    let (_, read) = call(&f.app, "GET", &format!("/v1/transactions/{id}"), None).await;
    assert_eq!(read["state"], "committed", "{read}");
    // The outcome reaches the log right after the answer.
    for _ in 0..100 {
        let logged = f.log.get(id.parse().unwrap()).await.unwrap().unwrap();
        if logged.state == TransactionState::Committed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the one-phase outcome was never logged");
}

/// Its refusal aborts the transaction with its reason, and nothing is sent afterwards.
#[tokio::test]
async fn a_one_phase_refusal_aborts_with_the_reason() {
    let f = fixture().await;
    let (url, seen) = one_phase_participant().await;
    let body = json!({"commit": true, "participants": [
        {"name": "solo", "url": url, "payload": {"vote": "abort"}}]});
    let (_, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(tx["state"], "aborted", "{tx}");
    assert_eq!(tx["reason"], "participant solo aborted: scripted refusal");
    assert_eq!(seen.commits.load(Ordering::SeqCst), 1);
    assert_eq!(seen.prepares.load(Ordering::SeqCst), 0);
}

/// A participant without the one-phase call (404) gets the two phases instead.
#[tokio::test]
async fn without_the_one_phase_call_the_two_phases_run() {
    let f = fixture().await;
    let (url, seen) = scripted_participant().await;
    let body = json!({"commit": true, "participants": [{"name": "plain", "url": url}]});
    let (_, tx) = call(&f.app, "POST", "/v1/transactions", Some(&body.to_string())).await;
    assert_eq!(tx["state"], "committed", "{tx}");
    assert_eq!(seen.prepares.load(Ordering::SeqCst), 1);
    assert_eq!(seen.commits.load(Ordering::SeqCst), 1);
}
