"""SQLite's hot writes -- a worker's batch of outcomes with its next claim, a producer's keyless
enqueues -- each as one call on one thread.

Through SQLAlchemy and aiosqlite every statement crosses from the event loop to the database's
thread and back several times (cursor, execute, fetch, close): a batch of 32 outcomes and the
next claim took about twenty crossings and 6.5 ms. Here a plain ``sqlite3`` connection runs the
whole transaction -- BEGIN IMMEDIATE, the guard read, the outcomes, their counters, the claim,
COMMIT -- in one function on a thread, holding the host's writer ``flock``: one crossing a batch.
Every worker on the host waits while one holds that lock, so what can be done before it is
(``prepare``: parameters and counter deltas), and a batch of plain successes skips the guard
read (its UPDATE's WHERE is the guard; a mismatch sends the batch down the full path).

The statements are the SQLAlchemy path's own (their text is shared, not copied), and so is the
guard: an outcome is written only while its row is running under its token. A batch with work
only a full transaction does -- children to insert, dependants to release -- is rolled back
untouched and answered ``None``: the caller takes the SQLAlchemy path, which does it all.

Enqueue goes the same way: one awaited ``defer_async`` took five crossings (checkout, execute,
fetch, reset, return) and 1.1 ms; here it is one INSERT in autocommit, or, for a batch of
concurrent callers, BEGIN IMMEDIATE, the last id, one ``executemany`` and COMMIT in one call.

A lone row needs no crossing at all (``insert_here``): an INSERT in WAL mode with
``synchronous=NORMAL`` commits without touching the disk in tens of microseconds, less than the
crossing itself (about 300 us with anyio's thread hand-off). A sync ``defer()`` writes it on the
caller's own thread, waiting its turn as any sqlite3 caller would; an async one writes it on the
event loop only when both writer locks are free at that instant (never waiting: no busy handler,
no checkpoint on the loop), and otherwise takes the thread.
"""

from __future__ import annotations

import fcntl
import operator
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final

import msgspec

from ..decide import Outcome
from ..gc_pause import paused_gc
from ..wire import Envelope
from .host_lock import HostWriterLock, lock_path
from .sql import (
    INSERT_COLUMNS,
    PLAIN_COLUMNS,
    bulk_insert_sql,
    is_plain_row,
    needed,
    outcome_params,
    plain_insert_sql,
    plain_rows,
    plain_success,
    tally_rows,
)

__all__ = ["BatchWriter", "Finishes", "Inserts", "Prepared", "finish_outcomes", "prepare"]

# The guard's read, with the ids as one JSON parameter (sqlite3 has no expanding lists).
_LIVE: Final = (
    "SELECT id, lease_token, has_dependants FROM runner_jobs WHERE state = 'running' AND id IN (SELECT value FROM json_each(?))"
)
_encode = msgspec.json.Encoder().encode
_PLAIN_INSERT: Final = bulk_insert_sql(PLAIN_COLUMNS)
_PLAIN_ONE: Final = plain_insert_sql(["?"] * len(PLAIN_COLUMNS))  # a lone plain row: 7 values, not 28 named ones
# Of the lone rows written on the loop, one in this many takes the thread instead: the loop's own
# connection never checkpoints (a checkpoint copies pages and syncs the file), the thread's does,
# so the WAL stays bounded under a producer that writes only on the loop.
CHECKPOINT_EVERY: Final = 256


class Finishes(msgspec.Struct, frozen=True):
    """The driver's outcome statements, shared with its SQLAlchemy path."""

    finish: str  # the guarded outcome UPDATE, named parameters
    succeed: str  # the same for plain successes (``plain_success``): five positional values
    succeed_alone: str  # ``succeed`` for jobs nothing waits for (has_dependants = 0)
    stats: str  # the counters' upsert, named parameters


class Prepared(msgspec.Struct, frozen=True):
    """A batch's statement parameters and counter deltas, built before the writer lock is taken:
    under the lock, every writer on the host waits."""

    plain: bool  # every outcome a plain success: ``Finishes.succeed``
    params: list[Any]  # per outcome, in order
    tally: list[dict[str, Any]]


def prepare(outcomes: Sequence[Outcome]) -> Prepared:
    plain = all(plain_success(o, o.record.worker) for o in outcomes)
    params = [_success_params(o) for o in outcomes] if plain else [outcome_params(o) for o in outcomes]
    return Prepared(plain, params, tally_rows(outcomes, lanes=False))


def _success_params(o: Outcome) -> tuple[Any, ...]:
    return (None if o.result is None else o.result.decode(), o.finished_at, _encode(o.record).decode(), o.job_id, o.token)


class Inserts(msgspec.Struct, frozen=True):
    """The driver's enqueue statements (named parameters), shared with its SQLAlchemy path."""

    one: str  # one row, its id from RETURNING
    last_id: str  # the highest id handed out so far


class BatchWriter:
    """Owns one plain connection to the queue file, opened on first use (after the fork)."""

    def __init__(self, path: str, lock: HostWriterLock, *, finishes: Finishes, insert: Inserts, busy_timeout: float) -> None:
        self.path = path
        self.lock = lock
        self.finishes = finishes
        self.inserts = insert
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        # The host lock queues one loop's tasks; this keeps a second loop's thread (a client's
        # background loop in the same process) off the connection while a transaction is open.
        self._using = threading.Lock()
        self._here = threading.local()  # insert_here's connection and lock file, per thread
        self._here_count = 0

    async def write(
        self, outcomes: Sequence[Outcome], claims: Sequence[str] = (), params: Mapping[str, Any] | None = None
    ) -> tuple[list[Any], int] | None:
        """Write ``outcomes`` and claim in one transaction, trying ``claims`` in turn until one
        claims something: (claimed rows, outcomes written), or None when the batch needs the
        full path (nothing was done)."""
        if any(o.children for o in outcomes):
            return None
        prepared = prepare(outcomes) if outcomes else None
        return await self.lock.run(partial(self._write, outcomes, claims, params or {}, prepared))

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert keyless rows (INSERT parameters, without ids) in one transaction; their ids, in order."""
        return await self.lock.run(partial(self._insert, rows))

    def _insert(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        with self._using:
            conn = self._connection()
            if len(rows) == 1:
                return [_insert_one(conn, *self._one(rows[0]), wait=True) or 0]  # waits: never None
            columns = [c for c in INSERT_COLUMNS if needed(c, map(operator.itemgetter(c), rows))]
            pick = operator.itemgetter(*columns)  # >= 7 columns: a tuple
            ids = self._insert_numbered(
                conn, len(rows), bulk_insert_sql(columns), lambda ids: [(i, *pick(row)) for row, i in zip(rows, ids)]
            )  # fmt: skip
            assert ids is not None  # rows given as they are: always some to insert
            return ids

    async def insert_plain(self, envelopes: Sequence[Envelope], now: float, max_payload: int) -> list[int] | None:
        """Insert PlainEnvelopes in one transaction, their rows built on the writer's thread
        (``plain_rows``: no dicts, no ``needed``); None, with nothing written, when one is not
        plain or not writable as is (the caller's general path then names the culprit)."""
        return await self.lock.run(partial(self._insert_plain, envelopes, now, max_payload))

    def _insert_plain(self, envelopes: Sequence[Envelope], now: float, max_payload: int) -> list[int] | None:
        with self._using:
            return self._insert_numbered(
                self._connection(), len(envelopes), _PLAIN_INSERT, lambda ids: plain_rows(ids, envelopes, now, max_payload)
            )  # fmt: skip

    def _insert_numbered(
        self, conn: sqlite3.Connection, n: int, statement: str, rows_for: Callable[[range], list[tuple[Any, ...]] | None]
    ) -> list[int] | None:
        """BEGIN IMMEDIATE, take the next ``n`` ids (ours alone until COMMIT), insert the rows
        ``rows_for`` builds with them, COMMIT; None (rolled back) when it builds none."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = int(conn.execute(self.inserts.last_id).fetchone()[0] or 0)
            ids = range(last + 1, last + 1 + n)
            with paused_gc():
                rows = rows_for(ids)
            if rows is None:
                conn.execute("ROLLBACK")
                return None
            conn.executemany(statement, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return list(ids)

    def insert_here(self, row: Mapping[str, Any], *, wait: bool) -> int | None:
        """One keyless row (INSERT parameters) written on the calling thread; its id.

        ``wait``: wait for the writer locks as a sync caller expects to. Without it (on an event
        loop) nothing waits: None when another writer holds either lock, or when this row is the
        one in ``CHECKPOINT_EVERY`` that goes to the thread; the caller then uses ``insert``.
        Each thread has its own connection and its own descriptor of the host's lock file (a
        ``flock`` belongs to an open file, so threads exclude each other as processes do).
        """
        if not wait:
            self._here_count += 1
            if self._here_count % CHECKPOINT_EVERY == 0:
                return None
        conn, fd = self._here_connection(wait)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
        try:
            return _insert_one(conn, *self._one(row), wait)
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _one(self, row: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | tuple[Any, ...]]:
        """The statement and parameters of one row."""
        if is_plain_row(row):
            return _PLAIN_ONE, tuple(row[c] for c in PLAIN_COLUMNS)
        return self.inserts.one, row

    def _here_connection(self, wait: bool) -> tuple[sqlite3.Connection, int | None]:
        here = self._here
        pid = os.getpid()
        if getattr(here, "pid", None) != pid:
            # New in this thread, or inherited through a fork: never use (nor close: SQLite's
            # POSIX locks are the process's) what the parent opened.
            here.pid, here.conns, here.fd = pid, {}, None
            try:
                here.fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                here.fd = None  # the directory refuses the file: SQLite's own lock still holds
        conn = here.conns.get(wait)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout if wait else 0, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000) if wait else 0}")
            if not wait:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            here.conns[wait] = conn
        return conn, here.fd

    def _write(
        self, outcomes: Sequence[Outcome], claims: Sequence[str], params: Mapping[str, Any], prepared: Prepared | None
    ) -> tuple[list[Any], int] | None:
        with self._using:
            return self._write_locked(outcomes, claims, params, prepared)

    def _write_locked(
        self, outcomes: Sequence[Outcome], claims: Sequence[str], params: Mapping[str, Any], prepared: Prepared | None
    ) -> tuple[list[Any], int] | None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            written = 0
            if outcomes:
                done = finish_outcomes(conn, outcomes, self.finishes, with_dependants=False, prepared=prepared)
                if done is None:  # dependants to release: the full path
                    conn.execute("ROLLBACK")
                    return None
                written = len(done)
            rows: list[Any] = []
            for claim in claims:
                rows = conn.execute(claim, params).fetchall()
                if rows:
                    break
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


def _insert_one(conn: sqlite3.Connection, statement: str, row: Mapping[str, Any] | tuple[Any, ...], wait: bool) -> int | None:
    """BEGIN IMMEDIATE, not a bare INSERT: an autocommit write whose read snapshot another
    connection overtook fails at once (SQLITE_BUSY_SNAPSHOT), without the busy handler."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if not wait and exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return None  # a writer that does not take the flock (a job's session, the CLI)
        raise
    try:
        job_id = int(conn.execute(statement, row).fetchall()[0][0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return job_id


def finish_outcomes(
    conn: sqlite3.Connection,
    outcomes: Sequence[Outcome],
    statements: Finishes,
    *,
    with_dependants: bool = True,
    prepared: Prepared | None = None,
) -> list[tuple[int, bool]] | None:
    """Inside a write transaction: the guarded outcome writes and their counters, for exactly
    the rows still running under the outcome's token (read first: BEGIN IMMEDIATE holds the one
    write lock, so the rows read are the rows then written). ``(id, has dependants)`` of each
    written; None, with nothing written, if one has dependants and ``with_dependants`` is off
    (or, for a prepared batch of plain successes, if one was not its row's any more).
    ``prepared``: ``prepare(outcomes)``, used when every outcome is still its row's."""
    if prepared is not None and prepared.plain and not with_dependants:
        # A batch's common case: no guard read first. The UPDATE's own WHERE is the guard; if
        # it matched fewer rows (a stale attempt, a row something waits for), None: the caller
        # rolls the transaction back and takes the full path, which sorts them out.
        if conn.executemany(statements.succeed_alone, prepared.params).rowcount != len(outcomes):
            return None
        conn.executemany(statements.stats, prepared.tally)
        return [(o.job_id, False) for o in outcomes]
    live = {i: (token, bool(has)) for i, token, has in conn.execute(_LIVE, (_encode([o.job_id for o in outcomes]),))}
    if not with_dependants and any(has for _, has in live.values()):
        return None
    mine = [o for o in outcomes if o.job_id in live and live[o.job_id][0] == o.token]
    if mine:
        written = prepared if prepared is not None and len(mine) == len(outcomes) else prepare(mine)
        conn.executemany(statements.succeed if written.plain else statements.finish, written.params)
        conn.executemany(statements.stats, written.tally)
    return [(o.job_id, live[o.job_id][1]) for o in mine]
