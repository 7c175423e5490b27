//! JSON types of the wire contract (docs/protocol.md), shared by the coordinator and participants.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A global transaction's identifier (a UUID, version 7 when the coordinator makes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransactionId(pub Uuid);

impl TransactionId {
    /// A new time-ordered identifier.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TransactionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TransactionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The lifecycle state of a global transaction at the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    /// Open: participants may still be enlisted.
    Active,
    /// Prepares are out; no decision yet.
    Preparing,
    /// Decided to commit (durably); commits are being delivered.
    Committing,
    /// Every participant acknowledged the commit.
    Committed,
    /// Decided to abort; aborts are being delivered.
    Aborting,
    /// Every participant that may hold anything acknowledged the abort.
    Aborted,
}

impl TransactionState {
    /// All states, in lifecycle order.
    pub const ALL: [TransactionState; 6] = [
        Self::Active,
        Self::Preparing,
        Self::Committing,
        Self::Committed,
        Self::Aborting,
        Self::Aborted,
    ];

    /// The snake_case name used on the wire and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Preparing => "preparing",
            Self::Committing => "committing",
            Self::Committed => "committed",
            Self::Aborting => "aborting",
            Self::Aborted => "aborted",
        }
    }

    /// True once nothing is left to do (committed or aborted).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Committed | Self::Aborted)
    }

    /// The decision this state implies, if it implies one.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Self::Committing | Self::Committed => Some(Decision::Commit),
            Self::Aborting | Self::Aborted => Some(Decision::Abort),
            Self::Active | Self::Preparing => None,
        }
    }
}

impl fmt::Display for TransactionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a state name that is not one of the six.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown transaction state '{0}' (expected one of active, preparing, committing, committed, aborting, aborted)"
)]
pub struct UnknownState(pub String);

impl FromStr for TransactionState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// The coordinator's decision for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Every participant commits.
    Commit,
    /// Every participant aborts.
    Abort,
}

impl Decision {
    /// The snake_case name used on the wire and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Abort => "abort",
        }
    }
}

/// A participant's answer to prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "vote", rename_all = "snake_case")]
pub enum Vote {
    /// Prepared: the participant promises to commit when told to.
    Commit,
    /// Nothing was changed: the participant needs no second phase.
    ReadOnly,
    /// The participant refuses; the transaction aborts.
    Abort {
        /// Why, in words a person can act on.
        reason: String,
    },
}

impl Vote {
    /// The kind of this vote, without its reason.
    pub fn kind(&self) -> VoteKind {
        match self {
            Self::Commit => VoteKind::Commit,
            Self::ReadOnly => VoteKind::ReadOnly,
            Self::Abort { .. } => VoteKind::Abort,
        }
    }
}

/// The kind of a vote, as recorded in the coordinator's view of a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteKind {
    /// Voted commit.
    Commit,
    /// Voted read-only.
    ReadOnly,
    /// Voted abort (or failed to answer).
    Abort,
}

impl VoteKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::ReadOnly => "read_only",
            Self::Abort => "abort",
        }
    }
}

/// A participant's state as the coordinator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    /// Not yet prepared (or its vote is not known).
    Pending,
    /// Voted commit and holds its changes.
    Prepared,
    /// Voted read-only: nothing to finish.
    ReadOnly,
    /// Acknowledged the commit.
    Committed,
    /// Voted abort or acknowledged the abort.
    Aborted,
}

/// A participant as given by a client: `{"name", "url", "payload"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSpec {
    /// Unique name within the transaction, e.g. `bank-a`.
    pub name: String,
    /// Base URL of the participant; `/prepare`, `/commit` and `/abort` are appended.
    pub url: String,
    /// Opaque JSON handed to the participant's prepare.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Body of `POST /v1/transactions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    /// How long the transaction may take from creation to decision, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Participants enlisted at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<ParticipantSpec>>,
    /// Commit at once (one-shot form): the answer is that of the commit call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<bool>,
}

/// A participant in a transaction as the coordinator reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantView {
    /// The participant's name.
    pub name: String,
    /// The participant's base URL.
    pub url: String,
    /// Its vote, once known.
    pub vote: Option<VoteKind>,
    /// Its state as the coordinator knows it.
    pub state: ParticipantState,
}

/// A transaction as the coordinator API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionView {
    /// The transaction's id.
    pub id: TransactionId,
    /// Its lifecycle state.
    pub state: TransactionState,
    /// The decision, once made.
    pub decision: Option<Decision>,
    /// Why it aborted, when it did.
    pub reason: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was decided (RFC 3339).
    pub decided_at: Option<String>,
    /// When every participant had acknowledged (RFC 3339).
    pub completed_at: Option<String>,
    /// Its participants.
    pub participants: Vec<ParticipantView>,
}

/// Body of `GET /v1/transactions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionList {
    /// The transactions, newest first.
    pub transactions: Vec<TransactionView>,
}

/// Body of `POST {url}/prepare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// The global transaction.
    pub transaction_id: TransactionId,
    /// The name the participant has in this transaction.
    pub participant: String,
    /// The payload the client gave for this participant.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Base URL of the coordinator, for in-doubt inquiries.
    pub coordinator: String,
    /// Milliseconds the participant has to answer.
    pub deadline_ms: u64,
}

/// Body of `POST {url}/commit` and `POST {url}/abort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRequest {
    /// The global transaction.
    pub transaction_id: TransactionId,
    /// The name the participant has in this transaction.
    pub participant: String,
}

/// Body of a successful commit or abort answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeResponse {
    /// The participant's state after the call (`committed` or `aborted`).
    pub state: String,
}

/// Path (under the participant's base URL) of the optional one-phase commit: the body is a
/// [`PrepareRequest`], the answer a [`OnePhaseOutcome`]. A participant without it answers 404,
/// 405 or 501, and the coordinator runs the two phases instead.
pub const ONE_PHASE_PATH: &str = "commit-one-phase";

/// Answer (200) of `POST {url}/commit-one-phase`: what the participant did with the sole
/// participant's work, decided by itself in one local transaction; a repeat answers the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OnePhaseOutcome {
    /// Done and committed (also when it changed nothing).
    Committed,
    /// Refused, or aborted before it arrived; nothing was changed.
    Aborted {
        /// Why.
        reason: String,
    },
}

/// The coordinator's error code for an unknown transaction id: the one 404 that means
/// "no record" (presumed abort) to an in-doubt participant.
pub const TRANSACTION_NOT_FOUND: &str = "transaction_not_found";

/// The error shape of every non-2xx answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable snake_case code.
    pub code: String,
    /// A message for people.
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_use_the_documented_json() {
        let commit = serde_json::to_value(Vote::Commit).unwrap();
        assert_eq!(commit, serde_json::json!({"vote": "commit"}));
        let ro = serde_json::to_value(Vote::ReadOnly).unwrap();
        assert_eq!(ro, serde_json::json!({"vote": "read_only"}));
        let abort: Vote =
            serde_json::from_str(r#"{"vote":"abort","reason":"insufficient funds"}"#).unwrap();
        assert_eq!(
            abort,
            Vote::Abort {
                reason: "insufficient funds".into()
            }
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for st in TransactionState::ALL {
            assert_eq!(st.as_str().parse::<TransactionState>().unwrap(), st);
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        assert!("done".parse::<TransactionState>().is_err());
    }

    #[test]
    fn create_rejects_unknown_fields() {
        let err = serde_json::from_str::<CreateTransaction>(r#"{"timeout":5}"#);
        assert!(err.is_err());
    }
}
