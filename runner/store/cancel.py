"""Cancel a job: a queued one at once, a running one by flagging it for its worker.

The worker polls ``cancel_requests`` for the jobs it holds and fires their cancel scopes; the
job's session rolls back and its outcome (``cancelled``) is written with the usual guard.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from ..wire import State
from .base import StoreBase, error_json

_CANCEL_QUEUED = text(
    "UPDATE runner_jobs SET state = 'cancelled', finished_at = :now,"
    " error = :error WHERE id = :id AND state = 'queued'"
)
_CANCEL_RUNNING = text("UPDATE runner_jobs SET cancel_requested = 1 WHERE id = :id AND state = 'running'")
_CANCEL_REQUESTS = text(
    "SELECT id, lease_token FROM runner_jobs WHERE state = 'running' AND lease_owner = :owner AND cancel_requested = 1"
)


class CancelStatements(StoreBase):
    async def cancel(self, job_id: int) -> str | None:
        """Cancel a queued job at once, or ask its worker to stop it; returns what happened."""
        error = error_json("Cancelled", "cancelled before it started")
        async with self._read() as conn:
            if (await conn.execute(_CANCEL_QUEUED, {"id": job_id, "now": time.time(), "error": error})).rowcount:
                return State.CANCELLED
            if (await conn.execute(_CANCEL_RUNNING, {"id": job_id})).rowcount:
                return "cancelling"
        return None

    async def cancel_requests(self, owner: str) -> list[tuple[int, int]]:
        """(id, token) of running jobs of this owner that someone asked to cancel."""
        async with self._read() as conn:
            return [(int(a), int(b)) for a, b in (await conn.execute(_CANCEL_REQUESTS, {"owner": owner})).all()]
