//! The coordinator's operations (create, enlist, commit, abort, get, list), shared by the HTTP
//! API and the demo. Each change is a compare-and-set on the logged record; drivers run in
//! their own tasks, so a client that hangs up never cancels a transaction half-way.

use crate::driver::{DriveError, Driver};
use crate::inflight::{Claim, Inflight};
use crate::log::{Created, DecisionLog, IdempotencyKey, LogError};
use crate::machine::{self, Action, Event, TransitionError};
use crate::record::{TxRecord, UNLOGGED, now_millis};
use crate::validate::{self, InvalidInput};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, error, info_span};
use twopc::wire::{CreateTransaction, ParticipantSpec, TransactionId, TransactionState};

/// How long a commit call waits for the acknowledgements after the decision before it answers
/// `committing` (the driver goes on in the background).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(2);
/// The most records one list call returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Errors of the coordinator's operations; the API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No transaction has this id.
    #[error("transaction {0} not found")]
    NotFound(TransactionId),
    /// The request is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The transaction's state does not allow the call.
    #[error(transparent)]
    State(TransitionError),
    /// The idempotency key was used before with another request.
    #[error("the Idempotency-Key '{0}' was already used with a different request")]
    IdempotencyKeyReused(String),
    /// The decision log failed.
    #[error(transparent)]
    Log(LogError),
}

impl From<LogError> for ServiceError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::IdempotencyKeyReused(k) => Self::IdempotencyKeyReused(k),
            other => Self::Log(other),
        }
    }
}

impl From<DriveError> for ServiceError {
    fn from(e: DriveError) -> Self {
        match e {
            DriveError::Log(l) => l.into(),
            DriveError::Transition(t) => Self::State(t),
            DriveError::Vanished => Self::Log(LogError::Corrupt {
                id: String::new(),
                message: "transaction vanished".into(),
            }),
        }
    }
}

/// Outcome of a create call.
#[derive(Debug, Clone)]
pub struct CreateOutcome {
    /// The transaction (after its commit, for the one-shot form).
    pub record: TxRecord,
    /// False when an idempotency key returned an existing transaction.
    pub created: bool,
}

/// The coordinator: its log, its drivers and the registry of what they drive.
#[derive(Debug)]
pub struct Coordinator<L> {
    /// Performs actions and persists their results.
    driver: Arc<Driver<L>>,
    /// Transactions driven by this process.
    inflight: Inflight,
    /// See [`DEFAULT_ACK_WAIT`].
    ack_wait: Duration,
}

impl<L: DecisionLog> Coordinator<L> {
    /// A coordinator around `driver`.
    pub fn new(driver: Arc<Driver<L>>, ack_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            driver,
            inflight: Inflight::default(),
            ack_wait,
        })
    }

    /// The decision log.
    pub fn log(&self) -> &Arc<L> {
        self.driver.log()
    }

    /// The registry of transactions this process drives.
    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    /// Creates a transaction; with `commit: true` also commits it and answers its outcome.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateTransaction,
        idempotency_key: Option<String>,
    ) -> Result<CreateOutcome, ServiceError> {
        let key = idempotency_key.map(|key| IdempotencyKey {
            request_hash: request_hash(&request),
            key,
        });
        let timeout_ms = validate::timeout(request.timeout_ms)?;
        let participants = validate::participants(request.participants.unwrap_or_default())?;
        let commit = request.commit.unwrap_or(false);
        if commit && participants.is_empty() {
            return Err(InvalidInput::NoParticipants.into());
        }
        let now = now_millis();
        let mut record = TxRecord::new(TransactionId::new(), timeout_ms, now);
        record.participants = participants;
        let mut actions = Vec::new();
        if commit {
            let t = machine::apply(&record, Event::CommitRequested, now)
                .map_err(ServiceError::State)?;
            record = t.record;
            record.version = 0;
            actions = t.actions;
            // A one-phase commit is decided by its participant the moment it arrives, so the
            // record must be in the log before it is sent.
            let one_phase = matches!(actions.as_slice(), [Action::OnePhase(_)]);
            if key.is_none() && !one_phase {
                // Presumed abort: nothing needs to be logged before the decision, which the
                // driver inserts. Until then the record lives in the in-flight registry, which
                // `get` (and so a participant's inquiry) consults; after a crash there is no
                // record, which means abort. With an idempotency key the record is logged
                // first, so that a retry after a crash finds the key.
                record.version = UNLOGGED;
                let Some(claim) = self.inflight.claim(&record) else {
                    return Err(ServiceError::State(TransitionError::Invalid {
                        state: record.state,
                        event: "create",
                    }));
                };
                self.spawn_drive(claim, record.clone(), actions);
                let record = self.await_outcome(record).await?;
                return Ok(CreateOutcome {
                    record,
                    created: true,
                });
            }
        }
        // Claimed before it is logged, so recovery never mistakes it for an orphan.
        let claim = self.inflight.claim(&record);
        match self.log().create(&record, key.as_ref()).await? {
            Created::New => {
                if let (true, Some(claim)) = (commit, claim) {
                    self.spawn_drive(claim, record.clone(), actions);
                    let record = self.await_outcome(record).await?;
                    return Ok(CreateOutcome {
                        record,
                        created: true,
                    });
                }
                Ok(CreateOutcome {
                    record,
                    created: true,
                })
            }
            Created::Existing(existing) => {
                drop(claim);
                let record = if commit {
                    self.await_outcome(existing).await?
                } else {
                    existing
                };
                Ok(CreateOutcome {
                    record,
                    created: false,
                })
            }
        }
    }

    /// Enlists a participant in an active transaction.
    pub async fn enlist(
        &self,
        id: TransactionId,
        spec: ParticipantSpec,
    ) -> Result<TxRecord, ServiceError> {
        let participant = validate::participant(spec)?;
        loop {
            let record = self.get(id).await?;
            if record.state == TransactionState::Active
                && record.participants.len() >= validate::MAX_PARTICIPANTS
            {
                return Err(InvalidInput::TooManyParticipants.into());
            }
            let t = machine::apply(&record, Event::Enlist(participant.clone()), now_millis())
                .map_err(ServiceError::State)?;
            match self.driver.persist(None, &record, t.record).await {
                Ok(saved) => return Ok(saved),
                Err(DriveError::Log(LogError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Commits: prepares every participant, decides, and answers once decided (and, within
    /// the acknowledgement wait, completed). Repeating it answers the current state.
    pub async fn commit(self: &Arc<Self>, id: TransactionId) -> Result<TxRecord, ServiceError> {
        loop {
            let record = self.get(id).await?;
            if record.state != TransactionState::Active {
                return self.await_outcome(record).await;
            }
            let Some(claim) = self.inflight.claim(&record) else {
                return self.await_outcome(record).await;
            };
            let t = machine::apply(&record, Event::CommitRequested, now_millis())
                .map_err(ServiceError::State)?;
            match self.driver.persist(Some(&claim), &record, t.record).await {
                Ok(saved) => {
                    self.spawn_drive(claim, saved.clone(), t.actions);
                    return self.await_outcome(saved).await;
                }
                Err(DriveError::Log(LogError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Aborts a transaction not yet decided to commit. Repeating it answers the current state.
    pub async fn abort(self: &Arc<Self>, id: TransactionId) -> Result<TxRecord, ServiceError> {
        loop {
            let record = self.get(id).await?;
            let t = machine::apply(
                &record,
                Event::AbortRequested {
                    reason: "aborted by client".into(),
                },
                now_millis(),
            )
            .map_err(ServiceError::State)?;
            if !t.changed {
                return Ok(record);
            }
            match self.driver.persist(None, &record, t.record).await {
                Ok(saved) => {
                    // If a driver here owns it, its next write conflicts and it follows the
                    // abort; otherwise this call takes over the delivery of the aborts.
                    if t.actions.is_empty() {
                        return Ok(saved);
                    }
                    if let Some(claim) = self.inflight.claim(&saved) {
                        self.spawn_drive(claim, saved.clone(), t.actions);
                        return self.await_outcome(saved).await;
                    }
                    // The owner may still be waiting for slow prepares (up to the deadline):
                    // answer `aborting` now rather than wait for it.
                    return Ok(saved);
                }
                Err(DriveError::Log(LogError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The transaction with this id: as logged, or as a driver here knows it while its record
    /// is not logged yet (a one-shot commit before its decision) or its completion is being
    /// written.
    pub async fn get(&self, id: TransactionId) -> Result<TxRecord, ServiceError> {
        // The registry is read first: a record that leaves it has been logged by then.
        let driving = self.inflight.subscribe(id).map(|rx| rx.borrow().clone());
        match (self.log().get(id).await?, driving) {
            (Some(logged), Some(ahead)) if ahead.version > logged.version => Ok(ahead),
            (Some(logged), _) => Ok(logged),
            (None, Some(unlogged)) if !unlogged.is_logged() => Ok(unlogged),
            (None, _) => Err(ServiceError::NotFound(id)),
        }
    }

    /// Transactions newest first, optionally in one state: the logged ones and those a driver
    /// here holds before their first write.
    pub async fn list(
        &self,
        state: Option<TransactionState>,
        limit: u32,
    ) -> Result<Vec<TxRecord>, ServiceError> {
        let limit = limit.min(MAX_LIST_LIMIT);
        // Read before the log: one that is logged meanwhile is dropped below as a duplicate.
        let mut unlogged = self.inflight.unlogged();
        unlogged.retain(|r| state.is_none_or(|s| r.state == s));
        let mut records = self.log().list(state, limit).await?;
        if unlogged.is_empty() {
            return Ok(records);
        }
        unlogged.retain(|u| !records.iter().any(|r| r.id == u.id));
        records.extend(unlogged);
        records.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
        records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(records)
    }

    /// Runs a driver for a claimed transaction in its own task.
    pub(crate) fn spawn_drive(
        self: &Arc<Self>,
        claim: Claim,
        record: TxRecord,
        actions: Vec<Action>,
    ) {
        self.spawn_drive_holding(claim, record, actions, ());
    }

    /// Like [`Self::spawn_drive`], holding `guard` (e.g. a semaphore permit) until it ends.
    pub(crate) fn spawn_drive_holding<G: Send + 'static>(
        self: &Arc<Self>,
        claim: Claim,
        record: TxRecord,
        actions: Vec<Action>,
        guard: G,
    ) {
        let me = self.clone();
        let span = info_span!("tx", tx = %record.id);
        tokio::spawn(
            async move {
                if let Err(e) = me.driver.drive(&claim, record, actions).await {
                    error!(error = %e, "driver stopped; recovery will resume the transaction");
                }
                drop(claim);
                drop(guard);
            }
            .instrument(span),
        );
    }

    /// Waits while a driver here works on the transaction: until it is decided (bounded by its
    /// deadline), then up to the acknowledgement wait for completion; answers the logged state.
    async fn await_outcome(&self, record: TxRecord) -> Result<TxRecord, ServiceError> {
        if record.state.is_final() {
            return Ok(record);
        }
        let id = record.id;
        let Some(mut rx) = self.inflight.subscribe(id) else {
            return self.logged_outcome(&record).await;
        };
        let until_deadline = u64::try_from(record.deadline - now_millis()).unwrap_or(0);
        // Phase one is bounded by the deadline; the margin covers logging the decision.
        let decide_wait = Duration::from_millis(until_deadline) + Duration::from_secs(5);
        // An unlogged record with a reason is a driver that could not log the decision.
        let decided_or_failed =
            |r: &TxRecord| r.decision.is_some() || !r.is_logged() && r.reason.is_some();
        let _ = tokio::time::timeout(decide_wait, rx.wait_for(decided_or_failed)).await;
        let latest = rx.borrow().clone();
        if !latest.is_logged() {
            if rx.has_changed().is_err() {
                // The driver stopped before its record was logged.
                return self.logged_outcome(&record).await;
            }
            if latest.reason.is_some() {
                return Err(ServiceError::Log(LogError::DecisionNotLogged(id)));
            }
        }
        let _ = tokio::time::timeout(self.ack_wait, rx.wait_for(|r| r.state.is_final())).await;
        // The watch holds the driver's last persisted record (it publishes after a write
        // succeeded, or as its completion is written), so it needs no read of the log.
        let latest = rx.borrow().clone();
        if latest.version >= record.version {
            Ok(latest)
        } else {
            self.get(id).await
        }
    }

    /// The transaction as the log has it, once no driver here works on it. A one-shot commit
    /// that is not in the log lost its decision write (the log failed).
    async fn logged_outcome(&self, record: &TxRecord) -> Result<TxRecord, ServiceError> {
        match self.log().get(record.id).await? {
            Some(logged) => Ok(logged),
            None if !record.is_logged() => {
                Err(ServiceError::Log(LogError::DecisionNotLogged(record.id)))
            }
            None => Err(ServiceError::NotFound(record.id)),
        }
    }
}

/// A stable hash of a create request, to tell a retried request from a different one.
fn request_hash(request: &CreateTransaction) -> String {
    // serde_json's maps are ordered by key, so equal requests serialize equally.
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_requests_hash_equally_and_different_ones_do_not() {
        let a: CreateTransaction = serde_json::from_str(
            r#"{"participants":[{"name":"a","url":"http://h","payload":{"x":1,"y":2}}]}"#,
        )
        .unwrap();
        let b: CreateTransaction = serde_json::from_str(
            r#"{"participants":[{"url":"http://h","name":"a","payload":{"y":2,"x":1}}]}"#,
        )
        .unwrap();
        let c: CreateTransaction = serde_json::from_str(
            r#"{"participants":[{"name":"a","url":"http://h","payload":{"x":1,"y":3}}]}"#,
        )
        .unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
    }
}
