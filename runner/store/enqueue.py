"""Write new job rows: one, a batch, a COPY, or inside the caller's transaction.

Which path a call takes, fastest first:

* many keyless rows on PostgreSQL: ids from one ``nextval`` batch, then one binary ``COPY``;
* one keyless row with no connection given: the per-loop ``EnqueueBatcher`` (concurrent single
  calls share one statement and one commit; a lone call is one prepared statement);
* otherwise rows go one ``INSERT`` per idempotency key (the key may already be live) and one
  multi-row ``INSERT`` for the rest, on the caller's connection if there is one.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..db_unavailable import database_unavailable
from ..enqueue_batching import EnqueueBatcher
from ..errors import PayloadTooLarge
from ..gc_pause import paused_gc
from ..wire import PROTOCOL_VERSION, Envelope, encode_json
from .base import StoreBase

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

_BATCH_ENCODER = msgspec.json.Encoder()
_encode = msgspec.json.Encoder().encode


class EnqueueStatements(StoreBase):
    def __init__(self, engine: AsyncEngine, *, max_payload: int = 1 << 20) -> None:
        super().__init__(engine, max_payload=max_payload)
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EnqueueBatcher] = weakref.WeakKeyDictionary()

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
            batcher = self._batchers[loop] = EnqueueBatcher(self._insert_rows, database_unavailable)
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
        found: list[int | None] = [None] * len(rows)
        plain = [i for i, row in enumerate(rows) if row["key"] is None]
        for i, row in enumerate(rows):
            if row["key"] is not None:
                found[i] = await self._insert_one(conn, row, now)
        if plain:
            new_ids = await self._allocate_ids(conn, len(plain))
            for i, new_id in zip(plain, new_ids):
                rows[i]["id"] = new_id
                found[i] = new_id
            await self._insert_many(conn, [_without_key_since(rows[i]) for i in plain], now)
        return [int(i) for i in found if i is not None]

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


def _copy_records(envelopes: Sequence[Envelope], ids: Sequence[int], now: float, max_payload: int) -> list[tuple[Any, ...]] | None:
    """Rows for COPY, built straight from the envelopes (the bulk hot path: no dicts, no
    per-row message strings). ``None`` when some row is bad: the caller then takes the
    row-by-row path, whose errors name the culprit."""
    records: list[tuple[Any, ...]] = []
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
