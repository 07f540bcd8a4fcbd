"""Read jobs back: by id, by ids, by parent, by idempotency key; the workers table.

Handles, the CLI and the Celery shim's ``AsyncResult`` read rows through here. Reads run in
autocommit, so on SQLite they never take the write lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text

from .base import StoreBase

JOB_COLUMNS = (
    "id, name, queue, priority, state, attempt, max_attempts, lost, args, kwargs, result, error, progress,"
    " key, parent_id, root_id, meta, lease_owner, created_at, run_at, started_at, finished_at, expires_at"
)
_GET = text(f"SELECT {JOB_COLUMNS} FROM runner_jobs WHERE id = :id")
_GET_MANY = text(f"SELECT {JOB_COLUMNS} FROM runner_jobs WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
_CHILDREN = text(f"SELECT {JOB_COLUMNS} FROM runner_jobs WHERE parent_id = :id ORDER BY id")  # runner_jobs_parent
# Live keys use the unique partial index; a finished job's key is found by a scan (rarely needed).
_BY_KEY = text(f"SELECT {JOB_COLUMNS} FROM runner_jobs WHERE key = :key ORDER BY id DESC LIMIT 1")

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


class ReadStatements(StoreBase):
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

    async def worker_seen(self, owner: str, node: str, pid: int, queues: str, done: int) -> None:
        """Heartbeat into ``runner_workers``, which ``runner status`` lists."""
        async with self._read() as conn:
            await conn.execute(
                _WORKER_UPSERT,
                {"owner": owner, "node": node, "pid": pid, "queues": queues, "now": time.time(), "done": done},
            )

    async def worker_gone(self, owner: str) -> None:
        async with self._read() as conn:
            await conn.execute(_WORKER_DELETE, {"owner": owner})
