"""The limit on PostgreSQL: what asyncpg does on runner's own schema (made by runner's migration,
so the same six indexes and the NOTIFY trigger) with no queue library at all.

* single-call enqueue: one prepared ``INSERT ... RETURNING id`` per call, one awaited call at a
  time on one connection (best of four segments: the figure follows a shared disk's flushes);
* bulk enqueue: binary ``COPY`` of the same rows, in calls of 1,000 and in one call of N;
* W1 drain: ``w`` processes (``limit_worker.py pg-drain``), each with ``lanes`` connections that
  claim ``c / lanes`` rows at a time, so total concurrency is runner's ``w × c``;
* W2: ``ref_bare.py`` in ``w`` processes of ``c`` lanes;
* W3: ``w`` processes that claim on each NOTIFY (``limit_worker.py pg-listen``), fed by a producer
  that does the single-call ``INSERT`` above at the same rate as runner's.

Rates come from the table (``started_at`` / ``finished_at``) exactly as runner's do.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from runner.drivers import open_driver

from . import ref_bare
from .costs import Meter
from .procs import Child, python, wait_for
from .stats import best_rate_async, latency_figures

LANES = 1  # per process, each claiming c / LANES rows at a time: 1 × 32 beat 2 × 16 and 4 × 8 (28k, 22k, 14k/s)
COPY_COLUMNS = ("name", "args", "kwargs", "queue", "run_at", "created_at")
INSERT_ONE = (
    "INSERT INTO runner_jobs (name, args, kwargs, queue, run_at, created_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id"
)


async def migrate(url: str) -> None:
    """runner's own schema: same columns, checks, indexes and trigger."""
    driver = open_driver(url, pool_size=1)
    try:
        await driver.migrate()
    finally:
        await driver.dispose()


def _rows(n: int) -> list[tuple[object, ...]]:
    now = time.time()
    return [("noop", "[]", "{}", "default", now, now)] * n


async def single_rate(conn: asyncpg.Connection, n: int) -> float:
    """One prepared INSERT per awaited call, best of SEGMENTS (``stats.py``)."""
    stmt = await conn.prepare(INSERT_ONE)
    await stmt.fetchval("noop", "[]", "{}", "default", time.time())  # prepared, warm
    return await best_rate_async(lambda: stmt.fetchval("noop", "[]", "{}", "default", time.time()), n)


async def copy_rate(conn: asyncpg.Connection, n: int, per_call: int) -> float:
    """COPY n rows in calls of ``per_call``; the rows are built inside the timing, per call."""
    await conn.copy_records_to_table("runner_jobs", records=_rows(1), columns=COPY_COLUMNS)  # warm
    await conn.execute("TRUNCATE runner_jobs")
    t = time.perf_counter()
    left = n
    while left > 0:
        k = min(per_call, left)
        await conn.copy_records_to_table("runner_jobs", records=_rows(k), columns=COPY_COLUMNS)
        left -= k
    return n / (time.perf_counter() - t)


async def _enqueue_figures(url: str, n: int, n_single: int) -> dict[str, float]:
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        single = await single_rate(conn, n_single)
        bulk_1k = await copy_rate(conn, n, 1_000)
        bulk = await copy_rate(conn, n, n)  # leaves the N rows the drain takes
    finally:
        await conn.close()
    return {"enqueue_async1": single, "enqueue_bulk_1k": bulk_1k, "enqueue_bulk": bulk}


async def fetch(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def drain_span(url: str, n: int, what: str, after_id: int = 0) -> tuple[float, float, float]:
    """N / (last finished_at − first started_at) and those two times, after checking every job
    ran exactly once."""
    [row] = asyncio.run(fetch(url, """
        SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1), count(*),
               min(started_at), max(finished_at) FROM runner_jobs WHERE name = 'noop' AND id > $1""", after_id))  # fmt: skip
    good, total, first, last = row
    if good != n or total != n:
        raise AssertionError(f"{what}: {good} of {total} rows succeeded exactly once, expected {n}")
    return n / (last - first), first, last


def drain(
    url: str, n: int, workers: int, concurrency: int, lanes: int = LANES, after_id: int = 0, costs: dict[str, float] | None = None
) -> float:
    """The drain rate; ``costs`` (if given) receives CPU, writes and transactions per job."""
    batch = max(1, concurrency // lanes)
    xacts = Meter.before(url)
    children = [
        Child(f"limit-pg-drain-{i}", python("-m", "bench.limit_worker", "pg-drain", url, str(lanes), str(batch)), is_worker=True)
        for i in range(workers)
    ]
    meter = Meter(url, [c.proc.pid for c in children])
    try:
        for child in children:
            child.wait(600)
    finally:
        for child in children:
            child.stop()
    rate, first, last = drain_span(url, n, "limit PG drain", after_id)
    if costs is not None:
        costs.update(meter.figures("drain", n, first, last, xacts))
    return rate


def run_w1(url: str, n: int, n_single: int, workers: int, concurrency: int) -> dict[str, float]:
    figures = asyncio.run(_enqueue_figures(url, n, n_single))
    figures["drain"] = drain(url, n, workers, concurrency, costs=figures)
    return figures


def run_w2(url: str, n: int, users: int, workers: int, concurrency: int) -> dict[str, float]:
    return ref_bare.run_w2(url, n, users, concurrency, processes=workers)


def enqueue(url: str, n: int) -> None:
    """N queued no-ops by COPY, the table left as it is (the growth mode's seeded rows stay)."""

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.copy_records_to_table("runner_jobs", records=_rows(n), columns=COPY_COLUMNS)
        finally:
            await conn.close()

    asyncio.run(go())


def run_w3(url: str, n: int, rate: float, workers: int, concurrency: int, after_id: int = 0) -> dict[str, float]:
    """``w`` LISTEN processes; a producer inserting one prepared row at a time at ``rate``."""
    asyncio.run(migrate(url))
    children = [
        Child(f"limit-pg-listen-{i}", python("-m", "bench.limit_worker", "pg-listen", url, "1", str(concurrency)), is_worker=True)
        for i in range(workers)
    ]

    async def trickle(count: int) -> None:
        conn = await asyncpg.connect(url)
        stmt = await conn.prepare(INSERT_ONE)
        start = time.perf_counter()
        for i in range(count):
            await stmt.fetchval("noop", "[]", "{}", "default", time.time())
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        await conn.close()

    def done() -> int:
        return int(
            asyncio.run(fetch(url, "SELECT count(*) FROM runner_jobs WHERE state = 'succeeded' AND id > $1", after_id))[0][0]
        )

    try:
        asyncio.run(trickle(1))  # proves the listeners are up; not counted
        wait_for(lambda: (any(c.check_alive() for c in children), done() >= 1)[1], 60, what="limit W3 start-up")
        time.sleep(1.0)  # idle: the listeners wait on NOTIFY
        asyncio.run(trickle(n))
        wait_for(lambda: done() >= n + 1, 60, what="limit W3")
    finally:
        for child in children:
            child.stop()
    rows = asyncio.run(
        fetch(url, "SELECT started_at - created_at FROM runner_jobs WHERE state = 'succeeded' AND id > $1 ORDER BY id", after_id)
    )
    return latency_figures([float(r[0]) * 1000 for r in rows[1:]])
