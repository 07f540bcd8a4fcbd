"""Churn: N jobs through one PostgreSQL queue, as a month of traffic would push them, and what it
leaves behind: table and index sizes, dead tuples, vacuum runs, and whether the claim rate of the
last 10 % of the jobs kept up with the first 10 %.

A ``runner serve`` drains while this process keeps a bounded backlog topped up (bulk enqueues of
``CHUNK`` whenever fewer than ``LOW`` are queued), so the queue is never empty and never huge.
Finished rows stay (default ``--result-ttl`` of 7 days), as they do in production.

``system="limit"`` runs the same churn through the limit's drain loop (``limit_worker.py``), to
tell what the database does to any queue from what runner adds.

``vacuum_every``: PostgreSQL's autovacuum is *off* on this shared server (postgresql.conf), so by
default nothing vacuums the table; a positive value makes the benchmark run ``VACUUM runner_jobs``
that often, a stand-in for autovacuum at its default naptime (60 s), which a churning queue table
crosses the threshold for every time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .bench_app import app, noop
from .pgstats import table_stats
from .procs import Child, python
from .workloads_runner import _async_producer, _migrate, serve

CHUNK = 5_000
LOW = 20_000


async def _feed(url: str, n: int, workers: Workers, vacuum_every: float, series: list[dict[str, Any]], enqueued: int = 0) -> int:
    """Keep the backlog topped up until N are enqueued and N have succeeded; returns vacuums run."""
    conn = await asyncpg.connect(url)
    vacuums = 0
    t0 = last_sample = time.monotonic()

    async def vacuum() -> None:
        nonlocal vacuums
        own = await asyncpg.connect(url)  # its own connection: the feeder never waits for it
        try:
            while True:
                await asyncio.sleep(vacuum_every)
                await own.execute("VACUUM runner_jobs")
                vacuums += 1
        finally:
            await own.close()

    vacuumer = asyncio.create_task(vacuum()) if vacuum_every > 0 else None
    try:
        async with _async_producer(url):
            while True:
                workers.check()
                queued = int(await conn.fetchval("SELECT count(*) FROM runner_jobs WHERE state = 'queued'"))
                if enqueued < n and queued < LOW:
                    k = min(CHUNK, n - enqueued)
                    await workers.enqueue(conn, k)
                    enqueued += k
                    continue
                now = time.monotonic()
                if now - last_sample >= 5.0 or enqueued >= n:
                    done = int(await conn.fetchval("SELECT count(*) FROM runner_jobs WHERE state = 'succeeded'"))
                    stats = await table_stats(url)
                    series.append({"s": round(now - t0, 1), "done": done, "dead": stats["n_dead_tup"],
                                   "total_bytes": stats["total_bytes"]})  # fmt: skip
                    last_sample = now
                    if done >= n:
                        return vacuums
                await asyncio.sleep(0.2)
    finally:
        if vacuumer is not None:
            vacuumer.cancel()
            await asyncio.gather(vacuumer, return_exceptions=True)
        await conn.close()


async def _decile_rates(url: str, n: int) -> tuple[float, float]:
    conn = await asyncpg.connect(url)
    try:
        p0, p10, p90, p100 = await conn.fetchval(
            "SELECT percentile_disc(ARRAY[0, 0.1, 0.9, 1]) WITHIN GROUP (ORDER BY started_at) FROM runner_jobs"
            " WHERE state = 'succeeded'"
        )
    finally:
        await conn.close()
    return 0.1 * n / (p10 - p0), 0.1 * n / (p100 - p90)


class Workers:
    """Who drains: ``runner`` (one ``runner serve``, fed by runner's bulk enqueue) or ``limit``
    (the limit's drain processes, fed by COPY; they exit on an empty queue, so they are started
    again if the feeder ever falls behind)."""

    def __init__(self, system: str, url: str, workers: int, concurrency: int) -> None:
        self.system, self.url, self.w, self.c = system, url, workers, concurrency
        self.children: list[Child] = []

    def start(self) -> None:
        if self.system == "runner":
            self.children = [serve("churn", self.url, self.w, self.c)]
        else:
            self.children = [
                Child(f"limit-churn-{i}", python("-m", "bench.limit_worker", "pg-drain", self.url, "1", str(self.c)), is_worker=True)
                for i in range(self.w)
            ]  # fmt: skip

    def check(self) -> None:
        for child in self.children:
            child.check_alive(allow_clean_exit=self.system == "limit")
        if self.system == "limit" and all(c.proc.poll() is not None for c in self.children):
            self.stop()
            self.start()

    async def enqueue(self, conn: asyncpg.Connection, k: int) -> None:
        if self.system == "runner":
            await app.defer_many_async([noop.call() for _ in range(k)])
        else:
            now = time.time()
            await conn.copy_records_to_table("runner_jobs", records=[("noop", "[]", "{}", "default", now, now)] * k,
                                             columns=("name", "args", "kwargs", "queue", "run_at", "created_at"))  # fmt: skip

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def run_churn(url: str, n: int, workers: int, concurrency: int, vacuum_every: float, system: str = "runner") -> dict[str, Any]:
    asyncio.run(_migrate(url))
    before = asyncio.run(table_stats(url))
    series: list[dict[str, Any]] = []
    drainers = Workers(system, url, workers, concurrency)
    head = 0
    if system == "limit":  # its processes exit on an empty queue: give them work before they start
        head = min(n, LOW + CHUNK)

        async def prime() -> None:
            conn = await asyncpg.connect(url)
            try:
                await drainers.enqueue(conn, head)
            finally:
                await conn.close()

        asyncio.run(prime())
    drainers.start()
    t = time.perf_counter()
    try:
        vacuums = asyncio.run(_feed(url, n, drainers, vacuum_every, series, enqueued=head))
    finally:
        drainers.stop()
    wall = time.perf_counter() - t
    first, last = asyncio.run(_decile_rates(url, n))
    after = asyncio.run(table_stats(url))
    return {"system": system, "n": n, "vacuum_every": vacuum_every, "vacuums": vacuums, "wall_s": wall,
            "first_rate": first, "last_rate": last, "before": before, "after": after, "series": series}  # fmt: skip
