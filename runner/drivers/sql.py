"""The SQL both drivers share: enqueue, complete, reads, periodic jobs, retention, admin.

Statements here are written once in the SQL PostgreSQL and SQLite both accept; each driver
supplies what differs (``postgres.py``, ``sqlite.py``): the claim, lease renewal, the multi-row
insert and outcome write, id allocation, JSON history expressions and the schema's types.

Single statements run in autocommit (``_auto``): no BEGIN/COMMIT round trips, and on SQLite no
write lock held between them. Statements that must commit together (children with their parent's
outcome, a periodic fire with its job, an enqueue with the caller's data) share a transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import logging
import time
import weakref
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..db_unavailable import database_unavailable
from ..decide import GIVEN_BACK, Outcome
from ..enqueue_batching import EnqueueBatcher
from ..errors import EnqueueError, PayloadTooLarge, SchemaError
from ..rows import CLAIM_COLUMNS, TEXT_COLUMNS, decode_row
from ..schema import BUCKETS, LIVE_STATES, SCHEMA_VERSION, STATS_SUMS
from ..wire import MAX_DEPTH, PROTOCOL_VERSION, Attempt, BadRow, Envelope, PlainEnvelope, State, check_depth, encode_json_bytes
from .base import CancelResult, Driver, JobFilter, JobPage, JobRow, NodeRow, QueueCounts, StatsRow, WorkerRow

__all__ = ["SQLDriver", "insert_row", "plain_success", "tally_rows"]

log = logging.getLogger("runner.drivers")

INSERT_COLUMNS: Final = (
    "v", "name", "args", "kwargs", "queue", "priority", "max_attempts", "run_at", "expires_at", "timeout",
    "hard_timeout", "concurrency_key", "concurrency_limit", "rate_key", "rate_limit", "rate_period", "key",
    "parent_id", "root_id", "meta", "callbacks", "created_at", "state", "waiting_for", "on_parent_failure",
    "with_results", "group_id", "has_dependants",
)  # fmt: skip
# A bulk insert sends only the columns some row of the batch sets: the rest take the table's
# default (NULL, or the one below), which the database fills in cheaper than it parses a value.
# A plain job's row sets 7 of the 28: measured, a quarter of a COPY of 1,000 rows.
INSERT_DEFAULTS: Final = {"v": 1, "state": "queued", "waiting_for": 0, "has_dependants": 0}
PLAIN_COLUMNS: Final = ("name", "args", "kwargs", "queue", "priority", "run_at", "created_at")  # a PlainEnvelope's row
INSERT_ALWAYS: Final = frozenset(PLAIN_COLUMNS)  # every row sets these


_encode_plain = msgspec.json.Encoder().encode
_OPTION_DEFAULTS: Final = tuple((c, INSERT_DEFAULTS.get(c)) for c in INSERT_COLUMNS if c not in INSERT_ALWAYS)


def is_plain_row(row: Mapping[str, Any]) -> bool:
    """Whether INSERT parameters (``insert_row``) set only PLAIN_COLUMNS, the rest being the
    table's defaults: a lone row then binds 7 values instead of 28 (measured: 12 % more single
    inserts a second on PostgreSQL)."""
    return all(row[c] == default for c, default in _OPTION_DEFAULTS)


def plain_rows(ids: Sequence[int], envelopes: Sequence[Envelope], now: float, max_payload: int) -> list[tuple[Any, ...]] | None:
    """``(id, *PLAIN_COLUMNS)`` for each of ``envelopes``, when every one is a PlainEnvelope (the
    bulk hot path: one type check per row instead of ``needed`` over twenty option columns, and
    no per-row dicts). None when one is not plain, or is too big or too deep: the caller then
    takes the general path, whose errors name the culprit."""
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    try:
        for new_id, env in zip(ids, envelopes):
            if type(env) is not PlainEnvelope:
                return None
            if not env.args and not env.kwargs:  # a call with no arguments: nothing to encode or measure
                append((new_id, env.name, "[]", "{}", env.queue, env.priority, now, now))
                continue
            args = _encode_plain(env.args)
            kwargs = _encode_plain(env.kwargs)
            size = len(args) + len(kwargs)
            if size > max_payload:
                return None
            # Deeper than MAX_DEPTH takes more than 2 * MAX_DEPTH brackets: shorter ones need no count.
            if (
                size > 2 * MAX_DEPTH
                and max(args.count(b"[") + args.count(b"{"), kwargs.count(b"[") + kwargs.count(b"{")) > MAX_DEPTH
            ):
                return None
            append((new_id, env.name, args.decode(), kwargs.decode(), env.queue, env.priority, now, now))
    except (TypeError, msgspec.EncodeError, OverflowError, ValueError, RecursionError):
        return None
    return rows


def needed(column: str, values: Iterable[Any]) -> bool:
    """Whether a bulk insert must send ``column``: some row sets it to other than its default."""
    return column in INSERT_ALWAYS or set(values) != {INSERT_DEFAULTS.get(column)}


def bulk_insert_sql(columns: Sequence[str]) -> str:
    """``INSERT INTO runner_jobs (id, <columns>) VALUES (?, ...)`` for a bulk insert of some of
    INSERT_COLUMNS (``needed``): names from that constant only, checked; values always bound."""
    unknown = set(columns) - set(INSERT_COLUMNS)
    if unknown:
        raise ValueError(f"{sorted(unknown)}: not columns a new job row is written with")
    return "INSERT INTO runner_jobs (id, " + ", ".join(columns) + ") VALUES (?" + ", ?" * len(columns) + ")"


def plain_insert_sql(places: Sequence[str]) -> str:
    """One plain row (PLAIN_COLUMNS), its id from RETURNING; ``places``: the driver's placeholder
    for each column ("?" or "$1".."$7"), so both drivers send the one statement."""
    if len(places) != len(PLAIN_COLUMNS):
        raise ValueError(f"{len(places)} placeholders for {len(PLAIN_COLUMNS)} columns")
    return "INSERT INTO runner_jobs (" + ", ".join(PLAIN_COLUMNS) + ") VALUES (" + ", ".join(places) + ") RETURNING id"


_COLS = ", ".join(INSERT_COLUMNS)
_VALUES = ", ".join(f":{c}" for c in INSERT_COLUMNS)

JOB_COLUMNS: Final = (
    "id", "name", "queue", "priority", "state", "attempt", "max_attempts", "lost", "args", "kwargs", "result",
    "error", "progress", "key", "parent_id", "root_id", "meta", "lease_owner", "created_at", "run_at",
    "started_at", "finished_at", "expires_at", "timeout", "hard_timeout", "callbacks", "attempts",
)  # fmt: skip

INSERT_ONE: Final = text(  # a live key's conflict returns no row; a NULL key never conflicts
    f"INSERT INTO runner_jobs ({_COLS}) VALUES ({_VALUES})"
    f" ON CONFLICT (key) WHERE key IS NOT NULL AND state IN ({LIVE_STATES}) DO NOTHING RETURNING id"
)
_LIVE_BY_KEY = text(f"SELECT id FROM runner_jobs WHERE key = :key AND state IN ({LIVE_STATES})")
_RECENT_BY_KEY = text(
    "SELECT id FROM runner_jobs WHERE key = :key AND finished_at >= :since AND state = 'succeeded'"
    " ORDER BY finished_at DESC LIMIT 1"
)
_LAST_FIRE = text("SELECT max(fire_at) FROM runner_schedule WHERE name = :name")
_FIRE = text("INSERT INTO runner_schedule (name, fire_at) VALUES (:name, :fire_at) ON CONFLICT DO NOTHING RETURNING name")
_FIRED = text("UPDATE runner_schedule SET job_id = :job_id WHERE name = :name AND fire_at = :fire_at")
_PRUNE_SCHEDULE = text(
    "DELETE FROM runner_schedule WHERE fire_at < :before"
    " AND fire_at < (SELECT max(s.fire_at) FROM runner_schedule s WHERE s.name = runner_schedule.name)"
)
_PURGE_FINISHED = text(
    "DELETE FROM runner_jobs WHERE id IN (SELECT id FROM runner_jobs"
    " WHERE finished_at < :before AND state IN ('succeeded', 'failed', 'cancelled', 'expired') LIMIT :n) RETURNING id"
)
_PURGE_EDGES = text("DELETE FROM runner_deps WHERE job_id IN :ids OR parent_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_CANCEL_QUEUED = text(
    "UPDATE runner_jobs SET state = 'cancelled', finished_at = :now, error = :error WHERE id = :id AND state = 'queued'"
)
_STATE_OF = text("SELECT state FROM runner_jobs WHERE id = :id")
_STATS = text("SELECT queue, state, count(*) FROM runner_jobs GROUP BY queue, state ORDER BY queue, state")
_FINISHED_SINCE = text("SELECT count(*) FROM runner_jobs WHERE finished_at >= :since")
_RETRY_SET = (
    "state = 'queued', run_at = :now, attempt = 0, lost = 0, finished_at = NULL, expires_at = NULL,"
    " cancel_requested = 0, lease_owner = NULL, lease_expires_at = NULL, progress = NULL"
)
_RETRY_ONE = text(f"UPDATE runner_jobs SET {_RETRY_SET} WHERE id = :id AND state IN ('failed', 'cancelled', 'expired')")
_RETRY_BATCH = text(
    f"UPDATE runner_jobs SET {_RETRY_SET} WHERE id IN (SELECT id FROM runner_jobs WHERE state = :state ORDER BY id LIMIT :n)"
)
_PURGE_BATCH = text(
    "DELETE FROM runner_jobs WHERE id IN (SELECT id FROM runner_jobs"
    " WHERE finished_at IS NOT NULL AND finished_at < :before AND state = :state ORDER BY finished_at LIMIT :n)"
)
_MAKE_DUE = text("UPDATE runner_jobs SET run_at = 0 WHERE state = 'queued' AND id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_UNPAUSED = "queue NOT IN (SELECT queue FROM runner_queues WHERE paused = 1)"
# A paused queue's jobs are not work: a burst worker (`--burst`, run_burst) ends beside them.
_HAS_WORK = text(
    f"SELECT 1 FROM runner_jobs WHERE state = 'queued' AND queue IN :queues AND run_at <= :until AND {_UNPAUSED} LIMIT 1"
).bindparams(bindparam("queues", expanding=True))
_HAS_RUNNING = text("SELECT 1 FROM runner_jobs WHERE state = 'running' AND queue IN :queues LIMIT 1").bindparams(
    bindparam("queues", expanding=True)
)
# The earliest future run_at, and whether jobs are runnable now in an unpaused queue yet were not
# claimed: held back by a concurrency or rate limit, which a finish or the next window lifts.
_NEXT_RUN_AT_SQL = (
    "SELECT (SELECT min(run_at) FROM runner_jobs WHERE state = 'queued' AND queue {queues} AND run_at > {now}),"
    " EXISTS (SELECT 1 FROM runner_jobs WHERE state = 'queued' AND queue {queues} AND run_at <= {now}"
    f" AND {_UNPAUSED})"
)
# The same statement twice: named and expanding for SQLAlchemy, the queues as one array for
# PostgreSQL's raw path.
NEXT_RUN_AT_ANY: Final = _NEXT_RUN_AT_SQL.format(queues="= ANY($1::text[])", now="$2")
_NEXT_RUN_AT = text(_NEXT_RUN_AT_SQL.format(queues="IN :queues", now=":now")).bindparams(bindparam("queues", expanding=True))
# How soon an idle worker looks again at jobs held back by a limit (not by a pause: resuming wakes
# workers). Fine enough for rate windows; a finish on this host wakes it sooner.
HELD_BACK_RECHECK: Final = 0.05
_SCHEMA_VERSION = text("SELECT value FROM runner_meta WHERE name = 'schema_version'")
_SET_VERSION = text(
    "INSERT INTO runner_meta (name, value) VALUES ('schema_version', :v) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
_WORKER_UPSERT = text(
    """
    INSERT INTO runner_workers (owner, node, pid, pid_started, boot_id, queues, concurrency, started_at, seen_at, done, rss_kb, running)
    VALUES (:owner, :node, :pid, :pid_started, :boot_id, :queues, :concurrency, :started_at, :seen_at, :done, :rss_kb, :running)
    ON CONFLICT (owner) DO UPDATE SET node = excluded.node, pid = excluded.pid, pid_started = excluded.pid_started,
        boot_id = excluded.boot_id, queues = excluded.queues, concurrency = excluded.concurrency,
        started_at = excluded.started_at, seen_at = excluded.seen_at, done = excluded.done,
        rss_kb = excluded.rss_kb, running = excluded.running
    """
)
_WORKER_DELETE = text("DELETE FROM runner_workers WHERE owner = :owner")
_WORKERS = text(
    "SELECT owner, node, pid, pid_started, boot_id, queues, concurrency, started_at, seen_at, done, rss_kb, running"
    " FROM runner_workers WHERE seen_at >= :since ORDER BY owner"
)
_SET_PAUSED: Final = text(
    "INSERT INTO runner_queues (queue, paused, changed_at) VALUES (:queue, :paused, :now)"
    " ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at"
)
_PAUSED: Final = text("SELECT queue FROM runner_queues WHERE paused = 1 ORDER BY queue")
_ANY_POLICY: Final = ""
_RUN_POLICY: Final = " AND on_parent_failure = 'run'"
_COUNT_PARENTS: Final = "(SELECT count(*) FROM runner_deps AS d WHERE d.job_id = runner_jobs.id AND d.parent_id IN :parents)"
_RELEASE_OK: Final = (
    f"UPDATE runner_jobs SET waiting_for = CASE WHEN waiting_for > {_COUNT_PARENTS} THEN waiting_for - {_COUNT_PARENTS} ELSE 0 END,"
    f" state = CASE WHEN waiting_for > {_COUNT_PARENTS} THEN state ELSE 'queued' END,"
    f" run_at = CASE WHEN waiting_for <= {_COUNT_PARENTS} AND run_at < :now THEN :now ELSE run_at END"
    " WHERE state = 'waiting' AND id IN (SELECT job_id FROM runner_deps WHERE parent_id IN :parents)"
)
_RELEASE_BAD: Final = (
    "UPDATE runner_jobs SET state = CASE WHEN on_parent_failure = 'cancel' THEN 'cancelled' ELSE 'failed' END,"
    " finished_at = :now, waiting_for = 0,"
    " error = '{\"type\":\"' || CASE WHEN on_parent_failure = 'cancel' THEN 'Cancelled' ELSE 'ParentFailed' END"
    ' || \'","message":"job \' || CAST((SELECT min(d.parent_id) FROM runner_deps AS d WHERE d.job_id = runner_jobs.id'
    " AND d.parent_id IN :parents) AS TEXT) || ' that it waits for did not succeed\"}'"
    " WHERE state = 'waiting' AND on_parent_failure IN ('fail', 'cancel')"
    " AND id IN (SELECT job_id FROM runner_deps WHERE parent_id IN :parents)"
)
_INSERT_EDGE: Final = text(
    "INSERT INTO runner_deps (parent_id, job_id, position) VALUES (:parent_id, :job_id, :position) ON CONFLICT DO NOTHING"
)
_MARK_PARENTS: Final = "UPDATE runner_jobs SET has_dependants = 1 WHERE id IN :ids RETURNING id, state"
_PARENT_RESULTS: Final = text(
    "SELECT d.parent_id, p.state, p.result FROM runner_deps AS d JOIN runner_jobs AS p ON p.id = d.parent_id"
    " WHERE d.job_id = :id ORDER BY d.position"
)
_PARENTS_OF: Final = text("SELECT parent_id FROM runner_deps WHERE job_id = :id ORDER BY position")
_DEPENDANTS_OF: Final = text("SELECT job_id FROM runner_deps WHERE parent_id = :id ORDER BY job_id")
_GROUP_MEMBERS: Final = text("SELECT id FROM runner_jobs WHERE group_id = :group ORDER BY id")
_CANCEL_WORKFLOW: Final = text(
    "UPDATE runner_jobs SET state = 'cancelled', finished_at = :now, error = :error, waiting_for = 0"
    " WHERE (root_id = :root OR id = :root) AND state IN ('queued', 'waiting')"
)
_RUNNING_IN_WORKFLOW: Final = text("SELECT id FROM runner_jobs WHERE (root_id = :root OR id = :root) AND state = 'running'")
_CANCELLED_WORKFLOW_ERROR: Final = '{"type":"Cancelled","message":"its workflow was cancelled before it started"}'
_BY_ID: Final = "id = :id"
_BY_IDS: Final = "id IN :ids"
_BY_PARENT: Final = "parent_id = :id ORDER BY id"
_BY_KEY: Final = "key = :key ORDER BY id DESC LIMIT 1"
_CANCELLED_QUEUED_ERROR: Final = '{"type":"Cancelled","message":"cancelled before it started"}'
COPY_FROM: Final = 500  # bulk inserts of at least this many keyless rows take the driver's fast path


class SQLDriver(Driver):
    """The shared half of both drivers."""

    backend: str = "sql"
    JOB_SELECT: str  # JOB_COLUMNS as this database returns them readably

    def __init__(self, engine: AsyncEngine, *, max_payload: int = 1 << 20) -> None:
        self.engine = engine
        self.max_payload = max_payload
        self._auto = engine.execution_options(**self._autocommit_options())
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EnqueueBatcher] = weakref.WeakKeyDictionary()
        self._schema_checked = False
        self._statements: dict[str, Any] = {}

    # -- what each driver supplies --------------------------------------------------------------

    @abstractmethod
    def _autocommit_options(self) -> dict[str, Any]: ...

    @abstractmethod
    async def _schema_version(self, conn: AsyncConnection) -> int: ...

    @abstractmethod
    async def _create(self, conn: AsyncConnection, before: int) -> None:
        """Build or upgrade the schema from version ``before`` inside ``conn``'s transaction."""

    async def _serialise_migrations(self, conn: AsyncConnection) -> None:
        """Hold off every other migrator until ``conn``'s transaction ends.

        The version must be read *after* this: a host that read it before waiting would redo the
        DDL the winner just committed, and on PostgreSQL that DDL (DROP TRIGGER, CREATE OR
        REPLACE FUNCTION) deadlocks against workers already claiming. A database whose
        transactions already exclude each other (SQLite's BEGIN IMMEDIATE) needs nothing here.
        """

    @abstractmethod
    async def _allocate_ids(self, conn: AsyncConnection, n: int) -> list[int]: ...

    @abstractmethod
    async def _insert_many(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """Insert keyless rows that already carry their ids."""

    # -- schema ---------------------------------------------------------------------------------

    async def migrate(self) -> tuple[int, int]:
        async with self.engine.begin() as conn:
            return await self._migrate(conn)

    async def _migrate(self, conn: AsyncConnection) -> tuple[int, int]:
        await self._serialise_migrations(conn)
        before = await self._schema_version(conn)
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"the queue schema is version {before}, newer than this runner understands "
                f"({SCHEMA_VERSION}); upgrade runner on this host"
            )
        if before < SCHEMA_VERSION:
            await self._create(conn, before)
            await conn.execute(_SET_VERSION, {"v": str(SCHEMA_VERSION)})
        return before, SCHEMA_VERSION

    async def ensure_schema(self) -> None:
        if self._schema_checked:
            return
        async with self._auto.connect() as conn:
            version = await self._schema_version(conn)
        if version != SCHEMA_VERSION:
            await self.migrate()
        self._schema_checked = True

    async def ensure_schema_in(self, conn: AsyncConnection) -> None:
        if not self._schema_checked and await self._schema_version(conn) != SCHEMA_VERSION:
            await self._migrate(conn)

    async def _read_version(self, conn: AsyncConnection) -> int:
        value = (await conn.execute(_SCHEMA_VERSION)).scalar()
        return int(value) if value is not None else 0

    # -- enqueue --------------------------------------------------------------------------------

    async def enqueue(self, envelopes: Sequence[Envelope], conn: AsyncConnection | None = None) -> list[int]:
        now = time.time()
        if conn is not None:
            return await self._enqueue(conn, envelopes, now)
        if any(env.after or env.after_batch for env in envelopes):
            async with self.engine.begin() as own:  # a workflow: every row, or none
                return await self._enqueue(own, envelopes, now)
        if len(envelopes) == 1 and envelopes[0].key is None:
            row = insert_row(envelopes[0], now, self.max_payload)  # bad input fails here, alone
            return [await self._batcher().enqueue(row, now)]
        async with self._enqueue_connection(len(envelopes)) as own:
            return await self._enqueue(own, envelopes, now)

    def _enqueue_connection(self, n: int) -> Any:
        """Where a multi-row enqueue runs: its own transaction, so a rejected batch leaves nothing."""
        return self.engine.begin()

    def _batcher(self) -> EnqueueBatcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = EnqueueBatcher(self._insert_rows, database_unavailable)
        return batcher

    async def _insert_rows(self, rows: list[dict[str, Any]], now: float) -> list[int]:
        """Keyless rows of concurrent single enqueues, in one statement and one commit."""
        if len(rows) == 1:
            async with self._auto.connect() as own:
                return [await self._insert_one(own, dict(rows[0]))]
        async with self._enqueue_connection(len(rows)) as conn:
            ids = await self._allocate_ids(conn, len(rows))
            await self._insert_many(conn, [{**row, "id": new_id} for row, new_id in zip(rows, ids)])
        return ids

    async def _enqueue(self, conn: AsyncConnection, envelopes: Sequence[Envelope], now: float) -> list[int]:
        if any(env.after or env.after_batch for env in envelopes):
            return await self._enqueue_workflow(conn, envelopes, now)
        rows = [insert_row(env, now, self.max_payload) for env in envelopes]
        if len(rows) == 1:
            return [await self._insert_one(conn, rows[0])]
        found: list[int] = [0] * len(rows)
        plain = [i for i, row in enumerate(rows) if row["key"] is None]
        for i, row in enumerate(rows):
            if row["key"] is not None:
                found[i] = await self._insert_one(conn, row)
        if plain:
            new_ids = await self._allocate_ids(conn, len(plain))
            for i, new_id in zip(plain, new_ids):
                rows[i]["id"] = found[i] = new_id
            await self._insert_many(conn, [_without_key_since(rows[i]) for i in plain])
        return found

    async def _insert_one(self, conn: AsyncConnection, row: dict[str, Any]) -> int:
        return (await self._insert_keyed(conn, row))[0]

    async def _insert_keyed(self, conn: AsyncConnection, row: dict[str, Any]) -> tuple[int, bool]:
        """(id, whether this call inserted it): a live key -- or, with key_ttl, a recent success
        -- hands back the job that holds it instead."""
        since = row.pop("key_since", None)
        if since is not None and row["key"] is not None:
            recent = (await conn.execute(_RECENT_BY_KEY, {"key": row["key"], "since": since})).scalar()
            if recent is not None:
                return int(recent), False
        for _ in range(5):
            new_id = (await conn.execute(INSERT_ONE, row)).scalar()
            if new_id is not None:
                return int(new_id), True
            # The key is live: hand back that job. It may finish between the two statements,
            # in which case the next INSERT succeeds.
            existing = (await conn.execute(_LIVE_BY_KEY, {"key": row["key"]})).scalar()
            if existing is not None:
                return int(existing), False
        raise EnqueueError(f"could not enqueue job with key {row['key']!r}: the key kept changing state; try again")

    # -- claim support ----------------------------------------------------------------------------

    def _decode(self, rows: Sequence[Any]) -> list[Attempt | BadRow]:
        return [decode_row(row, self.max_payload) for row in rows]

    async def has_work(self, queues: Sequence[str], within: float = 0.0) -> bool:
        async with self._auto.connect() as conn:
            found = (await conn.execute(_HAS_WORK, {"queues": list(queues), "until": time.time() + within})).first()
        return found is not None

    async def has_running(self, queues: Sequence[str]) -> bool:
        async with self._auto.connect() as conn:
            return (await conn.execute(_HAS_RUNNING, {"queues": list(queues)})).first() is not None

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        now = time.time()
        future, held_back = await self._next_run_at(queues, now)
        due = float(future) if isinstance(future, (int, float)) and future == future else None
        if held_back:
            due = min(due, now + HELD_BACK_RECHECK) if due is not None else now + HELD_BACK_RECHECK
        return due

    async def _next_run_at(self, queues: Sequence[str], now: float) -> tuple[Any, Any]:
        """(earliest future run_at, whether runnable jobs are held back by a limit)."""
        async with self._auto.connect() as conn:
            row = (await conn.execute(_NEXT_RUN_AT, {"queues": list(queues), "now": now})).one()
        return row[0], row[1]

    # -- complete -------------------------------------------------------------------------------

    async def _finish_fast(self, outcomes: Sequence[Outcome]) -> int:
        """Write outcomes of jobs that nothing waits for, with their counters (runner_stats), in
        one autocommit statement; rows with dependants are left alone (their write must release
        them in one transaction). Returns how many matched. A driver for which one transaction
        per batch costs the same (SQLite: one writer lock, one commit) keeps this default and
        lets ``_finish_each`` take every outcome."""
        return 0

    @abstractmethod
    async def _finish_each(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> list[tuple[int, bool]]:
        """Write outcomes inside ``conn``'s transaction, with the counters of exactly those whose
        guard matched (an attempt is counted iff its outcome is written); (job id, has
        dependants) of each match."""

    async def complete(self, outcomes: Sequence[Outcome]) -> int:
        if not outcomes:
            return 0
        matched = 0
        if not any(o.children for o in outcomes):
            matched = await self._finish_fast(outcomes)
            if matched == len(outcomes):
                return matched
        # Children to insert, dependants to release, or stale attempts: one transaction, and the
        # rows the fast write already took no longer match (their state moved on).
        async with self.engine.begin() as conn:
            return matched + await self._complete_in(conn, outcomes)

    async def complete_in(self, conn: AsyncConnection, outcome: Outcome) -> bool:
        return await self._complete_in(conn, [outcome]) == 1

    async def _complete_in(self, conn: AsyncConnection, outcomes: Sequence[Outcome]) -> int:
        """Errbacks are inserted, and dependants released, only for outcomes whose guard
        matched: a stale attempt neither finishes the job nor moves anything after it."""
        done = await self._finish_each(conn, outcomes)
        by_id = {o.job_id: o for o in outcomes}
        now = time.time()
        released: dict[int, str] = {}
        for job_id, has_dependants in done:
            outcome = by_id[job_id]
            if outcome.children:
                await self._enqueue(conn, outcome.children, now)
            if has_dependants and outcome.state in State.FINAL:
                released[job_id] = outcome.state
        if released:
            await self._release(conn, released, now)
        return len(done)

    # -- workflows: dependants wait for their parents ---------------------------------------------

    async def _release(
        self, conn: AsyncConnection, parents: dict[int, str], now: float, only: Sequence[int] | None = None
    ) -> None:
        """Parents ended (``{id: final state}``): count them off their dependants, queue those
        that wait for nothing more, and end by their policy those whose parent did not succeed,
        level by level down the graph. ``only``: restrict the first level to these dependants."""
        frontier = dict(parents)
        while frontier:
            good = [p for p, state in frontier.items() if state == State.SUCCEEDED]
            bad = [p for p, state in frontier.items() if state != State.SUCCEEDED]
            restrict = self._only(only)
            for ids, policy in ((good, _ANY_POLICY), (bad, _RUN_POLICY)):
                if ids:
                    await conn.execute(
                        self._sql(_RELEASE_OK + policy + restrict, ("parents", "only")),
                        {"parents": ids, "only": list(only or []), "now": now},
                    )
            frontier = {}
            if bad:
                ended = (await conn.execute(self._sql(_RELEASE_BAD + restrict + " RETURNING id, state, has_dependants", ("parents", "only")),
                                            {"parents": bad, "only": list(only or []), "now": now})).all()  # fmt: skip
                frontier = {int(i): str(state) for i, state, has in ended if has}
            only = None
        await self._released()

    def _only(self, only: Sequence[int] | None) -> str:
        return "" if only is None else " AND id IN :only"

    def _sql(self, statement: str, expanding: tuple[str, ...]) -> Any:
        cached = self._statements.get(statement)
        if cached is None:
            used = tuple(name for name in expanding if ":" + name in statement)
            cached = self._statements[statement] = text(statement).bindparams(*(bindparam(n, expanding=True) for n in used))
        return cached

    async def _released(self) -> None:
        """Dependants became runnable: wake idle workers (PostgreSQL notifies; SQLite's file changed)."""

    async def _enqueue_workflow(self, conn: AsyncConnection, envelopes: Sequence[Envelope], now: float) -> list[int]:
        """Rows that wait for others: every row, edge and parent mark in the caller's
        transaction. A parent that already ended counts at once; one that is ending right now is
        locked (its row) until this commits, so its release sees our edges."""
        rows = [insert_row(env, now, self.max_payload) for env in envelopes]
        for i, env in enumerate(envelopes):
            if any(not 0 <= p < i for p in env.after_batch):
                raise EnqueueError(f"workflow step {i} ({env.name}) waits for a step that is not before it: {env.after_batch}")
        parents_in_batch = {p for env in envelopes for p in env.after_batch}
        plain = [i for i, row in enumerate(rows) if row["key"] is None]
        ids = [0] * len(rows)
        for i, new_id in zip(plain, await self._allocate_ids(conn, len(plain))):
            ids[i] = new_id
        roots: list[int | None] = [None] * len(rows)
        # Steps whose key is held by a job that already exists: that job stands in for them.
        # It gets no edges (its own parents, if any, are its own), and it is marked as a parent
        # like one outside the batch, so what waits on it here is released when it ends.
        standing_in: set[int] = set()
        for i, (env, row) in enumerate(zip(envelopes, rows)):
            parents = [ids[p] for p in env.after_batch] + list(env.after)
            if parents:
                row.update(state=State.WAITING, waiting_for=len(set(parents)))
                row["parent_id"] = row["parent_id"] or parents[0]
            # One root for the whole workflow (its first row's), so any of its jobs names all of
            # it -- a group's parallel members included.
            if row["root_id"] is None and i > 0:
                row["root_id"] = roots[0]
            elif row["root_id"] is None and parents:
                row["root_id"] = parents[0]
            roots[i] = row["root_id"] or ids[i] or None
            row["has_dependants"] = 1 if i in parents_in_batch else 0
            if row["key"] is not None:
                ids[i], inserted = await self._insert_keyed(conn, row)
                roots[i] = roots[i] or ids[i]
                if not inserted:
                    standing_in.add(i)
        if plain:
            await self._insert_many(conn, [{**_without_key_since(rows[i]), "id": ids[i]} for i in plain])
        edges = [
            {"parent_id": parent, "job_id": ids[i], "position": n}
            for i, env in enumerate(envelopes) if i not in standing_in
            for n, parent in enumerate([ids[p] for p in env.after_batch] + list(env.after))
        ]  # fmt: skip
        if edges:
            await conn.execute(_INSERT_EDGE, edges)
        # Parents that were not inserted here: outside the batch, or standing in for a step.
        external = sorted(
            {p for i, env in enumerate(envelopes) if i not in standing_in for p in env.after}
            | {ids[i] for i in standing_in if i in parents_in_batch}
        )
        if external:
            marked = {
                int(i): str(state)
                for i, state in (await conn.execute(self._sql(_MARK_PARENTS, ("ids",)), {"ids": external})).all()
            }
            missing = [p for p in external if p not in marked]
            if missing:
                raise EnqueueError(f"depends_on: job {missing[0]} does not exist (accepted: ids of jobs in this queue)")
            ended = {p: state for p, state in marked.items() if state in State.FINAL}
            if ended:
                mine = [
                    ids[i] for i, env in enumerate(envelopes)
                    if i not in standing_in and (set(env.after) | {ids[p] for p in env.after_batch}) & set(ended)
                ]  # fmt: skip
                await self._release(conn, ended, now, only=mine)
        return ids

    async def parent_results(self, job_id: int) -> list[tuple[int, str, str | None]]:
        async with self._auto.connect() as conn:
            return [(int(p), str(s), r) for p, s, r in (await conn.execute(_PARENT_RESULTS, {"id": job_id})).all()]

    async def dependencies(self, job_id: int) -> tuple[list[int], list[int]]:
        async with self._auto.connect() as conn:
            parents = [int(p) for (p,) in (await conn.execute(_PARENTS_OF, {"id": job_id})).all()]
            dependants = [int(d) for (d,) in (await conn.execute(_DEPENDANTS_OF, {"id": job_id})).all()]
        return parents, dependants

    async def group_members(self, group_id: str) -> list[int]:
        async with self._auto.connect() as conn:
            return [int(i) for (i,) in (await conn.execute(_GROUP_MEMBERS, {"group": group_id})).all()]

    async def cancel_workflow(self, root_id: int) -> tuple[int, int]:
        """Cancel every job of the workflow rooted at ``root_id`` that has not finished: waiting
        and queued ones at once, running ones by request. Returns (cancelled, requested)."""
        async with self.engine.begin() as conn:
            cancelled = (
                await conn.execute(_CANCEL_WORKFLOW, {"root": root_id, "now": time.time(), "error": _CANCELLED_WORKFLOW_ERROR})
            ).rowcount
            running = [int(i) for (i,) in (await conn.execute(_RUNNING_IN_WORKFLOW, {"root": root_id})).all()]
        for job_id in running:
            await self._request_cancel(job_id)
        return int(cancelled), len(running)

    # -- workers: upserted with each lease renewal; `runner status` reads them --------------------

    def _workers_connection(self) -> Any:
        return self._auto.connect()

    async def worker_seen(self, worker: WorkerRow) -> None:
        async with self._workers_connection() as conn:
            await conn.execute(_WORKER_UPSERT, vars(worker))
            await conn.execute(_NODE_SEEN, {"node": worker.node, "now": worker.seen_at})  # the dashboard's hosts

    async def worker_gone(self, owner: str) -> None:
        async with self._workers_connection() as conn:
            await conn.execute(_WORKER_DELETE, {"owner": owner})

    async def workers(self, since: float) -> list[WorkerRow]:
        async with self._workers_connection() as conn:
            return [WorkerRow(*row) for row in (await conn.execute(_WORKERS, {"since": since})).all()]

    # -- periodic jobs and retention --------------------------------------------------------------

    async def last_fire(self, name: str) -> float | None:
        async with self._auto.connect() as conn:
            found = (await conn.execute(_LAST_FIRE, {"name": name})).scalar()
        return None if found is None else float(found)

    async def fire(self, name: str, fire_at: float, envelope: Envelope) -> int | None:
        """The (name, fire_at) row and the job row commit together or not at all."""
        async with self.engine.begin() as conn:
            if (await conn.execute(_FIRE, {"name": name, "fire_at": fire_at})).first() is None:
                return None
            [job_id] = await self._enqueue(conn, [envelope], time.time())
            await conn.execute(_FIRED, {"name": name, "fire_at": fire_at, "job_id": job_id})
            return job_id

    async def prune_schedule(self, before: float) -> int:
        async with self._auto.connect() as conn:
            return (await conn.execute(_PRUNE_SCHEDULE, {"before": before})).rowcount

    async def purge_finished(self, before: float, batch: int = 500) -> int:
        async with self.engine.begin() as conn:
            ids = [int(i) for (i,) in (await conn.execute(_PURGE_FINISHED, {"before": before, "n": batch})).all()]
            if ids:
                await conn.execute(_PURGE_EDGES, {"ids": ids})
        return len(ids)

    # -- reads ----------------------------------------------------------------------------------

    def _rows(self, result: Any) -> list[JobRow]:
        return [JobRow(*self._readable(row)) for row in result.all()]

    def _readable(self, row: Sequence[Any]) -> Sequence[Any]:
        return row

    def _reads(self, where: str) -> Any:
        """``SELECT <this driver's job columns> ... WHERE <where>``; ``where`` is always a constant
        of this module (values travel as bound parameters)."""
        statement = self._statements.get(where)
        if statement is None:
            statement = self._statements[where] = text(f"SELECT {self.JOB_SELECT} FROM runner_jobs WHERE " + where)
        return statement

    async def _select(self, where: str, params: dict[str, Any]) -> list[JobRow]:
        async with self._auto.connect() as conn:
            return self._rows(await conn.execute(self._reads(where), params))

    async def get(self, job_id: int) -> JobRow | None:
        rows = await self._select(_BY_ID, {"id": int(job_id)})
        return rows[0] if rows else None

    async def get_many(self, ids: Sequence[int]) -> list[JobRow]:
        if not ids:
            return []
        statement = self._reads(_BY_IDS).bindparams(bindparam("ids", expanding=True))
        async with self._auto.connect() as conn:
            return self._rows(await conn.execute(statement, {"ids": [int(i) for i in ids]}))

    async def children(self, parent_id: int) -> list[JobRow]:
        return await self._select(_BY_PARENT, {"id": int(parent_id)})

    async def get_by_key(self, key: str) -> JobRow | None:
        rows = await self._select(_BY_KEY, {"key": key})
        return rows[0] if rows else None

    async def list_jobs(self, where: JobFilter, limit: int) -> list[JobRow]:
        clauses: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": int(limit)}
        for column in ("state", "queue", "key"):
            value = getattr(where, column)
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        pattern = ""
        if where.name is not None:
            # A plain word finds it anywhere in the dotted name ("typed" finds "jobs.users.typed").
            pattern = where.name if any(c in where.name for c in "*?[") else f"*{where.name}*"
            clauses.append("name LIKE :name_like ESCAPE '\\'")
            params["name_like"] = _glob_to_like(pattern)
        for column, op, value in (
            ("id", "<", where.before_id), ("created_at", ">=", where.created_after), ("created_at", "<", where.created_before),
        ):  # fmt: skip
            if value is not None:
                name = f"{column}_{'lt' if op == '<' else 'ge'}"
                clauses.append(f"{column} {op} :{name}")
                params[name] = value
        rows = await self._select(" AND ".join(clauses) + " ORDER BY id DESC LIMIT :limit", params)  # clauses: constants
        if where.name is not None and any(c in where.name for c in "?["):
            rows = [r for r in rows if fnmatch.fnmatchcase(r.name, pattern)]  # LIKE is a superset
        return rows

    async def stats(self) -> list[tuple[str, str, int]]:
        async with self._auto.connect() as conn:
            return [(str(q), str(s), int(n)) for q, s, n in (await conn.execute(_STATS)).all()]

    async def finished_since(self, since: float) -> int:
        async with self._auto.connect() as conn:
            return int((await conn.execute(_FINISHED_SINCE, {"since": since})).scalar() or 0)

    # -- flow control -----------------------------------------------------------------------------

    async def set_paused(self, queue: str, paused: bool) -> None:
        async with self._auto.connect() as conn:
            await conn.execute(_SET_PAUSED, {"queue": queue, "paused": 1 if paused else 0, "now": time.time()})

    async def paused_queues(self) -> list[str]:
        async with self._auto.connect() as conn:
            return [str(q) for (q,) in (await conn.execute(_PAUSED)).all()]

    # -- changes by people ------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> CancelResult:
        async with self._auto.connect() as conn:
            params = {"id": int(job_id), "now": time.time(), "error": _CANCELLED_QUEUED_ERROR}
            if (await conn.execute(_CANCEL_QUEUED, params)).rowcount:
                return CancelResult.CANCELLED
            state = (await conn.execute(_STATE_OF, {"id": int(job_id)})).scalar()
        if state is None:
            return CancelResult.NOT_FOUND
        if state == "running":
            return CancelResult.REQUESTED if await self._request_cancel(int(job_id)) else CancelResult.FINISHED
        return CancelResult.FINISHED

    @abstractmethod
    async def _request_cancel(self, job_id: int) -> bool:
        """Flag a running job for its worker; False if it is no longer running."""

    async def retry_one(self, job_id: int) -> bool:
        async with self.engine.begin() as conn:
            return (await conn.execute(_RETRY_ONE, {"id": int(job_id), "now": time.time()})).rowcount == 1

    async def retry_batch(self, state: str, batch: int = 1000) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(_RETRY_BATCH, {"state": state, "now": time.time(), "n": batch})).rowcount

    async def purge_batch(self, state: str, before: float, batch: int = 1000) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(_PURGE_BATCH, {"state": state, "before": before, "n": batch})).rowcount

    async def make_due(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        async with self._auto.connect() as conn:
            return (await conn.execute(_MAKE_DUE, {"ids": [int(i) for i in ids]})).rowcount

    async def dispose(self) -> None:
        await self.engine.dispose()

    # -- counters (runner_stats): written with the outcomes (see _finish_fast, _finish_each) ----

    async def stats_totals(self) -> list[StatsRow]:
        async with self._auto.connect() as conn:
            rows = (await conn.execute(_STATS_TOTALS)).all()
        return [StatsRow(0, str(r[0]), str(r[1]), str(r[2]), dict(zip(STATS_SUMS, map(_number, r[3:])))) for r in rows]

    async def stats_since(self, minute: int, per: str = "minute") -> list[StatsRow]:
        statement = _STATS_SINCE.get(per)
        if statement is None:
            raise ValueError(f"stats_since(per={per!r}); accepted: {', '.join(_STATS_SINCE)}")
        async with self._auto.connect() as conn:
            rows = (await conn.execute(statement, {"minute": int(minute)})).all()
        return [StatsRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), dict(zip(STATS_SUMS, map(_number, r[4:])))) for r in rows]

    # -- dashboard reads ------------------------------------------------------------------------

    async def queue_counts(self, now: float) -> list[QueueCounts]:
        found: dict[str, dict[str, Any]] = {}
        async with self._auto.connect() as conn:
            for queue, runnable, scheduled, oldest in (await conn.execute(_QUEUED_BY_QUEUE, {"now": now})).all():
                found.setdefault(queue, {}).update(
                    queued=int(runnable or 0), scheduled=int(scheduled or 0), oldest_runnable_at=oldest
                )
            for queue, n in (await conn.execute(_RUNNING_BY_QUEUE)).all():
                found.setdefault(queue, {})["running"] = int(n)
            for queue, n in (await conn.execute(_WAITING_BY_QUEUE)).all():
                found.setdefault(queue, {})["waiting"] = int(n)
            for queue, state, n in (await conn.execute(_ENDED_BY_QUEUE)).all():
                found.setdefault(queue, {})[state] = int(n)
        for queue in await self.paused_queues():
            found.setdefault(queue, {})["paused"] = True
        return [QueueCounts(queue=q, **found[q]) for q in sorted(found)]

    async def find_jobs(self, where: JobFilter, limit: int) -> JobPage:
        clauses, params = _filter_clauses(where)
        params["limit"] = int(limit)
        windowed = where.job_id is None and where.key is None and where.state in (None, "succeeded")
        before = where.before_id
        if before is None and where.created_before is not None:
            before = await self._id_created_by(where.created_before)
        if where.created_after is not None:
            # The range's other end by the same bisection: an hour three days ago is scanned as
            # that hour's rows, not as a window of the newest ones.
            start = await self._id_created_by(where.created_after)
            if start is not None:
                clauses.append("id > :created_from")
                params["created_from"] = start - 2 * _CLOCK_SLACK_IDS
                windowed = windowed and before is None
        floor: int | None = None
        if windowed:
            async with self._auto.connect() as conn:
                found = (await conn.execute(_WINDOW_FLOOR, {"before": before or _NO_ID, "window": SEARCH_WINDOW})).scalar()
            floor = None if found is None else int(found)
            if floor is not None:
                clauses.append("id > :floor")
                params["floor"] = floor
        if before is not None:
            clauses.append("id < :before")
            params["before"] = before
        rows = await self._select(" AND ".join(clauses) + " ORDER BY id DESC LIMIT :limit", params)  # clauses: constants
        if len(rows) == limit:
            return JobPage(rows, rows[-1].id, SEARCH_WINDOW if windowed else None)
        return JobPage(rows, None if floor is None else floor + 1, SEARCH_WINDOW if windowed and floor is not None else None)

    async def _id_created_by(self, t: float) -> int | None:
        """The first id created at or after ``t``, by bisection over the primary key: ids are
        handed out in creation order, so a time range starts its search there instead of at
        the newest row. Only a starting point: the exact ``created_at`` test is applied too."""
        async with self._auto.connect() as conn:
            low, high = (await conn.execute(_ID_RANGE)).one()
            if low is None or high is None:
                return None
            low, high = int(low), int(high) + 1
            while low < high:
                mid = (low + high) // 2
                created = (await conn.execute(_CREATED_AT_OR_AFTER, {"id": mid})).scalar()
                if created is None or created >= t:
                    high = mid
                else:
                    low = mid + 1
        return low + _CLOCK_SLACK_IDS

    async def running_jobs(self, limit: int = 1000) -> list[JobRow]:
        return await self._select(_RUNNING + " ORDER BY started_at LIMIT :limit", {"limit": int(limit)})

    async def nodes(self, since: float) -> list[NodeRow]:
        async with self._workers_connection() as conn:
            return [NodeRow(str(n), float(f), float(s)) for n, f, s in (await conn.execute(_NODES, {"since": since})).all()]

    async def schedule_names(self) -> list[str]:
        async with self._auto.connect() as conn:
            return [str(r[0]) for r in (await conn.execute(_SCHEDULE_NAMES)).all() if r[0] is not None]

    async def schedule_fires(self, name: str, limit: int = 5) -> list[tuple[float, int | None]]:
        async with self._auto.connect() as conn:
            rows = (await conn.execute(_SCHEDULE_FIRES, {"name": name, "n": int(limit)})).all()
        return [(float(f), None if j is None else int(j)) for f, j in rows]

    async def retry_jobs(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        async with self.engine.begin() as conn:
            return int((await conn.execute(_RETRY_IDS, {"ids": [int(i) for i in ids], "now": time.time()})).rowcount)

    async def cancel_jobs(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        params = {"ids": [int(i) for i in ids], "now": time.time(), "error": _CANCELLED_QUEUED_ERROR}
        async with self._auto.connect() as conn:
            cancelled = int((await conn.execute(_CANCEL_QUEUED_IDS, params)).rowcount)
            running = [int(r[0]) for r in (await conn.execute(_RUNNING_IDS, {"ids": params["ids"]})).all()]
        for job_id in running:
            cancelled += int(await self._request_cancel(job_id))
        return cancelled

    async def delete_jobs(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        async with self.engine.begin() as conn:
            return int((await conn.execute(_DELETE_IDS, {"ids": [int(i) for i in ids]})).rowcount)


# --- counters and dashboard reads: statements ----------------------------------------------------

SEARCH_WINDOW: Final = 100_000  # rows a page of an unindexed search examines at most
_NO_ID: Final = 2**63 - 1
_CLOCK_SLACK_IDS: Final = 1000  # producers' clocks differ a little: start a time range this far above
_ENDED: Final = "state IN ('failed', 'cancelled', 'expired')"  # the partial index runner_jobs_ended
# Sums as doubles: PostgreSQL would sum bigints into numeric, slow to decode by the thousand.
_SUM_LIST: Final = ", ".join(f"CAST(sum({c}) AS DOUBLE PRECISION)" for c in STATS_SUMS)
_STATS_TOTALS = text(
    f"SELECT name, queue, kind, {_SUM_LIST} FROM runner_stats GROUP BY name, queue, kind ORDER BY name, queue, kind"
)
# per minute and queue (the charts, the queues' last hour), per job name (what jobs cost), per queue
_STATS_SINCE: Final = {
    "minute": text(
        f"SELECT minute, '*', queue, kind, {_SUM_LIST} FROM runner_stats WHERE minute >= :minute"
        " GROUP BY minute, queue, kind ORDER BY minute, queue, kind"
    ),
    "name": text(
        f"SELECT 0, name, queue, kind, {_SUM_LIST} FROM runner_stats WHERE minute >= :minute"
        " GROUP BY name, queue, kind ORDER BY name, queue, kind"
    ),
    "queue": text(
        f"SELECT 0, '*', queue, kind, {_SUM_LIST} FROM runner_stats WHERE minute >= :minute"
        " GROUP BY queue, kind ORDER BY queue, kind"
    ),
}
_QUEUED_BY_QUEUE = text(
    "SELECT queue, sum(CASE WHEN run_at <= :now THEN 1 ELSE 0 END), sum(CASE WHEN run_at > :now THEN 1 ELSE 0 END),"
    " min(CASE WHEN run_at <= :now THEN run_at END) FROM runner_jobs WHERE state = 'queued' GROUP BY queue"
)
_RUNNING_BY_QUEUE = text("SELECT queue, count(*) FROM runner_jobs WHERE state = 'running' GROUP BY queue")
_WAITING_BY_QUEUE = text("SELECT queue, count(*) FROM runner_jobs WHERE state = 'waiting' GROUP BY queue")
_ENDED_BY_QUEUE = text(f"SELECT queue, state, count(*) FROM runner_jobs WHERE {_ENDED} GROUP BY queue, state")
_WINDOW_FLOOR = text("SELECT id FROM runner_jobs WHERE id < :before ORDER BY id DESC LIMIT 1 OFFSET :window")
_ID_RANGE = text("SELECT (SELECT min(id) FROM runner_jobs), (SELECT max(id) FROM runner_jobs)")
_CREATED_AT_OR_AFTER = text("SELECT created_at FROM runner_jobs WHERE id >= :id ORDER BY id LIMIT 1")
_RUNNING: Final = "state = 'running'"
_NODE_SEEN = text(
    "INSERT INTO runner_nodes (node, first_seen, seen_at) VALUES (:node, :now, :now)"
    " ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at"
)
_NODES = text("SELECT node, first_seen, seen_at FROM runner_nodes WHERE seen_at >= :since ORDER BY node")
# Distinct names by walking the primary key (a loose index scan): the history of a per-second
# schedule is 600,000 rows, and DISTINCT would read them all.
_SCHEDULE_NAMES = text(
    "WITH RECURSIVE n(name) AS (SELECT min(name) FROM runner_schedule UNION ALL"
    " SELECT (SELECT min(s.name) FROM runner_schedule s WHERE s.name > n.name) FROM n WHERE n.name IS NOT NULL)"
    " SELECT name FROM n WHERE name IS NOT NULL"
)
_SCHEDULE_FIRES = text("SELECT fire_at, job_id FROM runner_schedule WHERE name = :name ORDER BY fire_at DESC LIMIT :n")
_RETRY_IDS = text(f"UPDATE runner_jobs SET {_RETRY_SET} WHERE id IN :ids AND {_ENDED}").bindparams(
    bindparam("ids", expanding=True)
)
_CANCEL_QUEUED_IDS = text(
    "UPDATE runner_jobs SET state = 'cancelled', finished_at = :now, error = :error WHERE id IN :ids AND state = 'queued'"
).bindparams(bindparam("ids", expanding=True))
_RUNNING_IDS = text("SELECT id FROM runner_jobs WHERE id IN :ids AND state = 'running'").bindparams(
    bindparam("ids", expanding=True)
)
_DELETE_IDS = text("DELETE FROM runner_jobs WHERE id IN :ids AND state <> 'running'").bindparams(bindparam("ids", expanding=True))


def _filter_clauses(where: JobFilter) -> tuple[list[str], dict[str, Any]]:
    """WHERE terms (constants of this module; values are bound parameters) for ``find_jobs``."""
    clauses: list[str] = ["1 = 1"]
    params: dict[str, Any] = {}
    if where.state is not None:
        clauses.append("state = :state")
        params["state"] = where.state
        if where.state in ("failed", "cancelled", "expired"):
            clauses.append(_ENDED)  # implied, but SQLite needs it spelled out to use the partial index
    for column in ("queue", "key"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if where.job_id is not None:
        clauses.append("id = :job_id")
        params["job_id"] = int(where.job_id)
    if where.name is not None:
        clauses.append("name LIKE :name_prefix ESCAPE '\\'")
        params["name_prefix"] = _like_escape(where.name) + "%"
    if where.contains is not None:
        clauses.append("name LIKE :name_contains ESCAPE '\\'")
        params["name_contains"] = "%" + _like_escape(where.contains) + "%"
    if where.created_after is not None:
        clauses.append("created_at >= :created_after")
        params["created_after"] = float(where.created_after)
    if where.created_before is not None:
        clauses.append("created_at < :created_before")
        params["created_before"] = float(where.created_before)
    return clauses, params


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_SOURCE_LANE: Final = "{worker}/{lane}"


_RUN_BUCKETS: Final = tuple(f"run_b{i}" for i in range(len(BUCKETS)))
_WAIT_BUCKETS: Final = tuple(f"wait_b{i}" for i in range(len(BUCKETS)))


def tally_rows(outcomes: Sequence[Outcome], lanes: bool) -> list[dict[str, Any]]:
    """The counter deltas of ``outcomes`` (already known to have been written), one dict per
    (source, minute, name, queue, kind), every column of ``STATS_SUMS`` summed. Per outcome only
    its smallest bucket is counted; the cumulative histogram is summed once per row (SQLite's
    writer spent 7 us a job in the loop over every bucket)."""
    rows: dict[tuple[str, int, str, str, str], dict[str, Any]] = {}
    smallest: dict[tuple[str, int, str, str, str], tuple[list[int], list[int]]] = {}
    for o in outcomes:
        source, minute, name, queue, kind, run_s, wait_s, cost = tally_of(o, lanes)
        key = (source, minute, name, queue, kind)
        row = rows.get(key)
        if row is None:
            row = rows[key] = dict.fromkeys(STATS_SUMS, 0)
            row.update(source=source, minute=minute, name=name, queue=queue, kind=kind)
            smallest[key] = ([0] * (len(BUCKETS) + 1), [0] * (len(BUCKETS) + 1))
        row["n"] += 1
        row["run_s"] += run_s
        row["wait_s"] += wait_s
        if cost is not None:
            row["costed"] += 1
            row["statements"] += cost.statements
            row["db_s"] += cost.db_ms / 1000
            row["db_rows"] += cost.rows
            row["tx_s"] += cost.tx_ms / 1000
            row["pool_wait_s"] += cost.pool_wait_ms / 1000
        runs, waits = smallest[key]
        runs[bisect.bisect_left(BUCKETS, run_s)] += 1  # the first bound >= run_s; past the last: none
        waits[bisect.bisect_left(BUCKETS, wait_s)] += 1
    for key, row in rows.items():
        for names, firsts in zip((_RUN_BUCKETS, _WAIT_BUCKETS), smallest[key]):
            total = 0
            for column, first in zip(names, firsts):
                total += first
                row[column] = total
    return list(rows.values())


def tally_of(o: Outcome, lanes: bool) -> tuple[str, int, str, str, str, float, float, Any]:
    """(source, minute, name, queue, kind, run seconds, wait seconds, cost) of one outcome.
    ``lanes``: the writer keeps one counter row per job slot (PostgreSQL, where a worker's
    concurrent job transactions would otherwise queue on one row)."""
    record = o.record
    source = _SOURCE_LANE.format(worker=record.worker, lane=o.lane) if lanes and o.lane >= 0 else record.worker
    kind = o.kind or (o.state if o.state != "queued" else GIVEN_BACK)
    run_s = max(0.0, record.finished_at - record.started_at)
    return source, int(record.finished_at // 60), o.name or "?", o.queue or "?", kind, run_s, o.waited, record.cost


# --- rows and parameters ------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def insert_row(env: Envelope, now: float, max_payload: int) -> dict[str, Any]:
    """An envelope as INSERT parameters, with the payload limit in bytes over every JSON column
    and the nesting limit checked; raises naming the culprit."""
    args = encode_json_bytes(env.args, f"arguments of {env.name}")
    kwargs = encode_json_bytes(env.kwargs, f"keyword arguments of {env.name}")
    meta = None if env.meta is None else encode_json_bytes(env.meta, "job meta")
    callbacks = encode_json_bytes(env.callbacks, "chained jobs") if env.callbacks else None
    size = len(args) + len(kwargs) + len(meta or b"") + len(callbacks or b"")
    if size > max_payload:
        raise PayloadTooLarge(
            f"arguments of {env.name} are {size:,} bytes of JSON (args, kwargs, meta and chained jobs together); "
            f"the limit is {max_payload:,} (RUNNER_MAX_PAYLOAD / --max-payload); pass a reference (an id, a path) instead of the data"
        )
    for value, blob, what in (
        (env.args, args, f"arguments of {env.name}"),
        (env.kwargs, kwargs, f"keyword arguments of {env.name}"),
        (env.meta, meta, "job meta"),
    ):
        if blob is not None and blob.count(b"[") + blob.count(b"{") > MAX_DEPTH:
            check_depth(value, what)
    return {
        "v": env.v or PROTOCOL_VERSION,
        "name": env.name,
        "args": args.decode(),
        "kwargs": kwargs.decode(),
        "queue": env.queue,
        "priority": env.priority,
        "max_attempts": env.max_attempts,
        "run_at": now if env.run_at is None else env.run_at,
        "expires_at": env.expires_at,
        "timeout": env.timeout,
        "hard_timeout": env.hard_timeout,
        "concurrency_key": env.concurrency_key,
        "concurrency_limit": env.concurrency_limit,
        "rate_key": env.rate_key,
        "rate_limit": env.rate_limit,
        "rate_period": env.rate_period,
        "key": env.key,
        "key_since": None if env.key_ttl is None else now - env.key_ttl,
        "parent_id": env.parent_id,
        "root_id": env.root_id,
        "meta": None if meta is None else meta.decode(),
        "callbacks": None if callbacks is None else callbacks.decode(),
        "created_at": now,
        "state": State.QUEUED,
        "waiting_for": 0,
        "on_parent_failure": env.on_parent_failure,
        "with_results": env.with_results,
        "group_id": env.group_id,
        "has_dependants": 0,
    }


def _without_key_since(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("key_since", None)
    return row


def plain_success(o: Outcome, worker: str) -> bool:
    """A success by ``worker`` that sets nothing but its result and end time: no error, note,
    measured cost, new arguments, chained jobs or counter lane. Every other column keeps the row's
    value and its attempt record follows from the row, so a driver may write it with a narrower
    statement (PostgreSQL's ``_SUCCEEDED``, SQLite's ``_SUCCEED``), leaving the same row and
    counters as the general write would."""
    record = o.record
    return (
        o.kind == State.SUCCEEDED
        and o.error is None
        and not o.children
        and o.args is None
        and o.kwargs is None
        and o.run_at is None
        and o.lane < 0
        and record.cost is None
        and not record.note
        and record.worker == worker
        and record.finished_at == o.finished_at
    )


def outcome_params(o: Outcome) -> dict[str, Any]:
    return {
        "id": o.job_id,
        "token": o.token,
        "state": o.state,
        "result": None if o.result is None else o.result.decode(),
        "error": None if o.error is None else _encode(o.error).decode(),
        "run_at": o.run_at,
        "finished_at": o.finished_at,
        "attempt": o.attempt,
        "lost": o.lost,
        "args": None if o.args is None else o.args.decode(),
        "kwargs": None if o.kwargs is None else o.kwargs.decode(),
        "record": _encode(o.record).decode(),
    }


def claim_columns(prefix: str = "", blob: bool = False) -> str:
    """CLAIM_COLUMNS as a select list; ``blob`` casts text columns to bytes (SQLite)."""
    parts = []
    for column in CLAIM_COLUMNS:
        ref = f"{prefix}{column}"
        parts.append(f"CAST({ref} AS BLOB)" if blob and column in TEXT_COLUMNS else ref)
    return ", ".join(parts)


def _glob_to_like(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch in "?[]":
            out.append("_" if ch == "?" else "%")
        else:
            out.append(ch)
    return "".join(out)


def _number(value: Any) -> float:
    """A summed counter as a float (PostgreSQL sums bigints into numeric)."""
    return float(value or 0)
