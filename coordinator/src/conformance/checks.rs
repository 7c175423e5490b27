//! The checks of the conformance kit, one function per rule, each on fresh transactions.

use super::schema::OpenApiDoc;
use super::{CheckResult, Exchange, KitConfig, MAX_KEPT_BODY, Verdict, shorten};
use serde_json::{Value, json};
use twopc::TransactionId;

/// Every check, by name, with the rule it checks, in the order they run.
pub const CHECKS: [(&str, &str); 12] = [
    (
        "payload_accepted",
        "prepare with --payload answers 200 {\"vote\":\"commit\"} (the kit needs such a payload)",
    ),
    (
        "prepare_idempotent",
        "a repeated prepare answers the vote first given",
    ),
    (
        "commit_idempotent",
        "commit after a commit vote answers 200, and a repeated commit answers 200 again",
    ),
    (
        "abort_after_commit_refused",
        "abort of a committed transaction is refused with 409 outcome_conflict",
    ),
    (
        "abort_idempotent",
        "abort after a commit vote answers 200, and a repeated abort answers 200 again",
    ),
    (
        "commit_after_abort_refused",
        "commit of an aborted transaction is refused with 409 outcome_conflict",
    ),
    (
        "abort_unknown_tombstone",
        "abort of an unknown transaction answers 200 and leaves a tombstone: a later prepare of it votes abort",
    ),
    (
        "commit_unknown_refused",
        "commit of a transaction never prepared is refused with 404 unknown_transaction, never acknowledged",
    ),
    (
        "malformed_request_rejected",
        "a malformed request (not JSON, missing fields, transaction_id not a UUID) answers 4xx",
    ),
    (
        "one_phase_optional",
        "commit-one-phase is optional (404, 405 or 501 when not offered); if offered, it commits with --payload, a repeat answers the same, and an abort afterwards is refused with 409",
    ),
    (
        "abort_payload_refused",
        "prepare with --abort-payload answers 200 {\"vote\":\"abort\",\"reason\":…} with a reason",
    ),
    (
        "answers_documented",
        "every answer has a documented status, Content-Type: application/json and the documented body (docs/openapi/participant.json)",
    ),
];

/// Sends the kit's requests and records them.
struct Probe<'a> {
    /// The HTTP client (with the per-request timeout).
    http: &'a reqwest::Client,
    /// What to check and how.
    config: &'a KitConfig,
    /// Every exchange of every check so far, for `answers_documented`.
    all: Vec<Exchange>,
    /// The exchanges of the check running now.
    current: Vec<Exchange>,
}

impl Probe<'_> {
    /// Sends `body` to `path` as JSON and records the exchange.
    async fn post(&mut self, path: &'static str, body: String) -> Exchange {
        let url = format!("{}{path}", self.config.url);
        let sent = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let mut exchange = Exchange {
            method: "POST",
            path,
            request: body,
            status: None,
            content_type: None,
            response: None,
            error: None,
        };
        match sent {
            Ok(response) => {
                exchange.status = Some(response.status().as_u16());
                exchange.content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes().await {
                    Ok(bytes) => {
                        let text = String::from_utf8_lossy(&bytes);
                        exchange.response = Some(shorten(&text, MAX_KEPT_BODY));
                    }
                    Err(e) => exchange.error = Some(format!("reading the body failed: {e}")),
                }
            }
            Err(e) => exchange.error = Some(crate::driver::error_chain(&e)),
        }
        self.current.push(exchange.clone());
        exchange
    }

    /// `POST /prepare` of `id` with `payload`.
    async fn prepare(&mut self, id: TransactionId, payload: &Value) -> Exchange {
        let body = self.prepare_body(id, payload);
        self.post("/prepare", body).await
    }

    /// The body of a prepare (also of a one-phase commit).
    fn prepare_body(&self, id: TransactionId, payload: &Value) -> String {
        json!({
            "transaction_id": id,
            "participant": self.config.participant,
            "payload": payload,
            "coordinator": self.config.coordinator,
            "deadline_ms": u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX),
        })
        .to_string()
    }

    /// `POST /commit-one-phase` of `id` with `payload` (the body of a prepare).
    async fn one_phase(&mut self, id: TransactionId, payload: &Value) -> Exchange {
        let body = self.prepare_body(id, payload);
        self.post("/commit-one-phase", body).await
    }

    /// `POST /commit` of `id`.
    async fn commit(&mut self, id: TransactionId) -> Exchange {
        let body = self.outcome_body(id);
        self.post("/commit", body).await
    }

    /// `POST /abort` of `id`.
    async fn abort(&mut self, id: TransactionId) -> Exchange {
        let body = self.outcome_body(id);
        self.post("/abort", body).await
    }

    fn outcome_body(&self, id: TransactionId) -> String {
        json!({"transaction_id": id, "participant": self.config.participant}).to_string()
    }

    /// Ends the running check: its verdict and the exchanges it made.
    fn finish(&mut self, name: &'static str, outcome: Outcome) -> CheckResult {
        let exchanges = std::mem::take(&mut self.current);
        self.all.extend(exchanges.iter().cloned());
        let (verdict, detail) = match outcome {
            Outcome::Pass => (Verdict::Pass, String::new()),
            Outcome::Fail(why) => (Verdict::Fail, why),
            Outcome::Skip(why) => (Verdict::Skip, why),
        };
        CheckResult {
            name,
            rule: rule(name),
            verdict,
            detail,
            exchanges,
        }
    }
}

/// How a check body ended.
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

impl From<Result<(), String>> for Outcome {
    fn from(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self::Pass,
            Err(why) => Self::Fail(why),
        }
    }
}

/// The rule text of the check `name`.
fn rule(name: &str) -> &'static str {
    CHECKS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, rule)| rule)
}

/// Runs every check in [`CHECKS`] order.
pub(super) async fn run_all(
    http: &reqwest::Client,
    config: &KitConfig,
    document: &OpenApiDoc,
) -> Vec<CheckResult> {
    let mut p = Probe {
        http,
        config,
        all: Vec::new(),
        current: Vec::new(),
    };
    let mut results = Vec::with_capacity(CHECKS.len());

    let outcome = payload_accepted(&mut p).await.into();
    results.push(p.finish("payload_accepted", outcome));
    let outcome = prepare_idempotent(&mut p).await.into();
    results.push(p.finish("prepare_idempotent", outcome));
    let outcome = commit_idempotent(&mut p).await.into();
    results.push(p.finish("commit_idempotent", outcome));
    let outcome = abort_after_commit_refused(&mut p).await.into();
    results.push(p.finish("abort_after_commit_refused", outcome));
    let outcome = abort_idempotent(&mut p).await.into();
    results.push(p.finish("abort_idempotent", outcome));
    let outcome = commit_after_abort_refused(&mut p).await.into();
    results.push(p.finish("commit_after_abort_refused", outcome));
    let outcome = abort_unknown_tombstone(&mut p).await.into();
    results.push(p.finish("abort_unknown_tombstone", outcome));
    let outcome = commit_unknown_refused(&mut p).await.into();
    results.push(p.finish("commit_unknown_refused", outcome));
    let outcome = malformed_request_rejected(&mut p).await.into();
    results.push(p.finish("malformed_request_rejected", outcome));
    let outcome = one_phase_optional(&mut p).await;
    results.push(p.finish("one_phase_optional", outcome));
    let outcome = abort_payload_refused(&mut p).await;
    results.push(p.finish("abort_payload_refused", outcome));

    // Judged on everything the other checks received; its evidence is the offending answers.
    let (outcome, offending) = answers_documented(&p.all, document);
    let mut result = p.finish("answers_documented", outcome);
    result.exchanges = offending;
    results.push(result);
    results
}

/// What an answer was, for messages: `200 {"vote":"commit"}` or `no answer: …`.
fn answered(e: &Exchange) -> String {
    match (e.status, &e.error) {
        (Some(status), _) => format!(
            "{status} {}",
            shorten(e.response.as_deref().unwrap_or("(empty body)"), 200)
        ),
        (None, Some(error)) => format!("no answer ({error})"),
        (None, None) => "no answer".to_owned(),
    }
}

/// The vote of a 200 prepare answer: `("commit", None)`, `("abort", Some(reason))`…
fn vote(e: &Exchange) -> Option<(String, Option<String>)> {
    if e.status != Some(200) {
        return None;
    }
    let body = e.json()?;
    let kind = body.get("vote")?.as_str()?.to_owned();
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((kind, reason))
}

/// Ok when `e` is a 200 prepare answer with a vote of `kind`.
fn expect_vote(e: &Exchange, kind: &str, what: &str) -> Result<(), String> {
    match vote(e) {
        Some((k, _)) if k == kind => Ok(()),
        _ => Err(format!(
            "{what} answered {}, expected 200 {{\"vote\":\"{kind}\"…}}",
            answered(e)
        )),
    }
}

/// Ok when `e` answered `status`.
fn expect_status(e: &Exchange, status: u16, what: &str, hint: &str) -> Result<(), String> {
    if e.status == Some(status) {
        Ok(())
    } else {
        Err(format!(
            "{what} answered {}, expected {status}{hint}",
            answered(e)
        ))
    }
}

/// A prepare that must vote commit before a check can go on.
async fn prepared(p: &mut Probe<'_>, id: TransactionId) -> Result<(), String> {
    let payload = p.config.payload.clone();
    let e = p.prepare(id, &payload).await;
    expect_vote(&e, "commit", "prepare with --payload").map_err(|why| {
        format!("{why}; this check needs a payload the participant votes commit on (see payload_accepted)")
    })
}

async fn payload_accepted(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    let payload = p.config.payload.clone();
    let e = p.prepare(id, &payload).await;
    let result = expect_vote(&e, "commit", "prepare with --payload")
        .map_err(|why| format!("{why}; pass --payload with a payload this participant accepts"));
    // Release what it reserved.
    p.abort(id).await;
    result
}

async fn prepare_idempotent(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    let payload = p.config.payload.clone();
    let first = p.prepare(id, &payload).await;
    let second = p.prepare(id, &payload).await;
    p.abort(id).await;
    let (Some(a), Some(b)) = (vote(&first), vote(&second)) else {
        return Err(format!(
            "the two prepares answered {} and {}, expected two 200 votes",
            answered(&first),
            answered(&second)
        ));
    };
    if a == b {
        Ok(())
    } else {
        Err(format!(
            "the repeated prepare answered {} after {}: a repeated prepare must answer the vote first given",
            answered(&second),
            answered(&first)
        ))
    }
}

async fn commit_idempotent(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    prepared(p, id).await?;
    let first = p.commit(id).await;
    expect_status(&first, 200, "commit after a commit vote", "")?;
    let second = p.commit(id).await;
    expect_status(
        &second,
        200,
        "the repeated commit",
        ": a repeated commit must answer 200 and change nothing",
    )
}

async fn abort_after_commit_refused(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    prepared(p, id).await?;
    let commit = p.commit(id).await;
    expect_status(&commit, 200, "commit after a commit vote", "")?;
    let abort = p.abort(id).await;
    expect_status(
        &abort,
        409,
        "abort of a committed transaction",
        " outcome_conflict: it must not acknowledge an outcome it did not apply",
    )
}

async fn abort_idempotent(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    prepared(p, id).await?;
    let first = p.abort(id).await;
    expect_status(&first, 200, "abort after a commit vote", "")?;
    let second = p.abort(id).await;
    expect_status(
        &second,
        200,
        "the repeated abort",
        ": a repeated abort must answer 200 and change nothing",
    )
}

async fn commit_after_abort_refused(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    prepared(p, id).await?;
    let abort = p.abort(id).await;
    expect_status(&abort, 200, "abort after a commit vote", "")?;
    let commit = p.commit(id).await;
    expect_status(
        &commit,
        409,
        "commit of an aborted transaction",
        " outcome_conflict: it must not acknowledge an outcome it did not apply",
    )
}

async fn abort_unknown_tombstone(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    let abort = p.abort(id).await;
    expect_status(
        &abort,
        200,
        "abort of a transaction never prepared",
        ": the abort of an unknown transaction is acknowledged (and leaves a tombstone)",
    )?;
    let payload = p.config.payload.clone();
    let late = p.prepare(id, &payload).await;
    let result = expect_vote(
        &late,
        "abort",
        "a prepare after the abort of the same transaction",
    )
    .map_err(|why| {
        format!("{why}: an abort must leave a tombstone so that a late prepare votes abort")
    });
    if vote(&late).is_some_and(|(k, _)| k == "commit") {
        // Release what the late prepare reserved.
        p.abort(id).await;
    }
    result
}

async fn commit_unknown_refused(p: &mut Probe<'_>) -> Result<(), String> {
    let id = TransactionId::new();
    let commit = p.commit(id).await;
    match commit.status {
        Some(404) => Ok(()),
        Some(200) => Err(format!(
            "commit of a transaction never prepared answered {}: it acknowledged a commit it cannot have performed; expected 404 unknown_transaction",
            answered(&commit)
        )),
        _ => Err(format!(
            "commit of a transaction never prepared answered {}, expected 404 unknown_transaction",
            answered(&commit)
        )),
    }
}

async fn malformed_request_rejected(p: &mut Probe<'_>) -> Result<(), String> {
    let name = p.config.participant.clone();
    let not_uuid = |extra: Value| {
        let mut body = json!({"transaction_id": "not-a-uuid", "participant": name});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body.to_string()
    };
    let prepare_extra = json!({
        "payload": p.config.payload,
        "coordinator": p.config.coordinator,
        "deadline_ms": 1000,
    });
    let cases: [(&'static str, &str, String); 9] = [
        (
            "/prepare",
            "a body that is not JSON",
            r#"{"transaction_id": "#.to_owned(),
        ),
        ("/prepare", "a body without its fields", "{}".to_owned()),
        (
            "/prepare",
            "a transaction_id that is not a UUID",
            not_uuid(prepare_extra),
        ),
        (
            "/commit",
            "a body that is not JSON",
            r#"{"transaction_id": "#.to_owned(),
        ),
        ("/commit", "a body without its fields", "{}".to_owned()),
        (
            "/commit",
            "a transaction_id that is not a UUID",
            not_uuid(json!({})),
        ),
        (
            "/abort",
            "a body that is not JSON",
            r#"{"transaction_id": "#.to_owned(),
        ),
        ("/abort", "a body without its fields", "{}".to_owned()),
        (
            "/abort",
            "a transaction_id that is not a UUID",
            not_uuid(json!({})),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, what, body) in cases {
        let e = p.post(path, body).await;
        if !e.status.is_some_and(|s| (400..500).contains(&s)) {
            wrong.push(format!("POST {path} with {what} answered {}", answered(&e)));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("expected 4xx: {}", wrong.join("; ")))
    }
}

async fn one_phase_optional(p: &mut Probe<'_>) -> Outcome {
    let id = TransactionId::new();
    let payload = p.config.payload.clone();
    let first = p.one_phase(id, &payload).await;
    match first.status {
        Some(404 | 405 | 501) => {
            // Not offered: what such a server answers for an unknown path is not the
            // protocol's business, so the answer is not judged by `answers_documented`.
            p.current.clear();
            return Outcome::Skip(format!(
                "not offered ({}): the coordinator uses prepare and commit",
                answered(&first)
            ));
        }
        Some(200) => {}
        _ => {
            return Outcome::Fail(format!(
                "commit-one-phase answered {}, expected 200 {{\"state\":…}} or 404/405/501 if not offered",
                answered(&first)
            ));
        }
    }
    let state = |e: &Exchange| {
        serde_json::from_str::<Value>(e.response.as_deref().unwrap_or(""))
            .ok()
            .and_then(|v| v["state"].as_str().map(str::to_owned))
    };
    if state(&first).as_deref() != Some("committed") {
        return Outcome::Fail(format!(
            "commit-one-phase with --payload answered {}, expected 200 {{\"state\":\"committed\"}}",
            answered(&first)
        ));
    }
    let second = p.one_phase(id, &payload).await;
    if second.status != Some(200) || state(&second).as_deref() != Some("committed") {
        return Outcome::Fail(format!(
            "the repeated commit-one-phase answered {} after {}: a repeat must answer the outcome recorded first",
            answered(&second),
            answered(&first)
        ));
    }
    let abort = p.abort(id).await;
    expect_status(
        &abort,
        409,
        "abort after a one-phase commit",
        ": the transaction committed, so an abort must be refused with 409 outcome_conflict",
    )
    .into()
}

async fn abort_payload_refused(p: &mut Probe<'_>) -> Outcome {
    let Some(payload) = p.config.abort_payload.clone() else {
        return Outcome::Skip("no --abort-payload given".to_owned());
    };
    let id = TransactionId::new();
    let e = p.prepare(id, &payload).await;
    let result = match vote(&e) {
        Some((kind, Some(reason))) if kind == "abort" && !reason.trim().is_empty() => Ok(()),
        Some((kind, _)) if kind == "abort" => Err(format!(
            "prepare with --abort-payload answered {}: an abort vote needs a reason a person can act on",
            answered(&e)
        )),
        _ => Err(format!(
            "prepare with --abort-payload answered {}, expected 200 {{\"vote\":\"abort\",\"reason\":…}}",
            answered(&e)
        )),
    };
    if vote(&e).is_some_and(|(k, _)| k == "commit") {
        p.abort(id).await;
    }
    result.into()
}

/// Checks every answer received against the participant document; returns the outcome and the
/// offending exchanges.
fn answers_documented(all: &[Exchange], document: &OpenApiDoc) -> (Outcome, Vec<Exchange>) {
    let answered: Vec<&Exchange> = all.iter().filter(|e| e.status.is_some()).collect();
    if answered.is_empty() {
        return (
            Outcome::Fail("the participant answered no request".to_owned()),
            Vec::new(),
        );
    }
    let mut problems = Vec::new();
    let mut offending = Vec::new();
    for e in answered {
        let Some(status) = e.status else { continue };
        let body = e.response.as_deref().unwrap_or("").as_bytes();
        if let Err(why) =
            document.check_answer(e.method, e.path, status, e.content_type.as_deref(), body)
        {
            problems.push(format!("{} {}: {why}", e.method, e.path));
            offending.push(e.clone());
        }
    }
    if problems.is_empty() {
        (Outcome::Pass, offending)
    } else {
        let shown: Vec<&String> = problems.iter().take(5).collect();
        let more = problems.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        (
            Outcome::Fail(format!(
                "{} answer(s) differ from docs/openapi/participant.json: {}{tail}",
                problems.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            offending,
        )
    }
}
