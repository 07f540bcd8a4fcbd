"""One pgqueuer worker process (the benchmark starts one per core, like runner's workers):
``python -m bench.pgq_worker URL MODE CONCURRENCY`` with MODE ``noop`` | ``w2`` | ``latency``.

Programmatic API (``QueueManager.run``), since the ``pgq run`` CLI of some versions crashes.
W1/W2 run in drain mode (exit once the queue is empty); W3 runs continuously until SIGTERM.
W2 gets one pooled ``AsyncEngine`` per process, sized to the concurrency, as runner has."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import timedelta

import asyncpg
import redis.asyncio as aioredis
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.settings import REDIS_URL
from bench.w2_body import activate
from runner.settings import async_url


async def main(url: str, mode: str, concurrency: int) -> None:
    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    engine = create_async_engine(async_url(url), pool_size=concurrency, max_overflow=2) if mode == "w2" else None
    sessions = async_sessionmaker(engine, expire_on_commit=False) if engine is not None else None
    r = aioredis.Redis.from_url(REDIS_URL) if mode == "latency" else None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @qm.entrypoint("w2")
    async def w2(job: Job) -> None:
        assert sessions is not None and job.payload is not None
        async with sessions() as session, session.begin():
            await activate(session, int(job.payload))

    @qm.entrypoint("latency")
    async def latency(job: Job) -> None:
        started = time.time()
        assert r is not None and job.payload is not None
        await r.rpush("bench:latency", started - float(job.payload))

    batch = max(1, concurrency // 2)
    await qm.run(
        mode=QueueExecutionMode.continuous if mode == "latency" else QueueExecutionMode.drain,
        batch_size=batch,
        max_concurrent_tasks=max(concurrency, 2 * batch),
        dequeue_timeout=timedelta(seconds=1),
    )
    if engine is not None:
        await engine.dispose()
    if r is not None:
        await r.aclose()
    await conn.close()


if __name__ == "__main__":
    _, url, mode, concurrency = sys.argv
    asyncio.run(main(url, mode, int(concurrency)))
