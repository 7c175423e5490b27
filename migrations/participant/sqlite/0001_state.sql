-- twopc participant SDK: the prepared-state table (SQLite).
-- One row per (participant, transaction): what this participant voted and where it stands.
-- A tombstone (abort before any prepare) is an `aborted` row with a NULL vote.
CREATE TABLE twopc_participant_state (
    participant    TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    vote           TEXT    NULL     CHECK (vote IN ('commit', 'read_only', 'abort')),
    reason         TEXT    NULL,
    payload        TEXT    NULL,
    coordinator    TEXT    NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (participant, transaction_id)
);

-- The in-doubt resolver looks for `prepared` rows not updated for a while.
CREATE INDEX twopc_participant_state_in_doubt ON twopc_participant_state (state, updated_at_ms);
