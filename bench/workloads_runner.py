"""runner under W1 (no-op: single and bulk enqueue, then drain), W2 (the database job) and W3
(enqueue→start latency), on one broker URL (SQLite file or PostgreSQL database).

Every rate comes from the queue table itself: ``created_at`` (producer clock), ``started_at`` and
``finished_at`` (worker clocks, float epoch seconds, same host), so process start-up and the
``--burst`` exit check never count as work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text

from runner.drivers import open_driver
from runner.session import create_engine

from . import seed
from .bench_app import activate_job, app, noop
from .costs import Meter
from .procs import Child, python, wait_for
from .settings import WORK
from .stats import best_rate, best_rate_async, latency_figures

PRODUCERS = 16  # concurrent async producers for the single-call async enqueue figure


async def sql(url: str, statement: str) -> list[Any]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def _workers(url: str) -> list[Any]:
    driver = open_driver(url, pool_size=1)
    try:
        return await driver.workers(since=0.0)
    finally:
        await driver.dispose()


async def _migrate(url: str) -> None:
    driver = open_driver(url, pool_size=1)
    await driver.migrate()
    await driver.dispose()


def serve(tag: str, url: str, workers: int, concurrency: int, *extra: str) -> Child:
    args = ["-m", "runner", "serve", "-A", "bench.bench_app", "--broker", url, "-w", str(workers), "-c", str(concurrency)]
    return Child(f"runner-{tag}", python(*args, "--log-level", "warning", "--no-scheduler", *extra))


def _span(url: str, after_id: int = 0) -> tuple[int, float, float]:
    """Succeeded jobs with ids above ``after_id`` (rows seeded before are not this run's), and
    their first start and last finish."""
    [(n, first, last)] = asyncio.run(
        sql(
            url,
            f"SELECT count(*), min(started_at), max(finished_at) FROM runner_jobs WHERE state = 'succeeded' AND id > {int(after_id)}",
        )
    )
    return int(n), float(first or 0), float(last or 0)


@contextlib.contextmanager
def _producer(url: str) -> Iterator[None]:
    """Point the bench app's client at ``url`` (sync callers); close its engine afterwards."""
    app.configure(broker=url)
    try:
        yield
    finally:
        app.client.close()


@contextlib.asynccontextmanager
async def _async_producer(url: str) -> AsyncIterator[None]:
    app.configure(broker=url)
    try:
        yield
    finally:
        await app.client.aclose()


def enqueue_sync_rate(url: str, n: int) -> float:
    """``job.defer()`` from plain sync code, one call at a time (the client runs its own loop in
    a background thread for sync callers)."""
    with _producer(url):
        noop.defer()  # connect and prepare outside the timing
        return best_rate(noop.defer, n)


async def enqueue_async_rate(url: str, n: int) -> float:
    """``await job.defer_async()``, one job per call, from PRODUCERS concurrent tasks."""
    async with _async_producer(url):
        await asyncio.gather(*(noop.defer_async() for _ in range(PRODUCERS)))  # open the pool

        async def producer(k: int) -> None:
            for _ in range(k):
                await noop.defer_async()

        per = n // PRODUCERS
        t = time.perf_counter()
        await asyncio.gather(*(producer(per) for _ in range(PRODUCERS)))
        return per * PRODUCERS / (time.perf_counter() - t)


async def enqueue_one_at_a_time(url: str, n: int) -> float:
    """``await job.defer_async()`` from one task, each call awaited before the next: the latency
    of one enqueue, with nothing to batch with."""
    async with _async_producer(url):
        await noop.defer_async()  # connect and prepare outside the timing
        return await best_rate_async(noop.defer_async, n)


async def enqueue_bulk_rate(url: str, n: int, per_call: int | None = None) -> float:
    """``await app.defer_many_async([...])``: N calls in one call, or in calls of ``per_call``.
    The table is emptied first (TRUNCATE: no dead rows left for the drain to step over)."""
    async with _async_producer(url):
        await app.defer_many_async([noop.call()])  # connect outside the timing
        await truncate(url)
        t = time.perf_counter()
        done = 0
        while done < n:
            k = min(per_call or n, n - done)
            done += len(await app.defer_many_async([noop.call() for _ in range(k)]))
        rate = n / (time.perf_counter() - t)
    assert done == n
    return rate


async def truncate(url: str) -> None:
    await sql(url, "DELETE FROM runner_jobs" if url.startswith("sqlite") else "TRUNCATE runner_jobs")


def run_w1(url: str, n: int, n_single: int, workers: int, concurrency: int, profile: Path | None = None) -> dict[str, float]:
    asyncio.run(_migrate(url))
    sync_rate = enqueue_sync_rate(url, n_single)
    async_rate = asyncio.run(enqueue_async_rate(url, n_single))
    one_rate = asyncio.run(enqueue_one_at_a_time(url, n_single))
    bulk_1k = asyncio.run(enqueue_bulk_rate(url, n, 1_000))
    bulk_rate = asyncio.run(enqueue_bulk_rate(url, n))  # empties the table first: the drain takes these N
    spawned = time.time()
    xacts = Meter.before(url)
    child = serve("w1", url, workers, concurrency, "--burst")
    meter = Meter(url, [child.proc.pid])
    spy = _profile(child, profile) if profile is not None else None
    try:
        child.wait(600)
    finally:
        child.stop()
        if spy is not None:
            spy.wait(30)
    done, first, last = _span(url)
    if done != n:
        raise AssertionError(f"runner W1: {done} of {n} jobs succeeded")
    return {
        "enqueue_sync": sync_rate, "enqueue_async": async_rate, "enqueue_async1": one_rate,
        "enqueue_bulk_1k": bulk_1k, "enqueue_bulk": bulk_rate,
        "drain": n / (last - first), "startup_s": first - spawned, "rss_mb": child.worker_peak_mb(),
        **meter.figures("drain", n, first, last, xacts),
    }  # fmt: skip


def _profile(child: Child, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the supervisor and its workers for the whole drain (collapsed stacks)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(WORK / "logs" / "py-spy.log", "wb")
    return subprocess.Popen(
        [spy, "record", "--subprocesses", "--nonblocking", "--rate", "250", "--format", "raw", "-o", str(out), "-p", str(child.proc.pid)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def run_w2(
    url: str,
    n: int,
    users: int,
    workers: int,
    concurrency: int,
    *,
    at_least_once: bool = False,
    db_cost: bool = True,
    profile: Path | None = None,
) -> dict[str, float]:
    """``at_least_once``: the same database given as ``--database`` under another spelling of its
    URL, so the worker treats it as separate: the job commits, then its completion is written in
    a batch (what pgqueuer and Celery do). The default row is exactly-once: the completion rides
    in the job's own transaction, one more statement per job."""
    asyncio.run(_migrate(url))
    asyncio.run(seed.seed_users(url, users))

    async def enqueue() -> None:
        async with _async_producer(url):
            await app.defer_many_async([activate_job.call(i) for i in range(1, n + 1)])

    asyncio.run(enqueue())
    before = asyncio.run(seed.sessions_opened(url))
    xacts = Meter.before(url)
    extra: tuple[str, ...] = ("--database", url + "?") if at_least_once else ()  # "db?" is "db", spelled differently
    if not db_cost:
        extra += ("--no-db-cost",)
    child = serve("w2", url, workers, concurrency, "--burst", *extra)
    meter = Meter(url, [child.proc.pid])
    spy = _profile(child, profile) if profile is not None else None
    try:
        child.wait(900)
    finally:
        child.stop()
        if spy is not None:
            spy.wait(30)
    after = asyncio.run(seed.sessions_opened(url))
    done, first, last = _span(url)
    costs = meter.figures("w2", n, first, last, xacts)
    [(failed,)] = asyncio.run(sql(url, "SELECT count(*) FROM runner_jobs WHERE state <> 'succeeded'"))
    active, _ = asyncio.run(seed.active_users(url))
    return {
        "w2": done / (last - first), "w2_failed": float(failed), "w2_active_off": float(active - n),
        "w2_connections": float(after - before) if before is not None and after is not None else float("nan"),
        **costs,
    }  # fmt: skip


def drain(url: str, n: int, workers: int, concurrency: int, after_id: int = 0) -> float:
    """Enqueue N no-ops in one call (table left as it is), drain them with ``--burst``: jobs/s."""

    async def enqueue() -> None:
        async with _async_producer(url):
            await app.defer_many_async([noop.call() for _ in range(n)])

    asyncio.run(enqueue())
    child = serve("drain", url, workers, concurrency, "--burst")
    try:
        child.wait(600)
    finally:
        child.stop()
    done, first, last = _span(url, after_id)
    if done != n:
        raise AssertionError(f"runner drain: {done} of {n} jobs succeeded")
    return n / (last - first)


def run_w3(url: str, n: int, rate: float, workers: int, concurrency: int, after_id: int = 0) -> dict[str, float]:
    """Workers started and idle; then ``n`` jobs enqueued one at a time at ``rate``/s."""
    asyncio.run(_migrate(url))
    child = serve("w3", url, workers, concurrency)
    try:

        def all_ready() -> bool:
            child.check_alive()
            return len(asyncio.run(_workers(url))) >= workers

        wait_for(all_ready, 60, what="runner start-up")

        async def trickle() -> None:
            async with _async_producer(url):
                await noop.defer_async()  # connect; its latency is not counted
                await asyncio.sleep(1.0)  # idle: workers wait on LISTEN (PG) or their poll (SQLite)
                start = time.perf_counter()
                for i in range(n):
                    await noop.defer_async()
                    await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))

        asyncio.run(trickle())
        wait_for(lambda: _span(url, after_id)[0] >= n + 1, 60)
    finally:
        child.stop()
    rows = asyncio.run(
        sql(
            url, f"SELECT started_at - created_at FROM runner_jobs WHERE state = 'succeeded' AND id > {int(after_id)} ORDER BY id"
        )
    )
    return latency_figures([float(r[0]) * 1000 for r in rows[1:]])
