"""Reference: pgqueuer (the installed version) on the same PostgreSQL, one worker process per
core (``pgq_worker.py``). W1: single async enqueue (PRODUCERS concurrent connections, and one
awaited call at a time on one), bulk enqueue (``enqueue`` with lists: calls of 1,000, one call of
N), drain; W2: the same job body on a pooled engine per
process; W3: latency. Rates come from ``pgqueuer_log``: first ``picked`` to last ``successful``."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import redis
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

from . import seed
from .procs import Child, python, wait_for
from .settings import REDIS_URL
from .stats import best_rate_async, latency_figures
from .workloads_runner import PRODUCERS


async def _install(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def _bulk(url: str, entrypoint: str, payloads: list[bytes | None], per_call: int | None = None) -> float:
    """One ``enqueue`` call with lists, or calls of ``per_call``; the table is emptied first."""
    conn = await asyncpg.connect(url)
    try:
        q = Queries(AsyncpgDriver(conn))
        await q.enqueue([entrypoint], [None], [0])  # prepare outside the timing
        await conn.execute("TRUNCATE pgqueuer")
        step = per_call or len(payloads)
        t = time.perf_counter()
        for i in range(0, len(payloads), step):
            chunk = payloads[i : i + step]
            await q.enqueue([entrypoint] * len(chunk), chunk, [0] * len(chunk))
        return len(payloads) / (time.perf_counter() - t)
    finally:
        await conn.close()


async def _one_at_a_time(url: str, n: int) -> float:
    """``await q.enqueue(...)`` on one connection, each awaited before the next."""
    conn = await asyncpg.connect(url)
    try:
        q = Queries(AsyncpgDriver(conn))
        await q.enqueue("noop", None)
        return await best_rate_async(lambda: q.enqueue("noop", None), n)
    finally:
        await conn.close()


async def _single_async(url: str, n: int) -> float:
    conns = [await asyncpg.connect(url) for _ in range(PRODUCERS)]
    try:
        queries = [Queries(AsyncpgDriver(c)) for c in conns]
        await asyncio.gather(*(q.enqueue("noop", None) for q in queries))

        async def producer(q: Queries, k: int) -> None:
            for _ in range(k):
                await q.enqueue("noop", None)

        per = n // PRODUCERS
        t = time.perf_counter()
        await asyncio.gather(*(producer(q, per) for q in queries))
        return per * PRODUCERS / (time.perf_counter() - t)
    finally:
        for c in conns:
            await c.close()


async def _fetch(url: str, statement: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(statement)
    finally:
        await conn.close()


def _workers(tag: str, url: str, mode: str, workers: int, concurrency: int) -> list[Child]:
    return [
        Child(f"pgq-{tag}-{i}", python("-m", "bench.pgq_worker", url, mode, str(concurrency)), is_worker=True)
        for i in range(workers)
    ]


def _span(url: str, entrypoint: str) -> tuple[int, float]:
    [row] = asyncio.run(_fetch(url, f"""
        SELECT count(*) FILTER (WHERE status = 'successful'),
               extract(epoch FROM max(created) FILTER (WHERE status = 'successful')
                                - min(created) FILTER (WHERE status = 'picked'))
        FROM pgqueuer_log WHERE entrypoint = '{entrypoint}'"""))  # fmt: skip
    return int(row[0]), float(row[1] or 0)


def _run_drain(children: list[Child], timeout: float) -> None:
    try:
        for child in children:
            child.wait(timeout)
    finally:
        for child in children:
            child.stop()


def run_w1(url: str, n: int, n_single: int, workers: int, concurrency: int) -> dict[str, float]:
    asyncio.run(_install(url))
    single = asyncio.run(_single_async(url, n_single))
    one = asyncio.run(_one_at_a_time(url, n_single))
    bulk_1k = asyncio.run(_bulk(url, "noop", [None] * n, 1_000))
    bulk = asyncio.run(_bulk(url, "noop", [None] * n))  # empties the table first: the drain takes these N
    asyncio.run(_fetch(url, "DELETE FROM pgqueuer_log"))
    children = _workers("w1", url, "noop", workers, concurrency)
    _run_drain(children, 900)
    done, span = _span(url, "noop")
    if done != n:
        raise AssertionError(f"pgqueuer W1: {done} of {n} done")
    return {
        "enqueue_async": single, "enqueue_async1": one, "enqueue_bulk_1k": bulk_1k, "enqueue_bulk": bulk, "drain": n / span,
        "rss_mb": max(c.worker_peak_mb() for c in children),
    }  # fmt: skip


def run_w2(url: str, n: int, users: int, workers: int, concurrency: int) -> dict[str, float]:
    asyncio.run(_install(url))
    asyncio.run(seed.seed_users(url, users))
    asyncio.run(_bulk(url, "w2", [str(i).encode() for i in range(1, n + 1)]))
    figures = asyncio.run(seed.watch_w2(url, n, lambda: _workers("w2", url, "w2", workers, concurrency), 1800))
    done, span = _span(url, "w2")
    figures["w2"] = done / span if span else float("nan")  # same clock as W1: picked → successful
    figures["w2_failed"] = float(n - done)
    return figures


def run_w3(url: str, n: int, rate: float, workers: int, concurrency: int) -> dict[str, float]:
    asyncio.run(_install(url))
    r = redis.Redis.from_url(REDIS_URL)
    r.delete("bench:latency")
    children = _workers("w3", url, "latency", workers, concurrency)

    async def trickle(count: int) -> None:
        conn = await asyncpg.connect(url)
        q = Queries(AsyncpgDriver(conn))
        start = time.perf_counter()
        for i in range(count):
            await q.enqueue("latency", str(time.time()).encode())
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        await conn.close()

    try:
        asyncio.run(trickle(1))  # the first job proves the workers are up
        wait_for(lambda: r.llen("bench:latency") >= 1, 60, what="pgqueuer start-up")
        time.sleep(1.0)  # idle
        r.delete("bench:latency")
        asyncio.run(trickle(n))
        wait_for(lambda: r.llen("bench:latency") >= n, 60, what="pgqueuer W3")
    finally:
        for child in children:
            child.stop()
    return latency_figures([float(v) * 1000 for v in r.lrange("bench:latency", 0, -1)])
