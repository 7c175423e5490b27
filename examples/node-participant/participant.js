#!/usr/bin/env node
// A bank as a twopc participant, in Node.js with only its standard library (node:http, node:fs).
//
// The same bank as the Rust example (examples/src/bank.rs): accounts with `balance` and `held`;
// a debit's prepare reserves the amount (`held`), its commit books it, its abort releases it; a
// credit is checked at prepare and booked at commit.
//
// Node 20 has no SQLite in its standard library, so the state lives in memory and every change
// is first appended to a journal, one JSON object per line, and fsync'ed before the answer goes
// out. Each line carries the new state row of one transaction *and* the account changes that go
// with it, so a vote and its reservation are durable together or not at all. At start the
// journal is replayed. See README.md for the limits of this design.
//
//   node participant.js --listen 127.0.0.1:7804 --database bank-d.jsonl --seed dave=100
//
// Stdout gets exactly one line once the listener is bound, `listening on http://ADDR`, so
// scripts can start it with `--listen 127.0.0.1:0` and learn the port. Logs go to stderr.

"use strict";

const fs = require("node:fs");
const http = require("node:http");
const https = require("node:https");
const path = require("node:path");

const MAX_BODY = 1024 * 1024;
const MAX_PARTICIPANT_NAME = 255;
const MAX_ACCOUNT_ID = 64;
const TOMBSTONE_REASON = "aborted before prepare";
const INQUIRY_TIMEOUT_MS = 10000;
const RESOLVE_BATCH = 100;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function log(level, message) {
  process.stderr.write(`${new Date().toISOString()} ${level} node-participant: ${message}\n`);
}

/** An answer other than 200: a status, a stable snake_case code and a message. */
class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The bank operation of a prepare payload: {"op": "debit"|"credit", "account", "amount"}. */
function parseOp(payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new HttpError(400, "invalid_payload", "the payload must be an object {op, account, amount}");
  }
  const { op, account, amount } = payload;
  if (op !== "debit" && op !== "credit") {
    throw new HttpError(400, "invalid_payload", 'payload.op must be "debit" or "credit"');
  }
  if (typeof account !== "string") {
    throw new HttpError(400, "invalid_payload", "payload.account must be a string");
  }
  // JavaScript numbers are exact only up to 2^53 - 1: larger amounts are refused.
  if (!Number.isSafeInteger(amount)) {
    throw new HttpError(400, "invalid_payload", "payload.amount must be a whole number below 2^53");
  }
  return { op, account, amount };
}

/**
 * The journal: an append-only file of JSON lines, each fsync'ed before it counts, and the
 * in-memory state it replays to.
 */
class Bank {
  constructor(file) {
    this.file = file;
    /** @type {Map<string, {balance: number, held: number}>} */
    this.accounts = new Map();
    /** @type {Map<string, object>} state rows by participant + NUL + transaction id */
    this.rows = new Map();
    this.lockFile = `${file}.lock`;
    this.takeLock();
    this.replay();
    const created = !fs.existsSync(file);
    this.fd = fs.openSync(file, "a");
    if (created) {
      // Make the new file's directory entry durable too.
      const dir = fs.openSync(path.dirname(path.resolve(file)), "r");
      fs.fsyncSync(dir);
      fs.closeSync(dir);
    }
  }

  /** One process per journal: a lock file holding the owner's pid (taken over if it died). */
  takeLock() {
    let owner = NaN;
    try {
      owner = Number(fs.readFileSync(this.lockFile, "utf8"));
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
    }
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && processAlive(owner)) {
      throw new Error(`the journal is in use by process ${owner} (see ${this.lockFile})`);
    }
    fs.writeFileSync(this.lockFile, String(process.pid));
  }

  releaseLock() {
    try {
      fs.unlinkSync(this.lockFile);
    } catch {
      // already gone
    }
  }

  /** Rebuilds the state from the journal; a torn last line (a crash mid-append) is cut off. */
  replay() {
    if (!fs.existsSync(this.file)) return;
    const text = fs.readFileSync(this.file, "utf8");
    const end = text.lastIndexOf("\n") + 1;
    if (end < text.length) {
      // Never acknowledged: the answer goes out only after the whole line is fsync'ed.
      log("WARN", `cutting a torn last line of ${text.length - end} bytes off ${this.file}`);
      fs.truncateSync(this.file, Buffer.byteLength(text.slice(0, end)));
    }
    const lines = text.slice(0, end).split("\n");
    lines.pop();
    lines.forEach((line, i) => {
      let record;
      try {
        record = JSON.parse(line);
      } catch (e) {
        throw new Error(`${this.file} line ${i + 1} is not JSON (${e.message}): the journal is damaged`);
      }
      this.apply(record, `${this.file} line ${i + 1}`);
    });
    log("INFO", `replayed ${lines.length} journal lines: ${this.accounts.size} accounts, ${this.rows.size} transactions`);
  }

  /** Applies one journal record to memory (at replay and after each append). */
  apply(record, where) {
    if (record.type === "account") {
      if (!this.accounts.has(record.id)) this.accounts.set(record.id, { balance: record.balance, held: 0 });
      return;
    }
    if (record.type !== "row") throw new Error(`${where}: unknown record type ${record.type}`);
    const key = rowKey(record.participant, record.transaction_id);
    const before = this.rows.get(key);
    for (const change of record.changes) {
      const account = this.accounts.get(change.id);
      if (!account) throw new Error(`${where}: change of unknown account ${change.id}`);
      const balance = account.balance + (change.balance || 0);
      const held = account.held + (change.held || 0);
      if (held < 0 || balance < held) throw new Error(`${where}: account ${change.id} would be balance ${balance}, held ${held}`);
      account.balance = balance;
      account.held = held;
    }
    this.rows.set(key, {
      participant: record.participant,
      transaction_id: record.transaction_id,
      state: record.state,
      vote: record.vote,
      reason: record.reason,
      payload: record.payload,
      coordinator: record.coordinator,
      created_at_ms: before ? before.created_at_ms : record.at,
      updated_at_ms: record.at,
    });
  }

  /**
   * Makes `record` durable, then applies it. Node runs this synchronously, so nothing else
   * happens between the checks that built the record and its application. If the append fails
   * the process cannot know what reached the disk: it stops, and the restart replays the truth.
   */
  commitRecord(record) {
    try {
      fs.writeSync(this.fd, `${JSON.stringify(record)}\n`);
      fs.fsyncSync(this.fd);
    } catch (e) {
      log("ERROR", `appending to ${this.file} failed (${e.message}); stopping: a restart replays the journal`);
      process.exit(70);
    }
    this.apply(record, "append");
  }

  openAccount(id, balance) {
    if (typeof id !== "string" || id.length < 1 || id.length > MAX_ACCOUNT_ID) {
      throw new HttpError(400, "invalid_account", `account id must have 1 to ${MAX_ACCOUNT_ID} characters`);
    }
    if (!Number.isSafeInteger(balance) || balance < 0) {
      throw new HttpError(400, "invalid_account", `opening balance of ${id} must be a whole number >= 0`);
    }
    if (!this.accounts.has(id)) this.commitRecord({ type: "account", id, balance });
    const account = this.accounts.get(id);
    return { id, balance: account.balance, held: account.held };
  }

  listAccounts() {
    return [...this.accounts.keys()].sort().map((id) => ({ id, ...this.accounts.get(id) }));
  }

  // --- the handler: the bank's part of each phase, as changes to apply -----------------------

  handlePrepare({ op, account, amount }) {
    if (amount <= 0) return { vote: { vote: "abort", reason: `amount must be positive, got ${amount}` }, changes: [] };
    const found = this.accounts.get(account);
    if (!found) return { vote: { vote: "abort", reason: `unknown account ${account}` }, changes: [] };
    if (op === "credit") return { vote: { vote: "commit" }, changes: [] };
    if (found.balance - found.held < amount) {
      return { vote: { vote: "abort", reason: `insufficient funds in account ${account}` }, changes: [] };
    }
    return { vote: { vote: "commit" }, changes: [{ id: account, held: amount }] };
  }

  handleOutcome(txId, { op, account, amount }, outcome) {
    if (!this.accounts.has(account)) {
      throw new Error(`transaction ${txId}: account ${account} is gone (was it deleted?)`);
    }
    if (outcome === "commit") {
      return op === "debit" ? [{ id: account, balance: -amount, held: -amount }] : [{ id: account, balance: amount }];
    }
    // A credit reserved nothing.
    return op === "debit" ? [{ id: account, held: -amount }] : [];
  }

  // --- the protocol ------------------------------------------------------------------------

  prepare(participant, txId, payload, coordinator) {
    const op = parseOp(payload);
    const row = this.rows.get(rowKey(participant, txId));
    if (row) return recordedVote(row);
    const { vote, changes } = this.handlePrepare(op);
    const state = { commit: "prepared", read_only: "committed", abort: "aborted" }[vote.vote];
    this.commitRecord({
      type: "row", participant, transaction_id: txId, state, vote: vote.vote,
      reason: vote.reason ?? null, payload, coordinator, at: Date.now(),
      changes: vote.vote === "commit" ? changes : [],
    });
    log("INFO", `prepare ${participant}/${txId}: ${JSON.stringify(vote)}`);
    return vote;
  }

  /** The transaction's only participant: prepare and commit in one journal record. */
  commitOnePhase(participant, txId, payload, coordinator) {
    const op = parseOp(payload);
    const row = this.rows.get(rowKey(participant, txId));
    if (row) {
      if (row.state === "prepared") {
        throw new HttpError(409, "outcome_conflict", `transaction ${txId} is prepared at participant '${participant}' by a two-phase prepare: it needs its commit or abort`);
      }
      if (row.state === "aborted") return { state: "aborted", reason: recordedVote(row).reason };
      return { state: "committed" };
    }
    const { vote, changes } = this.handlePrepare(op);
    const committed = vote.vote !== "abort";
    this.commitRecord({
      type: "row", participant, transaction_id: txId, state: committed ? "committed" : "aborted",
      vote: vote.vote, reason: vote.reason ?? null, payload, coordinator, at: Date.now(),
      // The reservation and its booking, applied in one step.
      changes: vote.vote === "commit" ? [...changes, ...this.handleOutcome(txId, op, "commit")] : [],
    });
    const outcome = committed ? { state: "committed" } : { state: "aborted", reason: vote.reason ?? "" };
    log("INFO", `commit-one-phase ${participant}/${txId}: ${JSON.stringify(outcome)}`);
    return outcome;
  }

  commit(participant, txId) {
    const row = this.rows.get(rowKey(participant, txId));
    if (!row) throw new HttpError(404, "unknown_transaction", `participant '${participant}' knows no transaction ${txId}`);
    if (row.state === "committed") return "already done";
    if (row.state === "aborted") {
      throw new HttpError(409, "outcome_conflict", `cannot commit transaction ${txId} at participant '${participant}': it is already aborted`);
    }
    const changes = this.handleOutcome(txId, parseOp(row.payload), "commit");
    this.commitRecord({ ...row, type: "row", state: "committed", at: Date.now(), changes, created_at_ms: undefined, updated_at_ms: undefined });
    log("INFO", `commit ${participant}/${txId}: applied`);
    return "ran";
  }

  abort(participant, txId) {
    const row = this.rows.get(rowKey(participant, txId));
    if (!row) {
      // A tombstone: a prepare arriving later votes abort.
      this.commitRecord({
        type: "row", participant, transaction_id: txId, state: "aborted", vote: null, reason: null,
        payload: null, coordinator: null, at: Date.now(), changes: [],
      });
      log("INFO", `abort ${participant}/${txId}: tombstone`);
      return "tombstone";
    }
    if (row.state === "aborted" || (row.state === "committed" && row.vote === "read_only")) return "already done";
    if (row.state === "committed") {
      throw new HttpError(409, "outcome_conflict", `cannot abort transaction ${txId} at participant '${participant}': it is already committed`);
    }
    const changes = this.handleOutcome(txId, parseOp(row.payload), "abort");
    this.commitRecord({ ...row, type: "row", state: "aborted", at: Date.now(), changes, created_at_ms: undefined, updated_at_ms: undefined });
    log("INFO", `abort ${participant}/${txId}: applied`);
    return "ran";
  }

  inDoubt(olderThanMs) {
    const cutoff = Date.now() - olderThanMs;
    return [...this.rows.values()]
      .filter((r) => r.state === "prepared" && r.updated_at_ms <= cutoff)
      .sort((a, b) => a.updated_at_ms - b.updated_at_ms)
      .slice(0, RESOLVE_BATCH);
  }
}

function processAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code !== "ESRCH";
  }
}

function rowKey(participant, txId) {
  return `${participant}\u0000${txId}`;
}

function recordedVote(row) {
  if (row.vote === null) return { vote: "abort", reason: TOMBSTONE_REASON };
  if (row.vote === "abort") return { vote: "abort", reason: row.reason ?? "" };
  return { vote: row.vote };
}

// --- in-doubt inquiry --------------------------------------------------------------------------

/** Resolves to "commit", "abort", or null (undecided or no usable answer: ask again later). */
function inquire(coordinator, txId) {
  return new Promise((resolve) => {
    if (!coordinator) return resolve(null);
    const url = `${coordinator.replace(/\/+$/, "")}/v1/transactions/${txId}`;
    let client;
    try {
      client = new URL(url).protocol === "https:" ? https : http;
    } catch {
      return resolve(null);
    }
    const req = client.get(url, { timeout: INQUIRY_TIMEOUT_MS }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        text += chunk;
      });
      res.on("end", () => {
        let body = null;
        try {
          body = JSON.parse(text);
        } catch {
          // handled below
        }
        if (res.statusCode === 404) {
          // Only the coordinator's own "no such transaction" means presumed abort.
          return resolve(body?.error?.code === "transaction_not_found" ? "abort" : null);
        }
        if (res.statusCode !== 200 || body?.id !== txId) {
          log("WARN", `inquiry ${url} answered ${res.statusCode}`);
          return resolve(null);
        }
        if (body.state === "committing" || body.state === "committed") return resolve("commit");
        if (body.state === "aborting" || body.state === "aborted") return resolve("abort");
        return resolve(null);
      });
      res.on("error", () => resolve(null));
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (e) => {
      log("WARN", `inquiry ${url} failed: ${e.message}`);
      resolve(null);
    });
  });
}

async function resolveOnce(bank, olderThanMs) {
  for (const row of bank.inDoubt(olderThanMs)) {
    const outcome = await inquire(row.coordinator, row.transaction_id);
    log("INFO", `in doubt ${row.participant}/${row.transaction_id}: coordinator says ${outcome ?? "ask again later"}`);
    try {
      if (outcome === "commit") bank.commit(row.participant, row.transaction_id);
      if (outcome === "abort") bank.abort(row.participant, row.transaction_id);
    } catch (e) {
      log("ERROR", `in doubt ${row.participant}/${row.transaction_id}: applying ${outcome} failed: ${e.message}`);
    }
  }
}

// --- HTTP --------------------------------------------------------------------------------------

function requiredRequest(body, prepare) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "invalid_request", "the body must be a JSON object");
  }
  const { transaction_id: tx, participant } = body;
  if (typeof tx !== "string") throw new HttpError(400, "invalid_request", "missing field `transaction_id` (a UUID string)");
  if (!UUID.test(tx)) throw new HttpError(400, "invalid_request", `transaction_id '${tx.slice(0, 64)}' is not a UUID`);
  if (typeof participant !== "string" || participant.length < 1 || participant.length > MAX_PARTICIPANT_NAME) {
    throw new HttpError(400, "invalid_request", `participant must be a string of 1 to ${MAX_PARTICIPANT_NAME} characters`);
  }
  const txId = tx.toLowerCase();
  if (!prepare) return { participant, txId };
  const { coordinator, deadline_ms: deadline } = body;
  if (typeof coordinator !== "string") throw new HttpError(400, "invalid_request", "missing field `coordinator` (a URL string)");
  if (!Number.isInteger(deadline) || deadline < 0) {
    throw new HttpError(400, "invalid_request", "missing field `deadline_ms` (a whole number >= 0)");
  }
  return { participant, txId, payload: body.payload === undefined ? null : body.payload, coordinator };
}

function send(res, status, value) {
  const data = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      // Past the limit the rest is read and dropped, so that the 413 answer can still be sent.
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on("end", () => {
      if (size > MAX_BODY) reject(new HttpError(413, "body_too_large", "the body is over 1 MiB"));
      else resolve(Buffer.concat(chunks).toString("utf8"));
    });
    req.on("error", reject);
  });
}

const ROUTES = {
  "/prepare": ["POST"], "/commit": ["POST"], "/abort": ["POST"], "/commit-one-phase": ["POST"],
  "/accounts": ["GET", "POST"],
};

async function handle(bank, req, res) {
  const route = (req.url || "/").split("?")[0];
  try {
    if (!ROUTES[route]) throw new HttpError(404, "not_found", "no such route");
    if (!ROUTES[route].includes(req.method)) throw new HttpError(405, "method_not_allowed", "this route does not take that method");
    if (req.method === "GET") return send(res, 200, { accounts: bank.listAccounts() });
    const text = await readBody(req);
    const media = (req.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
    if (media !== "application/json") {
      throw new HttpError(415, "unsupported_media_type", "expected a body with Content-Type: application/json");
    }
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      throw new HttpError(400, "invalid_json", `the body is not JSON: ${e.message}`);
    }
    // From here on everything is synchronous: one call's checks, append and apply never
    // interleave with another's.
    if (route === "/accounts") {
      if (body === null || typeof body !== "object") throw new HttpError(400, "invalid_request", 'expected {"id", "balance"}');
      return send(res, 200, bank.openAccount(body.id, body.balance));
    }
    if (route === "/prepare") {
      const { participant, txId, payload, coordinator } = requiredRequest(body, true);
      return send(res, 200, bank.prepare(participant, txId, payload, coordinator));
    }
    if (route === "/commit-one-phase") {
      const { participant, txId, payload, coordinator } = requiredRequest(body, true);
      return send(res, 200, bank.commitOnePhase(participant, txId, payload, coordinator));
    }
    const { participant, txId } = requiredRequest(body, false);
    if (route === "/commit") {
      bank.commit(participant, txId);
      return send(res, 200, { state: "committed" });
    }
    bank.abort(participant, txId);
    return send(res, 200, { state: "aborted" });
  } catch (e) {
    if (e instanceof HttpError) {
      if ((e.status === 404 || e.status === 409) && route !== "/prepare" && route !== "/accounts") {
        log("ERROR", `refused ${route}: ${e.message}`);
      }
      return send(res, e.status, { error: { code: e.code, message: e.message } });
    }
    log("ERROR", `${req.method} ${route} failed: ${e.stack || e}`);
    return send(res, 500, { error: { code: "internal_error", message: "the participant failed internally; see its log" } });
  }
}

function parseArgs(argv) {
  const args = { listen: "127.0.0.1:7804", database: null, seed: [], inDoubtAfterMs: 5000, resolveIntervalMs: 1000 };
  const usage = "usage: participant.js --database FILE [--listen HOST:PORT] [--seed ACCOUNT=BALANCE,…] [--in-doubt-after-ms N] [--resolve-interval-ms N]";
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${usage}`);
      return v;
    };
    switch (flag) {
      case "--listen": args.listen = value(); break;
      case "--database": args.database = value().replace(/^file:\/\//, ""); break;
      case "--seed":
        for (const part of value().split(",").map((p) => p.trim()).filter(Boolean)) {
          const [id, balance] = part.split("=");
          if (balance === undefined) throw new Error(`'${part}' is not ACCOUNT=BALANCE`);
          const n = Number(balance.trim());
          if (!Number.isSafeInteger(n)) throw new Error(`balance of '${id.trim()}' is not a whole number`);
          args.seed.push([id.trim(), n]);
        }
        break;
      case "--in-doubt-after-ms": args.inDoubtAfterMs = Number(value()); break;
      case "--resolve-interval-ms": args.resolveIntervalMs = Number(value()); break;
      case "--help": case "-h": process.stdout.write(`${usage}\n`); process.exit(0); break;
      default: throw new Error(`unknown option ${argv[i]}\n${usage}`);
    }
  }
  if (!args.database) throw new Error(`--database is required\n${usage}`);
  return args;
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`node-participant: ${e.message}\n`);
    process.exit(2);
  }
  let bank;
  try {
    bank = new Bank(args.database);
    for (const [id, balance] of args.seed) log("INFO", `account ready: ${JSON.stringify(bank.openAccount(id, balance))}`);
  } catch (e) {
    process.stderr.write(`node-participant: cannot open the journal '${args.database}' given in --database: ${e.message}\n`);
    process.exit(1);
  }

  const server = http.createServer((req, res) => {
    handle(bank, req, res);
  });
  server.on("connection", (socket) => socket.setNoDelay(true));
  const sep = args.listen.lastIndexOf(":");
  const host = args.listen.slice(0, sep).replace(/^\[|\]$/g, "") || "127.0.0.1";
  const port = Number(args.listen.slice(sep + 1));
  server.on("error", (e) => {
    process.stderr.write(`node-participant: failed binding to address '${args.listen}' given in --listen: ${e.message}\n`);
    process.exit(1);
  });

  let resolving = false;
  const timer = setInterval(async () => {
    if (resolving) return;
    resolving = true;
    try {
      await resolveOnce(bank, args.inDoubtAfterMs);
    } catch (e) {
      log("ERROR", `in-doubt round failed: ${e.message}`);
    } finally {
      resolving = false;
    }
  }, Math.max(1, args.resolveIntervalMs));

  server.listen(port, host, () => {
    const addr = server.address();
    const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
    process.stdout.write(`listening on http://${shown}:${addr.port}\n`);
    log("INFO", `bank participant serving on ${shown}:${addr.port}, journal ${args.database}`);
  });

  const shutDown = (signal) => {
    log("INFO", `${signal}: shutting down`);
    clearInterval(timer);
    server.close(() => {
      fs.closeSync(bank.fd);
      bank.releaseLock();
      process.exit(0);
    });
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", shutDown);
  process.on("SIGINT", shutDown);
}

main();
