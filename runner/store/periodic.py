"""Fire periodic jobs once per fire time, however many schedulers run, and purge old results.

Firing inserts (schedule name, fire time) into ``runner_schedule`` and the job row in one
transaction; the primary key makes every other scheduler's insert a no-op, so each fire time
becomes exactly one job. Result retention deletes finished jobs in small batches so that the
delete never holds SQLite's write lock for long.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from ..wire import Envelope
from .enqueue import EnqueueStatements

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


class PeriodicStatements(EnqueueStatements):
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

    async def purge_finished(self, before: float, batch: int = 500) -> int:
        """Delete one small batch of jobs that finished before ``before`` (result retention)."""
        async with self._read() as conn:
            return (await conn.execute(_PURGE_FINISHED, {"before": before, "n": batch})).rowcount
