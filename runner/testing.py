"""Test helpers for users of runner (and for runner's own tests).

Enable as a pytest plugin with ``pytest -p runner.testing`` (or ``pytest_plugins =
["runner.testing"]`` in a conftest). It gives:

* ``run_burst(app, broker)`` / fixture ``runner_burst``: a real worker, in this process and loop,
  that drains everything runnable from a real SQLite (or PostgreSQL) queue and returns -- arq's
  burst-mode habit: enqueue, drain, assert.
* ``runner_broker``: a temporary SQLite file URL, fresh per test.
* ``eager(app)``: run jobs inline at ``defer`` time (no queue, no worker) against a real SQLite
  queue in memory, so that code paths that enqueue still exercise the real SQL.
* ``rollback_session(engine)``: a session whose work is rolled back at the end of the test, the
  pattern users know from repository tests (the outer transaction never commits).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .app import App
from .client import JobHandle
from .settings import Settings
from .worker import Worker

__all__ = ["eager", "rollback_session", "run_burst"]


async def run_burst(app: App, broker: str, *, concurrency: int = 4, **settings: Any) -> Worker:
    """Run one in-process worker until nothing is runnable; returns it (``.done`` = jobs run)."""
    values = {"broker": broker, "concurrency": concurrency, "burst": True, "scheduler": False, "grace": 5.0}
    values.update(settings)
    worker = Worker(app, Settings(**values), slot=0, owner=f"test:{os.getpid()}:0", sock=None)
    await worker.main()
    return worker


@contextlib.contextmanager
def eager(app: App) -> Iterator[list[JobHandle]]:
    """Within the block, ``job.defer(...)`` and ``defer_async`` run the job inline, on the
    caller's loop (or a private one for sync callers), against an in-memory SQLite queue."""
    original_async = app.client.defer_many_async
    handles: list[JobHandle] = []

    async def defer_many_async(calls: Any, *, session: Any = None) -> list[JobHandle]:
        made = await original_async(calls, session=session)
        store = await app.client.store()
        worker = Worker(app, Settings(broker="sqlite:///:memory:", burst=True), slot=0, owner=f"eager:{os.getpid()}", sock=None)
        worker.store = store
        await _run_inline(app, worker, store, [h.id for h in made])
        handles.extend(made)
        return made

    previous_broker = app.broker
    app.configure(broker="sqlite:///:memory:")
    app.client.defer_many_async = defer_many_async  # type: ignore[method-assign]
    try:
        yield handles
    finally:
        app.client.close()
        app.configure(broker=previous_broker or "sqlite:///runner.db")
        if previous_broker is None:
            app.broker = None


async def _run_inline(app: App, worker: Worker, store: Any, ids: list[int]) -> None:
    from .executor import Executor, Running
    from .session import make_sessionmaker

    executor = Executor(
        app, store, make_sessionmaker(store.engine), exactly_once=True, max_payload=1 << 20, max_result=1 << 20,
        thread_limiter=anyio.CapacityLimiter(4),
    )  # fmt: skip
    for _ in range(len(ids) * 50 + 1):  # retries with backoff are run at once in eager mode
        claimed = await store.claim(f"eager:{os.getpid()}", sorted({j.queue for j in app.jobs.values()} | {app.default_queue}), 100, 60.0)
        claimed = [c for c in claimed]
        if not claimed:
            pending = [r for r in await store.get_many(ids) if r.state == "queued"]
            if not pending:
                return
            await _make_due(store, [r.id for r in pending])
            continue
        for row in claimed:
            outcome = await executor.run(Running(row))
            if outcome is not None:
                await store.finish([outcome])


async def _make_due(store: Any, ids: list[int]) -> None:
    from sqlalchemy import text

    async with store.engine.begin() as conn:
        await conn.execute(text(f"UPDATE runner_jobs SET run_at = 0 WHERE id IN ({', '.join(map(str, ids))})"))


@contextlib.asynccontextmanager
async def rollback_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside an outer transaction that is always rolled back: commits inside the
    test become savepoint releases, so the database is untouched afterwards."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            await session.close()
            if outer.is_active:
                await outer.rollback()


# -- pytest plugin ------------------------------------------------------------------------------


@pytest.fixture
def runner_broker(tmp_path: Path) -> str:
    """A fresh SQLite queue file for this test."""
    return f"sqlite:///{tmp_path / 'runner-test.db'}"


@pytest.fixture
def runner_burst(runner_broker: str) -> Callable[..., Awaitable[Worker]]:
    """``await runner_burst(app)``: drain everything the test enqueued, with a real worker."""

    async def drain(app: App, **settings: Any) -> Worker:
        return await run_burst(app, settings.pop("broker", runner_broker), **settings)

    return drain
