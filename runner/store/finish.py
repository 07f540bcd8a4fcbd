"""Write what a running attempt produces: its outcome, its progress, its chained children.

Each write is guarded by ``id``, the attempt's fencing token and ``state = 'running'``: a worker
that lost its lease matches no row, so it can never overwrite a newer attempt. Outcomes of many
jobs go in one statement (``unnest`` on PostgreSQL, ``executemany`` on SQLite); an outcome with
chained children is written with them in one transaction, and only if its guard matched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..wire import Envelope
from .enqueue import EnqueueStatements

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

_PROGRESS = text(
    "UPDATE runner_jobs SET progress = :progress WHERE id = :id AND lease_token = :token AND state = 'running'"
)


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


class FinishStatements(EnqueueStatements):
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

    async def set_progress(self, job_id: int, token: int, progress: str, conn: AsyncConnection | None = None) -> bool:
        params = {"id": job_id, "token": token, "progress": progress}
        if conn is not None:
            return (await conn.execute(_PROGRESS, params)).rowcount == 1
        async with self._read() as own:
            return (await own.execute(_PROGRESS, params)).rowcount == 1
