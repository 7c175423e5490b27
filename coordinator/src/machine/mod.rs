//! The transaction lifecycle as a pure state machine: record + event -> new record + actions.
//!
//! No I/O and no clocks: the caller passes `now`. The driver persists the returned record
//! (compare-and-set on its version) *before* it performs the returned actions, which is what
//! makes the commit decision durable before the first commit is sent.

use crate::record::{Millis, ParticipantRecord, TxRecord};
use twopc::wire::{Decision, ParticipantState, TransactionState, Vote, VoteKind};

/// Something that happened to a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client enlists a participant.
    Enlist(ParticipantRecord),
    /// A client asks to commit.
    CommitRequested,
    /// A client asks to abort.
    AbortRequested {
        /// Recorded as the transaction's reason.
        reason: String,
    },
    /// A participant answered prepare; no answer, a timeout or an error is an abort vote.
    Voted {
        /// The participant's name.
        participant: String,
        /// Its vote.
        vote: Vote,
    },
    /// A participant acknowledged the commit or abort it was sent.
    Acknowledged {
        /// The participant's name.
        participant: String,
    },
    /// The only participant answered the one-phase commit, or showed it does not offer one.
    OnePhaseAnswered {
        /// The participant's name.
        participant: String,
        /// What it said.
        answer: OnePhaseAnswer,
    },
    /// Recovery found the transaction unfinished and no driver working on it.
    Recovered,
}

/// A participant's answer to a one-phase commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhaseAnswer {
    /// It did the work and committed it.
    Committed,
    /// It refused (or saw an abort first); nothing changed.
    Aborted {
        /// Its reason.
        reason: String,
    },
    /// It has no one-phase commit (404, 405 or 501): fall back to prepare and commit.
    Unsupported,
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Self::Enlist(_) => "enlist",
            Self::CommitRequested => "commit_requested",
            Self::AbortRequested { .. } => "abort_requested",
            Self::Voted { .. } => "voted",
            Self::Acknowledged { .. } => "acknowledged",
            Self::OnePhaseAnswered { .. } => "one_phase_answered",
            Self::Recovered => "recovered",
        }
    }
}

/// I/O the driver must perform after persisting the new record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send prepare to these participants.
    Prepare(Vec<String>),
    /// Ask this participant, the only one, to commit in one phase, until it answers.
    OnePhase(String),
    /// Send commit to these participants, retrying until acknowledged.
    Commit(Vec<String>),
    /// Send abort to these participants, retrying until acknowledged.
    Abort(Vec<String>),
}

/// The result of applying an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The record after the event (version bumped when `changed`).
    pub record: TxRecord,
    /// Whether the record changed and must be persisted.
    pub changed: bool,
    /// What to do once the record is persisted.
    pub actions: Vec<Action>,
}

/// An event that the transaction's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Participants can only be enlisted while the transaction is active.
    #[error("transaction is {0}, participants can only be enlisted while it is active")]
    NotActive(TransactionState),
    /// Participant names are unique within a transaction.
    #[error("a participant named '{0}' is already enlisted")]
    DuplicateParticipant(String),
    /// Commit needs at least one participant.
    #[error("transaction has no participants to commit")]
    NoParticipants,
    /// The transaction is already decided to commit; it can no longer abort.
    #[error("transaction is already decided to commit")]
    AlreadyCommitted,
    /// The only participant was asked to commit in one phase: the decision is its own.
    #[error(
        "transaction was handed to its only participant to commit in one phase; it decides, \
         and the transaction can no longer be aborted"
    )]
    Delegated,
    /// A vote or acknowledgement named a participant the transaction does not have.
    #[error("transaction has no participant named '{0}'")]
    UnknownParticipant(String),
    /// The event cannot happen in this state (a driver bug if it does).
    #[error("event {event} is not valid in state {state}")]
    Invalid {
        /// The state the transaction was in.
        state: TransactionState,
        /// The event's name.
        event: &'static str,
    },
}

/// Applies `event` to `record` at time `now`.
pub fn apply(record: &TxRecord, event: Event, now: Millis) -> Result<Transition, TransitionError> {
    use TransactionState as S;
    let mut next = record.clone();
    let event_name = event.name();
    let invalid = || TransitionError::Invalid {
        state: record.state,
        event: event_name,
    };
    let actions = match (record.state, event) {
        (S::Active, Event::Enlist(p)) => {
            if next.participant(&p.name).is_some() {
                return Err(TransitionError::DuplicateParticipant(p.name));
            }
            next.participants.push(p);
            Vec::new()
        }
        (state, Event::Enlist(_)) => return Err(TransitionError::NotActive(state)),

        (S::Active, Event::CommitRequested) => {
            if next.participants.is_empty() {
                return Err(TransitionError::NoParticipants);
            }
            if now > next.deadline {
                abort_unprepared(&mut next, "deadline passed before commit", now);
                Vec::new()
            } else if let [only] = next.participants.as_mut_slice() {
                // One participant needs no vote: it decides in one local transaction.
                next.state = S::Preparing;
                only.one_phase = true;
                vec![Action::OnePhase(only.name.clone())]
            } else {
                next.state = S::Preparing;
                vec![Action::Prepare(names(&next, |_| true))]
            }
        }
        (_, Event::CommitRequested) => return Ok(unchanged(record)),

        (S::Active, Event::AbortRequested { reason }) => {
            abort_unprepared(&mut next, &reason, now);
            Vec::new()
        }
        (S::Preparing, Event::AbortRequested { .. }) if one_phase_pending(record) => {
            return Err(TransitionError::Delegated);
        }
        (S::Preparing, Event::AbortRequested { reason }) => decide_abort(&mut next, reason, now),
        (S::Committing | S::Committed, Event::AbortRequested { .. }) => {
            return Err(TransitionError::AlreadyCommitted);
        }
        (S::Aborting | S::Aborted, Event::AbortRequested { .. }) => return Ok(unchanged(record)),

        // No prepare was sent while the one-phase commit is out.
        (S::Preparing, Event::Voted { .. }) if one_phase_pending(record) => return Err(invalid()),
        (S::Preparing, Event::Voted { participant, vote }) => {
            let p = find_mut(&mut next, &participant)?;
            if p.vote.is_some() {
                return Ok(unchanged(record));
            }
            p.vote = Some(vote.kind());
            p.state = match vote.kind() {
                VoteKind::Commit => ParticipantState::Prepared,
                VoteKind::ReadOnly => ParticipantState::ReadOnly,
                VoteKind::Abort => ParticipantState::Aborted,
            };
            if let Vote::Abort { reason } = vote {
                decide_abort(
                    &mut next,
                    format!("participant {participant} voted abort: {reason}"),
                    now,
                )
            } else if next.participants.iter().all(|p| p.vote.is_some()) {
                decide_commit(&mut next, now)
            } else {
                Vec::new()
            }
        }
        (S::Active, Event::Voted { .. }) => return Err(invalid()),
        (_, Event::Voted { participant, .. }) => {
            // A late answer after the decision: the decision's actions already cover it.
            find_mut(&mut next, &participant)?;
            return Ok(unchanged(record));
        }

        (S::Committing, Event::Acknowledged { participant }) => {
            let p = find_mut(&mut next, &participant)?;
            if p.state != ParticipantState::Prepared {
                return Ok(unchanged(record));
            }
            p.state = ParticipantState::Committed;
            complete_if_done(&mut next, now);
            Vec::new()
        }
        (S::Aborting, Event::Acknowledged { participant }) => {
            let p = find_mut(&mut next, &participant)?;
            if !owes_abort(p) {
                return Ok(unchanged(record));
            }
            p.state = ParticipantState::Aborted;
            complete_if_done(&mut next, now);
            Vec::new()
        }
        (S::Committed | S::Aborted, Event::Acknowledged { participant }) => {
            find_mut(&mut next, &participant)?;
            return Ok(unchanged(record));
        }
        (S::Active | S::Preparing, Event::Acknowledged { .. }) => return Err(invalid()),

        (
            S::Preparing,
            Event::OnePhaseAnswered {
                participant,
                answer,
            },
        ) => {
            let p = find_mut(&mut next, &participant)?;
            if !p.one_phase || p.state != ParticipantState::Pending {
                return Ok(unchanged(record));
            }
            match answer {
                OnePhaseAnswer::Committed => {
                    p.vote = Some(VoteKind::Commit);
                    p.state = ParticipantState::Committed;
                    next.state = S::Committed;
                    next.decision = Some(Decision::Commit);
                }
                OnePhaseAnswer::Aborted { reason } => {
                    p.vote = Some(VoteKind::Abort);
                    p.state = ParticipantState::Aborted;
                    next.state = S::Aborted;
                    next.decision = Some(Decision::Abort);
                    next.reason = Some(format!("participant {participant} aborted: {reason}"));
                }
                OnePhaseAnswer::Unsupported => {
                    p.one_phase = false;
                    next.version = record.version + 1;
                    return Ok(Transition {
                        record: next,
                        changed: true,
                        actions: vec![Action::Prepare(vec![participant])],
                    });
                }
            }
            next.decided_at = Some(now);
            next.completed_at = Some(now);
            Vec::new()
        }
        (S::Active, Event::OnePhaseAnswered { .. }) => return Err(invalid()),
        (_, Event::OnePhaseAnswered { participant, .. }) => {
            find_mut(&mut next, &participant)?;
            return Ok(unchanged(record));
        }

        (S::Active, Event::Recovered) => {
            if now > next.deadline {
                abort_unprepared(&mut next, "deadline passed while active", now);
                Vec::new()
            } else {
                return Ok(unchanged(record));
            }
        }
        (S::Preparing, Event::Recovered) if one_phase_pending(record) => {
            // Only the participant knows the outcome: ask again (the call is idempotent).
            let only = record.participants.iter().find(|p| p.one_phase);
            return Ok(Transition {
                actions: only
                    .map(|p| Action::OnePhase(p.name.clone()))
                    .into_iter()
                    .collect(),
                ..unchanged(record)
            });
        }
        (S::Preparing, Event::Recovered) => decide_abort(
            &mut next,
            "no decision was made before the coordinator lost track of it (presumed abort)"
                .to_owned(),
            now,
        ),
        (S::Committing, Event::Recovered) => {
            return Ok(Transition {
                actions: vec![Action::Commit(names(record, owes_commit))],
                ..unchanged(record)
            });
        }
        (S::Aborting, Event::Recovered) => {
            return Ok(Transition {
                actions: vec![Action::Abort(names(record, owes_abort))],
                ..unchanged(record)
            });
        }
        (S::Committed | S::Aborted, Event::Recovered) => return Ok(unchanged(record)),
    };
    next.version = record.version + 1;
    Ok(Transition {
        record: next,
        changed: true,
        actions,
    })
}

/// Whether the transaction waits for a one-phase commit's answer.
pub fn one_phase_pending(record: &TxRecord) -> bool {
    record.state == TransactionState::Preparing
        && record
            .participants
            .iter()
            .any(|p| p.one_phase && p.state == ParticipantState::Pending)
}

/// Whether this participant still has to acknowledge a commit.
pub fn owes_commit(p: &ParticipantRecord) -> bool {
    p.state == ParticipantState::Prepared
}

/// Whether this participant may hold something and still has to acknowledge an abort.
pub fn owes_abort(p: &ParticipantRecord) -> bool {
    matches!(
        p.state,
        ParticipantState::Pending | ParticipantState::Prepared
    )
}

fn unchanged(record: &TxRecord) -> Transition {
    Transition {
        record: record.clone(),
        changed: false,
        actions: Vec::new(),
    }
}

fn names(record: &TxRecord, pick: impl Fn(&ParticipantRecord) -> bool) -> Vec<String> {
    record
        .participants
        .iter()
        .filter(|p| pick(p))
        .map(|p| p.name.clone())
        .collect()
}

fn find_mut<'a>(
    record: &'a mut TxRecord,
    name: &str,
) -> Result<&'a mut ParticipantRecord, TransitionError> {
    record
        .participants
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| TransitionError::UnknownParticipant(name.to_owned()))
}

/// Aborts a transaction whose participants were never asked to prepare: nothing to undo.
fn abort_unprepared(record: &mut TxRecord, reason: &str, now: Millis) {
    record.state = TransactionState::Aborted;
    record.decision = Some(Decision::Abort);
    record.reason = Some(reason.to_owned());
    record.decided_at = Some(now);
    record.completed_at = Some(now);
    for p in &mut record.participants {
        p.state = ParticipantState::Aborted;
    }
}

fn decide_abort(record: &mut TxRecord, reason: String, now: Millis) -> Vec<Action> {
    record.state = TransactionState::Aborting;
    record.decision = Some(Decision::Abort);
    record.reason = Some(reason);
    record.decided_at = Some(now);
    let targets = names(record, owes_abort);
    complete_if_done(record, now);
    if targets.is_empty() {
        Vec::new()
    } else {
        vec![Action::Abort(targets)]
    }
}

fn decide_commit(record: &mut TxRecord, now: Millis) -> Vec<Action> {
    record.state = TransactionState::Committing;
    record.decision = Some(Decision::Commit);
    record.decided_at = Some(now);
    let targets = names(record, owes_commit);
    complete_if_done(record, now);
    if targets.is_empty() {
        Vec::new()
    } else {
        vec![Action::Commit(targets)]
    }
}

fn complete_if_done(record: &mut TxRecord, now: Millis) {
    let done = match record.state {
        TransactionState::Committing => !record.participants.iter().any(owes_commit),
        TransactionState::Aborting => !record.participants.iter().any(owes_abort),
        _ => false,
    };
    if done {
        record.state = match record.state {
            TransactionState::Committing => TransactionState::Committed,
            _ => TransactionState::Aborted,
        };
        record.completed_at = Some(now);
    }
}

#[cfg(test)]
mod tests;
