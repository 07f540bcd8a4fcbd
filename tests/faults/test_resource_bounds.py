"""Scenario 8: a longer run must not grow. Worker RSS stays within ``RSS_GROWTH_MB`` of its level
once warm, and the database never sees more than workers × (concurrency + 1 + overflow) pool
connections plus one LISTEN connection per worker and a small constant.

The bound is documented in the README ("Resource bounds")."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from runner.worker import POOL_OVERFLOW
from tests.apps import basic

from ..conftest import sql
from ..serving import enqueue, prepare, serve_args, states
from . import scaled

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

JOBS = scaled(4000)
WORKERS, CONCURRENCY = 2, 8
RSS_GROWTH_MB = 15


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_rss_and_connections_stay_bounded(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    enqueue(pg_url, [basic.record.call(f"b{i}") for i in range(JOBS)])
    dbname = pg_url.rsplit("/", 1)[1]
    proc = serve(*serve_args(pg_url, "-w", str(WORKERS), "-c", str(CONCURRENCY), "--burst"))
    samples: dict[int, list[tuple[int, float]]] = {}
    peak_connections = 0
    while proc.proc.poll() is None:
        done = states(pg_url).get("succeeded", 0)
        for pid in proc.worker_pids():
            if (mb := rss_mb(pid)) is not None:
                samples.setdefault(pid, []).append((done, mb))
        (n,) = sql(pg_url, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'")[0]
        peak_connections = max(peak_connections, n - 1)  # minus this query's own connection
        time.sleep(0.2)
    assert proc.proc.returncode == 0, proc.output[-3000:]
    assert states(pg_url) == {"succeeded": JOBS}
    limit = WORKERS * (CONCURRENCY + 1 + POOL_OVERFLOW) + WORKERS + 2
    assert peak_connections <= limit, f"{peak_connections} connections; the bound is {limit}"
    growths = []
    for points in samples.values():
        warm = [mb for done, mb in points if done >= JOBS // 5]
        if len(warm) >= 3:
            growths.append(max(warm) - warm[0])
    assert growths, "no worker lived long enough to be sampled"
    assert max(growths) <= RSS_GROWTH_MB, f"worker RSS grew by {max(growths):.1f} MB after warm-up"
    print(
        f"\nresource bounds: peak {peak_connections} connections (bound {limit}), RSS growth after warm-up {max(growths):.1f} MB"
    )
