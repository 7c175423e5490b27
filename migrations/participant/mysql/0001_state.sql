-- twopc participant SDK: the prepared-state table (MySQL / MariaDB, InnoDB).
-- One row per (participant, transaction): what this participant voted and where it stands.
-- A tombstone (abort before any prepare) is an `aborted` row with a NULL vote.
-- The key columns use binary collations: `Bank-A` and `bank-a` are different participants,
-- as they are on PostgreSQL and SQLite.
CREATE TABLE twopc_participant_state (
    participant    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    transaction_id CHAR(36)     CHARACTER SET ascii   COLLATE ascii_bin   NOT NULL,
    state          VARCHAR(16)  NOT NULL,
    vote           VARCHAR(16)  NULL,
    reason         TEXT         NULL,
    payload        LONGTEXT     NULL,
    coordinator    TEXT         NULL,
    created_at_ms  BIGINT       NOT NULL,
    updated_at_ms  BIGINT       NOT NULL,
    PRIMARY KEY (participant, transaction_id),
    -- The in-doubt resolver looks for `prepared` rows not updated for a while.
    INDEX twopc_participant_state_in_doubt (state, updated_at_ms),
    CONSTRAINT twopc_participant_state_state CHECK (state IN ('prepared', 'committed', 'aborted')),
    CONSTRAINT twopc_participant_state_vote CHECK (vote IN ('commit', 'read_only', 'abort'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
