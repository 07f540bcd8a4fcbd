"""The SQLite driver: every statement only SQLite runs, and SQLite's control plane.

SQLite has one writer per database file, and a job's session transaction holds that lock from
its first write to its commit. Anything the rest of the system must do *while* a job sits in a
long transaction therefore lives in a second file, the **control plane**
(``<name>.control<suffix>`` beside the queue, e.g. ``runner.control.db``):

* ``runner_leases``   -- lease renewals (the claim's own lease is on the job row itself)
* ``runner_progress`` -- progress a running job reports, readable at once
* ``runner_cancel``   -- cancel requests for running jobs
* ``runner_workers``  -- the live workers ``runner status`` lists

Control writes are single autocommit statements on their own connections, so they never wait
behind a job's transaction, and job transactions never touch the control file (BEGIN IMMEDIATE
would lock every attached database, so it is not attached: each side is read separately).

The claim is one ``UPDATE ... RETURNING`` (a single write statement takes the write lock at its
start, so concurrent claimers queue on the busy timeout instead of failing). Its text columns
come back as bytes (``CAST ... AS BLOB``): invalid UTF-8 would otherwise raise inside the fetch,
after the claim committed. Idle workers notice new work through ``PRAGMA data_version`` on a
private connection, a few microseconds per check, instead of a claim query every poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
from sqlalchemy import bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..decide import Outcome
from ..schema import STATS_SUMS, Dialect, job_indexes, job_table, nodes_table, side_tables, workers_table
from ..wire import MAX_HISTORY, Attempt, BadRow, Envelope, PlainEnvelope
from .base import CancelResult, Claimed, JobRow, NodeRow, WorkerRow
from .engines import SQLITE_BUSY_TIMEOUT_S
from .file_watch import FileWatch
from .host_lock import HostWriterLock
from .sql import INSERT_COLUMNS, INSERT_ONE, JOB_COLUMNS, SQLDriver, claim_columns, insert_row, outcome_params, tally_rows
from .sqlite_batch import BatchWriter, Finishes, Inserts, finish_outcomes

__all__ = ["SQLiteDriver", "control_path"]

log = logging.getLogger("runner.drivers.sqlite")

WATCH_EVERY: Final = 0.005  # seconds between data_version checks while idle, without inotify
IDLE_POLL_WATCHED: Final = 10.0  # an idle worker's claim poll when inotify sees every commit
WATCH_SAFETY_EVERY: Final = 0.5  # with inotify: a check this often even if no event came

DIALECT: Final = Dialect(
    id_column="id INTEGER PRIMARY KEY AUTOINCREMENT",  # ids are never reused after a purge
    float_type="REAL",
    json_history="TEXT",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    is_number="typeof({c}) IN ('integer', 'real')",  # SQLite stores NaN as NULL
    is_integer="typeof({c}) = 'integer'",
)

_INSERT_NAMES: Final = ", ".join(INSERT_COLUMNS)
_INSERT_VALUES: Final = ", ".join(f":{c}" for c in INSERT_COLUMNS)
_CLAIM_SET: Final = """
        state = 'running',
        attempt = CASE WHEN attempt < 2147483647 THEN attempt + 1 ELSE attempt END,
        lease_token = CASE WHEN lease_token < 9223372036854775807 THEN lease_token + 1 ELSE 1 END,
        lease_owner = :owner, lease_expires_at = :lease_until, started_at = ((julianday('now') - 2440587.5) * 86400.0),
        cancel_requested = 0"""
_RETURNING: Final = claim_columns(blob=True)
# One arm per queue, each walking its queue's claim index. Paused queues and keys already at
# their limit are skipped here, so they never block the jobs behind them.
_ARM: Final = (
    "SELECT * FROM (SELECT id, {i} AS position, priority, run_at, concurrency_key, concurrency_limit, rate_key,"
    " rate_limit, rate_period FROM runner_jobs AS x WHERE state = 'queued' AND queue = :q{i} AND run_at <= :now"
    " AND NOT EXISTS (SELECT 1 FROM runner_queues AS p WHERE p.queue = :q{i} AND p.paused = 1)"
    " AND (concurrency_key IS NULL OR concurrency_limit > (SELECT count(*) FROM runner_jobs AS r"
    " WHERE r.state = 'running' AND r.concurrency_key = x.concurrency_key))"
    " AND (rate_key IS NULL OR rate_limit > COALESCE((SELECT t.starts FROM runner_rates AS t WHERE t.key = x.rate_key"
    " AND t.window_start = CAST(:now / x.rate_period AS INTEGER) * x.rate_period), 0))"
    " ORDER BY priority DESC, run_at, id LIMIT :n)"
)
# The claim is one statement, and SQLite has one writer: the counts below are exact, and a
# key's candidates are ranked so that one claim never takes more than its free slots. Its
# start time is SQLite's own clock, read when the statement runs (it waited for the write lock):
# a rate window another claimer has moved past is never reopened.
_CLAIM_HEAD: Final = f"""
    UPDATE runner_jobs SET {_CLAIM_SET}
    WHERE id IN (
        SELECT id FROM (
            SELECT c.*,
                row_number() OVER (PARTITION BY c.concurrency_key ORDER BY c.position, c.priority DESC, c.run_at, c.id) AS rc,
                row_number() OVER (PARTITION BY c.rate_key ORDER BY c.position, c.priority DESC, c.run_at, c.id) AS rr
            FROM ("""
_CLAIM_TAIL: Final = f""") AS c
        ) AS k
        WHERE (k.concurrency_key IS NULL OR k.rc <= k.concurrency_limit - (
                SELECT count(*) FROM runner_jobs AS r WHERE r.state = 'running' AND r.concurrency_key = k.concurrency_key))
          AND (k.rate_key IS NULL OR k.rr <= k.rate_limit - COALESCE((
                SELECT t.starts FROM runner_rates AS t WHERE t.key = k.rate_key
                AND t.window_start >= CAST(((julianday('now') - 2440587.5) * 86400.0) / k.rate_period AS INTEGER) * k.rate_period), 0))
        ORDER BY k.position, k.priority DESC, k.run_at, k.id
        LIMIT :n
    )
    RETURNING {_RETURNING}
"""
# The common case of one queue, first: its next candidates, claimed only if none has a key (a
# key's count must be read as the full claim reads it). Nothing claimed -- no work, or keys among
# the candidates -- and the full claim runs next, in the same transaction. The candidates are read
# once (MATERIALIZED): the update and the key check see the same rows. 3 us a job less under the
# writer lock than the full claim's window functions.
_CLAIM_PLAIN: Final = f"""
    WITH picked AS MATERIALIZED (
        SELECT id, concurrency_key, rate_key FROM runner_jobs
        WHERE state = 'queued' AND queue = :q0 AND run_at <= :now
          AND NOT EXISTS (SELECT 1 FROM runner_queues AS p WHERE p.queue = :q0 AND p.paused = 1)
        ORDER BY priority DESC, run_at, id
        LIMIT :n
    )
    UPDATE runner_jobs SET {_CLAIM_SET}
    WHERE id IN (SELECT id FROM picked)
      AND NOT EXISTS (SELECT 1 FROM picked WHERE concurrency_key IS NOT NULL OR rate_key IS NOT NULL)
    RETURNING {_RETURNING}
"""
# A start counts against its key's rate in the statement that claims it (a trigger: atomic with
# the claim, and free for rows without a rate key).
_RATE_TRIGGER: Final = """
    CREATE TRIGGER IF NOT EXISTS runner_jobs_rate_start AFTER UPDATE OF state ON runner_jobs
    WHEN NEW.state = 'running' AND NEW.rate_key IS NOT NULL
    BEGIN
        INSERT INTO runner_rates (key, window_start, starts)
        VALUES (NEW.rate_key, CAST(NEW.started_at / NEW.rate_period AS INTEGER) * NEW.rate_period, 1)
        ON CONFLICT (key) DO UPDATE SET
            starts = CASE WHEN excluded.window_start > window_start THEN 1 ELSE starts + 1 END,
            window_start = max(window_start, excluded.window_start);
    END
"""
_HELD_BY: Final = text(f"SELECT {_RETURNING} FROM runner_jobs WHERE state = 'running' AND lease_owner = :owner")
_RUNNING_PAST: Final = text(
    f"SELECT {_RETURNING} FROM runner_jobs WHERE state = 'running'"
    " AND (lease_expires_at < :now OR lease_expires_at IS NULL) ORDER BY lease_expires_at LIMIT :n"
)
_STILL_OURS: Final = text("SELECT id, lease_token FROM runner_jobs WHERE state = 'running' AND id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_STILL_OURS_DEPS: Final = text(
    "SELECT id, lease_token, has_dependants FROM runner_jobs WHERE state = 'running' AND id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def _append(record: str) -> str:
    return f"""CASE
        WHEN json_valid(attempts) THEN (CASE
            WHEN json_type(attempts) <> 'array' THEN json_array({record})
            WHEN json_array_length(attempts) >= {MAX_HISTORY} THEN json_insert(json_remove(attempts, '$[0]'), '$[#]', {record})
            ELSE json_insert(attempts, '$[#]', {record}) END)
        ELSE json_array({record}) END"""


_APPEND: Final = _append("json(:record)")
_FINISH: Final = text(
    f"""
    UPDATE runner_jobs SET
        state = :state, result = :result, error = :error,
        run_at = COALESCE(:run_at, run_at), finished_at = :finished_at,
        attempt = :attempt, lost = :lost, cancel_requested = 0,
        args = COALESCE(:args, args), kwargs = COALESCE(:kwargs, kwargs),
        lease_owner = CASE WHEN :state = 'queued' THEN NULL ELSE lease_owner END,
        lease_expires_at = CASE WHEN :state = 'queued' THEN NULL ELSE lease_expires_at END,
        progress = CASE WHEN :state = 'queued' THEN NULL ELSE progress END,
        attempts = {_APPEND}
    WHERE id = :id AND lease_token = :token AND state = 'running'
    """
)
# A plain success (``sql.plain_success``) sets only its result, end time and record: every
# other column keeps the row's value, so SQLite evaluates only the CHECK constraints on state.
_SUCCEED_APPEND: Final = _append("json(?3)")
_SUCCEED: Final = f"""
    UPDATE runner_jobs SET
        state = 'succeeded', result = ?1, error = NULL, finished_at = ?2, cancel_requested = 0,
        attempts = {_SUCCEED_APPEND}
    WHERE id = ?4 AND lease_token = ?5 AND state = 'running'
    """
_INSERT_ID: Final = text(f"INSERT INTO runner_jobs (id, {_INSERT_NAMES}) VALUES (:id, {_INSERT_VALUES})")
_LAST_ID: Final = text(
    "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runner_jobs'), 0),"
    " COALESCE((SELECT max(id) FROM runner_jobs), 0))"
)
_INSERTS: Final = Inserts(one=INSERT_ONE.text, last_id=_LAST_ID.text)

# -- the control plane ----------------------------------------------------------------------------

_CONTROL_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS runner_leases (job_id INTEGER PRIMARY KEY, token INTEGER NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS runner_progress (job_id INTEGER PRIMARY KEY, token INTEGER NOT NULL,"
    " progress TEXT NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS runner_cancel (job_id INTEGER PRIMARY KEY, requested_at REAL NOT NULL)",
    workers_table(DIALECT),
    nodes_table(DIALECT),
)
_RENEW: Final = text(
    "INSERT INTO runner_leases (job_id, token, expires_at) VALUES (:id, :token, :until)"
    " ON CONFLICT (job_id) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at"
)
_LEASES_OF: Final = text("SELECT job_id, token, expires_at FROM runner_leases WHERE job_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_SET_PROGRESS: Final = text(
    "INSERT INTO runner_progress (job_id, token, progress, updated_at) VALUES (:id, :token, :progress, :now)"
    " ON CONFLICT (job_id) DO UPDATE SET token = excluded.token, progress = excluded.progress, updated_at = excluded.updated_at"
)
_PROGRESS_OF: Final = text("SELECT job_id, updated_at, progress FROM runner_progress WHERE job_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_REQUEST_CANCEL: Final = text("INSERT INTO runner_cancel (job_id, requested_at) VALUES (:id, :now) ON CONFLICT DO NOTHING")
_CANCEL_REQUESTS: Final = text("SELECT job_id FROM runner_cancel WHERE job_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_CONTROL_CLEANUP: Final = (
    text("DELETE FROM runner_leases WHERE expires_at < :stale"),
    text("DELETE FROM runner_cancel WHERE requested_at < :stale"),
    text("DELETE FROM runner_progress WHERE updated_at < :old"),
)
_TEXT_JOB_COLUMNS: Final = frozenset(
    {
        "name",
        "queue",
        "state",
        "args",
        "kwargs",
        "result",
        "error",
        "progress",
        "key",
        "meta",
        "lease_owner",
        "callbacks",
        "attempts",
    }
)


def control_path(path: str) -> str:
    """The control-plane file for the queue file at ``path``: ``runner.db`` -> ``runner.control.db``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.control{p.suffix}" if p.suffix else f"{p.name}.control"))


class SQLiteDriver(SQLDriver):
    backend = "sqlite"
    # Text columns as bytes, decoded leniently in _readable: one row of invalid UTF-8 must not
    # make every listing that includes it fail.
    JOB_SELECT = ", ".join(f"CAST({c} AS BLOB)" if c in _TEXT_JOB_COLUMNS else c for c in JOB_COLUMNS)

    def __init__(self, engine: AsyncEngine, control: AsyncEngine, *, path: str | None, max_payload: int = 1 << 20) -> None:
        super().__init__(engine, max_payload=max_payload)
        self.control = control
        self._control_auto = control.execution_options(runner_autocommit=True)
        self._watch_sees_commits = False
        self.path = path  # None: an in-memory queue (its control tables live in the same database)
        self._control_ready = False
        self._last_cleanup = 0.0
        # The worker's own hot writes (claims, outcome batches) queue on this between processes.
        self._writers: HostWriterLock | None = None
        self._batch: BatchWriter | None = None
        if path is not None:  # in memory there is one connection, and no other process
            self._writers = HostWriterLock(path)
            self._batch = BatchWriter(
                path,
                self._writers,
                finishes=_FINISHES,
                insert=_INSERTS,
                busy_timeout=SQLITE_BUSY_TIMEOUT_S,
            )

    def _autocommit_options(self) -> dict[str, Any]:
        return {"runner_autocommit": True}  # session.py: no BEGIN IMMEDIATE for these

    def _readable(self, row: Sequence[Any]) -> Sequence[Any]:
        return [bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, memoryview)) else v for v in row]

    # -- schema ---------------------------------------------------------------------------------

    async def _schema_version(self, conn: AsyncConnection) -> int:
        probe = text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'runner_meta'")
        if not (await conn.execute(probe)).scalar():
            return 0
        return await self._read_version(conn)

    async def _create(self, conn: AsyncConnection, before: int) -> None:
        if before == 1:
            from .migrate_v1 import upgrade_sqlite

            await upgrade_sqlite(conn, job_table(DIALECT, "runner_jobs_v2"))
        if 0 < before < 3:  # the live-key index now covers waiting steps too
            await conn.execute(text("DROP INDEX IF EXISTS runner_jobs_live_key"))
        for statement in (job_table(DIALECT), *job_indexes(), *side_tables(DIALECT), _RATE_TRIGGER):
            await conn.execute(text(statement))
        if before == 1:
            from .migrate_v1 import move_system_meta

            await move_system_meta(conn, lambda c, envelopes: self._enqueue(c, envelopes, time.time()))

    async def migrate(self) -> tuple[int, int]:
        versions = await super().migrate()
        await self._ensure_control()
        return versions

    async def ensure_schema(self) -> None:
        if self._schema_checked and self._control_ready:
            return
        # The host's workers start together, often on a file that does not exist yet: until
        # one of them has switched it to WAL, SQLite is in rollback-journal mode, where two
        # connections upgrading their locks at once get SQLITE_BUSY at once, not after the busy
        # timeout (a slot then failed to start, 1 CI run in ~10). So a file not yet in WAL is
        # set up one process at a time, on the host lock -- and only then: a worker claiming
        # may hold that lock while it waits behind a long job transaction, and a CLI command or
        # a producer on a ready file must never wait for it.
        setup = self._writer() if self.path is not None and not _in_wal_mode(self.path) else contextlib.nullcontext()
        async with setup:
            await super().ensure_schema()
            await self._ensure_control()

    async def _ensure_control(self) -> None:
        if self._control_ready:
            return
        async with self._control_auto.connect() as conn:
            for statement in _CONTROL_DDL:
                await conn.execute(text(statement))
        self._control_ready = True

    # -- enqueue --------------------------------------------------------------------------------

    async def _allocate_ids(self, conn: AsyncConnection, n: int) -> list[int]:
        last = int((await conn.execute(_LAST_ID)).scalar() or 0)  # under BEGIN IMMEDIATE: ours alone
        return list(range(last + 1, last + 1 + n))

    async def _insert_many(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await conn.execute(_INSERT_ID, rows)

    async def _insert_rows(self, rows: list[dict[str, Any]], now: float) -> list[int]:
        if self._batch is None:
            return await super()._insert_rows(rows, now)
        try:
            if len(rows) == 1:
                job_id = self._batch.insert_here(rows[0], wait=False)  # on the loop, if nobody writes
                if job_id is not None:
                    return [job_id]
            return await self._batch.insert(rows)
        except sqlite3.Error as exc:  # the SQLAlchemy path's errors, so callers see one kind
            raise DBAPIError.instance("INSERT INTO runner_jobs", None, exc, sqlite3.Error) from exc

    async def enqueue(self, envelopes: Sequence[Envelope], conn: AsyncConnection | None = None) -> list[int]:
        if (
            conn is None
            and self._batch is not None
            and len(envelopes) > 1
            and all(e.key is None and not e.after and not e.after_batch for e in envelopes)
        ):
            # Keyless rows, all or none: one transaction run as one call on a thread.
            now = time.time()
            if type(envelopes[0]) is PlainEnvelope:
                try:
                    ids = await self._batch.insert_plain(envelopes, now, self.max_payload)
                except sqlite3.Error as exc:  # the SQLAlchemy path's errors, so callers see one kind
                    raise DBAPIError.instance("INSERT INTO runner_jobs", None, exc, sqlite3.Error) from exc
                if ids is not None:
                    return ids
            return await self._insert_rows([insert_row(e, now, self.max_payload) for e in envelopes], now)
        return await super().enqueue(envelopes, conn)

    def enqueue_here(self, envelope: Envelope) -> int | None:
        if self._batch is None or not self._schema_checked or envelope.key is not None or envelope.after or envelope.after_batch:
            return None
        row = insert_row(envelope, time.time(), self.max_payload)  # bad input fails here, as on every path
        try:
            return self._batch.insert_here(row, wait=True)
        except sqlite3.Error as exc:
            raise DBAPIError.instance("INSERT INTO runner_jobs", None, exc, sqlite3.Error) from exc

    # -- claim, hold, complete -----------------------------------------------------------------

    async def claim(self, owner: str, queues: Sequence[str], n: int, lease_ttl: float) -> list[Attempt | BadRow]:
        return (await self.claim_and_complete(owner, queues, n, lease_ttl, ())).rows

    def _writer(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._writers.held() if self._writers is not None else contextlib.nullcontext()

    async def complete(self, outcomes: Sequence[Outcome]) -> int:
        if self._batch is not None and outcomes:
            done = await self._batch.write(outcomes)
            if done is not None:
                return done[1]
        async with self._writer():
            return await super().complete(outcomes)

    async def claim_and_complete(
        self, owner: str, queues: Sequence[str], n: int, lease_ttl: float, outcomes: Sequence[Outcome]
    ) -> Claimed:
        """One write transaction for both: SQLite's one writer lock is taken and its commit paid
        once per batch, not once for the outcomes and again for the claim; on a file, as one
        call on a thread (``sqlite_batch.py``). Every outcome is written here (children and
        releases too, on the full path: it is a full transaction)."""
        statement = self._claim_statement(len(queues))
        params = _claim_params(owner, queues, n, lease_ttl)
        if self._batch is not None:
            claims = (_CLAIM_PLAIN, statement.text) if len(queues) == 1 else (statement.text,)
            done = await self._batch.write(outcomes, claims, params)
            if done is not None:
                return Claimed(self._decode(done[0]), (), done[1])
        async with self._writer():
            if not outcomes:
                async with self._auto.connect() as conn:
                    return Claimed(self._decode((await conn.execute(statement, params)).all()), (), 0)
            async with self.engine.begin() as conn:
                written = await self._complete_in(conn, outcomes)
                rows = (await conn.execute(statement, params)).all()
        return Claimed(self._decode(rows), (), written)

    def _claim_statement(self, queues: int) -> Any:
        key = f"claim:{queues}"
        statement = self._statements.get(key)
        if statement is None:
            arms = " UNION ALL ".join(_ARM.replace("{i}", str(i)) for i in range(queues))
            statement = self._statements[key] = text(_CLAIM_HEAD + arms + _CLAIM_TAIL)
        return statement

    async def renew(self, held: Mapping[int, int], lease_ttl: float) -> set[int]:
        if not held:
            return set()
        async with self._auto.connect() as conn:
            rows = (await conn.execute(_STILL_OURS, {"ids": list(held)})).all()
        ours = {int(i) for i, token in rows if held.get(int(i)) == token}
        if ours:
            until = time.time() + lease_ttl
            async with self._control_auto.connect() as conn:
                await conn.execute(_RENEW, [{"id": i, "token": held[i], "until": until} for i in ours])
        await self._cleanup_control()
        return ours

    async def held_by(self, owner: str) -> list[Attempt | BadRow]:
        async with self._auto.connect() as conn:
            return self._decode((await conn.execute(_HELD_BY, {"owner": owner})).all())

    async def expired(self, limit: int = 500) -> list[Attempt | BadRow]:
        now = time.time()
        async with self._auto.connect() as conn:
            # Long jobs pass their claim-time lease; their renewals are in the control plane.
            rows = (await conn.execute(_RUNNING_PAST, {"now": now, "n": limit * 10})).all()
        if not rows:
            return []
        async with self._control_auto.connect() as conn:
            leases = {int(i): (t, e) for i, t, e in (await conn.execute(_LEASES_OF, {"ids": [r[0] for r in rows]})).all()}
        gone = [r for r in rows if not (r[0] in leases and leases[r[0]][0] == r[1] and leases[r[0]][1] >= now)]
        return self._decode(gone[:limit])

    # _finish_fast: none. One BEGIN IMMEDIATE per batch costs what an autocommit write does (one
    # writer lock, one commit), so every outcome takes the transaction below.

    async def _finish_each(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> list[tuple[int, bool]]:
        """Inside the write transaction (BEGIN IMMEDIATE holds SQLite's one write lock), so the
        rows read first are exactly the rows the guarded write then matches: three statements
        for the batch (executemany cannot return rows), counters for just those rows.

        Run as one call on the connection's own thread where the driver allows it: through
        SQLAlchemy each statement crosses from the loop to aiosqlite's thread three or four
        times, and a job's completion (the exactly-once path) holds SQLite's one write lock for
        all of them."""
        aio = (await conn.get_raw_connection()).driver_connection
        run, sqlite_conn = getattr(aio, "_execute", None), getattr(aio, "_conn", None)  # aiosqlite's own thread
        if run is not None and isinstance(sqlite_conn, sqlite3.Connection):
            done = await run(finish_outcomes, sqlite_conn, outcomes, _FINISHES)
            return list(done or ())
        rows = (await conn.execute(_STILL_OURS_DEPS, {"ids": [o.job_id for o in outcomes]})).all()
        live = {int(i): (token, bool(has)) for i, token, has in rows}
        mine = [o for o in outcomes if o.job_id in live and live[o.job_id][0] == o.token]
        if not mine:
            return []
        await conn.execute(_FINISH, [outcome_params(o) for o in mine])
        await conn.execute(_STATS_UPSERT, tally_rows(mine, lanes=False))
        return [(o.job_id, live[o.job_id][1]) for o in mine]

    async def set_progress(self, job_id: int, token: int, progress: str) -> bool:
        async with self._control_auto.connect() as conn:
            await conn.execute(_SET_PROGRESS, {"id": job_id, "token": token, "progress": progress, "now": time.time()})
        return True

    async def cancel(self, job_id: int) -> CancelResult:
        # The request goes to the control plane first: it takes effect within a second even
        # while a long job transaction holds the queue's write lock.
        async with self._auto.connect() as conn:
            state = (await conn.execute(text("SELECT state FROM runner_jobs WHERE id = :id"), {"id": int(job_id)})).scalar()
        if state == "running":
            await self._request_cancel(int(job_id))
            return CancelResult.REQUESTED
        return await super().cancel(job_id)

    async def _request_cancel(self, job_id: int) -> bool:
        async with self._control_auto.connect() as conn:
            await conn.execute(_REQUEST_CANCEL, {"id": job_id, "now": time.time()})
        return True

    async def cancel_requests(self, ids: Sequence[int]) -> list[int]:
        if not ids:
            return []
        async with self._control_auto.connect() as conn:
            return [int(r[0]) for r in (await conn.execute(_CANCEL_REQUESTS, {"ids": list(ids)})).all()]

    async def _cleanup_control(self) -> None:
        now = time.time()
        if now - self._last_cleanup < 600:
            return
        self._last_cleanup = now
        async with self._control_auto.connect() as conn:
            for statement in _CONTROL_CLEANUP:
                await conn.execute(statement, {"stale": now - 86400, "old": now - 30 * 86400})

    async def watch(self, on_change: Callable[[], None], idle: Callable[[], Awaitable[None]] | None = None) -> None:
        """Call ``on_change`` when another connection commits to the queue file.

        ``PRAGMA data_version`` on a private connection says whether anything committed; the
        kernel says when to ask (an inotify watch on the file and its write-ahead log, see
        ``file_watch``), so an idle worker sleeps instead of asking 200 times a second. Without
        inotify it asks every ``WATCH_EVERY`` seconds, as before. While the worker claims back
        to back, every commit on the host (its own included) would wake the watch for nothing:
        it waits for ``idle`` first (the events that came meanwhile then wake it once)."""
        if self.path is None:
            while True:  # in memory: one connection; nothing else can write
                await anyio.sleep(3600)
        files = FileWatch.of_database(self.path, fallback=WATCH_EVERY)
        self._watch_sees_commits = files.native
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=0)
        try:
            last = None
            while True:
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    version = None
                if version != last:
                    last = version
                    on_change()
                if idle is not None:
                    await idle()
                await files.wait(WATCH_SAFETY_EVERY)
        finally:
            self._watch_sees_commits = False
            conn.close()
            files.close()

    def idle_poll(self, poll_interval: float) -> float:
        # Every commit by any process on this host wakes the watch; delayed jobs set their own
        # timeout (next_run_at). The poll is then only a net for what the kernel cannot see
        # (a writer on another machine over a network file system, which SQLite warns against).
        return max(poll_interval, IDLE_POLL_WATCHED) if self._watch_sees_commits else poll_interval

    # -- reads overlay the control plane ----------------------------------------------------------

    async def _select(self, where: str, params: dict[str, Any]) -> list[JobRow]:
        return await self._with_progress(await super()._select(where, params))

    async def get_many(self, ids: Sequence[int]) -> list[JobRow]:
        return await self._with_progress(await super().get_many(ids))

    async def _with_progress(self, rows: list[JobRow]) -> list[JobRow]:
        """Progress is the latest attempt's, as on PostgreSQL (where the row holds it and a
        re-queue clears it): a queued row shows none, and a report older than the row's
        ``started_at`` belongs to an earlier attempt. One host writes both clocks (SQLite)."""
        started = {r.id: r.started_at for r in rows if r.state in ("running", "succeeded", "failed", "cancelled")}
        if not started:
            return rows
        await self._ensure_control()
        async with self._control_auto.connect() as conn:
            found = (await conn.execute(_PROGRESS_OF, {"ids": list(started)})).all()
        progress = {int(i): p for i, at, p in found if at >= (started[int(i)] or 0.0)}
        if not progress:
            return rows
        from dataclasses import replace

        return [replace(r, progress=progress[r.id]) if r.id in progress else r for r in rows]

    def _workers_connection(self) -> Any:
        return self._control_auto.connect()

    async def workers(self, since: float) -> list[WorkerRow]:
        await self._ensure_control()
        return await super().workers(since)

    async def dispose(self) -> None:
        if self._batch is not None:
            self._batch.close()
        if self._writers is not None:
            self._writers.close()
        await self.engine.dispose()
        if self.control is not self.engine:
            await self.control.dispose()

    # -- counters (runner_stats): in the transaction that writes the outcomes ------------------

    async def fold_stats(self, now: float) -> int:
        minute = int(now // 60)
        async with self.engine.begin() as conn:
            await conn.execute(_FOLD_LANES, {"cut": minute - 1})
            folded = int((await conn.execute(_DROP_LANES, {"cut": minute - 1})).rowcount)
            await conn.execute(_FOLD_STATS, {"cut": minute - FOLD_AFTER_MINUTES})
            return folded + int((await conn.execute(_DROP_FOLDED, {"cut": minute - FOLD_AFTER_MINUTES})).rowcount)

    # -- dashboard reads ------------------------------------------------------------------------

    async def table_size(self) -> tuple[int, bool]:
        """Exact while the table is small; past ``EXACT_BELOW`` ids, the span of ids (one index
        lookup each end), since counting a million rows takes SQLite about 100 ms. Retention
        deletes the oldest rows, so the span stays close; it is marked an estimate."""
        async with self._auto.connect() as conn:
            low, high = (
                await conn.execute(text("SELECT (SELECT min(id) FROM runner_jobs), (SELECT max(id) FROM runner_jobs)"))
            ).one()
            if low is None:
                return 0, False
            span = int(high) - int(low) + 1
            if span > EXACT_BELOW:
                return span, True
            return int((await conn.execute(text("SELECT count(*) FROM runner_jobs"))).scalar() or 0), False

    async def nodes(self, since: float) -> list[NodeRow]:
        await self._ensure_control()
        return await super().nodes(since)


FOLD_AFTER_MINUTES: Final = 120
EXACT_BELOW: Final = 200_000  # table_size counts exactly below this many ids
_KEY: Final = "source, minute, name, queue, kind"
_SUMS: Final = ", ".join(STATS_SUMS)
_ADD: Final = ", ".join(f"{c} = runner_stats.{c} + excluded.{c}" for c in STATS_SUMS)
_SUMMED: Final = ", ".join(f"sum({c})" for c in STATS_SUMS)
_PLACES: Final = ", ".join(":" + c for c in (*_KEY.split(", "), *STATS_SUMS))
_STATS_UPSERT: Final = text(
    f"INSERT INTO runner_stats ({_KEY}, {_SUMS}) VALUES ({_PLACES}) ON CONFLICT ({_KEY}) DO UPDATE SET {_ADD}"
)
_FINISHES: Final = Finishes(
    finish=_FINISH.text, succeed=_SUCCEED, succeed_alone=_SUCCEED + " AND has_dependants = 0", stats=_STATS_UPSERT.text
)
# Two statements, one transaction: SQLite's single writer keeps anyone from folding the same rows.
_FOLD_STATS: Final = text(
    f"INSERT INTO runner_stats ({_KEY}, {_SUMS})"
    f" SELECT '*', 0, name, queue, kind, {_SUMMED} FROM runner_stats"
    f" WHERE minute > 0 AND minute < :cut GROUP BY name, queue, kind"
    f" ON CONFLICT ({_KEY}) DO UPDATE SET {_ADD}"
)
_DROP_FOLDED: Final = text("DELETE FROM runner_stats WHERE minute > 0 AND minute < :cut")
# Ended minutes of every writer into one row per (minute, key).
_FOLD_LANES: Final = text(
    f"INSERT INTO runner_stats ({_KEY}, {_SUMS})"
    f" SELECT '*', minute, name, queue, kind, {_SUMMED} FROM runner_stats"
    f" WHERE source <> '*' AND minute < :cut GROUP BY minute, name, queue, kind"
    f" ON CONFLICT ({_KEY}) DO UPDATE SET {_ADD}"
)
_DROP_LANES: Final = text("DELETE FROM runner_stats WHERE source <> '*' AND minute < :cut")


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _claim_params(owner: str, queues: Sequence[str], n: int, lease_ttl: float) -> dict[str, Any]:
    now = time.time()
    params: dict[str, Any] = {"now": now, "n": n, "owner": owner, "lease_until": now + lease_ttl}
    params.update({f"q{i}": q for i, q in enumerate(queues)})
    return params


def _in_wal_mode(path: str) -> bool:
    """Whether the database file exists and is in WAL mode (its header's read and write
    versions, bytes 18 and 19, are 2): read straight from the file, without opening SQLite."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2
