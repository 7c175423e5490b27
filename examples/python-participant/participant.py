#!/usr/bin/env python3
"""A bank as a twopc participant, in Python with only the standard library.

The same bank as the Rust example (examples/src/bank.rs): accounts with `balance` and `held`; a
debit's prepare reserves the amount (`held`), its commit books it, its abort releases it; a
credit is checked at prepare and booked at commit. The participant protocol (docs/protocol.md
section 2) is kept the way the Rust SDK keeps it: a prepared-state table in the bank's own SQLite
database, changed in the same local transaction as the accounts, so a vote and its reservation
are durable together (WAL with synchronous=FULL) or not at all.

    python3 participant.py --listen 127.0.0.1:7803 --database bank-c.db --seed carol=100

Stdout gets exactly one line once the listener is bound, `listening on http://ADDR`, so scripts
can start it with `--listen 127.0.0.1:0` and learn the port. Logs go to stderr.
"""

import argparse
import contextlib
import json
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("python-participant")

MAX_BODY = 1024 * 1024
MAX_PARTICIPANT_NAME = 255
MAX_ACCOUNT_ID = 64
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
TOMBSTONE_REASON = "aborted before prepare"
INQUIRY_TIMEOUT_S = 10
RESOLVE_BATCH = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id      TEXT    PRIMARY KEY,
    balance INTEGER NOT NULL,
    held    INTEGER NOT NULL DEFAULT 0,
    CHECK (held >= 0 AND balance >= held)
);
-- One row per (participant, transaction), as in the Rust SDK: what this participant voted and
-- where it stands. A tombstone (abort before any prepare) is an `aborted` row with a NULL vote.
CREATE TABLE IF NOT EXISTS twopc_participant_state (
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
CREATE INDEX IF NOT EXISTS twopc_participant_state_in_doubt
    ON twopc_participant_state (state, updated_at_ms);
"""


class HttpError(Exception):
    """An answer other than 200: a status, a stable snake_case code and a message."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def now_ms():
    return int(time.time() * 1000)


def parse_op(payload):
    """The bank operation of a prepare payload: {"op": "debit"|"credit", "account", "amount"}."""
    if not isinstance(payload, dict):
        raise HttpError(400, "invalid_payload", "the payload must be an object {op, account, amount}")
    op, account, amount = payload.get("op"), payload.get("account"), payload.get("amount")
    if op not in ("debit", "credit"):
        raise HttpError(400, "invalid_payload", "payload.op must be \"debit\" or \"credit\"")
    if not isinstance(account, str):
        raise HttpError(400, "invalid_payload", "payload.account must be a string")
    if isinstance(amount, bool) or not isinstance(amount, int) or not I64_MIN <= amount <= I64_MAX:
        raise HttpError(400, "invalid_payload", "payload.amount must be a whole number")
    return op, account, amount


class Bank:
    """The accounts and the prepared-state table in one SQLite database."""

    def __init__(self, path):
        # Autocommit mode: every local transaction is an explicit BEGIN IMMEDIATE … COMMIT.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"cannot switch {path} to WAL mode (got {mode})")
        # A commit vote is a promise: its row must survive a power loss once answered.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self):
        """One local transaction; the process-wide lock makes this connection single-user."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # SQLite may have rolled back already
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- accounts -------------------------------------------------------------------------

    def open_account(self, account, balance):
        """Creates the account unless it exists (an existing balance is kept); answers it."""
        if not isinstance(account, str) or not 1 <= len(account) <= MAX_ACCOUNT_ID:
            raise HttpError(400, "invalid_account", f"account id must have 1 to {MAX_ACCOUNT_ID} characters")
        if isinstance(balance, bool) or not isinstance(balance, int) or not 0 <= balance <= I64_MAX:
            raise HttpError(400, "invalid_account", f"opening balance of {account} must be a whole number >= 0")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO accounts (id, balance, held) VALUES (?, ?, 0) ON CONFLICT (id) DO NOTHING",
                (account, balance),
            )
            row = db.execute("SELECT id, balance, held FROM accounts WHERE id = ?", (account,)).fetchone()
        return {"id": row[0], "balance": row[1], "held": row[2]}

    def accounts(self):
        with self.lock:
            rows = self.db.execute("SELECT id, balance, held FROM accounts ORDER BY id").fetchall()
        return [{"id": r[0], "balance": r[1], "held": r[2]} for r in rows]

    # --- the handler: the bank's part of each phase ---------------------------------------

    @staticmethod
    def handle_prepare(db, op):
        kind, account, amount = op
        if amount <= 0:
            return {"vote": "abort", "reason": f"amount must be positive, got {amount}"}
        if kind == "debit":
            reserved = db.execute(
                "UPDATE accounts SET held = held + ? WHERE id = ? AND balance - held >= ?",
                (amount, account, amount),
            )
            if reserved.rowcount == 1:
                return {"vote": "commit"}
        if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account,)).fetchone() is None:
            return {"vote": "abort", "reason": f"unknown account {account}"}
        if kind == "debit":
            return {"vote": "abort", "reason": f"insufficient funds in account {account}"}
        return {"vote": "commit"}

    @staticmethod
    def handle_commit(db, tx_id, op):
        kind, account, amount = op
        if kind == "debit":
            cur = db.execute(
                "UPDATE accounts SET balance = balance - ?, held = held - ? WHERE id = ?",
                (amount, amount, account),
            )
        else:
            cur = db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account))
        if cur.rowcount != 1:
            raise RuntimeError(f"transaction {tx_id}: account {account} changed {cur.rowcount} rows, expected 1")

    @staticmethod
    def handle_abort(db, tx_id, op):
        kind, account, amount = op
        if kind == "credit":
            return  # a credit reserved nothing
        cur = db.execute("UPDATE accounts SET held = held - ? WHERE id = ?", (amount, account))
        if cur.rowcount != 1:
            raise RuntimeError(f"transaction {tx_id}: account {account} changed {cur.rowcount} rows, expected 1")

    # --- the protocol: one local transaction per call -------------------------------------

    @staticmethod
    def row(db, participant, tx_id):
        return db.execute(
            "SELECT state, vote, reason, payload FROM twopc_participant_state "
            "WHERE participant = ? AND transaction_id = ?",
            (participant, tx_id),
        ).fetchone()

    def prepare(self, participant, tx_id, payload, coordinator):
        """Runs the handler once per (participant, transaction); a repeat answers the first vote."""
        op = parse_op(payload)
        with self.transaction() as db:
            row = self.row(db, participant, tx_id)
            if row is not None:
                state, vote, reason, _ = row
                if vote is None:
                    return {"vote": "abort", "reason": TOMBSTONE_REASON}
                if vote == "abort":
                    return {"vote": "abort", "reason": reason or ""}
                return {"vote": vote}
            db.execute("SAVEPOINT handler")
            answer = self.handle_prepare(db, op)
            if answer["vote"] == "abort":
                # Undo whatever the handler wrote before it decided to refuse.
                db.execute("ROLLBACK TO handler")
            db.execute("RELEASE handler")
            state = {"commit": "prepared", "read_only": "committed", "abort": "aborted"}[answer["vote"]]
            now = now_ms()
            db.execute(
                "INSERT INTO twopc_participant_state (participant, transaction_id, state, vote, reason, "
                "payload, coordinator, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (participant, tx_id, state, answer["vote"], answer.get("reason"), json.dumps(payload),
                 coordinator, now, now),
            )
        log.info("prepare %s/%s: %s", participant, tx_id, answer)
        return answer

    def commit_one_phase(self, participant, tx_id, payload, coordinator):
        """The transaction's only participant: prepare and commit in one local transaction."""
        op = parse_op(payload)
        with self.transaction() as db:
            row = self.row(db, participant, tx_id)
            if row is not None:
                state, vote, reason, _ = row
                if state == "prepared":
                    raise HttpError(409, "outcome_conflict",
                                    f"transaction {tx_id} is prepared at participant '{participant}' by a "
                                    "two-phase prepare: it needs its commit or abort")
                if state == "aborted":
                    return {"state": "aborted", "reason": TOMBSTONE_REASON if vote is None else (reason or "")}
                return {"state": "committed"}
            db.execute("SAVEPOINT handler")
            answer = self.handle_prepare(db, op)
            if answer["vote"] == "abort":
                db.execute("ROLLBACK TO handler")
            elif answer["vote"] == "commit":
                self.handle_commit(db, tx_id, op)
            db.execute("RELEASE handler")
            state = "aborted" if answer["vote"] == "abort" else "committed"
            now = now_ms()
            db.execute(
                "INSERT INTO twopc_participant_state (participant, transaction_id, state, vote, reason, "
                "payload, coordinator, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (participant, tx_id, state, answer["vote"], answer.get("reason"), json.dumps(payload),
                 coordinator, now, now),
            )
        outcome = {"state": "committed"} if state == "committed" else {"state": "aborted",
                                                                     "reason": answer.get("reason", "")}
        log.info("commit-one-phase %s/%s: %s", participant, tx_id, outcome)
        return outcome

    def commit(self, participant, tx_id):
        with self.transaction() as db:
            row = self.row(db, participant, tx_id)
            if row is None:
                raise HttpError(404, "unknown_transaction",
                                f"participant '{participant}' knows no transaction {tx_id}")
            state, vote, _, payload = row
            if state == "committed":
                return "already done"
            if state == "aborted":
                raise HttpError(409, "outcome_conflict",
                                f"cannot commit transaction {tx_id} at participant '{participant}': it is already aborted")
            self.handle_commit(db, tx_id, parse_op(json.loads(payload)))
            self.set_state(db, participant, tx_id, "committed")
        log.info("commit %s/%s: applied", participant, tx_id)
        return "ran"

    def abort(self, participant, tx_id):
        with self.transaction() as db:
            row = self.row(db, participant, tx_id)
            if row is None:
                # A tombstone: a prepare arriving later votes abort.
                now = now_ms()
                db.execute(
                    "INSERT INTO twopc_participant_state (participant, transaction_id, state, vote, reason, "
                    "payload, coordinator, created_at_ms, updated_at_ms) "
                    "VALUES (?, ?, 'aborted', NULL, NULL, NULL, NULL, ?, ?)",
                    (participant, tx_id, now, now),
                )
                log.info("abort %s/%s: tombstone", participant, tx_id)
                return "tombstone"
            state, vote, _, payload = row
            if state == "aborted" or (state == "committed" and vote == "read_only"):
                return "already done"
            if state == "committed":
                raise HttpError(409, "outcome_conflict",
                                f"cannot abort transaction {tx_id} at participant '{participant}': it is already committed")
            self.handle_abort(db, tx_id, parse_op(json.loads(payload)))
            self.set_state(db, participant, tx_id, "aborted")
        log.info("abort %s/%s: applied", participant, tx_id)
        return "ran"

    @staticmethod
    def set_state(db, participant, tx_id, state):
        db.execute(
            "UPDATE twopc_participant_state SET state = ?, updated_at_ms = ? "
            "WHERE participant = ? AND transaction_id = ?",
            (state, now_ms(), participant, tx_id),
        )

    # --- in-doubt inquiry -----------------------------------------------------------------

    def in_doubt(self, older_than_ms):
        cutoff = now_ms() - older_than_ms
        with self.lock:
            return self.db.execute(
                "SELECT participant, transaction_id, coordinator FROM twopc_participant_state "
                "WHERE state = 'prepared' AND updated_at_ms <= ? ORDER BY updated_at_ms LIMIT ?",
                (cutoff, RESOLVE_BATCH),
            ).fetchall()

    def resolve_once(self, older_than_ms):
        """Asks the coordinator about every prepared transaction not heard of for a while."""
        for participant, tx_id, coordinator in self.in_doubt(older_than_ms):
            outcome = inquire(coordinator, tx_id)  # network I/O: no lock held
            log.info("in doubt %s/%s: coordinator says %s", participant, tx_id, outcome or "ask again later")
            try:
                if outcome == "commit":
                    self.commit(participant, tx_id)
                elif outcome == "abort":
                    self.abort(participant, tx_id)
            except HttpError as e:
                # E.g. the coordinator's own commit or abort arrived meanwhile and conflicts.
                log.error("in doubt %s/%s: applying %s failed: %s", participant, tx_id, outcome, e.message)


def inquire(coordinator, tx_id):
    """`commit`, `abort`, or None (undecided or no usable answer: ask again next round)."""
    if not coordinator:
        return None
    url = f"{coordinator.rstrip('/')}/v1/transactions/{tx_id}"
    try:
        with urllib.request.urlopen(url, timeout=INQUIRY_TIMEOUT_S) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            try:
                code = json.loads(e.read()).get("error", {}).get("code")
            except (ValueError, AttributeError):
                code = None
            # Only the coordinator's own "no such transaction" means presumed abort; a 404 from
            # a wrong URL or a proxy means nothing.
            if code == "transaction_not_found":
                return "abort"
        log.warning("inquiry %s answered %s", url, e.code)
        return None
    except (OSError, ValueError) as e:
        log.warning("inquiry %s failed: %s", url, e)
        return None
    if not isinstance(body, dict) or body.get("id") != tx_id:
        log.warning("inquiry %s: answer about another transaction", url)
        return None
    state = body.get("state")
    if state in ("committing", "committed"):
        return "commit"
    if state in ("aborting", "aborted"):
        return "abort"
    return None


def resolver_loop(bank, stop, in_doubt_after_ms, interval_ms):
    while not stop.wait(interval_ms / 1000):
        try:
            bank.resolve_once(in_doubt_after_ms)
        except Exception:  # noqa: BLE001 - the loop must survive; the next round retries
            log.exception("in-doubt resolver round failed")


# --- HTTP ---------------------------------------------------------------------------------


def required_request(body, prepare):
    """Checks the fields of a prepare or outcome request; answers (participant, id, payload, coordinator)."""
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_request", "the body must be a JSON object")
    tx = body.get("transaction_id")
    participant = body.get("participant")
    if not isinstance(tx, str):
        raise HttpError(400, "invalid_request", "missing field `transaction_id` (a UUID string)")
    try:
        tx_id = str(uuid.UUID(tx))
    except ValueError:
        raise HttpError(400, "invalid_request", f"transaction_id '{tx[:64]}' is not a UUID") from None
    if not isinstance(participant, str) or not 1 <= len(participant) <= MAX_PARTICIPANT_NAME:
        raise HttpError(400, "invalid_request",
                        f"participant must be a string of 1 to {MAX_PARTICIPANT_NAME} characters")
    if not prepare:
        return participant, tx_id, None, None
    coordinator = body.get("coordinator")
    deadline = body.get("deadline_ms")
    if not isinstance(coordinator, str):
        raise HttpError(400, "invalid_request", "missing field `coordinator` (a URL string)")
    if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 0:
        raise HttpError(400, "invalid_request", "missing field `deadline_ms` (a whole number >= 0)")
    return participant, tx_id, body.get("payload"), coordinator


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "twopc-python-participant"
    bank = None  # set by main

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every answer on a kept-alive connection.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def send_json(self, status, value):
        data = json.dumps(value, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, err):
        self.send_json(err.status, {"error": {"code": err.code, "message": err.message}})

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    raise HttpError(413, "body_too_large", "the body is over 1 MiB")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise HttpError(413, "body_too_large", "the body is over 1 MiB")
        return self.rfile.read(length) if length > 0 else b""

    def json_body(self):
        body = self.read_body()
        media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise HttpError(415, "unsupported_media_type", "expected a body with Content-Type: application/json")
        try:
            return json.loads(body, parse_constant=reject_constant)
        except ValueError as e:
            raise HttpError(400, "invalid_json", f"the body is not JSON: {e}") from None

    def dispatch(self, method):
        path = self.path.split("?", 1)[0]
        routes = {
            "/prepare": ("POST",),
            "/commit": ("POST",),
            "/abort": ("POST",),
            "/commit-one-phase": ("POST",),
            "/accounts": ("GET", "POST"),
        }
        try:
            if path not in routes:
                self.read_body()
                raise HttpError(404, "not_found", "no such route")
            if method not in routes[path]:
                self.read_body()
                raise HttpError(405, "method_not_allowed", "this route does not take that method")
            if method == "GET":
                self.send_json(200, {"accounts": self.bank.accounts()})
                return
            body = self.json_body()
            if path == "/accounts":
                if not isinstance(body, dict):
                    raise HttpError(400, "invalid_request", "expected {\"id\", \"balance\"}")
                self.send_json(200, self.bank.open_account(body.get("id"), body.get("balance")))
            elif path == "/prepare":
                participant, tx_id, payload, coordinator = required_request(body, True)
                self.send_json(200, self.bank.prepare(participant, tx_id, payload, coordinator))
            elif path == "/commit-one-phase":
                participant, tx_id, payload, coordinator = required_request(body, True)
                self.send_json(200, self.bank.commit_one_phase(participant, tx_id, payload, coordinator))
            elif path == "/commit":
                participant, tx_id, _, _ = required_request(body, False)
                self.bank.commit(participant, tx_id)
                self.send_json(200, {"state": "committed"})
            else:
                participant, tx_id, _, _ = required_request(body, False)
                self.bank.abort(participant, tx_id)
                self.send_json(200, {"state": "aborted"})
        except HttpError as err:
            if err.status in (404, 409) and path in ("/commit", "/abort", "/commit-one-phase"):
                log.error("refused %s: %s", path, err.message)
            self.send_error_json(err)
        except (BrokenPipeError, ConnectionResetError):
            # The caller hung up before the answer (the coordinator abandons the prepares still
            # running once another participant voted abort). What was done stays recorded: a
            # retry gets the same answer.
            log.info("%s %s: the caller hung up before the answer", method, path)
            self.close_connection = True
        except Exception:  # noqa: BLE001 - answer 500, keep serving; the local transaction rolled back
            log.exception("%s %s failed", method, path)
            self.send_error_json(HttpError(500, "internal_error", "the participant failed internally; see its log"))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_seed(text):
    seed = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        account, sep, balance = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"'{part}' is not ACCOUNT=BALANCE")
        try:
            seed.append((account.strip(), int(balance.strip())))
        except ValueError:
            raise argparse.ArgumentTypeError(f"balance of '{account.strip()}' is not a whole number") from None
    return seed


def main(argv=None):
    parser = argparse.ArgumentParser(description="A bank as a twopc participant (Python, standard library only).")
    parser.add_argument("--listen", default="127.0.0.1:7803", help="HOST:PORT to listen on (port 0 picks a free one)")
    parser.add_argument("--database", required=True, help="SQLite file (created if missing); sqlite://PATH also works")
    parser.add_argument("--seed", type=parse_seed, action="append", default=[],
                        help="accounts to open unless they exist, e.g. alice=100,bob=50 (existing balances are kept)")
    parser.add_argument("--in-doubt-after-ms", type=int, default=5000,
                        help="a prepared transaction not updated for this long is in doubt: ask the coordinator")
    parser.add_argument("--resolve-interval-ms", type=int, default=1000, help="pause between in-doubt rounds")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = args.database.removeprefix("sqlite://")
    try:
        bank = Bank(path)
    except (sqlite3.Error, RuntimeError) as e:
        sys.exit(f"python-participant: cannot open the database '{path}' given in --database: {e}")
    for account, balance in (pair for seed in args.seed for pair in seed):
        try:
            opened = bank.open_account(account, balance)
        except HttpError as e:
            sys.exit(f"python-participant: seeding '{account}' given in --seed: {e.message}")
        log.info("account ready: %s", opened)

    host, _, port = args.listen.rpartition(":")
    try:
        server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    except (OSError, ValueError) as e:
        sys.exit(f"python-participant: failed binding to address '{args.listen}' given in --listen: {e}")
    server.daemon_threads = True
    Handler.bank = bank
    addr = server.server_address
    print(f"listening on http://{addr[0]}:{addr[1]}", flush=True)
    log.info("bank participant serving on %s:%s, database %s", addr[0], addr[1], path)

    stop = threading.Event()
    resolver = threading.Thread(target=resolver_loop, name="in-doubt",
                                args=(bank, stop, args.in_doubt_after_ms, args.resolve_interval_ms), daemon=True)
    resolver.start()

    def shut_down(signum, _frame):
        log.info("signal %s: shutting down", signum)
        stop.set()
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    server.serve_forever()
    server.server_close()
    resolver.join(timeout=5)
    log.info("stopped")


if __name__ == "__main__":
    main()
