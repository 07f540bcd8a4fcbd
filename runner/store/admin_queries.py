"""Reads and bulk changes for ``runner status`` and ``runner jobs``.

Bulk changes go in batches, so a million-row purge or retry never holds a long lock and the CLI
can show progress between batches.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text

from .base import StoreBase
from .reads import JOB_COLUMNS, JobRow

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
    f"SELECT {JOB_COLUMNS} FROM runner_jobs"
    " WHERE (CAST(:state AS TEXT) IS NULL OR state = :state) AND (CAST(:queue AS TEXT) IS NULL OR queue = :queue)"
    " AND (CAST(:name AS TEXT) IS NULL OR name = :name) ORDER BY id DESC LIMIT :limit"
)
_PURGE_BATCH = text(
    "DELETE FROM runner_jobs WHERE id IN (SELECT id FROM runner_jobs"
    " WHERE finished_at IS NOT NULL AND finished_at < :before AND state = :state ORDER BY finished_at LIMIT :n)"
)


class AdminQueries:
    def __init__(self, store: StoreBase) -> None:
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

    async def list_jobs(self, *, state: str | None, queue: str | None, name: str | None, limit: int) -> list[JobRow]:
        params = {"limit": limit, "state": state, "queue": queue, "name": name}
        async with self.store._read() as conn:
            return [JobRow(*row) for row in (await conn.execute(_LIST_JOBS, params)).all()]

    async def retry_one(self, job_id: int) -> bool:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_RETRY_ONE, {"id": job_id, "now": time.time()})).rowcount == 1

    async def retry_batch(self, state: str, batch: int = 1000) -> int:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_RETRY_BATCH, {"state": state, "now": time.time(), "n": batch})).rowcount

    async def purge_batch(self, state: str, before: float, batch: int = 1000) -> int:
        async with self.store.engine.begin() as conn:
            return (await conn.execute(_PURGE_BATCH, {"state": state, "before": before, "n": batch})).rowcount
