//! The participant's protocol decisions as a pure function: what to do with a prepare, commit or
//! abort given what the state table holds for that transaction. No I/O, no async, `Copy` types
//! only, so that the flows, the tests and a model checker all use the same rules.

use std::fmt;

/// Where a transaction stands at this participant, as recorded in its state table.
///
/// `ReadOnly` is stored as a `committed` row whose vote is `read_only`; it is its own state here
/// because it answers an abort differently from a real commit (see [`step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalState {
    /// Voted commit; holds its changes until the outcome arrives.
    Prepared,
    /// Committed: the commit handler ran (or nothing needed finishing).
    Committed,
    /// Voted read-only: nothing was changed, so there is nothing to commit or undo.
    ReadOnly,
    /// Aborted: voted abort, was told to abort, or saw the abort first (tombstone).
    Aborted,
}

impl LocalState {
    /// Every state, for exhaustive tests and model checking.
    pub const ALL: [LocalState; 4] = [
        Self::Prepared,
        Self::Committed,
        Self::ReadOnly,
        Self::Aborted,
    ];

    /// The value of the table's `state` column for this state.
    pub fn column(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Committed | Self::ReadOnly => "committed",
            Self::Aborted => "aborted",
        }
    }

    /// The state a row with this `state` column and read-only flag stands for, if the column is valid.
    pub fn from_column(state: &str, read_only_vote: bool) -> Option<Self> {
        match (state, read_only_vote) {
            ("prepared", _) => Some(Self::Prepared),
            ("committed", true) => Some(Self::ReadOnly),
            ("committed", false) => Some(Self::Committed),
            ("aborted", _) => Some(Self::Aborted),
            _ => None,
        }
    }
}

impl fmt::Display for LocalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prepared => "prepared",
            Self::Committed => "committed",
            Self::ReadOnly => "read_only",
            Self::Aborted => "aborted",
        })
    }
}

/// A call the coordinator (or the in-doubt resolver) makes on a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `POST /prepare`.
    Prepare,
    /// `POST /commit`.
    Commit,
    /// `POST /abort`.
    Abort,
    /// `POST /commit-one-phase`: prepare and commit in one local transaction (the transaction's
    /// only participant decides).
    CommitOnePhase,
}

impl Op {
    /// Every operation, for exhaustive tests and model checking.
    pub const ALL: [Op; 4] = [
        Self::Prepare,
        Self::Commit,
        Self::Abort,
        Self::CommitOnePhase,
    ];
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prepare => "prepare",
            Self::Commit => "commit",
            Self::Abort => "abort",
            Self::CommitOnePhase => "commit-one-phase",
        })
    }
}

/// What the participant does for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// No row: run the prepare handler and record its vote.
    RunPrepare,
    /// No row: run the prepare handler and, if it votes commit, the commit handler, in one
    /// local transaction; record the outcome.
    RunOnePhase,
    /// A row exists: answer the vote recorded first, change nothing.
    RepeatVote,
    /// Row prepared: run the commit handler and record `committed`.
    RunCommit,
    /// Row prepared: run the abort handler and record `aborted`.
    RunAbort,
    /// The outcome is already recorded: answer 200, change nothing.
    AlreadyDone,
    /// Abort of an unknown transaction: record an `aborted` row with no vote, so that a prepare
    /// arriving later votes abort.
    Tombstone,
    /// Commit of an unknown transaction: answer 404.
    Unknown,
    /// The other outcome is already recorded (commit of an aborted transaction, abort of a
    /// committed one): answer 409.
    Conflict,
}

/// Decides what to do with `op` when the state table holds `current` for the transaction.
///
/// A read-only participant answers both outcomes as done: it changed nothing, so committing and
/// aborting are the same to it, and a coordinator that lost its read-only vote (a timeout counts
/// as an abort vote) must still get its abort acknowledged.
pub fn step(current: Option<LocalState>, op: Op) -> Step {
    use LocalState::{Aborted, Committed, Prepared, ReadOnly};
    match (current, op) {
        (None, Op::Prepare) => Step::RunPrepare,
        (Some(Prepared | Committed | ReadOnly | Aborted), Op::Prepare) => Step::RepeatVote,

        (None, Op::Commit) => Step::Unknown,
        (Some(Prepared), Op::Commit) => Step::RunCommit,
        (Some(Committed | ReadOnly), Op::Commit) => Step::AlreadyDone,
        (Some(Aborted), Op::Commit) => Step::Conflict,

        (None, Op::Abort) => Step::Tombstone,
        (Some(Prepared), Op::Abort) => Step::RunAbort,
        (Some(Aborted | ReadOnly), Op::Abort) => Step::AlreadyDone,
        (Some(Committed), Op::Abort) => Step::Conflict,

        (None, Op::CommitOnePhase) => Step::RunOnePhase,
        // Answer the recorded outcome (a tombstone or a refusal is an abort).
        (Some(Committed | ReadOnly | Aborted), Op::CommitOnePhase) => Step::AlreadyDone,
        // Prepared by a two-phase prepare: the coordinator must finish what it started.
        (Some(Prepared), Op::CommitOnePhase) => Step::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LocalState::{Aborted, Committed, Prepared, ReadOnly};

    /// The whole table, written out once: every (state, op) pair and its step.
    const TABLE: [(Option<LocalState>, Op, Step); 20] = [
        (None, Op::Prepare, Step::RunPrepare),
        (None, Op::Commit, Step::Unknown),
        (None, Op::Abort, Step::Tombstone),
        (Some(Prepared), Op::Prepare, Step::RepeatVote),
        (Some(Prepared), Op::Commit, Step::RunCommit),
        (Some(Prepared), Op::Abort, Step::RunAbort),
        (Some(Committed), Op::Prepare, Step::RepeatVote),
        (Some(Committed), Op::Commit, Step::AlreadyDone),
        (Some(Committed), Op::Abort, Step::Conflict),
        (Some(ReadOnly), Op::Prepare, Step::RepeatVote),
        (Some(ReadOnly), Op::Commit, Step::AlreadyDone),
        (Some(ReadOnly), Op::Abort, Step::AlreadyDone),
        (Some(Aborted), Op::Prepare, Step::RepeatVote),
        (Some(Aborted), Op::Commit, Step::Conflict),
        (Some(Aborted), Op::Abort, Step::AlreadyDone),
        (None, Op::CommitOnePhase, Step::RunOnePhase),
        (Some(Prepared), Op::CommitOnePhase, Step::Conflict),
        (Some(Committed), Op::CommitOnePhase, Step::AlreadyDone),
        (Some(ReadOnly), Op::CommitOnePhase, Step::AlreadyDone),
        (Some(Aborted), Op::CommitOnePhase, Step::AlreadyDone),
    ];

    #[test]
    fn every_state_and_op_gives_the_tabled_step() {
        for (current, op, expected) in TABLE {
            assert_eq!(step(current, op), expected, "step({current:?}, {op:?})");
        }
    }

    #[test]
    fn the_table_covers_every_pair_exactly_once() {
        let states = std::iter::once(None).chain(LocalState::ALL.into_iter().map(Some));
        for current in states {
            for op in Op::ALL {
                let rows = TABLE
                    .iter()
                    .filter(|(s, o, _)| *s == current && *o == op)
                    .count();
                assert_eq!(rows, 1, "({current:?}, {op:?}) appears {rows} times");
            }
        }
    }

    #[test]
    fn prepare_runs_the_handler_only_when_no_row_exists() {
        for st in LocalState::ALL {
            assert_ne!(step(Some(st), Op::Prepare), Step::RunPrepare);
        }
        assert_eq!(step(None, Op::Prepare), Step::RunPrepare);
    }

    #[test]
    fn handlers_for_the_outcome_run_only_on_prepared_rows() {
        for current in std::iter::once(None).chain(LocalState::ALL.into_iter().map(Some)) {
            for op in Op::ALL {
                let runs_outcome = matches!(step(current, op), Step::RunCommit | Step::RunAbort);
                assert_eq!(
                    runs_outcome,
                    current == Some(Prepared) && matches!(op, Op::Commit | Op::Abort)
                );
            }
        }
    }

    #[test]
    fn columns_round_trip() {
        for st in LocalState::ALL {
            let read_only = st == ReadOnly;
            assert_eq!(LocalState::from_column(st.column(), read_only), Some(st));
        }
        assert_eq!(LocalState::from_column("done", false), None);
    }
}
