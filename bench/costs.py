"""What one job costs, measured around a run: CPU of the processes doing the work (runner's serve
and workers, or a limit's processes), CPU of the database backends serving them (PostgreSQL),
and transactions committed per job (``pg_stat_database``; an autocommit statement counts one, so
this is the round trips that commit; statements inside a transaction are not seen -- socket
writes are not in ``/proc/PID/io`` either, so count those with ``strace -c -e trace=sendto``).

CPU and writes are taken over the busy span only (first job started → last finished, from the
table), so imports and connection set-up do not count; transactions are counted over the whole
run (a start-up adds a handful, nothing next to thousands of jobs).
"""

from __future__ import annotations

import asyncio
import time

from .cpu import BackendCPU, TreeCPU
from .pgstats import database_counters


class Meter:
    """Start right after the processes are spawned; ``figures`` once they have exited."""

    def __init__(self, url: str, pids: list[int]) -> None:
        self.url = url
        self.pg = url.startswith("postgresql")
        self.trees = [TreeCPU(pid).start() for pid in pids]
        self.db = BackendCPU(url.rsplit("/", 1)[1]).start() if self.pg else None

    @classmethod
    def before(cls, url: str) -> int | None:
        """Transactions so far (call before spawning), or None on SQLite."""
        return asyncio.run(database_counters(url))[0] if url.startswith("postgresql") else None

    def figures(self, prefix: str, n: int, t0: float, t1: float, xacts_before: int | None) -> dict[str, float]:
        for tree in self.trees:
            tree.stop()
        if self.db is not None:
            self.db.stop()
        host = [tree.between(t0, t1) for tree in self.trees]
        out = {
            f"{prefix}_host_ms": sum(h[0] for h in host) / n * 1000,
        }
        if self.db is not None:
            out[f"{prefix}_db_ms"] = self.db.between(t0, t1)[0] / n * 1000
        if xacts_before is not None:
            time.sleep(0.5)  # exiting backends flush their counters to shared stats
            out[f"{prefix}_xacts"] = (asyncio.run(database_counters(self.url))[0] - xacts_before) / n
        return out
