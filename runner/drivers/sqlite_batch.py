"""SQLite's hot writes -- a worker's batch of outcomes with its next claim, a producer's keyless
enqueues -- each as one call on one thread.

Through SQLAlchemy and aiosqlite every statement crosses from the event loop to the database's
thread and back several times (cursor, execute, fetch, close): a batch of 32 outcomes and the
next claim took about twenty crossings and 6.5 ms. Here a plain ``sqlite3`` connection runs the
whole transaction -- BEGIN IMMEDIATE, the guard read, the outcomes, their counters, the claim,
COMMIT -- in one function on a thread, holding the host's writer ``flock``: one crossing a batch.

The statements are the SQLAlchemy path's own (their text is shared, not copied), and so is the
guard: an outcome is written only while its row is running under its token. A batch with work
only a full transaction does -- children to insert, dependants to release -- is rolled back
untouched and answered ``None``: the caller takes the SQLAlchemy path, which does it all.

Enqueue goes the same way: one awaited ``defer_async`` took five crossings (checkout, execute,
fetch, reset, return) and 1.1 ms; here it is one INSERT in autocommit, or, for a batch of
concurrent callers, BEGIN IMMEDIATE, the last id, one ``executemany`` and COMMIT in one call.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final

import msgspec

from ..decide import Outcome
from .host_lock import HostWriterLock
from .sql import outcome_params, tally_rows

__all__ = ["BatchWriter", "Inserts"]

# The guard's read, with the ids as one JSON parameter (sqlite3 has no expanding lists).
_LIVE: Final = (
    "SELECT id, lease_token, has_dependants FROM runner_jobs WHERE state = 'running' AND id IN (SELECT value FROM json_each(?))"
)
_encode = msgspec.json.Encoder().encode


class Inserts(msgspec.Struct, frozen=True):
    """The driver's enqueue statements (named parameters), shared with its SQLAlchemy path."""

    one: str  # one row, its id from RETURNING
    last_id: str  # the highest id handed out so far
    with_id: str  # one row with its id given


class BatchWriter:
    """Owns one plain connection to the queue file, opened on first use (after the fork)."""

    def __init__(self, path: str, lock: HostWriterLock, *, finish: str, stats: str, insert: Inserts, busy_timeout: float) -> None:
        self.path = path
        self.lock = lock
        self.finish = finish  # the guarded outcome UPDATE, named parameters
        self.stats = stats  # the counters' upsert, named parameters
        self.inserts = insert
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        # The host lock queues one loop's tasks; this keeps a second loop's thread (a client's
        # background loop in the same process) off the connection while a transaction is open.
        self._using = threading.Lock()

    async def write(
        self, outcomes: Sequence[Outcome], claim: str | None = None, params: Mapping[str, Any] | None = None
    ) -> tuple[list[Any], int] | None:
        """Write ``outcomes`` and run ``claim`` (if given) in one transaction: (claimed rows,
        outcomes written), or None when the batch needs the full path (nothing was done)."""
        if any(o.children for o in outcomes):
            return None
        return await self.lock.run(partial(self._write, outcomes, claim, params or {}))

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert keyless rows (INSERT parameters, without ids) in one transaction; their ids, in order."""
        return await self.lock.run(partial(self._insert, rows))

    def _insert(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        with self._using:
            conn = self._connection()
            if len(rows) == 1:  # one statement is atomic on its own
                return [int(conn.execute(self.inserts.one, rows[0]).fetchall()[0][0])]  # stepped to the end: committed
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = int(conn.execute(self.inserts.last_id).fetchone()[0] or 0)  # ours alone until COMMIT
                ids = list(range(last + 1, last + 1 + len(rows)))
                conn.executemany(self.inserts.with_id, [{**row, "id": new_id} for row, new_id in zip(rows, ids)])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return ids

    def _write(self, outcomes: Sequence[Outcome], claim: str | None, params: Mapping[str, Any]) -> tuple[list[Any], int] | None:
        with self._using:
            return self._write_locked(outcomes, claim, params)

    def _write_locked(
        self, outcomes: Sequence[Outcome], claim: str | None, params: Mapping[str, Any]
    ) -> tuple[list[Any], int] | None:
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
