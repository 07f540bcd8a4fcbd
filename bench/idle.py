"""Idle host: CPU of a ``runner serve`` with nothing to do (supervisor and every worker), and on
PostgreSQL of the server backends it keeps busy meanwhile (LISTEN, polls, lease renewals).

A host that waits for work should cost nothing worth noticing: the target is ≤ 1 % of one core.
The serve is started, given time to settle (start-up CPU is not idle CPU), then sampled for
``seconds`` with psutil.
"""

from __future__ import annotations

import asyncio
import time

from .cpu import BackendCPU, TreeCPU
from .procs import wait_for
from .workloads_runner import _migrate, _workers, serve

SETTLE = 3.0


def run_idle(url: str, workers: int, concurrency: int, seconds: float) -> dict[str, float]:
    asyncio.run(_migrate(url))
    child = serve("idle", url, workers, concurrency)
    try:

        def ready() -> bool:
            child.check_alive()
            return len(asyncio.run(_workers(url))) >= workers

        wait_for(ready, 60, what="runner start-up")
        time.sleep(SETTLE)
        host = TreeCPU(child.proc.pid).start()
        db = BackendCPU(url.rsplit("/", 1)[1]).start() if url.startswith("postgresql") else None
        t = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - t
        child.check_alive()
        figures = {"idle_cpu_pct": host.stop() / wall * 100}
        if db is not None:
            figures["idle_db_cpu_pct"] = db.stop() / wall * 100
    finally:
        child.stop()
    return figures
