"""An in-memory participant that keeps every rule of the participant protocol, for the
conformance kit's own tests: the broken participants beside it each break exactly one rule by
overriding one method. It keeps nothing on disk, so it is NOT a correct participant across a
crash; never use it for anything but testing the kit.

Payload: anything votes commit, except an object with "refuse": true, which votes abort.
Stdout gets one line, `listening on http://ADDR`, once bound (`--listen 127.0.0.1:0`).
"""

import argparse
import json
import socket
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOMBSTONE_REASON = "aborted before prepare"


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Participant:
    """The protocol on a dict: (participant, transaction id) -> {"state", "vote", "reason"}."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows = {}

    def prepare(self, key, payload):
        with self.lock:
            row = self.rows.get(key)
            if row is not None:
                return self.recorded_vote(row)
            if isinstance(payload, dict) and payload.get("refuse") is True:
                self.rows[key] = {"state": "aborted", "vote": "abort", "reason": "refused by payload"}
            else:
                self.rows[key] = {"state": "prepared", "vote": "commit", "reason": None}
            return self.recorded_vote(self.rows[key])

    @staticmethod
    def recorded_vote(row):
        if row["vote"] is None:
            return {"vote": "abort", "reason": TOMBSTONE_REASON}
        if row["vote"] == "abort":
            return {"vote": "abort", "reason": row["reason"]}
        return {"vote": row["vote"]}

    def commit(self, key):
        with self.lock:
            row = self.rows.get(key)
            if row is None:
                raise Refused(404, "unknown_transaction", f"no transaction {key[1]}")
            if row["state"] == "aborted":
                raise Refused(409, "outcome_conflict", f"transaction {key[1]} is aborted")
            row["state"] = "committed"

    def abort(self, key):
        with self.lock:
            row = self.rows.get(key)
            if row is None:
                self.rows[key] = {"state": "aborted", "vote": None, "reason": None}  # tombstone
                return
            if row["state"] == "committed" and row["vote"] != "read_only":
                raise Refused(409, "outcome_conflict", f"transaction {key[1]} is committed")
            row["state"] = "aborted"


def request_key(body, prepare):
    if not isinstance(body, dict) or not isinstance(body.get("participant"), str) or not body["participant"]:
        raise Refused(400, "invalid_request", "transaction_id and participant are required")
    try:
        tx = str(uuid.UUID(body.get("transaction_id")))
    except (TypeError, ValueError, AttributeError):
        raise Refused(400, "invalid_request", "transaction_id must be a UUID") from None
    if prepare and (not isinstance(body.get("coordinator"), str) or not isinstance(body.get("deadline_ms"), int)):
        raise Refused(400, "invalid_request", "coordinator and deadline_ms are required")
    return body["participant"], tx


def make_handler(participant):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt, *args):
            pass

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            try:
                if path not in ("/prepare", "/commit", "/abort"):
                    raise Refused(404, "not_found", "no such route")
                if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                    raise Refused(415, "unsupported_media_type", "expected application/json")
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise Refused(400, "invalid_json", "the body is not JSON") from None
                key = request_key(body, path == "/prepare")
                if path == "/prepare":
                    self.answer(200, participant.prepare(key, body.get("payload")))
                elif path == "/commit":
                    participant.commit(key)
                    self.answer(200, {"state": "committed"})
                else:
                    participant.abort(key)
                    self.answer(200, {"state": "aborted"})
            except Refused as e:
                self.answer(e.status, {"error": {"code": e.code, "message": e.message}})

    return Handler


def serve(participant, description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), make_handler(participant))
    server.daemon_threads = True
    print(f"listening on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    print(f"{description} (in memory, for testing the conformance kit only)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    serve(Participant(), "a correct in-memory participant")
