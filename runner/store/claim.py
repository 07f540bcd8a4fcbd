"""Claim jobs, hold their leases, and give back what dead or stopping workers held.

A claim is ONE statement that moves up to ``n`` runnable rows to ``running``, bumps each row's
fencing token (``lease_token``) and stamps the lease (owner, expiry). Every later write by that
attempt is guarded by the token (``finish.py``), so a worker that lost its lease can never
overwrite a newer attempt. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``; SQLite with
``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` under ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text

from ..wire import Claimed
from .base import StoreBase, error_json

_CLAIM_COLUMNS = "id, name, args, kwargs, queue, attempt, max_attempts, lease_token, expires_at, parent_id, root_id, meta, created_at, run_at"

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
    UPDATE runner_jobs SET
        state = 'running', attempt = attempt + 1, lease_token = lease_token + 1,
        lease_owner = :owner, lease_expires_at = :lease_until, started_at = :now, cancel_requested = 0
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

_MAKE_DUE = text("UPDATE runner_jobs SET run_at = 0 WHERE state = 'queued' AND id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)


class ClaimStatements(StoreBase):
    async def claim(self, owner: str, queues: Sequence[str], n: int, lease_ttl: float) -> list[Claimed]:
        """Lease up to ``n`` runnable jobs, taking the queues in the order given."""
        now = time.time()
        statement = _CLAIM_PG if self.backend == "postgresql" else _CLAIM_SQLITE
        claimed: list[Claimed] = []
        async with self._read() as conn:  # each claim statement is atomic by itself
            for queue in queues:
                if len(claimed) >= n:
                    break
                params = {"queue": queue, "now": now, "n": n - len(claimed), "owner": owner, "lease_until": now + lease_ttl}
                result = await conn.execute(statement, params)
                claimed.extend(Claimed(*row) for row in result.all())
        return claimed

    async def has_runnable(self, queues: Sequence[str], within: float = 0.0) -> bool:
        return await self._any_row(_PROBE, queues, time.time() + within)

    async def has_expiring(self, queues: Sequence[str], within: float) -> bool:
        """Running jobs whose lease ends within ``within`` s: a dead host's work, soon ours."""
        return await self._any_row(_EXPIRING, queues, time.time() + within)

    async def _any_row(self, probe: Any, queues: Sequence[str], until: float) -> bool:
        async with self._read() as conn:
            for queue in queues:
                if (await conn.execute(probe, {"queue": queue, "until": until})).first() is not None:
                    return True
        return False

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

    async def make_due(self, ids: Sequence[int]) -> int:
        """Let queued jobs run now whatever their ETA or backoff (eager mode runs retries at once)."""
        if not ids:
            return 0
        async with self._read() as conn:
            return (await conn.execute(_MAKE_DUE, {"ids": [int(i) for i in ids]})).rowcount
