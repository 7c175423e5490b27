-- The coordinator's decision log (SQLite). Times are Unix epoch milliseconds.
-- Applied by twopc-coordinator at start-up (migration table `_twopc_coordinator_migrations`).
-- Never edit this file once released: the checksum of an applied migration is verified.

CREATE TABLE twopc_transactions (
    -- Transaction id: a UUID in its canonical lowercase hyphenated form.
    id           TEXT    NOT NULL PRIMARY KEY,
    -- active | preparing | committing | committed | aborting | aborted
    state        TEXT    NOT NULL,
    -- commit | abort | NULL before the decision
    decision     TEXT,
    reason       TEXT,
    timeout_ms   BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL,
    deadline     BIGINT  NOT NULL,
    decided_at   BIGINT,
    completed_at BIGINT,
    -- JSON array of participants in enlistment order (serde_json of Vec<ParticipantRecord>).
    participants TEXT    NOT NULL,
    -- Bumped by every write; updates are compare-and-set on it.
    version      BIGINT  NOT NULL
);

-- Recovery: unfinished transactions, oldest first. Partial, so it stays as small as the work left.
CREATE INDEX twopc_transactions_unfinished
    ON twopc_transactions (created_at, id)
    WHERE state NOT IN ('committed', 'aborted');

-- Listing by state, newest first.
CREATE INDEX twopc_transactions_state_created
    ON twopc_transactions (state, created_at DESC, id DESC);

-- Listing all, newest first.
CREATE INDEX twopc_transactions_created
    ON twopc_transactions (created_at DESC, id DESC);

-- Idempotency keys of create requests. A key is inserted in the same local transaction as the
-- transaction it made; the foreign key is checked at commit (the key row is written first, so
-- that concurrent creates with one key serialize on it) and removes the key with its transaction.
CREATE TABLE twopc_idempotency_keys (
    key            TEXT   NOT NULL PRIMARY KEY,
    request_hash   TEXT   NOT NULL,
    transaction_id TEXT   NOT NULL
        REFERENCES twopc_transactions (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at     BIGINT NOT NULL
);

CREATE INDEX twopc_idempotency_keys_transaction
    ON twopc_idempotency_keys (transaction_id);
