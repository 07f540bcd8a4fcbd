"""Every SQL statement runner issues: enqueue, claim, finish, renew, rescue, cancel, read.

The worker, client and CLI never see SQL; they call a ``Store``. Each state change is ONE
statement guarded by ``state = 'running' AND lease_token = :token`` (the fencing token bumped by
every claim), so a worker that lost its lease -- paused, partitioned, or presumed dead -- can
never overwrite a newer attempt: its UPDATE matches no row.

Both backends share the statements except where the SQL differs: PostgreSQL claims with
``FOR UPDATE SKIP LOCKED`` and finishes batches with ``unnest``; SQLite claims with one
``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .enqueue_batching import EnqueueBatcher
from .errors import PayloadTooLarge
from .gc_pause import paused_gc
from .schema import SCHEMA_VERSION, migrate, schema_version
from .wire import PROTOCOL_VERSION, Claimed, Envelope, ErrorInfo, State, encode_json

__all__ = ["JobRow", "Outcome", "Store"]

_CLAIM_COLUMNS = "id, name, args, kwargs, queue, attempt, max_attempts, lease_token, expires_at, parent_id, root_id, meta, created_at, run_at"

_CLAIM_SET = (
    "state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, "
    "lease_owner = :owner, lease_expires_at = :lease_until, started_at = :now, cancel_requested = 0"
)

# SKIP LOCKED: concurrent claimers each take different rows instead of queueing behind one
# another's row locks; a row locked by an in-progress claim is simply not visible to us.
_CLAIM_PG = text(
    f"""
    WITH picked AS (
        SELECT id FROM runner_jobs
        WHERE state = 'queued' AND queue = :queue AND run_at <= :now
        ORDER BY priority DESC, run_at, id
        LIMIT :n
        FOR UPDATE SKIP LOCKED
    )
    UPDATE runner_jobs AS j SET
        state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
        lease_owner = :owner, lease_expires_at = :lease_until, started_at = :now, cancel_requested = 0
    FROM picked WHERE j.id = picked.id
    RETURNING j.{_CLAIM_COLUMNS.replace(", ", ", j.")}
    """
)

# BEGIN IMMEDIATE (see session.py) already makes this writer the only one: no race inside.
_CLAIM_SQLITE = text(
    f"""
    UPDATE runner_jobs SET {_CLAIM_SET}
    WHERE id IN (
        SELECT id FROM runner_jobs
        WHERE state = 'queued' AND queue = :queue AND run_at <= :now
        ORDER BY priority DESC, run_at, id
        LIMIT :n
    )
    RETURNING {_CLAIM_COLUMNS}
    """
)

_EXPIRING = text(
    "SELECT 1 FROM runner_jobs WHERE state = 'running' AND queue = :queue AND lease_expires_at < :until LIMIT 1"
)

_PROBE = text("SELECT 1 FROM runner_jobs WHERE state = 'queued' AND queue = :queue AND run_at <= :until LIMIT 1")

# One outcome, one statement; the guard is the whole point (see module docstring).
_FINISH_ONE = text(
    """
    UPDATE runner_jobs SET
        state = :state, result = :result, error = :error,
        run_at = COALESCE(:run_at, run_at), finished_at = :finished_at,
        attempt = attempt + :attempt_delta, cancel_requested = 0,
        lease_expires_at = CASE WHEN :state = 'queued' THEN NULL ELSE lease_expires_at END
    WHERE id = :id AND lease_token = :token AND state = 'running'
    RETURNING id
    """
)

_FINISH_ONE_NO_RETURN = text(_FINISH_ONE.text.replace("RETURNING id", ""))

_FINISH_MANY_PG = text(
    """
    UPDATE runner_jobs AS j SET
        state = v.state, result = v.result, error = v.error,
        run_at = COALESCE(v.run_at, j.run_at), finished_at = v.finished_at,
        attempt = j.attempt + v.attempt_delta, cancel_requested = 0,
        lease_expires_at = CASE WHEN v.state = 'queued' THEN NULL ELSE j.lease_expires_at END
    FROM unnest(
        CAST(:ids AS BIGINT[]), CAST(:tokens AS BIGINT[]), CAST(:states AS TEXT[]),
        CAST(:results AS TEXT[]), CAST(:errors AS TEXT[]), CAST(:run_ats AS DOUBLE PRECISION[]),
        CAST(:finished_ats AS DOUBLE PRECISION[]), CAST(:deltas AS INTEGER[])
    ) AS v(id, token, state, result, error, run_at, finished_at, attempt_delta)
    WHERE j.id = v.id AND j.lease_token = v.token AND j.state = 'running'
    RETURNING j.id
    """
)

_INSERT_COLUMNS = "v, name, args, kwargs, queue, priority, max_attempts, run_at, expires_at, key, parent_id, root_id, meta"

_INSERT_ONE = text(
    f"""
    INSERT INTO runner_jobs ({_INSERT_COLUMNS}, created_at)
    VALUES (:v, :name, :args, :kwargs, :queue, :priority, :max_attempts, :run_at, :expires_at,
            :key, :parent_id, :root_id, :meta, :now)
    ON CONFLICT (key) WHERE key IS NOT NULL AND state IN ('queued', 'running') DO NOTHING
    RETURNING id
    """
)

_INSERT_ONE_PG = (
    f"INSERT INTO runner_jobs ({_INSERT_COLUMNS}, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id"
)

_INSERT_ID = text(
    f"""
    INSERT INTO runner_jobs (id, {_INSERT_COLUMNS}, created_at)
    VALUES (:id, :v, :name, :args, :kwargs, :queue, :priority, :max_attempts, :run_at, :expires_at,
            :key, :parent_id, :root_id, :meta, :now)
    """
)

# One JSON document carries the whole batch: a single parameter to encode (msgspec, in C) and
# json_to_recordset to unpack it, instead of fourteen arrays encoded element by element.
_INSERT_MANY_PG = text(
    f"""
    INSERT INTO runner_jobs (id, {_INSERT_COLUMNS}, created_at)
    SELECT x.id, x.v, x.name, x.args::text, x.kwargs::text, x.queue, x.priority, x.max_attempts,
           x.run_at, x.expires_at, x.key, x.parent_id, x.root_id, x.meta::text, :now
    FROM json_to_recordset(CAST(:rows AS json)) AS x(
        id bigint, v integer, name text, args json, kwargs json, queue text, priority integer,
        max_attempts integer, run_at double precision, expires_at double precision, key text,
        parent_id bigint, root_id bigint, meta json)
    """
)

# The sequence is named once, as a regclass constant: pg_get_serial_sequence() per row costs
# more than the nextval itself.
_NEXT_IDS_PG = text("SELECT array_agg(nextval('runner_jobs_id_seq'::regclass)) FROM generate_series(1, :n)")
# Large PostgreSQL batches go through COPY (binary, one round trip, no SQL to parse per row);
# COPY fires the statement-level NOTIFY trigger like an INSERT does.
COPY_FROM = 500
_COPY_COLUMNS = ("id", *(c.strip() for c in _INSERT_COLUMNS.split(",")), "created_at")
_LAST_ID_SQLITE = text(
    "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runner_jobs'), 0),"
    " COALESCE((SELECT max(id) FROM runner_jobs), 0))"
)
_LIVE_BY_KEY = text("SELECT id FROM runner_jobs WHERE key = :key AND state IN ('queued', 'running')")
_RECENT_BY_KEY = text(
    "SELECT id FROM runner_jobs WHERE key = :key AND finished_at >= :since AND state = 'succeeded'"
    " ORDER BY finished_at DESC LIMIT 1"
)

_RENEW = text(
    "UPDATE runner_jobs SET lease_expires_at = :lease_until WHERE state = 'running' AND lease_owner = :owner"
)

# A worker died holding these rows. Re-queue (the attempt did not reach an outcome, so it is
# given back) unless the job has now killed `max_lost` workers: then it is failed, visibly.
_RESCUE_SET = """
    state = CASE WHEN lost + 1 >= :max_lost THEN 'failed' ELSE 'queued' END,
    attempt = CASE WHEN lost + 1 >= :max_lost THEN attempt ELSE attempt - 1 END,
    error = CASE WHEN lost + 1 >= :max_lost THEN :lost_error ELSE error END,
    finished_at = CASE WHEN lost + 1 >= :max_lost THEN CAST(:now AS DOUBLE PRECISION) ELSE NULL END,
    lost = lost + 1, lease_expires_at = NULL, cancel_requested = 0
"""
_RESCUE_OWNER = text(
    f"UPDATE runner_jobs SET {_RESCUE_SET} WHERE state = 'running' AND lease_owner = :owner RETURNING id, state"
)
_RESCUE_EXPIRED = text(
    f"UPDATE runner_jobs SET {_RESCUE_SET} WHERE state = 'running' AND lease_expires_at < :now RETURNING id, state"
)

# Graceful give-back on shutdown: not an attempt, not a loss.
_REQUEUE_OWNER = text(
    """
    UPDATE runner_jobs SET state = 'queued', attempt = attempt - 1, lease_expires_at = NULL, cancel_requested = 0
    WHERE state = 'running' AND lease_owner = :owner
    """
)

_HELD = text(
    "SELECT id, name, lease_token, attempt, max_attempts FROM runner_jobs"
    " WHERE id = :id AND state = 'running' AND lease_owner = :owner"
)

_LAST_FIRE = text("SELECT max(fire_at) FROM runner_schedule WHERE name = :name")
_FIRE = text(
    "INSERT INTO runner_schedule (name, fire_at) VALUES (:name, :fire_at) ON CONFLICT DO NOTHING RETURNING name"
)
_FIRED = text("UPDATE runner_schedule SET job_id = :job_id WHERE name = :name AND fire_at = :fire_at")
_PRUNE_SCHEDULE = text(
    "DELETE FROM runner_schedule WHERE fire_at < :before"
    " AND fire_at < (SELECT max(s.fire_at) FROM runner_schedule s WHERE s.name = runner_schedule.name)"
)
_PURGE_FINISHED = text(
    "DELETE FROM runner_jobs WHERE id IN (SELECT id FROM runner_jobs"
    " WHERE finished_at < :before AND state IN ('succeeded', 'failed', 'cancelled', 'expired') LIMIT :n)"
)
_MAKE_DUE = text("UPDATE runner_jobs SET run_at = 0 WHERE state = 'queued' AND id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)

_CANCEL_QUEUED = text(
    "UPDATE runner_jobs SET state = 'cancelled', finished_at = :now,"
    " error = :error WHERE id = :id AND state = 'queued'"
)
_CANCEL_RUNNING = text("UPDATE runner_jobs SET cancel_requested = 1 WHERE id = :id AND state = 'running'")
_CANCEL_REQUESTS = text(
    "SELECT id, lease_token FROM runner_jobs WHERE state = 'running' AND lease_owner = :owner AND cancel_requested = 1"
)

_PROGRESS = text(
    "UPDATE runner_jobs SET progress = :progress WHERE id = :id AND lease_token = :token AND state = 'running'"
)

_JOB_COLUMNS = (
    "id, name, queue, priority, state, attempt, max_attempts, lost, args, kwargs, result, error, progress,"
    " key, parent_id, root_id, meta, lease_owner, created_at, run_at, started_at, finished_at, expires_at"
)
_GET = text(f"SELECT {_JOB_COLUMNS} FROM runner_jobs WHERE id = :id")
_GET_MANY = text(f"SELECT {_JOB_COLUMNS} FROM runner_jobs WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
_CHILDREN = text(f"SELECT {_JOB_COLUMNS} FROM runner_jobs WHERE parent_id = :id ORDER BY id")  # runner_jobs_parent
# Live keys use the unique partial index; a finished job's key is found by a scan (rarely needed).
_BY_KEY = text(f"SELECT {_JOB_COLUMNS} FROM runner_jobs WHERE key = :key ORDER BY id DESC LIMIT 1")

_WORKER_UPSERT = text(
    """
    INSERT INTO runner_workers (owner, node, pid, queues, started_at, seen_at, done)
    VALUES (:owner, :node, :pid, :queues, :now, :now, :done)
    ON CONFLICT (owner) DO UPDATE SET pid = excluded.pid, queues = excluded.queues,
        seen_at = excluded.seen_at, done = excluded.done,
        started_at = CASE WHEN runner_workers.pid = excluded.pid THEN runner_workers.started_at ELSE excluded.started_at END
    """
)
_WORKER_DELETE = text("DELETE FROM runner_workers WHERE owner = :owner")


_BATCH_ENCODER = msgspec.json.Encoder()


class Outcome(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """How one attempt ended, ready to be written with the guarded finish statement."""

    id: int
    token: int
    state: str
    result: str | None = None
    error: str | None = None
    run_at: float | None = None  # retries: not before
    finished_at: float | None = None
    attempt_delta: int = 0  # -1 gives the attempt back (graceful re-queue)
    children: tuple[Envelope, ...] = ()  # chained jobs, enqueued in the same transaction

    def params(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token": self.token,
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "run_at": self.run_at,
            "finished_at": self.finished_at,
            "attempt_delta": self.attempt_delta,
        }


@dataclass(frozen=True)
class JobRow:
    """A row as people and handles read it."""

    id: int
    name: str
    queue: str
    priority: int
    state: str
    attempt: int
    max_attempts: int | None
    lost: int
    args: str
    kwargs: str
    result: str | None
    error: str | None
    progress: str | None
    key: str | None
    parent_id: int | None
    root_id: int | None
    meta: str | None
    lease_owner: str | None
    created_at: float
    run_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None


def error_json(type_: str, message: str, traceback: str = "", attempt: int = 0) -> str:
    return encode_json(ErrorInfo(type=type_, message=message, traceback=traceback, attempt=attempt))


class Store:
    """The queue, reached through one engine. Stateless beyond the engine and the per-loop
    batching of concurrent single enqueues: safe to share."""

    def __init__(self, engine: AsyncEngine, *, max_payload: int = 1 << 20) -> None:
        self.engine = engine
        self.max_payload = max_payload
        self.backend = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
        # Single statements need no BEGIN/COMMIT around them: autocommit saves two round trips
        # per claim, batch and renewal. (SQLite: our begin hook then skips BEGIN IMMEDIATE.)
        if self.backend == "postgresql":
            self._auto_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            self._auto_engine = engine.execution_options(runner_autocommit=True)
        self._claim = _CLAIM_PG if self.backend == "postgresql" else _CLAIM_SQLITE
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EnqueueBatcher] = weakref.WeakKeyDictionary()

    # -- schema -------------------------------------------------------------------------------

    async def migrate(self) -> tuple[int, int]:
        async with self.engine.begin() as conn:
            return await migrate(conn)

    async def ensure_schema(self) -> None:
        """Create the schema on first use; cheap (one read) when it is already there."""
        async with self._read() as conn:
            version = await schema_version(conn)
        if version < SCHEMA_VERSION:
            await self.migrate()

    def _read(self) -> Any:
        """A connection in autocommit: for reads (on SQLite they never take the write lock) and
        for writes that are one statement, hence atomic on their own."""
        return self._auto_engine.connect()

    # -- enqueue ------------------------------------------------------------------------------

    async def enqueue(
        self, envelopes: Sequence[Envelope], conn: AsyncConnection | None = None, *, now: float | None = None
    ) -> list[int]:
        """Insert jobs; returns their ids in order. A job whose idempotency key is already live
        returns the live job's id instead of inserting a second one."""
        now = time.time() if now is None else now
        if conn is not None:
            return await self._enqueue(conn, envelopes, now)
        if len(envelopes) > 1 and self.backend == "sqlite":
            async with self.engine.begin() as own:  # ids are allocated under the write lock
                return await self._enqueue(own, envelopes, now)
        if len(envelopes) == 1 and envelopes[0].key is None:
            row = _without_key_since(_row(envelopes[0], now, self.max_payload))  # bad input fails here, alone
            return [await self._batcher().enqueue(row, now)]
        async with self._read() as own:
            return await self._enqueue(own, envelopes, now)

    def _batcher(self) -> EnqueueBatcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = EnqueueBatcher(self._insert_rows, _database_unavailable)
        return batcher

    async def _insert_rows(self, rows: list[dict[str, Any]], now: float) -> list[int]:
        """Keyless rows of concurrent single enqueues, in one statement and one commit."""
        if len(rows) == 1 and self.backend == "postgresql":
            # One prepared statement straight on the driver, in autocommit (SQLAlchemy's
            # execute machinery costs more CPU than the round trip).
            row = rows[0]
            async with self._read() as own:
                raw = await own.get_raw_connection()
                new_id = await raw.driver_connection.fetchval(  # type: ignore[union-attr]
                    _INSERT_ONE_PG, *(row[c] for c in _COPY_COLUMNS[1:-1]), now
                )
            return [int(new_id)]
        if len(rows) == 1:
            async with self._read() as own:
                return [await self._insert_one(own, dict(rows[0]), now)]
        async with (self._read() if self.backend == "postgresql" else self.engine.begin()) as conn:
            ids = await self._allocate_ids(conn, len(rows))  # SQLite: under the write lock
            await self._insert_many(conn, [{**row, "id": new_id} for row, new_id in zip(rows, ids)], now)
        return ids

    async def _enqueue(self, conn: AsyncConnection, envelopes: Sequence[Envelope], now: float) -> list[int]:
        if len(envelopes) >= COPY_FROM and self.backend == "postgresql" and all(e.key is None for e in envelopes):
            ids = await self._allocate_ids(conn, len(envelopes))  # a fallback below just skips these
            records = _copy_records(envelopes, ids, now, self.max_payload)
            if records is not None:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "runner_jobs", records=records, columns=_COPY_COLUMNS
                )
                return ids
        rows = [_row(env, now, self.max_payload) for env in envelopes]
        if len(rows) == 1:
            return [await self._insert_one(conn, rows[0], now)]
        ids: list[int | None] = [None] * len(rows)
        plain = [i for i, row in enumerate(rows) if row["key"] is None]
        for i, row in enumerate(rows):
            if row["key"] is not None:
                ids[i] = await self._insert_one(conn, row, now)
        if plain:
            new_ids = await self._allocate_ids(conn, len(plain))
            for i, new_id in zip(plain, new_ids):
                rows[i]["id"] = new_id
                ids[i] = new_id
            await self._insert_many(conn, [_without_key_since(rows[i]) for i in plain], now)
        return [int(i) for i in ids if i is not None]

    async def _insert_one(self, conn: AsyncConnection, row: dict[str, Any], now: float) -> int:
        since = row.pop("key_since", None)
        if since is not None and row["key"] is not None:
            recent = (await conn.execute(_RECENT_BY_KEY, {"key": row["key"], "since": since})).scalar()
            if recent is not None:
                return int(recent)
        for _ in range(5):
            new_id = (await conn.execute(_INSERT_ONE, {**row, "now": now})).scalar()
            if new_id is not None:
                return int(new_id)
            # The key is live: hand back that job. It may finish between the two statements,
            # in which case the next INSERT succeeds.
            existing = (await conn.execute(_LIVE_BY_KEY, {"key": row["key"]})).scalar()
            if existing is not None:
                return int(existing)
        raise RuntimeError(f"could not enqueue job with key {row['key']!r}: the key kept changing state")

    async def _allocate_ids(self, conn: AsyncConnection, n: int) -> list[int]:
        # Ids are allocated before the INSERT so that each Envelope maps to its id without
        # relying on RETURNING order, which neither database promises for multi-row inserts.
        if self.backend == "postgresql":
            return list((await conn.execute(_NEXT_IDS_PG, {"n": n})).scalar() or ())
        last = int((await conn.execute(_LAST_ID_SQLITE)).scalar() or 0)  # under BEGIN IMMEDIATE
        return list(range(last + 1, last + 1 + n))

    async def _insert_many(self, conn: AsyncConnection, rows: list[dict[str, Any]], now: float) -> None:
        if self.backend == "sqlite":
            await conn.execute(_INSERT_ID, [{**row, "now": now} for row in rows])
            return
        raw = [
            {**row, "args": msgspec.Raw(row["args"].encode()), "kwargs": msgspec.Raw(row["kwargs"].encode()),
             "meta": None if row["meta"] is None else msgspec.Raw(row["meta"].encode())}
            for row in rows
        ]  # fmt: skip
        await conn.execute(_INSERT_MANY_PG, {"rows": _BATCH_ENCODER.encode(raw).decode(), "now": now})

    # -- claim, finish, renew -----------------------------------------------------------------

    async def claim(self, owner: str, queues: Sequence[str], n: int, lease_ttl: float) -> list[Claimed]:
        """Lease up to ``n`` runnable jobs, taking the queues in the order given."""
        now = time.time()
        claimed: list[Claimed] = []
        async with self._read() as conn:  # each claim statement is atomic by itself
            for queue in queues:
                if len(claimed) >= n:
                    break
                params = {"queue": queue, "now": now, "n": n - len(claimed), "owner": owner, "lease_until": now + lease_ttl}
                result = await conn.execute(self._claim, params)
                claimed.extend(Claimed(*row) for row in result.all())
        return claimed

    async def has_runnable(self, queues: Sequence[str], within: float = 0.0) -> bool:
        until = time.time() + within
        async with self._read() as conn:
            for queue in queues:
                if (await conn.execute(_PROBE, {"queue": queue, "until": until})).first() is not None:
                    return True
        return False

    async def has_expiring(self, queues: Sequence[str], within: float) -> bool:
        """Running jobs whose lease ends within ``within`` s: a dead host's work, soon ours."""
        until = time.time() + within
        async with self._read() as conn:
            for queue in queues:
                if (await conn.execute(_EXPIRING, {"queue": queue, "until": until})).first() is not None:
                    return True
        return False

    async def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Write outcomes in one transaction; returns how many rows still belonged to us."""
        if not outcomes:
            return 0
        if any(o.children for o in outcomes):  # outcome and children: one transaction
            async with self.engine.begin() as conn:
                return await self.finish_in(conn, outcomes)
        async with self._read() as conn:
            return await self.finish_in(conn, outcomes)

    async def finish_in(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> int:
        """Write outcomes inside the caller's transaction (exactly-once: the job's own).

        Chained children are inserted in the same transaction, and only for outcomes whose guard
        matched: a stale attempt neither finishes the job nor spawns its successors."""
        chained = [o for o in outcomes if o.children]
        plain = [o for o in outcomes if not o.children] if chained else list(outcomes)
        matched = await self._finish_plain(conn, plain) if plain else 0
        for outcome in chained:
            if (await conn.execute(_FINISH_ONE, outcome.params())).first() is not None:
                matched += 1
                await self._enqueue(conn, outcome.children, time.time())
        return matched

    async def _finish_plain(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> int:
        if len(outcomes) == 1:
            return len((await conn.execute(_FINISH_ONE, outcomes[0].params())).all())
        if self.backend == "sqlite":
            # executemany cannot return rows; count matches with a guard-only rowcount instead.
            return (await conn.execute(_FINISH_ONE_NO_RETURN, [o.params() for o in outcomes])).rowcount
        params = {
            "ids": [o.id for o in outcomes],
            "tokens": [o.token for o in outcomes],
            "states": [o.state for o in outcomes],
            "results": [o.result for o in outcomes],
            "errors": [o.error for o in outcomes],
            "run_ats": [o.run_at for o in outcomes],
            "finished_ats": [o.finished_at for o in outcomes],
            "deltas": [o.attempt_delta for o in outcomes],
        }
        return len((await conn.execute(_FINISH_MANY_PG, params)).all())

    async def renew(self, owner: str, lease_ttl: float) -> int:
        async with self._read() as conn:
            return (await conn.execute(_RENEW, {"owner": owner, "lease_until": time.time() + lease_ttl})).rowcount

    async def held(self, job_id: int, owner: str) -> tuple[int, str, int, int, int | None] | None:
        """(id, name, token, attempt, max_attempts) of a job this owner holds, if it does."""
        async with self._read() as conn:
            row = (await conn.execute(_HELD, {"id": job_id, "owner": owner})).first()
        return None if row is None else tuple(row)  # type: ignore[return-value]

    async def rescue_owner(self, owner: str, max_lost: int) -> list[tuple[int, str]]:
        """Give back what a dead worker in this slot held (its successor calls this first)."""
        return await self._rescue(_RESCUE_OWNER, {"owner": owner}, max_lost, f"worker {owner} died")

    async def rescue_expired(self, max_lost: int) -> list[tuple[int, str]]:
        """Give back jobs whose lease expired (a whole host died, or a worker froze)."""
        return await self._rescue(_RESCUE_EXPIRED, {}, max_lost, "lease expired")

    async def _rescue(self, statement: Any, params: dict[str, Any], max_lost: int, why: str) -> list[tuple[int, str]]:
        now = time.time()
        lost_error = error_json(
            "WorkerLost",
            f"{why} while running this job, {max_lost} times in a row; it was not retried again "
            "(the job may be crashing or freezing its worker)",
        )
        async with self._read() as conn:
            rows = (await conn.execute(statement, {**params, "now": now, "max_lost": max_lost, "lost_error": lost_error})).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    async def requeue_owner(self, owner: str) -> int:
        async with self._read() as conn:
            return (await conn.execute(_REQUEUE_OWNER, {"owner": owner})).rowcount

    async def set_progress(self, job_id: int, token: int, progress: str, conn: AsyncConnection | None = None) -> bool:
        params = {"id": job_id, "token": token, "progress": progress}
        if conn is not None:
            return (await conn.execute(_PROGRESS, params)).rowcount == 1
        async with self._read() as own:
            return (await own.execute(_PROGRESS, params)).rowcount == 1

    async def cancel_requests(self, owner: str) -> list[tuple[int, int]]:
        async with self._read() as conn:
            return [(int(a), int(b)) for a, b in (await conn.execute(_CANCEL_REQUESTS, {"owner": owner})).all()]

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a queued job at once, or ask its worker to stop it; returns what happened."""
        error = error_json("Cancelled", "cancelled before it started")
        async with self._read() as conn:
            if (await conn.execute(_CANCEL_QUEUED, {"id": job_id, "now": time.time(), "error": error})).rowcount:
                return State.CANCELLED
            if (await conn.execute(_CANCEL_RUNNING, {"id": job_id})).rowcount:
                return "cancelling"
        return None

    # -- workers table ------------------------------------------------------------------------

    async def worker_seen(self, owner: str, node: str, pid: int, queues: str, done: int) -> None:
        async with self._read() as conn:
            await conn.execute(
                _WORKER_UPSERT,
                {"owner": owner, "node": node, "pid": pid, "queues": queues, "now": time.time(), "done": done},
            )

    async def worker_gone(self, owner: str) -> None:
        async with self._read() as conn:
            await conn.execute(_WORKER_DELETE, {"owner": owner})

    # -- reads --------------------------------------------------------------------------------

    async def get(self, job_id: int) -> JobRow | None:
        async with self._read() as conn:
            row = (await conn.execute(_GET, {"id": job_id})).first()
        return None if row is None else JobRow(*row)

    async def get_many(self, ids: Sequence[int]) -> list[JobRow]:
        if not ids:
            return []
        async with self._read() as conn:
            return [JobRow(*row) for row in (await conn.execute(_GET_MANY, {"ids": [int(i) for i in ids]})).all()]

    async def children(self, parent_id: int) -> list[JobRow]:
        """Jobs whose ``parent_id`` is ``parent_id`` (chained children), oldest first."""
        async with self._read() as conn:
            return [JobRow(*row) for row in (await conn.execute(_CHILDREN, {"id": int(parent_id)})).all()]

    async def get_by_key(self, key: str) -> JobRow | None:
        """The newest job enqueued with idempotency key ``key``."""
        async with self._read() as conn:
            row = (await conn.execute(_BY_KEY, {"key": key})).first()
        return None if row is None else JobRow(*row)

    # -- periodic jobs --------------------------------------------------------------------------

    async def last_fire(self, name: str) -> float | None:
        async with self._read() as conn:
            found = (await conn.execute(_LAST_FIRE, {"name": name})).scalar()
        return None if found is None else float(found)

    async def fire(self, name: str, fire_at: float, envelope: Envelope) -> int | None:
        """Enqueue a periodic job for one fire time, unless any scheduler already did: the
        (name, fire_at) row and the job row commit together or not at all."""
        async with self.engine.begin() as conn:
            claimed = (await conn.execute(_FIRE, {"name": name, "fire_at": fire_at})).first()
            if claimed is None:
                return None
            [job_id] = await self._enqueue(conn, [envelope], time.time())
            await conn.execute(_FIRED, {"name": name, "fire_at": fire_at, "job_id": job_id})
            return job_id

    async def prune_schedule(self, before: float) -> int:
        async with self._read() as conn:
            return (await conn.execute(_PRUNE_SCHEDULE, {"before": before})).rowcount

    # -- retention and test support -------------------------------------------------------------

    async def purge_finished(self, before: float, batch: int = 500) -> int:
        """Delete one small batch of jobs that finished before ``before`` (result retention);
        small so that the delete never holds SQLite's write lock for long."""
        async with self._read() as conn:
            return (await conn.execute(_PURGE_FINISHED, {"before": before, "n": batch})).rowcount

    async def make_due(self, ids: Sequence[int]) -> int:
        """Let queued jobs run now whatever their ETA or backoff (eager mode runs retries at once)."""
        if not ids:
            return 0
        async with self._read() as conn:
            return (await conn.execute(_MAKE_DUE, {"ids": [int(i) for i in ids]})).rowcount


_encode = msgspec.json.Encoder().encode


def _database_unavailable(exc: BaseException) -> bool:
    from .executor import database_unavailable  # the executor stands on the store, not back

    return database_unavailable(exc)


def _copy_records(envelopes: Sequence[Envelope], ids: Sequence[int], now: float, max_payload: int) -> list[tuple[Any, ...]] | None:
    """Rows for COPY, built straight from the envelopes (the bulk hot path: no dicts, no
    per-row message strings). ``None`` when some row is bad: the caller then takes the
    row-by-row path, whose errors name the culprit."""
    records = []
    append = records.append
    try:
        with paused_gc():
            for new_id, env in zip(ids, envelopes):
                args, kwargs = _encode(env.args), _encode(env.kwargs)
                if len(args) + len(kwargs) > max_payload:
                    return None
                append((
                    new_id, env.v or PROTOCOL_VERSION, env.name, args.decode(), kwargs.decode(), env.queue, env.priority,
                    env.max_attempts, now if env.run_at is None else env.run_at, env.expires_at, None,
                    env.parent_id, env.root_id, None if env.meta is None else _encode(env.meta).decode(), now,
                ))  # fmt: skip
    except (TypeError, msgspec.EncodeError, OverflowError, ValueError):
        return None
    return records


def _without_key_since(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("key_since", None)
    return row


def _row(env: Envelope, now: float, max_payload: int) -> dict[str, Any]:
    args = encode_json(env.args, f"arguments of {env.name}")
    kwargs = encode_json(env.kwargs, f"keyword arguments of {env.name}")
    size = len(args) + len(kwargs)
    if size > max_payload:
        raise PayloadTooLarge(
            f"arguments of {env.name} are {size:,} bytes of JSON; the limit is {max_payload:,} "
            "(RUNNER_MAX_PAYLOAD / --max-payload); pass a reference (an id, a path) instead of the data"
        )
    return {
        "v": env.v or PROTOCOL_VERSION,
        "name": env.name,
        "args": args,
        "kwargs": kwargs,
        "queue": env.queue,
        "priority": env.priority,
        "max_attempts": env.max_attempts,
        "run_at": now if env.run_at is None else env.run_at,
        "expires_at": env.expires_at,
        "key": env.key,
        "key_since": None if env.key_ttl is None else now - env.key_ttl,
        "parent_id": env.parent_id,
        "root_id": env.root_id,
        "meta": None if env.meta is None else encode_json(env.meta, "job meta"),
    }


# -- admin queries (runner status / runner jobs) --------------------------------------------------

_STATS = text("SELECT queue, state, count(*) FROM runner_jobs GROUP BY queue, state ORDER BY queue, state")
_FINISHED_SINCE = text("SELECT count(*) FROM runner_jobs WHERE finished_at >= :since")
_WORKERS = text("SELECT owner, node, pid, queues, started_at, seen_at, done FROM runner_workers WHERE seen_at >= :since ORDER BY owner")
_RETRY_ONE = text(
    "UPDATE runner_jobs SET state = 'queued', run_at = :now, attempt = 0, lost = 0, finished_at = NULL,"
    " expires_at = NULL, cancel_requested = 0 WHERE id = :id AND state IN ('failed', 'cancelled', 'expired')"
)
_RETRY_BATCH = text(
    "UPDATE runner_jobs SET state = 'queued', run_at = :now, attempt = 0, lost = 0, finished_at = NULL,"
    " expires_at = NULL, cancel_requested = 0"
    " WHERE id IN (SELECT id FROM runner_jobs WHERE state = :state ORDER BY id LIMIT :n)"
)
_LIST_JOBS = text(
    f"SELECT {_JOB_COLUMNS} FROM runner_jobs"
    " WHERE (CAST(:state AS TEXT) IS NULL OR state = :state) AND (CAST(:queue AS TEXT) IS NULL OR queue = :queue)"
    " AND (CAST(:name AS TEXT) IS NULL OR name = :name) ORDER BY id DESC LIMIT :limit"
)
_PURGE_BATCH = text(
    "DELETE FROM runner_jobs WHERE id IN (SELECT id FROM runner_jobs"
    " WHERE finished_at IS NOT NULL AND finished_at < :before AND state = :state ORDER BY finished_at LIMIT :n)"
)


class AdminQueries:
    """Reads and bulk changes for people; batched so a million-row purge never holds a long lock."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def stats(self) -> list[tuple[str, str, int]]:
        async with self.store._read() as conn:
            return [(str(q), str(s), int(n)) for q, s, n in (await conn.execute(_STATS)).all()]

    async def finished_since(self, since: float) -> int:
        async with self.store._read() as conn:
            return int((await conn.execute(_FINISHED_SINCE, {"since": since})).scalar() or 0)

    async def workers(self, since: float) -> list[tuple[Any, ...]]:
        async with self.store._read() as conn:
            return [tuple(r) for r in (await conn.execute(_WORKERS, {"since": since})).all()]

    async def list_jobs(
        self, *, state: str | None, queue: str | None, name: str | None, limit: int
    ) -> list[JobRow]:
        params = {"limit": limit, "state": state, "queue": queue, "name": name}
        statement = _LIST_JOBS
        async with self.store._read() as conn:
            return [JobRow(*row) for row in (await conn.execute(statement, params)).all()]

    async def retry_one(self, job_id: int) -> bool:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_RETRY_ONE, {"id": job_id, "now": time.time()})).rowcount == 1

    async def retry_batch(self, state: str, batch: int = 1000) -> int:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_RETRY_BATCH, {"state": state, "now": time.time(), "n": batch})).rowcount

    async def purge_batch(self, state: str, before: float, batch: int = 1000) -> int:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_PURGE_BATCH, {"state": state, "before": before, "n": batch})).rowcount
