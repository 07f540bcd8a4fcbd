"""The Celery side of the benchmark, written the way the field writes it: a sync task that calls
``asyncio.run()`` on a module-level engine created with ``poolclass=NullPool`` (a pooled engine
would stay bound to the first task's loop, which ``asyncio.run`` closes). Broker: Redis.

The no-op and the latency task report through one Redis command each (Celery has no queue table
to read afterwards); that costs them one local round trip per task."""

from __future__ import annotations

import asyncio
import os
import time

import redis
from celery import Celery
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from bench.settings import REDIS_URL
from bench.w2_body import activate
from runner.settings import async_url

app = Celery("bench_celery", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

engine = create_async_engine(async_url(os.environ.get("BENCH_DB_URL", "sqlite:////tmp/unused.db")), poolclass=NullPool)
sessions = async_sessionmaker(engine, expire_on_commit=False)
counter = redis.Redis.from_url(REDIS_URL)


@app.task(name="bench.noop")
def noop() -> None:
    counter.incr("bench:done")


@app.task(name="bench.latency")
def latency(enqueued_at: float) -> None:
    counter.rpush("bench:latency", time.time() - enqueued_at)


@app.task(name="bench.activate")
def activate_task(user_id: int) -> None:
    async def inner() -> None:
        async with sessions() as session, session.begin():
            await activate(session, user_id)

    asyncio.run(inner())
