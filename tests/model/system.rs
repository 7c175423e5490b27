//! The model: one global transaction, the coordinator's real machine
//! (`twopc_coordinator::machine::apply`) and the participants' real step function
//! (`twopc::participant::machine::step`), composed the way the driver, the recovery loop, the
//! SDK's flows and its in-doubt resolver compose them, with crashes, restarts and a network
//! that loses, duplicates and reorders.
//!
//! What is durable and what is not:
//! - coordinator: the log record is durable; a one-shot commit without an idempotency key is
//!   first logged with its decision (presumed abort), until then only the in-flight registry
//!   knows it (`Config::log_create` switches to the keyed form, logged before the prepares);
//!   the driver's in-memory record (votes folded in
//!   before the decision is logged, acknowledgements folded in before completion is logged) is
//!   lost in a crash, as are the responses on its open connections;
//! - participant: its state row is durable and every call is one local transaction, so a crash
//!   loses only the requests it had not yet handled.
//!
//! The network is a set of messages: a message in the set can be delivered any number of times
//! and in any order (duplication, reordering); `Lose` takes one out (loss).

use crate::checker::{Fx, Model, Property};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::BuildHasherDefault;
use twopc::participant::machine::{LocalState, Op, Step, step};
use twopc::wire::{Decision, ParticipantState, TransactionId, TransactionState, Vote, VoteKind};
use twopc_coordinator::machine::{Action, Event, OnePhaseAnswer, apply};
use twopc_coordinator::record::{Millis, ParticipantRecord, TxRecord};

/// Most participants the model holds.
pub const MAX_PARTICIPANTS: usize = 3;

/// The one transaction's id, creation time and "now": constants, so that equal records are
/// equal states. The deadline is far away; a timeout is modelled as a transition of its own.
const TX_ID: TransactionId = TransactionId(uuid::Uuid::nil());
const NOW: Millis = 1_000_000;
const TIMEOUT_MS: u64 = 30_000;

/// A deliberately wrong rule, switched on to show that the checker catches it. None of them
/// exists in the product; each replaces one rule of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongRule {
    /// The driver sends commit before it logs the commit decision (and logs it afterwards).
    CommitBeforeLog,
    /// A participant answers an abort of a transaction it never saw with 200 and records
    /// nothing (no tombstone), so a prepare arriving later prepares.
    NoTombstone,
    /// A participant that does not answer prepare in time counts as a commit vote.
    TimeoutVotesCommit,
    /// Phase two sends each commit or abort once and waits, instead of retrying.
    NoPhaseTwoRetry,
    /// The coordinator answers inquiries from the log only: about a transaction it is driving
    /// but has not logged yet it answers 404 (presumed abort) instead of "still preparing".
    InquiryIgnoresRegistry,
    /// A one-phase commit call that ends without an answer counts as the participant's
    /// refusal (like an unanswered prepare), instead of being asked again.
    OnePhaseTimeoutAborts,
}

/// What is explored.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of participants (1 to [`MAX_PARTICIPANTS`]).
    pub participants: usize,
    /// Whether a participant may vote `read_only` (besides `commit` and `abort`).
    pub read_only: bool,
    /// Whether the participants offer the one-phase commit (used when there is one participant);
    /// without it they answer 404 and the coordinator falls back to the two phases.
    pub one_phase_supported: bool,
    /// Whether a client may ask to abort (once) while the transaction runs.
    pub client_abort: bool,
    /// Whether the one-shot create is logged before the prepares (a request with an
    /// `Idempotency-Key`), or first logged with its decision (without one, the default).
    pub log_create: bool,
    /// Whether prepared participants ask the coordinator (the SDK's in-doubt resolver).
    pub inquiries: bool,
    /// The product's rule since the model found the gap (docs/reliability.md): a prepare call
    /// that ends without an answer (timeout, transport error) is folded in as `AbortRequested`
    /// instead of an abort vote, so the participant stays `pending` and is sent the abort.
    /// Off only to show the old rule's gap.
    pub abort_unanswered: bool,
    /// Most coordinator crashes in one execution.
    pub coordinator_crashes: u8,
    /// Most participant crashes in one execution (all participants together).
    pub participant_crashes: u8,
    /// Most lost messages in one execution.
    pub losses: u8,
    /// A deliberately wrong rule, if any.
    pub wrong: Option<WrongRule>,
    /// Safety properties not checked (to let a run go past one and find another).
    pub unchecked: Vec<Property>,
    /// Whether messages that can no longer change anything are dropped from the network
    /// (see [`System::collect_garbage`]); off only to test that dropping them is sound.
    pub collect_garbage: bool,
    /// Whether states that differ only in the participants' names are explored once
    /// (see [`System::canonical`]); off only to test that this is sound.
    pub symmetry: bool,
}

impl Config {
    /// The rules of the product, with these bounds.
    pub fn new(participants: usize, crashes: (u8, u8), losses: u8) -> Self {
        Self {
            participants,
            read_only: true,
            one_phase_supported: true,
            client_abort: true,
            log_create: false,
            inquiries: true,
            abort_unanswered: true,
            coordinator_crashes: crashes.0,
            participant_crashes: crashes.1,
            losses,
            wrong: None,
            unchecked: Vec::new(),
            collect_garbage: true,
            symmetry: true,
        }
    }
}

/// The coordinator's view of one participant, as its record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartRec {
    vote: Option<VoteKind>,
    state: ParticipantState,
    /// Asked to commit in one phase.
    one_phase: bool,
}

/// The fields of a [`TxRecord`] that the machine reads or that differ between states; the id,
/// times, reason, version and the participants' names, urls and payloads are constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rec {
    state: TransactionState,
    decision: Option<Decision>,
    parts: [PartRec; MAX_PARTICIPANTS],
}

/// A participant's durable state row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    state: LocalState,
    /// The vote recorded with it; `None` for a tombstone. A repeated prepare answers it.
    vote: Option<VoteKind>,
}

/// The coordinator's volatile state: what its driver task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// No driver: not started, finished, or after a restart until recovery resumes it.
    Idle,
    /// Phase one: prepares sent to `sent`, votes folded into `current` in memory.
    Preparing { current: Rec, sent: u8 },
    /// Wrong rule `CommitBeforeLog` only: commit decided and sent, not yet logged.
    Unlogged { current: Rec, targets: u8 },
    /// The one-phase commit is out to the only participant (asked again until it answers);
    /// `current` is the logged record it started from.
    OnePhase { current: Rec },
    /// Phase two: the outcome goes to `targets` until each acknowledges; the
    /// acknowledgements are folded into `current` in memory and logged once, at the end.
    PhaseTwo {
        decision: Decision,
        current: Rec,
        targets: u8,
        acked: u8,
        sent: u8,
    },
}

/// A message in flight. Requests from the coordinator carry whether the coordinator process
/// that sent them is still the running one (`live`): after a coordinator crash the connection
/// is gone, so the participant may still handle the request but its answer reaches nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// `POST /prepare` to `p`.
    Prepare { p: u8, live: bool },
    /// `p`'s answer to prepare.
    Vote { p: u8, vote: VoteKind },
    /// `POST /commit` or `/abort` to `p`.
    Outcome {
        p: u8,
        decision: Decision,
        live: bool,
    },
    /// `p`'s 200 to a commit or abort.
    Ack { p: u8, decision: Decision },
    /// `p`'s in-doubt inquiry, `GET /v1/transactions/{id}`.
    Inquiry { p: u8 },
    /// The coordinator's answer to `p`'s inquiry (commit, or abort: aborting, aborted or 404).
    Answer { p: u8, decision: Decision },
    /// `POST /commit-one-phase` to `p`.
    OnePhase { p: u8, live: bool },
    /// `p`'s answer to it.
    OnePhaseAnswer { p: u8, answer: OneAnswer },
}

/// A participant's answer to a one-phase commit, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OneAnswer {
    /// `{"state": "committed"}`.
    Committed,
    /// `{"state": "aborted", …}`.
    Aborted,
    /// 404: not offered.
    Unsupported,
}

const KINDS: u32 = 19;

impl Msg {
    fn bit(self) -> u64 {
        let (p, k) = match self {
            Self::Prepare { p, live } => (p, u32::from(!live)),
            Self::Vote { p, vote } => (
                p,
                match vote {
                    VoteKind::Commit => 2,
                    VoteKind::ReadOnly => 3,
                    VoteKind::Abort => 4,
                },
            ),
            Self::Outcome { p, decision, live } => (
                p,
                match decision {
                    Decision::Commit => 5,
                    Decision::Abort => 7,
                } + u32::from(!live),
            ),
            Self::Ack { p, decision } => (p, 9 + u32::from(decision == Decision::Abort)),
            Self::Inquiry { p } => (p, 11),
            Self::Answer { p, decision } => (p, 12 + u32::from(decision == Decision::Abort)),
            Self::OnePhase { p, live } => (p, 14 + u32::from(!live)),
            Self::OnePhaseAnswer { p, answer } => (
                p,
                match answer {
                    OneAnswer::Committed => 16,
                    OneAnswer::Aborted => 17,
                    OneAnswer::Unsupported => 18,
                },
            ),
        };
        1 << (u32::from(p) * KINDS + k)
    }

    fn from_bit(index: u32) -> Self {
        let p = u8::try_from(index / KINDS).unwrap_or(u8::MAX);
        let d = |abort: bool| {
            if abort {
                Decision::Abort
            } else {
                Decision::Commit
            }
        };
        match index % KINDS {
            k @ (0 | 1) => Self::Prepare { p, live: k == 0 },
            2 => Self::Vote {
                p,
                vote: VoteKind::Commit,
            },
            3 => Self::Vote {
                p,
                vote: VoteKind::ReadOnly,
            },
            4 => Self::Vote {
                p,
                vote: VoteKind::Abort,
            },
            k @ 5..=8 => Self::Outcome {
                p,
                decision: d(k >= 7),
                live: k % 2 == 1,
            },
            k @ (9 | 10) => Self::Ack {
                p,
                decision: d(k == 10),
            },
            11 => Self::Inquiry { p },
            k @ (12 | 13) => Self::Answer {
                p,
                decision: d(k == 13),
            },
            k @ (14 | 15) => Self::OnePhase { p, live: k == 14 },
            16 => Self::OnePhaseAnswer {
                p,
                answer: OneAnswer::Committed,
            },
            17 => Self::OnePhaseAnswer {
                p,
                answer: OneAnswer::Aborted,
            },
            _ => Self::OnePhaseAnswer {
                p,
                answer: OneAnswer::Unsupported,
            },
        }
    }

    /// The participant this message goes to, if it goes to one.
    fn to_participant(self) -> Option<u8> {
        match self {
            Self::Prepare { p, .. }
            | Self::Outcome { p, .. }
            | Self::Answer { p, .. }
            | Self::OnePhase { p, .. } => Some(p),
            Self::Vote { .. }
            | Self::Ack { .. }
            | Self::Inquiry { .. }
            | Self::OnePhaseAnswer { .. } => None,
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead = |live: &bool| if *live { "" } else { "(dead)" };
        match self {
            Self::Prepare { p, live } => write!(f, "prepare>p{p}{}", dead(live)),
            Self::Vote { p, vote } => write!(f, "p{p}:vote_{}", vote.as_str()),
            Self::Outcome { p, decision, live } => {
                write!(f, "{}>p{p}{}", decision.as_str(), dead(live))
            }
            Self::Ack { p, decision } => write!(f, "p{p}:ack_{}", decision.as_str()),
            Self::Inquiry { p } => write!(f, "p{p}:inquiry"),
            Self::Answer { p, decision } => write!(f, "answer_{}>p{p}", decision.as_str()),
            Self::OnePhase { p, live } => write!(f, "one_phase>p{p}{}", dead(live)),
            Self::OnePhaseAnswer { p, answer } => write!(f, "p{p}:one_phase_{answer:?}"),
        }
    }
}

fn has(net: u64, m: Msg) -> bool {
    net & m.bit() != 0
}

fn messages(net: u64) -> impl Iterator<Item = Msg> {
    let mut rest = net;
    std::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let i = rest.trailing_zeros();
        rest &= rest - 1;
        Some(Msg::from_bit(i))
    })
}

/// One state of the whole system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The coordinator's durable log record (none before it is first logged).
    log: Option<Rec>,
    /// Whether the client created the transaction (it does so once).
    created: bool,
    coordinator_up: bool,
    driver: Driver,
    /// The participants' durable rows.
    rows: [Option<Row>; MAX_PARTICIPANTS],
    up: [bool; MAX_PARTICIPANTS],
    /// Messages in flight, one bit per [`Msg`].
    net: u64,
    coordinator_crashes: u8,
    participant_crashes: u8,
    losses: u8,
    client_aborted: bool,
}

fn rec_code(r: &Rec) -> u64 {
    let state = match r.state {
        TransactionState::Active => 0,
        TransactionState::Preparing => 1,
        TransactionState::Committing => 2,
        TransactionState::Committed => 3,
        TransactionState::Aborting => 4,
        TransactionState::Aborted => 5,
    };
    let decision = match r.decision {
        None => 0,
        Some(Decision::Commit) => 1,
        Some(Decision::Abort) => 2,
    };
    r.parts
        .iter()
        .fold(state | decision << 3, |acc, p| acc << 6 | part_code(*p))
}

/// A hash of the packed fields: the derived one hashes field by field, which is most of the
/// time of a debug build. Equal states pack equally.
impl std::hash::Hash for State {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let log = self.log.as_ref().map_or(0, |r| 1 + rec_code(r));
        let driver = match self.driver {
            Driver::Idle => 0,
            Driver::Preparing { current, sent } => {
                1 | u64::from(sent) << 2 | rec_code(&current) << 8
            }
            Driver::Unlogged { current, targets } => {
                2 | u64::from(targets) << 2 | rec_code(&current) << 8
            }
            Driver::OnePhase { current } => 0b100 | rec_code(&current) << 12,
            Driver::PhaseTwo {
                decision,
                current,
                targets,
                acked,
                sent,
            } => {
                3 | u64::from(decision == Decision::Abort) << 2
                    | u64::from(targets) << 3
                    | u64::from(acked) << 6
                    | u64::from(sent) << 9
                    | rec_code(&current) << 12
            }
        };
        let mut rest = u64::from(self.coordinator_up)
            | u64::from(self.client_aborted) << 1
            | u64::from(self.coordinator_crashes) << 2
            | u64::from(self.participant_crashes) << 6
            | u64::from(self.losses) << 10
            | u64::from(self.created) << 14;
        for p in 0..MAX_PARTICIPANTS {
            let row = self.rows[p].map_or(0, |r| {
                1 + match r.state {
                    LocalState::Prepared => 0,
                    LocalState::Committed => 1,
                    LocalState::ReadOnly => 2,
                    LocalState::Aborted => 3,
                } * 4
                    + part_code(PartRec {
                        vote: r.vote,
                        state: ParticipantState::Pending,
                        one_phase: false,
                    })
            });
            rest = rest << 6 | row << 1 | u64::from(self.up[p]);
        }
        h.write_u64(self.net);
        h.write_u64(log ^ driver.rotate_left(29));
        h.write_u64(rest);
    }
}

/// One transition, for traces.
#[derive(Debug, Clone, Copy)]
pub enum Label {
    /// A client creates the transaction with `"commit": true` (logged as preparing only with
    /// `Config::log_create`).
    Create,
    SendPrepare(u8),
    /// The prepare call ends without a vote (deadline, transport error): an abort vote.
    Timeout(u8),
    DeliverVote(u8, VoteKind),
    /// Wrong rule `CommitBeforeLog`: the decision logged after the commits went out.
    LogDecision,
    SendOutcome(u8, Decision),
    DeliverAck(u8, Decision),
    /// Recovery finds the logged record unfinished and unowned: `Event::Recovered`.
    Recover,
    ClientAbort,
    AnswerInquiry(u8, Decision),
    CoordinatorCrash,
    CoordinatorRestart,
    /// `p` handles a prepare; `Some(vote)` when it ran its handler and voted.
    HandlePrepare(u8, bool, Option<VoteKind>),
    HandleOutcome(u8, Decision, bool, Step),
    SendInquiry(u8),
    ApplyAnswer(u8, Decision, Step),
    ParticipantCrash(u8),
    ParticipantRestart(u8),
    Lose(Msg),
    /// The one-phase commit call goes out (again).
    SendOnePhase,
    /// Its answer arrives (or, wrong rule `OnePhaseTimeoutAborts`, a timeout counts as abort).
    DeliverOnePhase(OneAnswer),
    /// `p` handles the one-phase call; `Some(answer)` unless it conflicts (409, no answer).
    HandleOnePhase(u8, bool, OneAnswer),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live = |l: &bool| if *l { "" } else { " (sent before a crash)" };
        match self {
            Self::Create => write!(f, "coordinator: create + commit"),
            Self::SendPrepare(p) => write!(f, "coordinator: sends prepare to p{p}"),
            Self::Timeout(p) => write!(f, "coordinator: prepare of p{p} times out"),
            Self::DeliverVote(p, v) => write!(f, "coordinator: receives p{p}'s vote {v:?}"),
            Self::LogDecision => write!(f, "coordinator: logs the decision (late)"),
            Self::SendOutcome(p, d) => write!(f, "coordinator: sends {d:?} to p{p}"),
            Self::DeliverAck(p, d) => write!(f, "coordinator: receives p{p}'s ack of {d:?}"),
            Self::Recover => write!(f, "coordinator: recovery applies Recovered"),
            Self::ClientAbort => write!(f, "client: asks to abort"),
            Self::AnswerInquiry(p, d) => write!(f, "coordinator: answers p{p}'s inquiry: {d:?}"),
            Self::CoordinatorCrash => write!(f, "coordinator CRASHES"),
            Self::CoordinatorRestart => write!(f, "coordinator restarts"),
            Self::HandlePrepare(p, l, Some(v)) => {
                write!(f, "p{p}: handles prepare{}, votes {v:?}", live(l))
            }
            Self::HandlePrepare(p, l, None) => {
                write!(f, "p{p}: handles prepare{}, repeats its vote", live(l))
            }
            Self::HandleOutcome(p, d, l, s) => {
                write!(f, "p{p}: handles {d:?}{}: {s:?}", live(l))
            }
            Self::SendInquiry(p) => write!(f, "p{p}: in doubt, asks the coordinator"),
            Self::ApplyAnswer(p, d, s) => write!(f, "p{p}: applies the answer {d:?}: {s:?}"),
            Self::ParticipantCrash(p) => write!(f, "p{p} CRASHES"),
            Self::ParticipantRestart(p) => write!(f, "p{p} restarts"),
            Self::Lose(m) => write!(f, "network LOSES {m}"),
            Self::SendOnePhase => write!(f, "coordinator: sends commit-one-phase to p0"),
            Self::DeliverOnePhase(a) => {
                write!(f, "coordinator: receives the one-phase answer {a:?}")
            }
            Self::HandleOnePhase(p, l, a) => {
                write!(
                    f,
                    "p{p}: handles commit-one-phase{}, answers {a:?}",
                    live(l)
                )
            }
        }
    }
}

/// An event for the coordinator's machine, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ev {
    Voted(u8, VoteKind),
    Acknowledged(u8),
    Recovered,
    AbortRequested,
    OnePhase(u8, OneAnswer),
}

/// What the real machine returned, in the model's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    record: Rec,
    changed: bool,
    /// Commit or abort, and to which participants (a bit each); none for no action.
    outcome: Option<(Decision, u8)>,
    /// `Some(true)`: ask for the one-phase commit; `Some(false)`: send prepares (the fallback).
    phase_one: Option<bool>,
}

/// Results of the real `apply`, by input.
type Memo = HashMap<(Rec, Ev), Result<Applied, String>, BuildHasherDefault<Fx>>;

/// The model of the system with one configuration.
pub struct System {
    config: Config,
    n: usize,
    /// The record as it is first logged (`preparing`, no votes).
    created: Rec,
    /// Results of the real `apply`, by input: the machine is pure, so each input is applied
    /// once and the answer reused.
    memo: RefCell<Memo>,
}

fn name(p: usize) -> String {
    format!("p{p}")
}

impl System {
    /// The model for `config`.
    pub fn new(config: Config) -> Self {
        let n = config.participants;
        assert!((1..=MAX_PARTICIPANTS).contains(&n), "1 to 3 participants");
        let mut record = TxRecord::new(TX_ID, TIMEOUT_MS, NOW);
        record.participants = (0..n)
            .map(|p| {
                ParticipantRecord::new(
                    name(p),
                    format!("http://{}.invalid", name(p)),
                    serde_json::Value::Null,
                )
            })
            .collect();
        let mut system = Self {
            config,
            n,
            created: Rec {
                state: TransactionState::Active,
                decision: None,
                parts: [PartRec {
                    vote: None,
                    state: ParticipantState::Pending,
                    one_phase: false,
                }; MAX_PARTICIPANTS],
            },
            memo: RefCell::default(),
        };
        // The one-shot create: `CommitRequested` applied to the new record, with a prepare to
        // everyone, or with one participant the one-phase commit.
        let t = apply(&record, Event::CommitRequested, NOW).expect("commit of a new transaction");
        let expected = if n == 1 {
            Action::OnePhase(name(0))
        } else {
            Action::Prepare((0..n).map(name).collect())
        };
        assert_eq!(t.actions, vec![expected]);
        system.created = system.compact(&t.record);
        system
    }

    fn all(&self) -> u8 {
        (1u8 << self.n) - 1
    }

    fn record(&self, r: &Rec) -> TxRecord {
        let mut record = TxRecord::new(TX_ID, TIMEOUT_MS, NOW);
        record.state = r.state;
        record.decision = r.decision;
        record.participants = (0..self.n)
            .map(|p| {
                let mut part = ParticipantRecord::new(
                    name(p),
                    format!("http://{}.invalid", name(p)),
                    serde_json::Value::Null,
                );
                part.vote = r.parts[p].vote;
                part.state = r.parts[p].state;
                part.one_phase = r.parts[p].one_phase;
                part
            })
            .collect();
        record
    }

    fn compact(&self, record: &TxRecord) -> Rec {
        assert_eq!(record.participants.len(), self.n);
        let mut parts = [PartRec {
            vote: None,
            state: ParticipantState::Pending,
            one_phase: false,
        }; MAX_PARTICIPANTS];
        for (p, part) in record.participants.iter().enumerate() {
            assert_eq!(part.name, name(p));
            parts[p] = PartRec {
                vote: part.vote,
                state: part.state,
                one_phase: part.one_phase,
            };
        }
        Rec {
            state: record.state,
            decision: record.decision,
            parts,
        }
    }

    fn mask(names: &[String]) -> u8 {
        names.iter().fold(0, |m, n| {
            let p: u8 = n[1..].parse().expect("participant names are p<i>");
            m | 1 << p
        })
    }

    /// The real `machine::apply`, memoized.
    fn apply(&self, r: &Rec, ev: Ev) -> Result<Applied, String> {
        if let Some(hit) = self.memo.borrow().get(&(*r, ev)) {
            return hit.clone();
        }
        let event = match ev {
            Ev::Voted(p, kind) => Event::Voted {
                participant: name(p.into()),
                vote: match kind {
                    VoteKind::Commit => Vote::Commit,
                    VoteKind::ReadOnly => Vote::ReadOnly,
                    VoteKind::Abort => Vote::Abort {
                        reason: "model".into(),
                    },
                },
            },
            Ev::Acknowledged(p) => Event::Acknowledged {
                participant: name(p.into()),
            },
            Ev::Recovered => Event::Recovered,
            Ev::AbortRequested => Event::AbortRequested {
                reason: "aborted by client".into(),
            },
            Ev::OnePhase(p, answer) => Event::OnePhaseAnswered {
                participant: name(p.into()),
                answer: match answer {
                    OneAnswer::Committed => OnePhaseAnswer::Committed,
                    OneAnswer::Aborted => OnePhaseAnswer::Aborted {
                        reason: "model".into(),
                    },
                    OneAnswer::Unsupported => OnePhaseAnswer::Unsupported,
                },
            },
        };
        let result = apply(&self.record(r), event, NOW)
            .map_err(|e| format!("{ev:?} on {r:?}: {e}"))
            .and_then(|t| {
                let (outcome, phase_one) = match t.actions.as_slice() {
                    [] => (None, None),
                    [Action::Commit(names)] => (Some((Decision::Commit, Self::mask(names))), None),
                    [Action::Abort(names)] => (Some((Decision::Abort, Self::mask(names))), None),
                    [Action::OnePhase(_)] => (None, Some(true)),
                    [Action::Prepare(names)] if Self::mask(names) == self.all() => {
                        (None, Some(false))
                    }
                    other => return Err(format!("{ev:?} on {r:?}: unexpected actions {other:?}")),
                };
                Ok(Applied {
                    record: self.compact(&t.record),
                    changed: t.changed,
                    outcome,
                    phase_one,
                })
            });
        self.memo.borrow_mut().insert((*r, ev), result.clone());
        result
    }

    /// The driver that performs `outcome` on the persisted record `record` (`drive`).
    fn driver_for(record: Rec, outcome: Option<(Decision, u8)>) -> Driver {
        match outcome {
            Some((decision, targets)) if targets != 0 => Driver::PhaseTwo {
                decision,
                current: record,
                targets,
                acked: 0,
                sent: 0,
            },
            // No action, or one with no participant: `drive` has nothing to do.
            _ => Driver::Idle,
        }
    }

    /// The driver that performs what `a` returned.
    fn driver_after(a: &Applied) -> Driver {
        match a.phase_one {
            Some(true) => Driver::OnePhase { current: a.record },
            Some(false) => Driver::Preparing {
                current: a.record,
                sent: 0,
            },
            None => Self::driver_for(a.record, a.outcome),
        }
    }

    /// Whether the logged record waits for a one-phase commit's answer.
    fn one_phase_pending(r: &Rec) -> bool {
        r.state == TransactionState::Preparing
            && r.parts
                .iter()
                .any(|p| p.one_phase && p.state == ParticipantState::Pending)
    }

    /// The end of phase one: `prepare_phase` persists `current` with a compare-and-set on the
    /// record it started from; if the log changed meanwhile (a client's abort), it reloads
    /// and follows the log (`advance(fresh, Recovered)`).
    fn log_decision(
        &self,
        s: &State,
        current: Rec,
        outcome: Option<(Decision, u8)>,
    ) -> Result<State, String> {
        let mut t = s.clone();
        // The driver's write is a compare-and-set on the logged record, or an insert when the
        // record was not logged; either fails if someone (a client's abort) wrote first.
        let base = if self.n == 1 {
            // After the one-phase fallback: the record as the `Unsupported` answer logged it.
            Some(Rec {
                parts: {
                    let mut parts = self.created.parts;
                    parts[0].one_phase = false;
                    parts
                },
                ..self.created
            })
        } else {
            self.config.log_create.then_some(self.created)
        };
        if s.log == base {
            t.log = Some(current);
            t.driver = Self::driver_for(current, outcome);
        } else {
            let fresh = s.log.ok_or("the log record vanished")?;
            let a = self.apply(&fresh, Ev::Recovered)?;
            t.log = Some(a.record);
            t.driver = Self::driver_after(&a);
        }
        Ok(t)
    }

    /// The driver folds a vote (or a timeout) into its in-memory record; once that decides,
    /// it logs the decision and only then sends the outcome.
    fn vote(&self, s: &State, current: Rec, sent: u8, ev: Ev) -> Result<State, String> {
        let a = self.apply(&current, ev)?;
        if a.record.decision.is_none() {
            let mut t = s.clone();
            t.driver = Driver::Preparing {
                current: a.record,
                sent,
            };
            return Ok(t);
        }
        if self.config.wrong == Some(WrongRule::CommitBeforeLog)
            && a.record.decision == Some(Decision::Commit)
        {
            let targets = a.outcome.map_or(0, |(_, m)| m);
            let mut t = s.clone();
            t.driver = Driver::Unlogged {
                current: a.record,
                targets,
            };
            for q in self.each(targets) {
                t.net |= Msg::Outcome {
                    p: q,
                    decision: Decision::Commit,
                    live: true,
                }
                .bit();
            }
            return Ok(t);
        }
        self.log_decision(s, a.record, a.outcome)
    }

    fn each(&self, mask: u8) -> impl Iterator<Item = u8> + use<> {
        let n = u8::try_from(self.n).unwrap_or(0);
        (0..n).filter(move |p| mask & (1 << p) != 0)
    }

    fn coordinator(&self, s: &State, out: &mut Vec<(Label, State)>) -> Result<(), String> {
        if !s.coordinator_up {
            let mut t = s.clone();
            t.coordinator_up = true;
            out.push((Label::CoordinatorRestart, t));
            return Ok(());
        }
        if !s.created {
            let mut t = s.clone();
            t.created = true;
            // A one-phase commit is logged before it is sent, key or not (service.rs).
            if self.config.log_create || self.n == 1 {
                t.log = Some(self.created);
            }
            t.driver = if self.n == 1 {
                Driver::OnePhase {
                    current: self.created,
                }
            } else {
                Driver::Preparing {
                    current: self.created,
                    sent: 0,
                }
            };
            out.push((Label::Create, t));
        }
        match s.driver {
            Driver::Idle => {
                if let Some(log) = s.log.filter(|l| !l.state.is_final()) {
                    // recovery.rs: apply Recovered, persist if changed, drive the actions.
                    let a = self.apply(&log, Ev::Recovered)?;
                    let mut t = s.clone();
                    t.log = Some(a.record);
                    t.driver = Self::driver_after(&a);
                    out.push((Label::Recover, t));
                }
            }
            Driver::Preparing { current, sent } => {
                for p in self.each(self.all()) {
                    if current.parts[usize::from(p)].vote.is_some() {
                        continue;
                    }
                    let bit = 1 << p;
                    if sent & bit == 0 {
                        let mut t = s.clone();
                        t.driver = Driver::Preparing {
                            current,
                            sent: sent | bit,
                        };
                        t.net |= Msg::Prepare { p, live: true }.bit();
                        out.push((Label::SendPrepare(p), t));
                    }
                    let timeout = if self.config.wrong == Some(WrongRule::TimeoutVotesCommit) {
                        Ev::Voted(p, VoteKind::Commit)
                    } else if self.config.abort_unanswered {
                        Ev::AbortRequested
                    } else {
                        Ev::Voted(p, VoteKind::Abort)
                    };
                    out.push((Label::Timeout(p), self.vote(s, current, sent, timeout)?));
                    for vote in [VoteKind::Commit, VoteKind::ReadOnly, VoteKind::Abort] {
                        if has(s.net, Msg::Vote { p, vote }) {
                            out.push((
                                Label::DeliverVote(p, vote),
                                self.vote(s, current, sent, Ev::Voted(p, vote))?,
                            ));
                        }
                    }
                }
            }
            Driver::Unlogged { current, targets } => {
                let t = self.log_decision(s, current, Some((Decision::Commit, targets)))?;
                out.push((Label::LogDecision, t));
            }
            Driver::OnePhase { current } => {
                // The call goes out (again: the driver repeats it until it is answered).
                let mut t = s.clone();
                t.net |= Msg::OnePhase { p: 0, live: true }.bit();
                out.push((Label::SendOnePhase, t));
                let mut answers: Vec<OneAnswer> = [
                    OneAnswer::Committed,
                    OneAnswer::Aborted,
                    OneAnswer::Unsupported,
                ]
                .into_iter()
                .filter(|&answer| has(s.net, Msg::OnePhaseAnswer { p: 0, answer }))
                .collect();
                if self.config.wrong == Some(WrongRule::OnePhaseTimeoutAborts) {
                    answers.push(OneAnswer::Aborted);
                }
                for answer in answers {
                    // `one_phase`: apply the answer, persist it (compare-and-set), follow it.
                    let a = self.apply(&current, Ev::OnePhase(0, answer))?;
                    let mut t = s.clone();
                    if s.log == Some(current) {
                        t.log = Some(a.record);
                        t.driver = Self::driver_after(&a);
                    } else {
                        let fresh = s.log.ok_or("the log record vanished")?;
                        let f = self.apply(&fresh, Ev::Recovered)?;
                        t.log = Some(f.record);
                        t.driver = Self::driver_after(&f);
                    }
                    out.push((Label::DeliverOnePhase(answer), t));
                }
            }
            Driver::PhaseTwo {
                decision,
                current,
                targets,
                acked,
                sent,
            } => {
                for p in self.each(targets & !acked) {
                    let bit = 1 << p;
                    let retries = self.config.wrong != Some(WrongRule::NoPhaseTwoRetry);
                    if retries || sent & bit == 0 {
                        let mut t = s.clone();
                        t.net |= Msg::Outcome {
                            p,
                            decision,
                            live: true,
                        }
                        .bit();
                        t.driver = Driver::PhaseTwo {
                            decision,
                            current,
                            targets,
                            acked,
                            sent: sent | bit,
                        };
                        out.push((Label::SendOutcome(p, decision), t));
                    }
                    if has(s.net, Msg::Ack { p, decision }) {
                        let a = self.apply(&current, Ev::Acknowledged(p))?;
                        let mut t = s.clone();
                        if acked | bit == targets {
                            // Every call returned: log the result once, if it changed.
                            if Some(a.record) != s.log {
                                t.log = Some(a.record);
                            }
                            t.driver = Driver::Idle;
                        } else {
                            t.driver = Driver::PhaseTwo {
                                decision,
                                current: a.record,
                                targets,
                                acked: acked | bit,
                                sent,
                            };
                        }
                        out.push((Label::DeliverAck(p, decision), t));
                    }
                }
            }
        }
        // GET /v1/transactions/{id} answers from the log, or, for a record not logged yet, from
        // the in-flight registry (`preparing`: no answer, ask again); with neither, 404.
        let registry = match s.driver {
            Driver::Preparing { .. } | Driver::Unlogged { .. } if s.log.is_none() => {
                Some(self.created)
            }
            _ => None,
        };
        for p in self.each(self.all()) {
            if !has(s.net, Msg::Inquiry { p }) {
                continue;
            }
            let answer = match (s.log, registry) {
                (Some(log), _) => log.state.decision(),
                (None, Some(_)) if self.config.wrong != Some(WrongRule::InquiryIgnoresRegistry) => {
                    None
                }
                (None, _) => Some(Decision::Abort),
            };
            if let Some(decision) = answer {
                let mut t = s.clone();
                t.net |= Msg::Answer { p, decision }.bit();
                out.push((Label::AnswerInquiry(p, decision), t));
            }
        }
        // service.rs abort: apply, persist; drive the aborts if no driver owns it. A refused
        // abort (already committing) changes nothing.
        if self.config.client_abort
            && !s.client_aborted
            && let Some(log) = s.log.or(registry)
            && let Ok(a) = self.apply(&log, Ev::AbortRequested)
            && a.changed
        {
            let mut t = s.clone();
            t.log = Some(a.record);
            t.client_aborted = true;
            if s.driver == Driver::Idle {
                t.driver = Self::driver_after(&a);
            }
            out.push((Label::ClientAbort, t));
        }
        if s.coordinator_crashes < self.config.coordinator_crashes {
            let mut t = s.clone();
            t.coordinator_up = false;
            t.driver = Driver::Idle;
            t.coordinator_crashes += 1;
            t.net = 0;
            for m in messages(s.net) {
                let kept = match m {
                    // Answers on the dead process's connections and requests to it are gone.
                    Msg::Vote { .. }
                    | Msg::Ack { .. }
                    | Msg::Inquiry { .. }
                    | Msg::OnePhaseAnswer { .. } => None,
                    Msg::OnePhase { p, .. } => Some(Msg::OnePhase { p, live: false }),
                    // Its requests may still be handled; their answers reach nobody.
                    Msg::Prepare { p, .. } => Some(Msg::Prepare { p, live: false }),
                    Msg::Outcome { p, decision, .. } => Some(Msg::Outcome {
                        p,
                        decision,
                        live: false,
                    }),
                    Msg::Answer { .. } => Some(m),
                };
                if let Some(m) = kept {
                    t.net |= m.bit();
                }
            }
            out.push((Label::CoordinatorCrash, t));
        }
        Ok(())
    }

    /// The SDK's commit or abort flow (or the resolver applying an answer): one local
    /// transaction chosen by `step`; answers 200 unless unknown or conflicting.
    fn outcome(&self, s: &State, p: u8, decision: Decision) -> Result<(State, Step, bool), String> {
        let i = usize::from(p);
        let op = match decision {
            Decision::Commit => Op::Commit,
            Decision::Abort => Op::Abort,
        };
        let row = s.rows[i];
        let st = step(row.map(|r| r.state), op);
        let mut t = s.clone();
        let ok = match st {
            Step::Tombstone => {
                if self.config.wrong != Some(WrongRule::NoTombstone) {
                    t.rows[i] = Some(Row {
                        state: LocalState::Aborted,
                        vote: None,
                    });
                }
                true
            }
            Step::AlreadyDone => true,
            Step::RunCommit | Step::RunAbort => {
                let vote = row.and_then(|r| r.vote);
                let state = if st == Step::RunCommit {
                    LocalState::Committed
                } else {
                    LocalState::Aborted
                };
                t.rows[i] = Some(Row { state, vote });
                true
            }
            Step::Unknown | Step::Conflict => false,
            Step::RunPrepare | Step::RepeatVote | Step::RunOnePhase => {
                return Err(format!("step chose {st:?} for {op}"));
            }
        };
        Ok((t, st, ok))
    }

    /// The messages of `s` whose delivery can no longer change anything but other such
    /// messages; dropping them lets states that differ only in them be explored once:
    /// - a vote the driver no longer waits for (it is not preparing, or has that vote), an
    ///   acknowledgement it does not wait for: a driver that waits for them again only starts
    ///   after a crash, which drops every answer on the old connections;
    /// - a request to a participant whose row is final (committed, aborted and read-only rows
    ///   never change), unless it is a live commit or abort whose acknowledgement the driver
    ///   waits for; an inquiry about such a row and the answer to it; a prepare to a
    ///   participant that has a row, unless a live one whose vote the driver waits for.
    ///
    /// [`System::check_garbage_collection`] checks that this is sound.
    pub fn garbage(&self, s: &State) -> u64 {
        let awaits_vote = |p: u8| match s.driver {
            Driver::Preparing { current, .. } => current.parts[usize::from(p)].vote.is_none(),
            _ => false,
        };
        let awaits_ack = |p: u8, d: Decision| match s.driver {
            Driver::PhaseTwo {
                decision,
                targets,
                acked,
                ..
            } => decision == d && (targets & !acked) & (1 << p) != 0,
            Driver::Unlogged { targets, .. } => d == Decision::Commit && targets & (1 << p) != 0,
            Driver::Idle | Driver::Preparing { .. } | Driver::OnePhase { .. } => false,
        };
        let awaits_one_phase = matches!(s.driver, Driver::OnePhase { .. });
        let row = |p: u8| s.rows[usize::from(p)];
        let is_final = |p: u8| row(p).is_some_and(|r| r.state != LocalState::Prepared);
        messages(s.net)
            .filter(|m| match *m {
                Msg::Vote { p, .. } => !awaits_vote(p),
                Msg::Ack { p, decision } => !awaits_ack(p, decision),
                Msg::Prepare { p, live } => row(p).is_some() && !(live && awaits_vote(p)),
                Msg::Outcome { p, decision, live } => {
                    is_final(p) && !(live && awaits_ack(p, decision))
                }
                Msg::Answer { p, .. } | Msg::Inquiry { p } => is_final(p),
                // Handling it changes no row (final, or the call is not offered) and its answer
                // is awaited by nobody.
                Msg::OnePhase { p, live } => {
                    (is_final(p) || !self.config.one_phase_supported) && !(live && awaits_one_phase)
                }
                Msg::OnePhaseAnswer { .. } => !awaits_one_phase,
            })
            .fold(0, |acc, m| acc | m.bit())
    }

    fn collect_garbage(&self, s: &mut State) {
        s.net &= !self.garbage(s);
    }

    /// Checks at `s` (a state of the model without garbage collection) that dropping the
    /// garbage is a bisimulation: `s` and `s` without its garbage have the same successors once
    /// their garbage is dropped, leaving out the steps that change nothing but garbage and the
    /// loss of a garbage message (a wasted loss, which only shrinks what can still be lost).
    /// Checked on every reachable state, this makes the reduced model behave exactly as the
    /// full one, up to garbage.
    pub fn check_garbage_collection(&self, s: &State) -> Result<usize, String> {
        let collected = |t: &State| {
            let mut t = t.clone();
            self.collect_garbage(&mut t);
            t
        };
        let here = collected(s);
        let garbage = self.garbage(s);
        let successors = |from: &State| -> Result<HashSet<State>, String> {
            let mut out = Vec::new();
            self.successors(from, &mut out)?;
            Ok(out
                .into_iter()
                .filter(|(l, _)| !matches!(l, Label::Lose(m) if garbage & m.bit() != 0))
                .map(|(_, t)| collected(&t))
                .filter(|t| *t != here)
                .collect())
        };
        let full = successors(s)?;
        let reduced = successors(&here)?;
        if full != reduced {
            let only_full: Vec<String> = full.difference(&reduced).map(|t| t.to_string()).collect();
            let only_reduced: Vec<String> =
                reduced.difference(&full).map(|t| t.to_string()).collect();
            return Err(format!(
                "at {s}:\n  only with the garbage: {only_full:#?}\n  only without: {only_reduced:#?}"
            ));
        }
        Ok(garbage.count_ones() as usize)
    }

    fn participant(&self, s: &State, p: u8, out: &mut Vec<(Label, State)>) -> Result<(), String> {
        let i = usize::from(p);
        if !s.up[i] {
            let mut t = s.clone();
            t.up[i] = true;
            out.push((Label::ParticipantRestart(p), t));
            return Ok(());
        }
        let row = s.rows[i];
        for m in messages(s.net) {
            match m {
                Msg::Prepare { p: q, live } if q == p => {
                    match step(row.map(|r| r.state), Op::Prepare) {
                        Step::RunPrepare => {
                            let mut votes = vec![VoteKind::Commit, VoteKind::Abort];
                            if self.config.read_only {
                                votes.push(VoteKind::ReadOnly);
                            }
                            for vote in votes {
                                let mut t = s.clone();
                                let state = match vote {
                                    VoteKind::Commit => LocalState::Prepared,
                                    VoteKind::ReadOnly => LocalState::ReadOnly,
                                    VoteKind::Abort => LocalState::Aborted,
                                };
                                t.rows[i] = Some(Row {
                                    state,
                                    vote: Some(vote),
                                });
                                if live {
                                    t.net |= Msg::Vote { p, vote }.bit();
                                }
                                out.push((Label::HandlePrepare(p, live, Some(vote)), t));
                            }
                        }
                        Step::RepeatVote => {
                            // `recorded_vote`: the vote recorded first; a tombstone votes abort.
                            let vote = row.and_then(|r| r.vote).unwrap_or(VoteKind::Abort);
                            if live {
                                let mut t = s.clone();
                                t.net |= Msg::Vote { p, vote }.bit();
                                out.push((Label::HandlePrepare(p, live, None), t));
                            }
                        }
                        other => return Err(format!("step chose {other:?} for prepare")),
                    }
                }
                Msg::Outcome {
                    p: q,
                    decision,
                    live,
                } if q == p => {
                    let (mut t, st, ok) = self.outcome(s, p, decision)?;
                    if ok && live {
                        t.net |= Msg::Ack { p, decision }.bit();
                    }
                    out.push((Label::HandleOutcome(p, decision, live, st), t));
                }
                Msg::Answer { p: q, decision } if q == p => {
                    let (t, st, _) = self.outcome(s, p, decision)?;
                    out.push((Label::ApplyAnswer(p, decision, st), t));
                }
                Msg::OnePhase { p: q, live } if q == p => {
                    // `commit_one_phase` (or a 404 from a participant without it).
                    let mut results = Vec::new();
                    if !self.config.one_phase_supported {
                        results.push((row, OneAnswer::Unsupported));
                    } else {
                        match step(row.map(|r| r.state), Op::CommitOnePhase) {
                            Step::RunOnePhase => {
                                let mut votes = vec![VoteKind::Commit, VoteKind::Abort];
                                if self.config.read_only {
                                    votes.push(VoteKind::ReadOnly);
                                }
                                for vote in votes {
                                    let (state, answer) = match vote {
                                        VoteKind::Commit => {
                                            (LocalState::Committed, OneAnswer::Committed)
                                        }
                                        VoteKind::ReadOnly => {
                                            (LocalState::ReadOnly, OneAnswer::Committed)
                                        }
                                        VoteKind::Abort => {
                                            (LocalState::Aborted, OneAnswer::Aborted)
                                        }
                                    };
                                    let new = Row {
                                        state,
                                        vote: Some(vote),
                                    };
                                    results.push((Some(new), answer));
                                }
                            }
                            Step::AlreadyDone => {
                                let aborted = row.is_some_and(|r| r.state == LocalState::Aborted);
                                let answer = if aborted {
                                    OneAnswer::Aborted
                                } else {
                                    OneAnswer::Committed
                                };
                                results.push((row, answer));
                            }
                            // 409: nothing changes, nothing useful is answered.
                            Step::Conflict => {}
                            other => return Err(format!("step chose {other:?} for one-phase")),
                        }
                    }
                    for (new_row, answer) in results {
                        let mut t = s.clone();
                        t.rows[i] = new_row;
                        if live {
                            t.net |= Msg::OnePhaseAnswer { p, answer }.bit();
                        }
                        if t != *s {
                            out.push((Label::HandleOnePhase(p, live, answer), t));
                        }
                    }
                }
                _ => {}
            }
        }
        // The in-doubt resolver asks about prepared rows (after a while: any time, here).
        // An inquiry to a coordinator that is down fails at once: nothing is left in flight.
        if self.config.inquiries
            && s.coordinator_up
            && row.is_some_and(|r| r.state == LocalState::Prepared)
        {
            let mut t = s.clone();
            t.net |= Msg::Inquiry { p }.bit();
            out.push((Label::SendInquiry(p), t));
        }
        if s.participant_crashes < self.config.participant_crashes {
            let mut t = s.clone();
            t.up[i] = false;
            t.participant_crashes += 1;
            for m in messages(s.net) {
                if m.to_participant() == Some(p) {
                    t.net &= !m.bit();
                }
            }
            out.push((Label::ParticipantCrash(p), t));
        }
        Ok(())
    }
}

/// Situations the model must reach, so that a passing run is not a vacuous one.
pub const SITUATIONS: [&str; 8] = [
    "committed everywhere",
    "committed, with a read-only participant",
    "aborted, with a tombstone at a participant",
    "aborted, a prepared participant whose vote was lost is sent the abort",
    "presumed abort after a coordinator crash before the decision",
    "coordinator down while committing, a participant prepared",
    "the coordinator answered commit to an inquiry",
    "a request of a crashed coordinator still in flight",
];

/// Situations a one-participant model (the one-phase commit) must reach.
pub const ONE_PHASE_SITUATIONS: [&str; 4] = [
    "committed in one phase",
    "refused in one phase",
    "the participant decided, the log does not know yet, nobody is asking",
    "fell back to the two phases",
];

impl System {
    /// The [`ONE_PHASE_SITUATIONS`] that `s` shows.
    pub fn one_phase_situations(&self, s: &State) -> Vec<&'static str> {
        let row = s.rows[0];
        let row_is = |st: LocalState| row.is_some_and(|r| r.state == st);
        let part = s.log.map(|l| (l.state, l.parts[0]));
        let seen = [
            part.is_some_and(|(st, p)| st == TransactionState::Committed && p.one_phase)
                && row_is(LocalState::Committed),
            part.is_some_and(|(st, p)| st == TransactionState::Aborted && p.one_phase)
                && row.is_some_and(|r| r.vote == Some(VoteKind::Abort)),
            s.log.is_some_and(|l| Self::one_phase_pending(&l))
                && row.is_some_and(|r| r.state != LocalState::Prepared)
                && s.driver == Driver::Idle,
            part.is_some_and(|(st, p)| st == TransactionState::Committed && !p.one_phase)
                && row_is(LocalState::Committed),
        ];
        ONE_PHASE_SITUATIONS
            .iter()
            .zip(seen)
            .filter(|(_, seen)| *seen)
            .map(|(name, _)| *name)
            .collect()
    }

    /// The [`SITUATIONS`] that `s` shows.
    pub fn situations(&self, s: &State) -> Vec<&'static str> {
        let rows = &s.rows[..self.n];
        let row_is = |st: LocalState| rows.iter().any(|r| r.is_some_and(|r| r.state == st));
        let log_state = s.log.map(|l| l.state);
        let committed = log_state == Some(TransactionState::Committed);
        let aborted = log_state == Some(TransactionState::Aborted);
        let seen = [
            committed
                && rows
                    .iter()
                    .all(|r| r.is_some_and(|r| r.state == LocalState::Committed)),
            committed && row_is(LocalState::ReadOnly) && row_is(LocalState::Committed),
            aborted
                && rows
                    .iter()
                    .any(|r| r.is_some_and(|r| r.state == LocalState::Aborted && r.vote.is_none())),
            aborted
                && s.log.is_some_and(|l| {
                    (0..self.n).any(|i| {
                        l.parts[i].vote.is_none()
                            && rows[i].is_some_and(|r| {
                                r.state == LocalState::Aborted && r.vote == Some(VoteKind::Commit)
                            })
                    })
                }),
            s.coordinator_crashes > 0
                && !s.client_aborted
                && match s.log {
                    Some(l) => {
                        l.decision == Some(Decision::Abort)
                            && l.parts[..self.n].iter().all(|p| p.vote.is_none())
                    }
                    // Never logged: a participant that prepared learned the abort from a 404.
                    None => rows.iter().any(|r| {
                        r.is_some_and(|r| {
                            r.state == LocalState::Aborted && r.vote == Some(VoteKind::Commit)
                        })
                    }),
                },
            !s.coordinator_up
                && log_state == Some(TransactionState::Committing)
                && row_is(LocalState::Prepared),
            messages(s.net).any(|m| {
                matches!(
                    m,
                    Msg::Answer {
                        decision: Decision::Commit,
                        ..
                    }
                )
            }),
            messages(s.net).any(|m| {
                matches!(
                    m,
                    Msg::Prepare { live: false, .. } | Msg::Outcome { live: false, .. }
                )
            }),
        ];
        SITUATIONS
            .iter()
            .zip(seen)
            .filter(|(_, seen)| *seen)
            .map(|(name, _)| *name)
            .collect()
    }
}

impl Model for System {
    type State = State;
    type Label = Label;

    fn init(&self) -> State {
        State {
            log: None,
            created: false,
            coordinator_up: true,
            driver: Driver::Idle,
            rows: [None; MAX_PARTICIPANTS],
            up: [true; MAX_PARTICIPANTS],
            net: 0,
            coordinator_crashes: 0,
            participant_crashes: 0,
            losses: 0,
            client_aborted: false,
        }
    }

    fn successors(&self, s: &State, out: &mut Vec<(Label, State)>) -> Result<(), String> {
        self.coordinator(s, out)?;
        for p in self.each(self.all()) {
            self.participant(s, p, out)?;
        }
        if s.losses < self.config.losses {
            for m in messages(s.net) {
                let mut t = s.clone();
                t.net &= !m.bit();
                t.losses += 1;
                out.push((Label::Lose(m), t));
            }
        }
        if self.config.collect_garbage {
            for (_, t) in out.iter_mut() {
                self.collect_garbage(t);
            }
        }
        Ok(())
    }

    fn is_failure(&self, label: &Label) -> bool {
        matches!(
            label,
            Label::CoordinatorCrash | Label::ParticipantCrash(_) | Label::Lose(_)
        )
    }

    fn violated(&self, s: &State) -> Option<Property> {
        let rows = &s.rows[..self.n];
        let has = |st: LocalState| rows.iter().any(|r| r.is_some_and(|r| r.state == st));
        let checks = [
            (
                Property::Agreement,
                has(LocalState::Committed) && has(LocalState::Aborted),
            ),
            (
                Property::NoCommitWithoutLoggedDecision,
                // A one-phase commit's participant decides: it may commit while the log holds
                // the transaction as handed to it.
                has(LocalState::Committed)
                    && s.log.and_then(|l| l.decision) != Some(Decision::Commit)
                    && !s.log.is_some_and(|l| Self::one_phase_pending(&l)),
            ),
            (
                Property::LogAgreesWithParticipants,
                s.log.is_some_and(|l| match l.state {
                    TransactionState::Committed => has(LocalState::Aborted),
                    TransactionState::Aborted => has(LocalState::Committed),
                    _ => false,
                }),
            ),
            (
                Property::NothingHeldAfterAcknowledgement,
                s.log.is_some_and(|log| {
                    (0..self.n).any(|p| {
                        let part = log.parts[p];
                        // Logged as finished because it acknowledged (not because it voted
                        // abort or timed out).
                        let acknowledged = part.state == ParticipantState::Committed
                            || (part.state == ParticipantState::Aborted
                                && part.vote != Some(VoteKind::Abort));
                        acknowledged && rows[p].is_some_and(|r| r.state == LocalState::Prepared)
                    })
                }),
            ),
        ];
        checks
            .into_iter()
            .find(|(p, bad)| *bad && !self.config.unchecked.contains(p))
            .map(|(p, _)| p)
    }

    /// Participants are interchangeable: the machine and the SDK know them only by name, and
    /// every rule of the model treats them alike. The representative of a state renames them
    /// in the order of a code of everything the state holds about each one (its part of the
    /// log and of the driver's memory, its row, whether it is up, its messages), so states that
    /// differ only in the names get one representative. `tests/model.rs` checks that this
    /// loses no state.
    fn canonical(&self, s: State) -> State {
        if !self.config.symmetry || self.n < 2 {
            return s;
        }
        let mut order = [0usize, 1, 2];
        let order = &mut order[..self.n];
        let code = |p: usize| participant_code(&s, p);
        order.sort_by_key(|&p| code(p));
        if order.iter().enumerate().all(|(i, &p)| i == p) {
            return s;
        }
        permute(&s, order)
    }

    fn is_final(&self, s: &State) -> bool {
        // Final at the coordinator: logged as finished, or never logged and no longer driven
        // (presumed abort).
        let coordinator = match s.log {
            Some(l) => l.state.is_final(),
            None => s.created && s.driver == Driver::Idle,
        };
        coordinator
            && (0..self.n).all(|p| match s.rows[p] {
                Some(r) => r.state != LocalState::Prepared,
                // Never heard of it: final only if no prepare can still arrive.
                None => {
                    let q = u8::try_from(p).unwrap_or(0);
                    let prepares = Msg::Prepare { p: q, live: true }.bit()
                        | Msg::Prepare { p: q, live: false }.bit()
                        | Msg::OnePhase { p: q, live: true }.bit()
                        | Msg::OnePhase { p: q, live: false }.bit();
                    s.net & prepares == 0
                }
            })
    }
}

fn part_code(part: PartRec) -> u64 {
    let vote = match part.vote {
        None => 0,
        Some(VoteKind::Commit) => 1,
        Some(VoteKind::ReadOnly) => 2,
        Some(VoteKind::Abort) => 3,
    };
    let state = match part.state {
        ParticipantState::Pending => 0,
        ParticipantState::Prepared => 1,
        ParticipantState::ReadOnly => 2,
        ParticipantState::Committed => 3,
        ParticipantState::Aborted => 4,
    };
    vote + 4 * state + 20 * u64::from(part.one_phase)
}

/// Everything the state holds about participant `p`, as one number.
fn participant_code(s: &State, p: usize) -> u64 {
    let log = s.log.map_or(0, |l| 1 + part_code(l.parts[p]));
    let (memory, masks) = match s.driver {
        Driver::Idle => (0, 0),
        Driver::Preparing { current, sent } => (1 + part_code(current.parts[p]), sent >> p & 1),
        Driver::Unlogged { current, targets } => {
            (1 + part_code(current.parts[p]), targets >> p & 1)
        }
        Driver::OnePhase { current } => (1 + part_code(current.parts[p]), 0b111),
        Driver::PhaseTwo {
            current,
            targets,
            acked,
            sent,
            ..
        } => (
            1 + part_code(current.parts[p]),
            (targets >> p & 1) | (acked >> p & 1) << 1 | (sent >> p & 1) << 2,
        ),
    };
    let row = s.rows[p].map_or(0, |r| {
        let state = match r.state {
            LocalState::Prepared => 0,
            LocalState::Committed => 1,
            LocalState::ReadOnly => 2,
            LocalState::Aborted => 3,
        };
        let vote = part_code(PartRec {
            vote: r.vote,
            state: ParticipantState::Pending,
            one_phase: false,
        });
        1 + state * 4 + vote
    });
    let net = s.net >> (KINDS as usize * p) & ((1 << KINDS) - 1);
    let up = u64::from(s.up[p]);
    // 6 + 6 + 3 + 5 + 1 + 19 bits.
    log | memory << 6 | u64::from(masks) << 12 | row << 15 | up << 20 | net << 21
}

/// `s` with participant `order[i]` renamed to `i`.
fn permute(s: &State, order: &[usize]) -> State {
    let mut t = s.clone();
    let mask = |m: u8| {
        order
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, &p)| acc | (m >> p & 1) << i)
    };
    let parts = |r: Rec| {
        let mut r2 = r;
        for (i, &p) in order.iter().enumerate() {
            r2.parts[i] = r.parts[p];
        }
        r2
    };
    t.log = s.log.map(parts);
    t.driver = match s.driver {
        Driver::Idle => Driver::Idle,
        Driver::Preparing { current, sent } => Driver::Preparing {
            current: parts(current),
            sent: mask(sent),
        },
        Driver::Unlogged { current, targets } => Driver::Unlogged {
            current: parts(current),
            targets: mask(targets),
        },
        Driver::OnePhase { current } => Driver::OnePhase {
            current: parts(current),
        },
        Driver::PhaseTwo {
            decision,
            current,
            targets,
            acked,
            sent,
        } => Driver::PhaseTwo {
            decision,
            current: parts(current),
            targets: mask(targets),
            acked: mask(acked),
            sent: mask(sent),
        },
    };
    let group = (1u64 << KINDS) - 1;
    t.net = 0;
    for (i, &p) in order.iter().enumerate() {
        t.rows[i] = s.rows[p];
        t.up[i] = s.up[p];
        let bits = s.net >> (KINDS as usize * p) & group;
        t.net |= bits << (KINDS as usize * i);
    }
    t
}

fn rec_text(r: &Rec, n: usize) -> String {
    let mut out = format!("{}[", r.state);
    for p in 0..n {
        let part = r.parts[p];
        let vote = part.vote.map_or("-", VoteKind::as_str);
        let sep = if p + 1 < n { " " } else { "" };
        let _ = write!(out, "p{p}:{vote}/{:?}{sep}", part.state);
    }
    out.push(']');
    out
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The number of participants is not stored; print those with a row, an `up` flag
        // down or a message, and at least the first two.
        let n = (0..MAX_PARTICIPANTS)
            .rev()
            .find(|&p| {
                p < 2
                    || self.rows[p].is_some()
                    || !self.up[p]
                    || messages(self.net).any(|m| {
                        let q = match m {
                            Msg::Prepare { p, .. }
                            | Msg::Vote { p, .. }
                            | Msg::Outcome { p, .. }
                            | Msg::Ack { p, .. }
                            | Msg::Inquiry { p }
                            | Msg::Answer { p, .. }
                            | Msg::OnePhase { p, .. }
                            | Msg::OnePhaseAnswer { p, .. } => p,
                        };
                        usize::from(q) == p
                    })
                    || self
                        .log
                        .is_some_and(|l| l.parts[p].state != ParticipantState::Pending)
            })
            .map_or(2, |p| p + 1);
        match &self.log {
            None if self.created => write!(f, "log: none (created)")?,
            None => write!(f, "log: none")?,
            Some(r) => write!(f, "log: {}", rec_text(r, n))?,
        }
        if self.coordinator_up {
            match &self.driver {
                Driver::Idle => write!(f, "; coordinator idle")?,
                Driver::Preparing { current, .. } => {
                    write!(f, "; in memory: {}", rec_text(current, n))?;
                }
                Driver::Unlogged { current, .. } => {
                    write!(f, "; in memory (unlogged): {}", rec_text(current, n))?;
                }
                Driver::OnePhase { .. } => write!(f, "; one-phase commit out")?,
                Driver::PhaseTwo {
                    decision, acked, ..
                } => write!(f, "; phase two {decision:?}, acked {acked:#b}")?,
            }
        } else {
            write!(f, "; coordinator DOWN")?;
        }
        write!(f, "; rows:")?;
        for p in 0..n {
            let row = self.rows[p].map_or("-".to_owned(), |r| r.state.to_string());
            let down = if self.up[p] { "" } else { " DOWN" };
            write!(f, " p{p}={row}{down}")?;
        }
        let msgs: Vec<String> = messages(self.net).map(|m| m.to_string()).collect();
        write!(f, "; net: {{{}}}", msgs.join(", "))
    }
}
