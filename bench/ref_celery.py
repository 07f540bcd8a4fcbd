"""Reference: Celery 5, Redis broker, prefork pool (``-c 2`` and ``-c 8``), tasks in
``celery_tasks.py``. W1 no-op (single ``delay()`` and drain), W2 (NullPool + ``asyncio.run``,
against the same PostgreSQL), W3 (latency). Celery has no bulk or async enqueue: those cells stay
empty."""

from __future__ import annotations

import asyncio
import time

import redis

from . import seed
from .procs import Child, python, wait_for
from .settings import REDIS_URL
from .stats import best_rate, latency_figures


def _worker(tag: str, concurrency: int, db_url: str = "sqlite:////tmp/unused.db") -> Child:
    args = ["-m", "celery", "-A", "bench.celery_tasks", "worker", "-P", "prefork", "-c", str(concurrency), "-Q", "bench"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    return Child(f"celery-c{concurrency}-{tag}", python(*args), env={"BENCH_DB_URL": db_url, "BENCH_REDIS_URL": REDIS_URL})


def _fresh_redis() -> redis.Redis:
    """The benchmark's own Redis database (15 by default), emptied."""
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    return r


def run_w1(n: int, n_single: int, concurrency: int) -> dict[str, float]:
    from .celery_tasks import noop

    r = _fresh_redis()
    noop.delay()  # connect outside the timing
    sync_rate = best_rate(noop.delay, n_single)
    r.flushdb()
    for _ in range(n):
        noop.delay()
    child = _worker("w1", concurrency)
    try:
        wait_for(lambda: (child.check_alive(), int(r.get("bench:done") or 0) > 0)[1], 120, 0.002, "Celery start-up")
        first = time.perf_counter()
        wait_for(lambda: int(r.get("bench:done") or 0) >= n, 900, 0.005, "Celery W1 drain")
        drain = n / (time.perf_counter() - first)
        child.sample_once()
    finally:
        child.stop()
    return {"enqueue_sync": sync_rate, "drain": drain, "rss_mb": child.worker_peak_mb()}


def run_w2(url: str, n: int, users: int, concurrency: int) -> dict[str, float]:
    from .celery_tasks import activate_task

    _fresh_redis()
    asyncio.run(seed.seed_users(url, users))
    for i in range(1, n + 1):
        activate_task.delay(i)
    figures = asyncio.run(seed.watch_w2(url, n, lambda: [_worker("w2", concurrency, url)], 1800))
    figures["w2_failed"] = max(0.0, -figures["w2_active_off"])  # a task that raised leaves its user pending
    return figures


def run_w3(n: int, rate: float, concurrency: int) -> dict[str, float]:
    from .celery_tasks import latency

    r = _fresh_redis()
    child = _worker("w3", concurrency)
    try:
        latency.delay(time.time())  # the first task proves the pool is up
        wait_for(lambda: (child.check_alive(), r.llen("bench:latency") >= 1)[1], 60, what="Celery start-up")
        time.sleep(1.0)  # idle
        r.delete("bench:latency")
        start = time.perf_counter()
        for i in range(n):
            latency.delay(time.time())
            time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        wait_for(lambda: r.llen("bench:latency") >= n, 60, what="Celery W3")
    finally:
        child.stop()
    return latency_figures([float(v) * 1000 for v in r.lrange("bench:latency", 0, -1)])
