//! The OpenAPI 3.1 documents of the coordinator API and of the participant protocol, kept as
//! JSON in `docs/openapi/` and served as they are at [`COORDINATOR_PATH`] and
//! [`PARTICIPANT_PATH`]. docs/protocol.md stays the source of truth; the tests below check the
//! coordinator document against the router and the real answers.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// Path of the coordinator API's document.
pub const COORDINATOR_PATH: &str = "/openapi.json";
/// Path of the participant protocol's document.
pub const PARTICIPANT_PATH: &str = "/openapi/participant.json";

/// The coordinator API as OpenAPI 3.1 JSON (`docs/openapi/coordinator.json`).
pub const COORDINATOR_DOCUMENT: &str = include_str!("../../../docs/openapi/coordinator.json");
/// The participant protocol as OpenAPI 3.1 JSON (`docs/openapi/participant.json`).
pub const PARTICIPANT_DOCUMENT: &str = include_str!("../../../docs/openapi/participant.json");

/// `GET /openapi.json`.
pub async fn coordinator_document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], COORDINATOR_DOCUMENT)
}

/// `GET /openapi/participant.json`.
pub async fn participant_document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], PARTICIPANT_DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::super::{AppState, Metrics, route_list, router};
    use super::*;
    use crate::conformance::schema::OpenApiDoc;
    use crate::driver::{Driver, DriverSettings};
    use crate::log::AnyLog;
    use crate::service::Coordinator;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{Value, json};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;

    struct Fixture {
        app: Router,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let log = Arc::new(AnyLog::connect(&url).await.unwrap());
        let driver = Driver::new(
            log,
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
        Fixture { app, _dir: dir }
    }

    /// A participant that votes abort for the payload `{"vote":"abort"}`, commit otherwise.
    async fn participant() -> String {
        let app = Router::new()
            .route(
                "/prepare",
                post(|Json(body): Json<Value>| async move {
                    if body["payload"]["vote"] == "abort" {
                        Json(json!({"vote": "abort", "reason": "refused by the test"}))
                    } else {
                        Json(json!({"vote": "commit"}))
                    }
                }),
            )
            .route(
                "/commit",
                post(|| async { Json(json!({"state": "committed"})) }),
            )
            .route(
                "/abort",
                post(|| async { Json(json!({"state": "aborted"})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// One answer of the router.
    struct Answer {
        status: StatusCode,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or(Value::Null)
        }
    }

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
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
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            content_type,
            body,
        }
    }

    fn coordinator_doc() -> OpenApiDoc {
        OpenApiDoc::parse(COORDINATOR_DOCUMENT).unwrap()
    }

    #[test]
    fn both_documents_are_openapi_3_with_resolvable_refs_and_checked_keywords() {
        for (name, text) in [
            ("coordinator", COORDINATOR_DOCUMENT),
            ("participant", PARTICIPANT_DOCUMENT),
        ] {
            let doc = OpenApiDoc::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(doc.value()["openapi"], "3.1.0", "{name}");
            let problems = doc.lint();
            assert!(problems.is_empty(), "{name}: {problems:#?}");
        }
        let participant = OpenApiDoc::parse(PARTICIPANT_DOCUMENT).unwrap();
        let ops: Vec<_> = participant.operations().into_iter().collect();
        assert_eq!(
            ops,
            [
                ("POST".to_owned(), "/abort".to_owned()),
                ("POST".to_owned(), "/commit".to_owned()),
                ("POST".to_owned(), "/commit-one-phase".to_owned()),
                ("POST".to_owned(), "/prepare".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn the_served_document_lists_every_route_of_the_router_and_no_other() {
        let f = fixture().await;
        let answer = send(&f.app, "GET", COORDINATOR_PATH, None, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        let served = OpenApiDoc::parse(std::str::from_utf8(&answer.body).unwrap()).unwrap();
        assert_eq!(served.value(), coordinator_doc().value());

        let documented = served.operations();
        let routed: BTreeSet<(String, String)> = route_list()
            .into_iter()
            .map(|(m, p)| (m.as_str().to_owned(), p.to_owned()))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the document: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented operations the router lacks: {unrouted:?}"
        );

        // The router really answers each documented operation (not with its fallbacks), and
        // no other method on a documented path.
        let id = twopc::TransactionId::new().to_string();
        for (method, path) in &documented {
            let uri = path.replace("{id}", &id);
            let body = (method == "POST").then_some("{}");
            let answer = send(&f.app, method, &uri, body, &[]).await;
            let code = answer.json()["error"]["code"].clone();
            assert!(
                code != "not_found" && code != "method_not_allowed",
                "{method} {uri} reached a fallback: {} {code}",
                answer.status
            );
            for other in ["PUT", "DELETE", "PATCH"] {
                let answer = send(&f.app, other, &uri, None, &[]).await;
                assert_eq!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{other} {uri}"
                );
            }
        }
        let unknown = send(&f.app, "GET", "/v2/transactions", None, &[]).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json()["error"]["code"], "not_found");
    }

    #[tokio::test]
    async fn the_participant_document_is_served_as_kept_in_docs() {
        let f = fixture().await;
        let answer = send(&f.app, "GET", PARTICIPANT_PATH, None, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, PARTICIPANT_DOCUMENT.as_bytes());
        let on_disk = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/openapi/participant.json"
        ))
        .unwrap();
        assert_eq!(on_disk, PARTICIPANT_DOCUMENT);
    }

    /// Drives the real router through every documented answer it can give without a failing
    /// log, and checks each status, content type and body against the document.
    #[tokio::test]
    async fn the_real_answers_are_the_documented_ones() {
        let f = fixture().await;
        let doc = coordinator_doc();
        let participant = participant().await;
        let mut seen: BTreeSet<(String, String, u16)> = BTreeSet::new();

        // (method, template, uri, body, headers, expected status, expected error code)
        let mut check = async |method: &str,
                               template: &str,
                               uri: &str,
                               body: Option<&str>,
                               headers: &[(&str, &str)],
                               expected: u16,
                               code: Option<&str>|
               -> Value {
            let answer = send(&f.app, method, uri, body, headers).await;
            assert_eq!(
                answer.status.as_u16(),
                expected,
                "{method} {uri}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            let documented = doc
                .response(method, template, expected)
                .unwrap_or_else(|| panic!("{method} {template} {expected} undocumented"));
            assert_eq!(documented.key, expected.to_string(), "{method} {template}");
            if let Err(why) = doc.check_answer(
                method,
                template,
                expected,
                answer.content_type.as_deref(),
                &answer.body,
            ) {
                panic!("{method} {uri}: {why}");
            }
            if let Some(code) = code {
                assert_eq!(answer.json()["error"]["code"], code, "{method} {uri}");
            }
            seen.insert((method.to_owned(), template.to_owned(), expected));
            answer.json()
        };

        let txs = "/v1/transactions";
        let one = "/v1/transactions/{id}";
        let enlist = "/v1/transactions/{id}/participants";
        let commit = "/v1/transactions/{id}/commit";
        let abort = "/v1/transactions/{id}/abort";
        let unknown = twopc::TransactionId::new().to_string();
        let p = |name: &str, payload: Value| {
            json!({"name": name, "url": participant, "payload": payload}).to_string()
        };

        // Create, with and without an idempotency key.
        let created = check("POST", txs, txs, Some("{}"), &[], 201, None).await;
        assert_eq!(created["state"], "active");
        let id = created["id"].as_str().unwrap().to_owned();
        let key = [("idempotency-key", "openapi-test")];
        check("POST", txs, txs, Some("{}"), &key, 201, None).await;
        check("POST", txs, txs, Some("{}"), &key, 200, None).await;
        let other = r#"{"timeout_ms": 5000}"#;
        check(
            "POST",
            txs,
            txs,
            Some(other),
            &key,
            409,
            Some("idempotency_key_reused"),
        )
        .await;
        let blank = [("idempotency-key", "   ")];
        check(
            "POST",
            txs,
            txs,
            Some("{}"),
            &blank,
            400,
            Some("invalid_idempotency_key"),
        )
        .await;
        check("POST", txs, txs, Some("{"), &[], 400, Some("invalid_json")).await;
        check(
            "POST",
            txs,
            txs,
            Some(r#"{"tmeout_ms":1}"#),
            &[],
            400,
            Some("invalid_json"),
        )
        .await;
        check(
            "POST",
            txs,
            txs,
            Some(r#"{"timeout_ms":0}"#),
            &[],
            400,
            Some("invalid_timeout"),
        )
        .await;
        check(
            "POST",
            txs,
            txs,
            Some(r#"{"commit":true}"#),
            &[],
            400,
            Some("no_participants"),
        )
        .await;
        check(
            "POST",
            txs,
            txs,
            None,
            &[],
            415,
            Some("unsupported_media_type"),
        )
        .await;
        let huge = format!(
            r#"{{"participants":[{{"name":"a","url":"http://x","payload":"{}"}}]}}"#,
            "x".repeat(super::super::BODY_LIMIT)
        );
        check(
            "POST",
            txs,
            txs,
            Some(&huge),
            &[],
            413,
            Some("body_too_large"),
        )
        .await;

        // One-shot: committed, and aborted with the participant's reason.
        let both = format!(
            r#"{{"commit":true,"participants":[{},{}]}}"#,
            p("a", json!({})),
            p("b", json!({}))
        );
        let done = check("POST", txs, txs, Some(&both), &[], 201, None).await;
        assert_eq!(done["state"], "committed");
        let refused = format!(
            r#"{{"commit":true,"participants":[{}]}}"#,
            p("a", json!({"vote": "abort"}))
        );
        let aborted = check("POST", txs, txs, Some(&refused), &[], 201, None).await;
        assert_eq!(aborted["state"], "aborted");
        assert!(
            aborted["reason"]
                .as_str()
                .unwrap()
                .contains("refused by the test")
        );

        // List.
        let list = check("GET", txs, txs, None, &[], 200, None).await;
        assert!(list["transactions"].as_array().unwrap().len() >= 4);
        check(
            "GET",
            txs,
            "/v1/transactions?state=committed&limit=1",
            None,
            &[],
            200,
            None,
        )
        .await;
        check(
            "GET",
            txs,
            "/v1/transactions?state=done",
            None,
            &[],
            400,
            Some("invalid_state"),
        )
        .await;
        check(
            "GET",
            txs,
            "/v1/transactions?limit=0",
            None,
            &[],
            400,
            Some("invalid_limit"),
        )
        .await;
        check(
            "GET",
            txs,
            "/v1/transactions?sort=asc",
            None,
            &[],
            400,
            Some("invalid_query"),
        )
        .await;

        // One transaction.
        let at = |suffix: &str, id: &str| format!("/v1/transactions/{id}{suffix}");
        check("GET", one, &at("", &id), None, &[], 200, None).await;
        check(
            "GET",
            one,
            &at("", &unknown),
            None,
            &[],
            404,
            Some("transaction_not_found"),
        )
        .await;
        check(
            "GET",
            one,
            &at("", "nope"),
            None,
            &[],
            400,
            Some("invalid_transaction_id"),
        )
        .await;

        // Commit of a transaction without participants, then enlist and its refusals.
        check(
            "POST",
            commit,
            &at("/commit", &id),
            None,
            &[],
            409,
            Some("no_participants"),
        )
        .await;
        let uri = at("/participants", &id);
        check(
            "POST",
            enlist,
            &uri,
            Some(&p("bank-a", json!(1))),
            &[],
            201,
            None,
        )
        .await;
        check(
            "POST",
            enlist,
            &uri,
            Some(&p("bank-a", json!(2))),
            &[],
            400,
            Some("duplicate_participant"),
        )
        .await;
        check(
            "POST",
            enlist,
            &uri,
            Some(&p("bank a", json!(2))),
            &[],
            400,
            Some("invalid_participant_name"),
        )
        .await;
        let bad_url = r#"{"name":"c","url":"ftp://x"}"#;
        check(
            "POST",
            enlist,
            &uri,
            Some(bad_url),
            &[],
            400,
            Some("invalid_participant_url"),
        )
        .await;
        let nul = r#"{"name":"c","url":"http://x","payload":"a\u0000b"}"#;
        check(
            "POST",
            enlist,
            &uri,
            Some(nul),
            &[],
            400,
            Some("invalid_payload"),
        )
        .await;
        check(
            "POST",
            enlist,
            &uri,
            Some("[]"),
            &[],
            400,
            Some("invalid_json"),
        )
        .await;
        check(
            "POST",
            enlist,
            &uri,
            None,
            &[],
            415,
            Some("unsupported_media_type"),
        )
        .await;
        let huge_p = format!(
            r#"{{"name":"c","url":"http://x","payload":"{}"}}"#,
            "x".repeat(super::super::BODY_LIMIT)
        );
        check(
            "POST",
            enlist,
            &uri,
            Some(&huge_p),
            &[],
            413,
            Some("body_too_large"),
        )
        .await;
        check(
            "POST",
            enlist,
            &at("/participants", "nope"),
            Some(&p("c", json!(1))),
            &[],
            400,
            Some("invalid_transaction_id"),
        )
        .await;
        check(
            "POST",
            enlist,
            &at("/participants", &unknown),
            Some(&p("c", json!(1))),
            &[],
            404,
            Some("transaction_not_found"),
        )
        .await;

        // Commit, repeat, and what is refused afterwards.
        let committed = check("POST", commit, &at("/commit", &id), None, &[], 200, None).await;
        assert_eq!(committed["state"], "committed");
        check("POST", commit, &at("/commit", &id), None, &[], 200, None).await;
        check(
            "POST",
            abort,
            &at("/abort", &id),
            None,
            &[],
            409,
            Some("already_committed"),
        )
        .await;
        check(
            "POST",
            enlist,
            &uri,
            Some(&p("late", json!(1))),
            &[],
            409,
            Some("transaction_not_active"),
        )
        .await;
        check(
            "POST",
            commit,
            &at("/commit", "nope"),
            None,
            &[],
            400,
            Some("invalid_transaction_id"),
        )
        .await;
        check(
            "POST",
            commit,
            &at("/commit", &unknown),
            None,
            &[],
            404,
            Some("transaction_not_found"),
        )
        .await;

        // Abort.
        let fresh = check("POST", txs, txs, Some("{}"), &[], 201, None).await;
        let fresh = fresh["id"].as_str().unwrap().to_owned();
        let gone = check("POST", abort, &at("/abort", &fresh), None, &[], 200, None).await;
        assert_eq!(gone["state"], "aborted");
        check(
            "POST",
            abort,
            &at("/abort", "nope"),
            None,
            &[],
            400,
            Some("invalid_transaction_id"),
        )
        .await;
        check(
            "POST",
            abort,
            &at("/abort", &unknown),
            None,
            &[],
            404,
            Some("transaction_not_found"),
        )
        .await;

        // Operations.
        check("GET", "/healthz", "/healthz", None, &[], 200, None).await;
        check("GET", "/metrics", "/metrics", None, &[], 200, None).await;
        check(
            "GET",
            COORDINATOR_PATH,
            COORDINATOR_PATH,
            None,
            &[],
            200,
            None,
        )
        .await;
        check(
            "GET",
            PARTICIPANT_PATH,
            PARTICIPANT_PATH,
            None,
            &[],
            200,
            None,
        )
        .await;

        // Every explicitly documented answer was seen, except the log failure (503), which
        // needs a broken log.
        let mut unseen = Vec::new();
        for (method, path) in doc.operations() {
            let responses = doc.operation(&method, &path).unwrap()["responses"]
                .as_object()
                .unwrap();
            for status in responses.keys().filter_map(|k| k.parse::<u16>().ok()) {
                if status != 503 && !seen.contains(&(method.clone(), path.clone(), status)) {
                    unseen.push(format!("{method} {path} {status}"));
                }
            }
        }
        assert!(
            unseen.is_empty(),
            "documented but never answered: {unseen:?}"
        );
    }
}
