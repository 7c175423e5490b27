//! Performs the state machine's actions: prepares with deadlines, commits and aborts retried
//! until acknowledged. Every state change is persisted (compare-and-set) before the actions
//! that follow from it are performed.

use crate::failpoint::{self, names as fp};
use crate::inflight::Claim;
use crate::log::{DecisionLog, LogError};
use crate::machine::OnePhaseAnswer;
use crate::machine::{self, Action, Event, TransitionError};
use crate::record::{TxRecord, now_millis};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_retry::strategy::{ExponentialBackoff, jitter};
use tracing::{Instrument, debug, error, info, info_span, warn};
use twopc::wire::{
    Decision, ErrorBody, ONE_PHASE_PATH, OnePhaseOutcome, OutcomeRequest, PrepareRequest, Vote,
};

/// First retry delay of phase two: short, because a lost packet on loopback or a restarting
/// participant is the common case.
pub const RETRY_BASE: Duration = Duration::from_millis(50);
/// Longest wait between two attempts: a participant that is down for long gets one try every
/// few seconds, which bounds both the load on it and the time to finish once it is back.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Bound on one commit or abort call; the call is repeated after it anyway.
pub const PHASE_TWO_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors that stop a driver (the transaction stays in the log for recovery).
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The machine refused an event (a bug, logged).
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The transaction disappeared from the log.
    #[error("transaction vanished from the log")]
    Vanished,
}

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Base URL participants use to ask about a transaction (`coordinator` in prepare).
    pub advertise_url: String,
}

/// Sends protocol messages and records their outcome.
#[derive(Debug)]
pub struct Driver<L> {
    /// Where every decision is written before it is acted on.
    log: Arc<L>,
    /// Pooled keep-alive connections to participants.
    http: reqwest::Client,
    /// Settings.
    settings: DriverSettings,
}

impl<L: DecisionLog> Driver<L> {
    /// A driver writing to `log` and calling participants through `http`.
    pub fn new(log: Arc<L>, http: reqwest::Client, settings: DriverSettings) -> Self {
        Self {
            log,
            http,
            settings,
        }
    }

    /// The decision log.
    pub fn log(&self) -> &Arc<L> {
        &self.log
    }

    /// Drives a claimed transaction from `record` (already persisted) through `actions` to the
    /// end; returns the last persisted record.
    pub async fn drive(
        &self,
        claim: &Claim,
        mut record: TxRecord,
        mut actions: Vec<Action>,
    ) -> Result<TxRecord, DriveError> {
        {
            while let Some(action) = actions.pop() {
                let (next, more) = match action {
                    Action::Prepare(names) => self.prepare_phase(claim, record, names).await?,
                    Action::OnePhase(name) => self.one_phase(claim, record, name).await?,
                    Action::Commit(names) => {
                        failpoint::hit(fp::AFTER_COMMIT_DECISION).await;
                        let r = self
                            .phase_two(claim, record, names, Decision::Commit)
                            .await?;
                        (r, Vec::new())
                    }
                    Action::Abort(names) => {
                        let r = self
                            .phase_two(claim, record, names, Decision::Abort)
                            .await?;
                        (r, Vec::new())
                    }
                };
                record = next;
                actions.extend(more);
            }
            Ok(record)
        }
    }

    /// Applies `event` and persists the result; on a concurrent change, applies it to the
    /// fresh record instead. Returns the persisted record and the actions to perform.
    pub async fn advance(
        &self,
        claim: Option<&Claim>,
        mut record: TxRecord,
        event: Event,
    ) -> Result<(TxRecord, Vec<Action>), DriveError> {
        loop {
            let t = machine::apply(&record, event.clone(), now_millis())?;
            if !t.changed {
                return Ok((t.record, t.actions));
            }
            match self.persist(claim, &record, t.record).await {
                Ok(saved) => return Ok((saved, t.actions)),
                Err(DriveError::Log(LogError::Conflict { .. })) => {
                    record = self.reload(record.id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `next` over `prev` (compare-and-set; an insert when `prev` is not logged yet) and
    /// tells followers. Someone else's write first is a [`LogError::Conflict`] either way.
    pub(crate) async fn persist(
        &self,
        claim: Option<&Claim>,
        prev: &TxRecord,
        mut next: TxRecord,
    ) -> Result<TxRecord, DriveError> {
        next.version = prev.version + 1;
        if prev.is_logged() {
            self.log.update(&next).await?;
        } else {
            match self.log.create(&next, None).await {
                Ok(_) => {}
                Err(LogError::Duplicate(id)) => {
                    return Err(LogError::Conflict {
                        id,
                        expected: prev.version,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(claim) = claim {
            claim.publish(&next);
        }
        debug!(state = %next.state, version = next.version, "logged");
        Ok(next)
    }

    async fn reload(&self, id: twopc::TransactionId) -> Result<TxRecord, DriveError> {
        self.log.get(id).await?.ok_or(DriveError::Vanished)
    }

    /// Sends prepare to `names` concurrently, each bounded by the transaction's deadline;
    /// decides as soon as the votes allow it and logs the decision.
    async fn prepare_phase(
        &self,
        claim: &Claim,
        record: TxRecord,
        names: Vec<String>,
    ) -> Result<(TxRecord, Vec<Action>), DriveError> {
        let remaining = (record.deadline - now_millis()).max(0);
        let budget = Duration::from_millis(u64::try_from(remaining).unwrap_or(0));
        let mut calls = JoinSet::new();
        for name in &names {
            let Some(p) = record.participant(name) else {
                continue;
            };
            let body = PrepareRequest {
                transaction_id: record.id,
                participant: p.name.clone(),
                payload: p.payload.clone(),
                coordinator: self.settings.advertise_url.clone(),
                deadline_ms: budget.as_millis().try_into().unwrap_or(u64::MAX),
            };
            let url = format!("{}/prepare", p.url);
            let http = self.http.clone();
            let name = name.clone();
            calls.spawn(async move {
                let vote = prepare_call(&http, &url, &body, budget).await;
                (name, vote)
            });
        }

        let mut current = record.clone();
        let mut actions = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let Ok((participant, answer)) = joined else {
                continue;
            };
            let event = match answer {
                Ok(vote) => {
                    if let Vote::Abort { reason } = &vote {
                        info!(participant, reason, "voted abort");
                    }
                    Event::Voted { participant, vote }
                }
                // It stays `pending`, so the abort goes to it too: it may have prepared.
                Err(why) => {
                    info!(participant, why, "no vote");
                    Event::AbortRequested {
                        reason: format!("participant {participant} did not vote: {why}"),
                    }
                }
            };
            let t = machine::apply(&current, event, now_millis())?;
            current = t.record;
            actions = t.actions;
            if current.decision.is_some() {
                break;
            }
        }
        // Prepares still running are abandoned: the decision's aborts cover their participants.
        calls.abort_all();
        if current.decision.is_none() {
            // Every call ended without deciding (only possible if a task panicked): abort.
            let t = machine::apply(
                &current,
                Event::AbortRequested {
                    reason: "prepare did not complete".into(),
                },
                now_millis(),
            )?;
            current = t.record;
            actions = t.actions;
        }

        failpoint::hit(fp::BEFORE_DECISION).await;
        // DELIBERATELY BROKEN, test builds only (`failpoints` feature) and only with
        // TWOPC_BROKEN=skip_decision_log: go on to the commits without logging the decision.
        // The unlogged record keeps the logged version, so phase two's completion write (a
        // compare-and-set) is the first to log it. This breaks the protocol's first rule on
        // purpose, to show that the chaos test catches it (docs/reliability.md).
        #[cfg(feature = "failpoints")]
        if current.decision == Some(Decision::Commit)
            && failpoint::broken::enabled(failpoint::broken::SKIP_DECISION_LOG)
        {
            warn!(tx = %record.id, "broken: commit decision NOT logged before the commits");
            return Ok((
                TxRecord {
                    version: record.version,
                    ..current
                },
                actions,
            ));
        }
        match self.persist(Some(claim), &record, current).await {
            Ok(saved) => {
                info!(decision = ?saved.decision, state = %saved.state, "decided");
                Ok((saved, actions))
            }
            Err(DriveError::Log(LogError::Conflict { .. })) => {
                // Someone else decided first (an abort request): follow the logged state.
                let fresh = self.reload(record.id).await?;
                info!(state = %fresh.state, "decision raced; following the log");
                self.advance(Some(claim), fresh, Event::Recovered).await
            }
            Err(e) if !record.is_logged() => {
                error!(error = %e, "the decision could not be logged; logging an abort instead");
                // Tells a waiting client now (the record stays unlogged: see `await_outcome`).
                claim.publish(&TxRecord {
                    reason: Some(format!("the decision could not be logged: {e}")),
                    ..record.clone()
                });
                self.log_abort_until_written(claim, record).await
            }
            Err(e) => Err(e),
        }
    }

    /// After a failed first write of a record: maybe nothing was written, maybe the write
    /// landed after all (an ambiguous commit). Until the log tells which, the claim keeps the
    /// transaction `preparing` for anyone who asks (a missing record would mean abort to them);
    /// then an abort is logged, or the record that landed is followed.
    async fn log_abort_until_written(
        &self,
        claim: &Claim,
        record: TxRecord,
    ) -> Result<(TxRecord, Vec<Action>), DriveError> {
        let mut delay = RETRY_BASE;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX_DELAY);
            let event = Event::AbortRequested {
                reason: "the decision could not be logged".into(),
            };
            let t = machine::apply(&record, event, now_millis())?;
            match self.persist(Some(claim), &record, t.record).await {
                Ok(saved) => {
                    info!(state = %saved.state, "abort logged after a failed decision write");
                    return Ok((saved, t.actions));
                }
                Err(DriveError::Log(LogError::Conflict { .. })) => {
                    let fresh = self.reload(record.id).await?;
                    info!(state = %fresh.state, "the failed write had landed; following the log");
                    return self.advance(Some(claim), fresh, Event::Recovered).await;
                }
                Err(e) => warn!(error = %e, "decision log still failing; retrying the abort"),
            }
        }
    }

    /// Asks the only participant to commit in one phase, repeating the (idempotent) call until
    /// it answers; records its outcome, or falls back to the two phases if it has no such call.
    async fn one_phase(
        &self,
        claim: &Claim,
        record: TxRecord,
        name: String,
    ) -> Result<(TxRecord, Vec<Action>), DriveError> {
        let Some(p) = record.participant(&name) else {
            return Ok((record, Vec::new()));
        };
        let url = format!("{}/{ONE_PHASE_PATH}", p.url);
        let mut body = PrepareRequest {
            transaction_id: record.id,
            participant: p.name.clone(),
            payload: p.payload.clone(),
            coordinator: self.settings.advertise_url.clone(),
            deadline_ms: 0,
        };
        let mut delays = ExponentialBackoff::from_millis(2)
            .factor(u64::try_from(RETRY_BASE.as_millis() / 2).unwrap_or(25))
            .max_delay(RETRY_MAX_DELAY)
            .map(jitter);
        let mut attempt: u32 = 0;
        let answer = loop {
            attempt += 1;
            // Each call may take until the deadline, and at least the usual bound of a call.
            let remaining = u64::try_from(record.deadline - now_millis()).unwrap_or(0);
            let budget = Duration::from_millis(remaining).max(PHASE_TWO_CALL_TIMEOUT);
            body.deadline_ms = budget.as_millis().try_into().unwrap_or(u64::MAX);
            match one_phase_call(&self.http, &url, &body, budget).await {
                Ok(answer) => break answer,
                Err(why) => {
                    if attempt == 1 || attempt.is_power_of_two() {
                        warn!(attempt, why, "one-phase commit not answered yet; retrying");
                    }
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX_DELAY)).await;
        };
        info!(participant = name, answer = ?answer, "one-phase commit answered");
        failpoint::hit(fp::AFTER_ONE_PHASE_ANSWER).await;
        let t = machine::apply(
            &record,
            Event::OnePhaseAnswered {
                participant: name,
                answer,
            },
            now_millis(),
        )?;
        if t.record.state.is_final() {
            // The participant has decided and done it: a waiting client may hear it now; were
            // the write lost, recovery would ask again and get the same answer.
            claim.publish(&t.record);
        }
        match self.persist(Some(claim), &record, t.record).await {
            Ok(saved) => Ok((saved, t.actions)),
            Err(DriveError::Log(LogError::Conflict { .. })) => {
                let fresh = self.reload(record.id).await?;
                warn!(state = %fresh.state, "one-phase outcome raced; following the log");
                self.advance(Some(claim), fresh, Event::Recovered).await
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the decision to `names` concurrently, each retried with backoff until it is
    /// acknowledged; logs the transaction complete once all have acknowledged.
    async fn phase_two(
        &self,
        claim: &Claim,
        record: TxRecord,
        names: Vec<String>,
        decision: Decision,
    ) -> Result<TxRecord, DriveError> {
        let mut calls = JoinSet::new();
        for name in &names {
            let Some(p) = record.participant(name) else {
                continue;
            };
            let verb = decision.as_str();
            let url = format!("{}/{verb}", p.url);
            let body = OutcomeRequest {
                transaction_id: record.id,
                participant: p.name.clone(),
            };
            let http = self.http.clone();
            let name = name.clone();
            let span = info_span!("phase_two", participant = %name, verb);
            calls.spawn(
                async move {
                    deliver_until_acknowledged(&http, &url, &body, verb).await;
                    name
                }
                .instrument(span),
            );
        }
        let mut current = record.clone();
        while let Some(joined) = calls.join_next().await {
            let Ok(participant) = joined else {
                continue;
            };
            current =
                machine::apply(&current, Event::Acknowledged { participant }, now_millis())?.record;
        }
        if current.state.is_final() {
            failpoint::hit(fp::BEFORE_COMPLETION).await;
        }
        if current == record {
            return Ok(record);
        }
        if current.state.is_final() {
            // Every participant has the outcome: a waiting client may hear it now, before the
            // completion write is on disk. That write only records acknowledgements; were it
            // lost, recovery would deliver the (idempotent) commits or aborts again.
            claim.publish(&TxRecord {
                version: record.version + 1,
                ..current.clone()
            });
        }
        match self.persist(Some(claim), &record, current).await {
            Ok(saved) => {
                info!(state = %saved.state, "completed");
                Ok(saved)
            }
            Err(DriveError::Log(LogError::Conflict { .. })) => {
                let fresh = self.reload(record.id).await?;
                warn!(state = %fresh.state, "completion raced; following the log");
                Ok(fresh)
            }
            Err(e) => Err(e),
        }
    }
}

/// One prepare call: the participant's vote, or why there is none (a timeout, a transport
/// error, another status, an answer that is not a vote).
///
/// No vote is not the same as an abort vote: a participant that voted abort holds nothing, but
/// one that did not answer may have prepared (its answer lost), so it must be sent the abort.
async fn prepare_call(
    http: &reqwest::Client,
    url: &str,
    body: &PrepareRequest,
    budget: Duration,
) -> Result<Vote, String> {
    if budget.is_zero() {
        return Err("the transaction's deadline passed before prepare".into());
    }
    let response = match http.post(url).timeout(budget).json(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(format!(
                "no answer to prepare within the deadline ({} ms)",
                budget.as_millis()
            ));
        }
        Err(e) => return Err(format!("prepare call failed: {}", error_chain(&e))),
    };
    let status = response.status();
    if status != StatusCode::OK {
        let detail = match response.json::<ErrorBody>().await {
            Ok(b) => format!("{}: {}", b.error.code, b.error.message),
            Err(_) => "no error detail".to_owned(),
        };
        return Err(format!("prepare answered {status} ({detail})"));
    }
    response
        .json::<Vote>()
        .await
        .map_err(|e| format!("prepare answer was not a vote: {}", error_chain(&e)))
}

/// One one-phase commit call: the participant's answer, or why there is none yet (a timeout, a
/// transport error, another status, a malformed answer: the outcome is unknown, ask again).
async fn one_phase_call(
    http: &reqwest::Client,
    url: &str,
    body: &PrepareRequest,
    budget: Duration,
) -> Result<OnePhaseAnswer, String> {
    let response = http
        .post(url)
        .timeout(budget)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("one-phase call failed: {}", error_chain(&e)))?;
    let status = response.status();
    if matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    ) {
        return Ok(OnePhaseAnswer::Unsupported);
    }
    if status != StatusCode::OK {
        let detail = match response.json::<ErrorBody>().await {
            Ok(b) => format!("{}: {}", b.error.code, b.error.message),
            Err(_) => "no error detail".to_owned(),
        };
        return Err(format!("one-phase commit answered {status} ({detail})"));
    }
    match response.json::<OnePhaseOutcome>().await {
        Ok(OnePhaseOutcome::Committed) => Ok(OnePhaseAnswer::Committed),
        Ok(OnePhaseOutcome::Aborted { reason }) => Ok(OnePhaseAnswer::Aborted { reason }),
        Err(e) => Err(format!(
            "one-phase answer was not an outcome: {}",
            error_chain(&e)
        )),
    }
}

/// Sends one commit or abort until the participant answers 200.
async fn deliver_until_acknowledged(
    http: &reqwest::Client,
    url: &str,
    body: &OutcomeRequest,
    verb: &str,
) {
    let delays = ExponentialBackoff::from_millis(2)
        .factor(u64::try_from(RETRY_BASE.as_millis() / 2).unwrap_or(25))
        .max_delay(RETRY_MAX_DELAY)
        .map(jitter);
    let mut attempt: u32 = 0;
    let mut delays = delays;
    loop {
        attempt += 1;
        match outcome_call(http, url, body).await {
            Ok(()) => {
                if attempt > 1 {
                    info!(attempt, "{verb} acknowledged after retries");
                }
                return;
            }
            Err(OutcomeFailure::Refused(status, detail)) => {
                // 404 (participant never prepared) or 409 (it holds the opposite outcome): a
                // broken participant or a lost prepared state. Keep asking; an operator must look.
                error!(attempt, %status, detail, "participant refused {verb}; retrying");
            }
            Err(OutcomeFailure::Other(why)) => {
                if attempt == 1 || attempt.is_power_of_two() {
                    warn!(attempt, why, "{verb} not acknowledged yet; retrying");
                }
            }
        }
        let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
        tokio::time::sleep(delay).await;
    }
}

enum OutcomeFailure {
    Refused(StatusCode, String),
    Other(String),
}

async fn outcome_call(
    http: &reqwest::Client,
    url: &str,
    body: &OutcomeRequest,
) -> Result<(), OutcomeFailure> {
    let response = http
        .post(url)
        .timeout(PHASE_TWO_CALL_TIMEOUT)
        .json(body)
        .send()
        .await
        .map_err(|e| OutcomeFailure::Other(error_chain(&e)))?;
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let detail = match response.json::<ErrorBody>().await {
        Ok(b) => format!("{}: {}", b.error.code, b.error.message),
        Err(_) => String::new(),
    };
    if matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) {
        Err(OutcomeFailure::Refused(status, detail))
    } else {
        Err(OutcomeFailure::Other(format!("answered {status} {detail}")))
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
