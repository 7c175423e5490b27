#!/usr/bin/env python3
"""A participant that breaks rule 1 of the protocol: a repeated prepare does not answer the
vote first given. It treats the coordinator's retry of a prepare as a duplicate and votes abort,
a common mistake. `twopc check-participant` must FAIL `prepare_idempotent` on it."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from base import Participant, serve  # noqa: E402


class PrepareNotIdempotent(Participant):
    def prepare(self, key, payload):
        with self.lock:
            row = self.rows.get(key)
        if row is not None and row["vote"] is not None:
            return {"vote": "abort", "reason": "duplicate transaction"}
        return super().prepare(key, payload)


if __name__ == "__main__":
    serve(PrepareNotIdempotent(), "broken: a repeated prepare votes abort")
