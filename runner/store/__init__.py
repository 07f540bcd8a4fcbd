"""Every SQL statement runner issues, one module per job:

* ``enqueue.py``  -- write new job rows (one, batched, COPY, or in the caller's transaction)
* ``claim.py``    -- claim runnable jobs under a lease; renew it; rescue what dead workers held
* ``finish.py``   -- write an attempt's outcome, progress and chained children, token-guarded
* ``cancel.py``   -- cancel queued jobs at once, flag running ones for their worker
* ``periodic.py`` -- fire each periodic job once per fire time; purge old results
* ``reads.py``    -- read jobs back; the workers table
* ``admin_queries.py`` -- what ``runner status`` and ``runner jobs`` read and change

The worker, client and CLI never see SQL; they call a ``Store``. Each state change is ONE
statement guarded by ``state = 'running' AND lease_token = :token`` (the fencing token bumped by
every claim), so a worker that lost its lease -- paused, partitioned, or presumed dead -- can
never overwrite a newer attempt: its UPDATE matches no row.
"""

from __future__ import annotations

from .admin_queries import AdminQueries
from .base import error_json
from .cancel import CancelStatements
from .claim import ClaimStatements
from .finish import FinishStatements, Outcome
from .periodic import PeriodicStatements
from .reads import JobRow, ReadStatements

__all__ = ["AdminQueries", "JobRow", "Outcome", "Store", "error_json"]


class Store(FinishStatements, PeriodicStatements, ClaimStatements, CancelStatements, ReadStatements):
    """The queue, reached through one engine. Stateless beyond the engine and the per-loop
    batching of concurrent single enqueues: safe to share."""
