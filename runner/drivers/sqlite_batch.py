"""A SQLite worker's hot writes -- a batch of outcomes and the next claim -- as one call on one
thread.

Through SQLAlchemy and aiosqlite every statement crosses from the event loop to the database's
thread and back several times (cursor, execute, fetch, close): a batch of 32 outcomes and the
next claim took about twenty crossings and 6.5 ms. Here a plain ``sqlite3`` connection runs the
whole transaction -- BEGIN IMMEDIATE, the guard read, the outcomes, their counters, the claim,
COMMIT -- in one function on a thread, holding the host's writer ``flock``: one crossing a batch.

The statements are the SQLAlchemy path's own (their text is shared, not copied), and so is the
guard: an outcome is written only while its row is running under its token. A batch with work
only a full transaction does -- children to insert, dependants to release -- is rolled back
untouched and answered ``None``: the caller takes the SQLAlchemy path, which does it all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final

import msgspec

from ..decide import Outcome
from .host_lock import HostWriterLock
from .sql import outcome_params, tally_rows

__all__ = ["BatchWriter"]

# The guard's read, with the ids as one JSON parameter (sqlite3 has no expanding lists).
_LIVE: Final = (
    "SELECT id, lease_token, has_dependants FROM runner_jobs WHERE state = 'running' AND id IN (SELECT value FROM json_each(?))"
)
_encode = msgspec.json.Encoder().encode


class BatchWriter:
    """Owns one plain connection to the queue file, opened on first use (after the fork)."""

    def __init__(self, path: str, lock: HostWriterLock, *, finish: str, stats: str, busy_timeout: float) -> None:
        self.path = path
        self.lock = lock
        self.finish = finish  # the guarded outcome UPDATE, named parameters
        self.stats = stats  # the counters' upsert, named parameters
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    async def write(
        self, outcomes: Sequence[Outcome], claim: str | None = None, params: Mapping[str, Any] | None = None
    ) -> tuple[list[Any], int] | None:
        """Write ``outcomes`` and run ``claim`` (if given) in one transaction: (claimed rows,
        outcomes written), or None when the batch needs the full path (nothing was done)."""
        if any(o.children for o in outcomes):
            return None
        return await self.lock.run(partial(self._write, outcomes, claim, params or {}))

    def _write(self, outcomes: Sequence[Outcome], claim: str | None, params: Mapping[str, Any]) -> tuple[list[Any], int] | None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            written = 0
            if outcomes:
                live = {i: (token, has) for i, token, has in conn.execute(_LIVE, (_encode([o.job_id for o in outcomes]),))}
                if any(has for _, has in live.values()):  # dependants to release: the full path
                    conn.execute("ROLLBACK")
                    return None
                mine = [o for o in outcomes if o.job_id in live and live[o.job_id][0] == o.token]
                if mine:
                    conn.executemany(self.finish, [outcome_params(o) for o in mine])
                    conn.executemany(self.stats, tally_rows(mine, lanes=False))
                written = len(mine)
            rows = conn.execute(claim, params).fetchall() if claim is not None else []
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return rows, written

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
