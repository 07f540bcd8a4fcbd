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
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .app import App
from .client import JobHandle
from .complete import Direct
from .decide import NotRunnable
from .drivers import Driver
from .run_job import JobRunner, Running
from .session import make_sessionmaker
from .settings import Settings
from .wire import BadRow
from .worker import Worker

__all__ = ["eager", "rollback_session", "run_burst"]


async def run_burst(app: App, broker: str, *, concurrency: int = 4, **settings: Any) -> Worker:
    """Run one in-process worker until nothing is runnable; returns it (``.done`` = jobs run)."""
    values: dict[str, Any] = {"broker": broker, "concurrency": concurrency, "burst": True, "scheduler": False, "grace": 5.0}
    values.update(settings)
    worker = Worker(app, Settings(**values), slot=0, owner=f"test:{os.getpid()}:0", sock=None)
    await worker.main()
    return worker


class eager:
    """Within the block, ``job.defer(...)`` and ``defer_async`` run the job inline, on the
    caller's loop (or the client's private one for sync callers), against an in-memory SQLite
    queue: the same SQL, claim, decision and completion path as a worker, so handles, retries
    (run at once), chaining and errors behave as in production.

    Use ``with eager(app):`` in sync code and ``async with eager(app):`` in async code (so the
    in-memory queue is closed on your loop). Jobs that take an ``AsyncSession`` get one on
    ``engine`` when given (your test database's engine), else on the in-memory queue database.
    The block yields the handles of every job run in it.
    """

    def __init__(self, app: App, *, engine: AsyncEngine | None = None) -> None:
        self.app = app
        self.engine = engine
        self.handles: list[JobHandle] = []
        self._runner: JobRunner | None = None
        self._previous: str | None = None

    def __enter__(self) -> list[JobHandle]:
        app = self.app
        self._previous = app.configured_broker
        app.configure(broker="sqlite:///:memory:")  # a new client: patch that one, below
        client = app.client
        original = client.enqueue

        async def enqueue(envelopes: Any, *, session: Any = None) -> list[JobHandle]:
            made = await original(envelopes, session=session)
            driver = await client.driver()
            if self._runner is None:
                self._runner = _eager_runner(app, driver, self.engine)
            await _run_inline(app, self._runner, driver, [h.id for h in made])
            self.handles.extend(made)
            return made

        client.enqueue = enqueue  # type: ignore[method-assign]
        return self.handles

    def __exit__(self, *exc: object) -> None:
        self.app.client.close()
        self.app.configure()
        self.app.configured_broker = self._previous

    async def __aenter__(self) -> list[JobHandle]:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        await self.app.client.aclose()
        self.__exit__()


def _eager_runner(app: App, driver: Driver, engine: AsyncEngine | None) -> JobRunner:
    return JobRunner(
        app, driver, sessions=make_sessionmaker(engine or driver.engine), exactly_once=engine is None,
        completer=Direct(driver), thread_limiter=anyio.CapacityLimiter(4),
        limits={"max_lost": 5, "max_result": 1 << 20, "max_payload": app.max_payload},
    )  # fmt: skip


async def _run_inline(app: App, runner: JobRunner, driver: Driver, ids: list[int]) -> None:
    queues = sorted({j.queue for j in app.jobs.values()} | {app.default_queue} | set(app.routes.values()))
    owner = f"eager:{os.getpid()}"
    for _ in range(len(ids) * 50 + 1):  # bounded: retries run at once, chained jobs too
        claimed = await driver.claim(owner, queues, 100, 60.0)
        if not claimed:
            pending = [r.id for r in await driver.get_many(ids) if r.state == "queued"]
            if not pending:
                return
            await driver.make_due(pending)
            continue
        for item in claimed:
            if isinstance(item, BadRow):
                await runner.end(item, NotRunnable(item.error))
            else:
                await runner.run(Running(item))


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


# The fixtures a test asks for when it runs runner's real worker; such a test is async, so it
# needs anyio's plugin to run it. Marking it here spares users the `@pytest.mark.anyio` they
# would otherwise have to know about (the README's testing example is written without it).
_WORKER_FIXTURES = frozenset({"runner_burst", "runner_broker"})


@pytest.hookimpl(hookwrapper=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Any:
    """Before anyio's own collection hook looks for its marker: add it to a coroutine test that
    uses runner's worker fixtures and is not marked already."""
    if inspect.iscoroutinefunction(obj) and collector.istestfunction(obj, name):
        try:
            wanted = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            wanted = set()
        marked = collector.get_closest_marker("anyio") is not None or any(
            getattr(m, "name", None) == "anyio" for m in getattr(obj, "pytestmark", ())
        )
        if wanted & _WORKER_FIXTURES and not marked:
            pytest.mark.anyio(obj)
    yield
