"""The Celery + async SQLAlchemy pattern runner exists for, ported by changing one import.

Before (Celery): a module-level pooled AsyncEngine and ``asyncio.run(_inner())`` in a sync task
-- a new loop per task, so the pool breaks ("attached to a different loop") unless NullPool.
After (runner): the same code; the ``asyncio.run`` bridge runs ``_inner`` on the worker's one
loop, so the pool works and stays within its size. ``native_count`` is the idiomatic form.
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from runner import session_scope
from runner.compat.celery import Celery

app = Celery("celery_bridge_proj")
app.conf.runner_bridge_asyncio_run = os.environ.get("BRIDGE_OFF") != "1"  # the switch, for the negative check

POOL_SIZE = 3
engine = create_async_engine(
    os.environ.get("BRIDGE_DB_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    pool_size=POOL_SIZE,
    max_overflow=0,
    connect_args={"server_settings": {"application_name": "celery-bridge"}},
)


async def _inner(i: int) -> dict[str, int]:
    async with engine.begin() as conn:
        backend = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        await conn.execute(text("INSERT INTO visits (i, pid) VALUES (:i, :pid)"), {"i": i, "pid": os.getpid()})
        await conn.execute(text("SELECT pg_sleep(0.002)"))
    return {"i": i, "pid": os.getpid(), "loop": id(asyncio.get_running_loop()), "backend": int(backend)}


@app.task(bind=True, max_retries=3)
def legacy_visit(self, i):  # type: ignore[no-untyped-def]
    try:
        return asyncio.run(_inner(i))
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=60)


@app.task
async def native_count(min_i: int) -> int:
    """The idiomatic form: an async task with a session scoped to the attempt (the worker's
    own engine, committed when the block exits)."""
    async with session_scope() as session:
        result = await session.execute(text("SELECT count(*) FROM visits WHERE i >= :i"), {"i": min_i})
        return int(result.scalar_one())
