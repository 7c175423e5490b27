//! The transaction record kept in the decision log, and its public view.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use twopc::wire::{
    Decision, ParticipantState, ParticipantView, TransactionId, TransactionState, TransactionView,
    VoteKind,
};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One participant of a transaction as the log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    /// Unique name within the transaction.
    pub name: String,
    /// Base URL (already validated as http or https).
    pub url: String,
    /// Opaque JSON for the participant's prepare.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Its vote, once known.
    #[serde(default)]
    pub vote: Option<VoteKind>,
    /// Its state as the coordinator knows it.
    pub state: ParticipantState,
    /// Whether it was asked to commit in one phase (the transaction's only participant).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_phase: bool,
}

impl ParticipantRecord {
    /// A freshly enlisted participant: pending, no vote.
    pub fn new(name: String, url: String, payload: serde_json::Value) -> Self {
        Self {
            name,
            url,
            payload,
            vote: None,
            state: ParticipantState::Pending,
            one_phase: false,
        }
    }
}

/// A global transaction as the decision log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRecord {
    /// The transaction's id.
    pub id: TransactionId,
    /// Lifecycle state.
    pub state: TransactionState,
    /// The decision, once made.
    pub decision: Option<Decision>,
    /// Why it aborted.
    pub reason: Option<String>,
    /// The timeout the client asked for.
    pub timeout_ms: u64,
    /// Creation time.
    pub created_at: Millis,
    /// Past this instant an undecided transaction aborts.
    pub deadline: Millis,
    /// When the decision was made.
    pub decided_at: Option<Millis>,
    /// When every participant had acknowledged.
    pub completed_at: Option<Millis>,
    /// Participants in enlistment order.
    pub participants: Vec<ParticipantRecord>,
    /// Bumped by every write; writes are compare-and-set on it. [`UNLOGGED`] until the
    /// record is first written.
    pub version: i64,
}

/// The version of a record that is not in the log yet: a one-shot commit's record before its
/// decision (presumed abort needs nothing logged before the decision). Persisting it inserts
/// the record at version 0.
pub const UNLOGGED: i64 = -1;

impl TxRecord {
    /// A new active transaction with no participants.
    pub fn new(id: TransactionId, timeout_ms: u64, now: Millis) -> Self {
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        Self {
            id,
            state: TransactionState::Active,
            decision: None,
            reason: None,
            timeout_ms,
            created_at: now,
            deadline: now.saturating_add(timeout),
            decided_at: None,
            completed_at: None,
            participants: Vec::new(),
            version: 0,
        }
    }

    /// Whether the record has been written to the log (see [`UNLOGGED`]).
    pub fn is_logged(&self) -> bool {
        self.version != UNLOGGED
    }

    /// The participant with this name.
    pub fn participant(&self, name: &str) -> Option<&ParticipantRecord> {
        self.participants.iter().find(|p| p.name == name)
    }

    /// The public view of this record.
    pub fn view(&self) -> TransactionView {
        TransactionView {
            id: self.id,
            state: self.state,
            decision: self.decision,
            reason: self.reason.clone(),
            created_at: rfc3339(self.created_at),
            decided_at: self.decided_at.map(rfc3339),
            completed_at: self.completed_at.map(rfc3339),
            participants: self
                .participants
                .iter()
                .map(|p| ParticipantView {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    vote: p.vote,
                    state: p.state,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_formats_times_as_rfc3339() {
        let rec = TxRecord::new(TransactionId::new(), 1000, 1_700_000_000_123);
        let view = rec.view();
        assert_eq!(view.created_at, "2023-11-14T22:13:20.123Z");
        assert_eq!(rec.deadline, 1_700_000_001_123);
        assert!(view.decided_at.is_none());
    }
}
