#!/usr/bin/env python3
"""A participant that acknowledges the commit of a transaction it never prepared (answers 200
instead of 404 unknown_transaction), a common mistake when "commit is idempotent" is read as
"commit always answers 200". The coordinator then believes work was committed that never
happened. `twopc check-participant` must FAIL `commit_unknown_refused` on it."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from base import Participant, serve  # noqa: E402


class AcksUnknownCommit(Participant):
    def commit(self, key):
        with self.lock:
            if key not in self.rows:
                return  # the bug: nothing to commit, answered 200 anyway
        super().commit(key)


if __name__ == "__main__":
    serve(AcksUnknownCommit(), "broken: acknowledges the commit of an unknown transaction")
