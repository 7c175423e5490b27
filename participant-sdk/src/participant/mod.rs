//! A participant: the service's [`Handler`] plus the SDK's flows for prepare, commit and abort,
//! each one local transaction that runs the handler and changes the state row together.

mod handler;
pub mod machine;
mod resolver;
mod router;

pub use handler::{Handler, HandlerError};
pub use machine::{LocalState, Op, Step, step};
pub use resolver::{Resolution, ResolverAction, ResolverConfig};
pub use router::{ApiError, WireJson};

use crate::error::{ParticipantError, StoreError};
use crate::store::{NewRow, RowChange, StateRow, StateStore, now_ms};
use crate::wire::{OnePhaseOutcome, OutcomeRequest, PrepareRequest, TransactionId, Vote, VoteKind};
use rand::Rng as _;
use serde::Deserialize as _;
use std::time::Duration;

/// The abort reason a prepare answers when the abort arrived first (a tombstone).
pub const TOMBSTONE_REASON: &str = "aborted before prepare";

/// Longest participant name, in characters (the MySQL key column is `VARCHAR(255)`).
pub const MAX_PARTICIPANT_NAME: usize = 255;

/// How often one call runs its local transaction before giving up on deadlocks, serialization
/// failures and SQLite busy errors. Each such failure rolled everything back, so running again is
/// safe; a few attempts absorb the lock-upgrade deadlocks InnoDB reports when several requests
/// race on one key, and the coordinator retries anything beyond that.
const LOCAL_TX_ATTEMPTS: u32 = 5;

/// First pause between attempts; doubles each time, plus up to as much again of random jitter so
/// that the racers that deadlocked do not collide again in step.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(10);

/// What a commit or abort call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Ran the service's commit or abort handler and recorded the outcome.
    Ran,
    /// The outcome was already recorded: nothing changed.
    AlreadyDone,
    /// Recorded a tombstone for an abort of a transaction never prepared here.
    Tombstone,
}

/// A participant: the state store, the service's handler and the SDK's protocol flows.
pub struct Participant<S: StateStore, H: Handler<S::Db>> {
    /// The prepared-state table (shares the service's pool).
    store: S,
    /// The service's prepare, commit and abort handlers.
    handler: H,
    /// HTTP client for in-doubt inquiries at the coordinator, shared by all of them.
    http: reqwest::Client,
}

impl<S: StateStore, H: Handler<S::Db>> Participant<S, H> {
    /// A participant keeping its state in `store` and running `handler`. Run
    /// [`StateStore::migrate`] once before serving.
    pub fn new(store: S, handler: H) -> Self {
        Self {
            store,
            handler,
            http: reqwest::Client::new(),
        }
    }

    /// The state store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The service's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The recorded state of `(participant, id)`, if any.
    pub async fn get(
        &self,
        participant: &str,
        id: TransactionId,
    ) -> Result<Option<StateRow>, ParticipantError> {
        Ok(self.store.get(participant, id).await?)
    }

    /// Phase one: runs the prepare handler once per (participant, transaction) and records its
    /// vote; a repeated prepare answers the vote recorded first.
    pub async fn prepare(&self, req: &PrepareRequest) -> Result<Vote, ParticipantError> {
        let (payload, text) = self.read_prepare(req)?;
        let (payload, text) = (&payload, text.as_str());
        let vote = with_retries(Op::Prepare, req.transaction_id, move || async move {
            let mut tx = self.store.begin().await?;
            let result = self.prepare_in(&mut tx, req, payload, text).await;
            finish(tx, result).await
        })
        .await?;
        tracing::info!(
            participant = %req.participant,
            transaction_id = %req.transaction_id,
            vote = vote.kind().as_str(),
            "prepare answered"
        );
        Ok(vote)
    }

    /// The checked name and the payload of a prepare (typed, and as JSON text for the row).
    fn read_prepare(&self, req: &PrepareRequest) -> Result<(H::Payload, String), ParticipantError> {
        check_name(&req.participant)?;
        let payload =
            H::Payload::deserialize(&req.payload).map_err(ParticipantError::BadPayload)?;
        let text = serde_json::to_string(&req.payload).map_err(ParticipantError::BadPayload)?;
        Ok((payload, text))
    }

    /// One-phase commit, for a transaction with this participant as its only one: runs the
    /// prepare handler and, on a commit vote, the commit handler in one local transaction and
    /// records the outcome; a repeat answers the outcome recorded first.
    pub async fn commit_one_phase(
        &self,
        req: &PrepareRequest,
    ) -> Result<OnePhaseOutcome, ParticipantError> {
        let (payload, text) = self.read_prepare(req)?;
        let (payload, text) = (&payload, text.as_str());
        let outcome = with_retries(Op::CommitOnePhase, req.transaction_id, move || async move {
            let mut tx = self.store.begin().await?;
            let result = self.one_phase_in(&mut tx, req, payload, text).await;
            finish(tx, result).await
        })
        .await?;
        tracing::info!(
            participant = %req.participant,
            transaction_id = %req.transaction_id,
            outcome = ?outcome,
            "one-phase commit answered"
        );
        Ok(outcome)
    }

    /// The statements of a one-phase commit inside `tx`.
    async fn one_phase_in(
        &self,
        tx: &mut sqlx::Transaction<'static, S::Db>,
        req: &PrepareRequest,
        payload: &H::Payload,
        payload_text: &str,
    ) -> Result<OnePhaseOutcome, ParticipantError> {
        let id = req.transaction_id;
        let participant = req.participant.as_str();
        // Like prepare: the insert takes the key's lock, written as the common outcome.
        let existing = self
            .insert_or_read(tx, req, payload_text, LocalState::Committed)
            .await?;
        let op = Op::CommitOnePhase;
        match (step(existing.as_ref().map(|r| r.state), op), existing) {
            (Step::AlreadyDone, Some(row)) => Ok(match (row.state, recorded_vote(&row)) {
                (LocalState::Aborted, Vote::Abort { reason }) => {
                    OnePhaseOutcome::Aborted { reason }
                }
                _ => OnePhaseOutcome::Committed,
            }),
            (Step::Conflict, Some(row)) => Err(ParticipantError::Conflict {
                participant: participant.to_owned(),
                transaction_id: id,
                op,
                state: row.state,
            }),
            (Step::RunOnePhase, None) => {
                self.store.savepoint(tx).await?;
                let vote = self
                    .handler
                    .prepare(tx, id, payload)
                    .await
                    .map_err(|source| ParticipantError::Handler { op, source })?;
                let (change, outcome) = match vote {
                    Vote::Commit => {
                        self.handler
                            .commit(tx, id, payload)
                            .await
                            .map_err(|source| ParticipantError::Handler { op, source })?;
                        // The inserted row says so already.
                        return Ok(OnePhaseOutcome::Committed);
                    }
                    Vote::ReadOnly => (
                        (LocalState::ReadOnly, Some(VoteKind::ReadOnly), None),
                        OnePhaseOutcome::Committed,
                    ),
                    Vote::Abort { reason } => {
                        self.store.rollback_to_savepoint(tx).await?;
                        (
                            (
                                LocalState::Aborted,
                                Some(VoteKind::Abort),
                                Some(reason.clone()),
                            ),
                            OnePhaseOutcome::Aborted { reason },
                        )
                    }
                };
                let (state, vote, reason) = change;
                let change = RowChange {
                    state,
                    vote,
                    reason: reason.as_deref(),
                    now_ms: now_ms(),
                };
                self.store.update(tx, participant, id, &change).await?;
                Ok(outcome)
            }
            (other, _) => Err(unexpected_step(other, op, id)),
        }
    }

    /// Phase two, commit: runs the commit handler on a prepared transaction and records it;
    /// a repeat is a no-op.
    pub async fn commit(&self, req: &OutcomeRequest) -> Result<Applied, ParticipantError> {
        self.outcome(req, Op::Commit).await
    }

    /// Phase two, abort: runs the abort handler on a prepared transaction and records it; an
    /// unknown transaction gets a tombstone; a repeat is a no-op.
    pub async fn abort(&self, req: &OutcomeRequest) -> Result<Applied, ParticipantError> {
        self.outcome(req, Op::Abort).await
    }

    /// Commit or abort, with retries of the local transaction on transient failures.
    async fn outcome(&self, req: &OutcomeRequest, op: Op) -> Result<Applied, ParticipantError> {
        check_name(&req.participant)?;
        let result = with_retries(op, req.transaction_id, move || async move {
            let mut tx = self.store.begin().await?;
            let result = self.outcome_in(&mut tx, req, op).await;
            finish(tx, result).await
        })
        .await;
        match &result {
            Ok(applied) => tracing::info!(
                participant = %req.participant,
                transaction_id = %req.transaction_id,
                op = %op,
                applied = ?applied,
                "outcome applied"
            ),
            Err(
                e @ (ParticipantError::UnknownTransaction { .. }
                | ParticipantError::Conflict { .. }),
            ) => tracing::error!(
                participant = %req.participant,
                transaction_id = %req.transaction_id,
                op = %op,
                error = %e,
                "refused an outcome that contradicts the recorded state"
            ),
            Err(_) => {}
        }
        result
    }

    /// Inserts the row of a prepare-like call (vote commit, in `state`) unless one exists, and
    /// answers the existing one (read with a shared lock) if it does.
    async fn insert_or_read(
        &self,
        tx: &mut sqlx::Transaction<'static, S::Db>,
        req: &PrepareRequest,
        payload_text: &str,
        state: LocalState,
    ) -> Result<Option<StateRow>, ParticipantError> {
        let participant = req.participant.as_str();
        let inserted = self
            .store
            .insert_if_absent(
                tx,
                &NewRow {
                    participant,
                    transaction_id: req.transaction_id,
                    state,
                    vote: Some(VoteKind::Commit),
                    reason: None,
                    payload: Some(payload_text),
                    coordinator: Some(&req.coordinator),
                    now_ms: now_ms(),
                },
            )
            .await?;
        if inserted {
            Ok(None)
        } else {
            Ok(Some(
                self.existing_row(tx, participant, req.transaction_id, false)
                    .await?,
            ))
        }
    }

    /// The statements of prepare inside `tx`.
    async fn prepare_in(
        &self,
        tx: &mut sqlx::Transaction<'static, S::Db>,
        req: &PrepareRequest,
        payload: &H::Payload,
        payload_text: &str,
    ) -> Result<Vote, ParticipantError> {
        let id = req.transaction_id;
        let participant = req.participant.as_str();
        // First statement: takes the key's lock. A concurrent prepare or abort of the same key
        // waits here until this transaction ends, then finds the row and repeats its vote.
        // The row is written as the common outcome (prepared, vote commit), so that outcome
        // needs no second write; nobody else sees the row before this transaction commits.
        let existing = self
            .insert_or_read(tx, req, payload_text, LocalState::Prepared)
            .await?;
        match (
            step(existing.as_ref().map(|r| r.state), Op::Prepare),
            existing,
        ) {
            (Step::RepeatVote, Some(row)) => Ok(recorded_vote(&row)),
            (Step::RunPrepare, None) => {
                self.store.savepoint(tx).await?;
                let vote = self
                    .handler
                    .prepare(tx, id, payload)
                    .await
                    .map_err(|source| ParticipantError::Handler {
                        op: Op::Prepare,
                        source,
                    })?;
                let change = match &vote {
                    // The inserted row says so already.
                    Vote::Commit => return Ok(vote),
                    Vote::ReadOnly => RowChange {
                        state: LocalState::ReadOnly,
                        vote: Some(VoteKind::ReadOnly),
                        reason: None,
                        now_ms: now_ms(),
                    },
                    Vote::Abort { reason } => {
                        // Undo whatever the handler wrote before it decided to refuse.
                        self.store.rollback_to_savepoint(tx).await?;
                        RowChange {
                            state: LocalState::Aborted,
                            vote: Some(VoteKind::Abort),
                            reason: Some(reason),
                            now_ms: now_ms(),
                        }
                    }
                };
                self.store.update(tx, participant, id, &change).await?;
                Ok(vote)
            }
            (other, _) => Err(unexpected_step(other, Op::Prepare, id)),
        }
    }

    /// The statements of commit or abort inside `tx`.
    async fn outcome_in(
        &self,
        tx: &mut sqlx::Transaction<'static, S::Db>,
        req: &OutcomeRequest,
        op: Op,
    ) -> Result<Applied, ParticipantError> {
        let id = req.transaction_id;
        let participant = req.participant.as_str();
        let existing = match op {
            // An abort may create the row (a tombstone), so like prepare it starts with the
            // insert that takes the key's lock.
            Op::Abort => {
                let inserted = self
                    .store
                    .insert_if_absent(
                        tx,
                        &NewRow {
                            participant,
                            transaction_id: id,
                            state: LocalState::Aborted,
                            vote: None,
                            reason: None,
                            payload: None,
                            coordinator: None,
                            now_ms: now_ms(),
                        },
                    )
                    .await?;
                if inserted {
                    None
                } else {
                    Some(self.existing_row(tx, participant, id, true).await?)
                }
            }
            Op::Commit => self.store.get_for_update(tx, participant, id).await?,
            Op::Prepare | Op::CommitOnePhase => {
                return Err(unexpected_step(Step::RunPrepare, op, id));
            }
        };
        let current = existing.as_ref().map(|r| r.state);
        match (step(current, op), existing) {
            // The insert above wrote it.
            (Step::Tombstone, None) => Ok(Applied::Tombstone),
            (Step::AlreadyDone, Some(_)) => Ok(Applied::AlreadyDone),
            (Step::Unknown, None) => Err(ParticipantError::UnknownTransaction {
                participant: participant.to_owned(),
                transaction_id: id,
            }),
            (Step::Conflict, Some(row)) => Err(ParticipantError::Conflict {
                participant: participant.to_owned(),
                transaction_id: id,
                op,
                state: row.state,
            }),
            (next @ (Step::RunCommit | Step::RunAbort), Some(row)) => {
                let payload = stored_payload::<H::Payload>(&row)?;
                let (ran, state) = if next == Step::RunCommit {
                    (
                        self.handler.commit(tx, id, &payload).await,
                        LocalState::Committed,
                    )
                } else {
                    (
                        self.handler.abort(tx, id, &payload).await,
                        LocalState::Aborted,
                    )
                };
                ran.map_err(|source| ParticipantError::Handler { op, source })?;
                let change = RowChange {
                    state,
                    vote: row.vote,
                    reason: row.reason.as_deref(),
                    now_ms: now_ms(),
                };
                self.store.update(tx, participant, id, &change).await?;
                Ok(Applied::Ran)
            }
            (other, _) => Err(unexpected_step(other, op, id)),
        }
    }

    /// The row an insert-if-absent found in the way, read with the lock the operation needs.
    async fn existing_row(
        &self,
        tx: &mut sqlx::Transaction<'static, S::Db>,
        participant: &str,
        id: TransactionId,
        for_update: bool,
    ) -> Result<StateRow, ParticipantError> {
        let row = if for_update {
            self.store.get_for_update(tx, participant, id).await?
        } else {
            self.store.get_for_share(tx, participant, id).await?
        };
        row.ok_or_else(|| {
            // Deleted between the two statements (e.g. by a cleanup job): transient, run again.
            ParticipantError::Store(StoreError::RowVanished {
                participant: participant.to_owned(),
                transaction_id: id,
            })
        })
    }
}

/// Commits `tx` when `result` is a success, rolls it back otherwise.
async fn finish<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'static, DB>,
    result: Result<T, ParticipantError>,
) -> Result<T, ParticipantError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a failed local transaction failed");
            }
            Err(e)
        }
    }
}

/// Runs `attempt` (one local transaction) again while it fails with a transient error, at most
/// [`LOCAL_TX_ATTEMPTS`] times in all.
async fn with_retries<T, F, Fut>(
    op: Op,
    id: TransactionId,
    mut attempt: F,
) -> Result<T, ParticipantError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ParticipantError>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && n < LOCAL_TX_ATTEMPTS => {
                retry_pause(op, id, n, &e).await;
                n += 1;
            }
            done => return done,
        }
    }
}

/// Sleeps before attempt `attempt + 1` of a local transaction that failed with `err`.
async fn retry_pause(op: Op, id: TransactionId, attempt: u32, err: &ParticipantError) {
    let base = RETRY_BASE_DELAY * 2u32.saturating_pow(attempt - 1);
    let jitter = Duration::from_micros(rand::rng().random_range(0..=base.as_micros() as u64));
    tracing::warn!(
        transaction_id = %id,
        op = %op,
        attempt,
        error = %err,
        "local transaction hit a transient failure; running it again"
    );
    tokio::time::sleep(base + jitter).await;
}

/// Refuses participant names the state table cannot hold.
fn check_name(participant: &str) -> Result<(), ParticipantError> {
    let chars = participant.chars().count();
    if chars == 0 || chars > MAX_PARTICIPANT_NAME {
        return Err(ParticipantError::InvalidRequest(format!(
            "participant name must have 1 to {MAX_PARTICIPANT_NAME} characters, got {chars}"
        )));
    }
    Ok(())
}

/// The vote a row records, as prepare answers it again.
fn recorded_vote(row: &StateRow) -> Vote {
    match row.vote {
        None => Vote::Abort {
            reason: TOMBSTONE_REASON.to_owned(),
        },
        Some(VoteKind::Commit) => Vote::Commit,
        Some(VoteKind::ReadOnly) => Vote::ReadOnly,
        Some(VoteKind::Abort) => Vote::Abort {
            reason: row.reason.clone().unwrap_or_default(),
        },
    }
}

/// The payload recorded at prepare, deserialized for the commit or abort handler.
fn stored_payload<P: serde::de::DeserializeOwned>(row: &StateRow) -> Result<P, ParticipantError> {
    serde_json::from_str(row.payload.as_deref().unwrap_or("null")).map_err(|source| {
        ParticipantError::StoredPayload {
            transaction_id: row.transaction_id,
            source,
        }
    })
}

/// The error for a step the flow of `op` cannot take (a bug in the machine or the flow).
fn unexpected_step(step: Step, op: Op, id: TransactionId) -> ParticipantError {
    ParticipantError::Internal(format!(
        "the state machine chose {step:?} for {op} of transaction {id}"
    ))
}
