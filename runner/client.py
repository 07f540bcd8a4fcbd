"""The producer side: enqueue (single, bulk, transactional) and handles to wait on results.

A process that only produces never runs a worker, yet needs an engine. An engine belongs to the
event loop it was used on, so the client keeps one store per running loop (async callers) and,
for sync callers, runs a private loop in one background thread (anyio's blocking portal). Inside a
worker the client reuses the worker's own store, so jobs that enqueue jobs open no new pool.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.from_thread
from sqlalchemy.ext.asyncio import AsyncSession

from .app import App, Call
from .errors import JobCancelled, JobExpired, JobFailed, ResultTimeout, RunnerError
from .gc_pause import paused_gc
from .schema import SCHEMA_VERSION, migrate, schema_version
from .session import create_engine
from .store import JobRow, Store
from .wire import ErrorInfo, State, decode_json

__all__ = ["Client", "JobHandle"]

DEFAULT_BROKER = "sqlite:///runner.db"


class Client:
    """Enqueues for one App. Create via ``app.client``; cheap until first used."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Store] = weakref.WeakKeyDictionary()
        self._bound: Store | None = None
        self._portal: _BackgroundLoop | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def bind_store(self, store: Store | None) -> None:
        """Use ``store`` for every enqueue in this process (the worker calls this)."""
        self._bound = store

    @property
    def bound_store(self) -> Store | None:
        return self._bound

    @property
    def url(self) -> str:
        return self.app.broker or os.environ.get("RUNNER_BROKER") or DEFAULT_BROKER

    async def store(self) -> Store:
        if self._bound is not None:
            return self._bound
        loop = asyncio.get_running_loop()
        store = self._stores.get(loop)
        if store is None:
            engine = create_engine(self.url, pool_size=10, max_overflow=10, pre_ping=False)
            store = Store(engine, max_payload=self.app.max_payload)
            await store.ensure_schema()
            self._stores[loop] = store
        return store

    # -- async API ----------------------------------------------------------------------------

    async def defer_async(self, call: Call) -> JobHandle:
        return (await self.defer_many_async([call], session=call.options.session))[0]

    async def defer_many_async(self, calls: Sequence[Call], *, session: AsyncSession | None = None) -> list[JobHandle]:
        if not calls:
            return []
        now = time.time()
        with paused_gc():
            envelopes = [c.envelope(now) for c in calls]
        session = session or calls[0].options.session
        if session is not None:
            # Transactional enqueue: the rows exist if and only if the caller's transaction
            # commits. Everything goes through the session's own connection: on SQLite a second
            # connection would wait forever on the write lock that this transaction holds.
            conn = await session.connection()
            if await schema_version(conn) < SCHEMA_VERSION:
                await migrate(conn)
            store = Store(conn.engine, max_payload=self.app.max_payload)
            ids = await store.enqueue(envelopes, conn, now=now)
        else:
            ids = await (await self.store()).enqueue(envelopes, now=now)
        with paused_gc():
            return [JobHandle(self.app, job_id) for job_id in ids]

    # -- sync API -----------------------------------------------------------------------------

    def defer(self, call: Call) -> JobHandle:
        return self.run_sync(self.defer_async, call)

    def defer_many(self, calls: Sequence[Call]) -> list[JobHandle]:
        return self.run_sync(self.defer_many_async, calls)

    def run_sync(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` from sync code: on the worker's loop from a job's thread, else on the
        client's own background loop."""
        try:
            return anyio.from_thread.run(fn, *args)  # called from a sync job's worker thread
        except RuntimeError:
            pass
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._ensure_portal().call(fn, *args)
        raise RunnerError("this is the sync API, called inside a running event loop: use the *_async variant")

    def _ensure_portal(self) -> _BackgroundLoop:
        with self._lock:
            if self._portal is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._portal = _BackgroundLoop()
                atexit.register(self.close)
            return self._portal

    async def aclose(self) -> None:
        """Dispose the engine this loop's async enqueues used (call before the loop ends)."""
        loop = asyncio.get_running_loop()
        store = self._stores.pop(loop, None)
        if store is not None:
            await store.engine.dispose()
        self.close()

    def close(self) -> None:
        """Dispose engines and stop the background loop (safe to call more than once)."""
        with self._lock:
            if self._portal is not None and self._pid == os.getpid():
                stores = list(self._stores.values())

                async def dispose() -> None:
                    for store in stores:
                        await store.engine.dispose()

                try:
                    self._portal.call(dispose)
                finally:
                    self._portal.stop()
            self._portal = None
            self._stores = weakref.WeakKeyDictionary()


class _BackgroundLoop:
    """An event loop in a daemon thread for sync callers: a script that enqueues and exits must
    not hang on a loop thread the way a non-daemon portal thread would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="runner-client", daemon=True)
        self.thread.start()

    def call(self, fn: Any, *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class JobHandle:
    """A job by id: read its state, wait for its result, cancel it. Cheap; holds no connection."""

    __slots__ = ("app", "id")

    def __init__(self, app: App, job_id: int) -> None:
        self.app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def info_async(self) -> JobRow:
        row = await (await self.app.client.store()).get(self.id)
        if row is None:
            raise RunnerError(f"job {self.id} does not exist (purged after its retention period?)")
        return row

    def info(self) -> JobRow:
        return self.app.client.run_sync(self.info_async)

    async def state_async(self) -> str:
        return (await self.info_async()).state

    def state(self) -> str:
        return self.app.client.run_sync(self.state_async)

    async def wait_async(self, timeout: float | None = None, *, poll: float = 0.01) -> Any:
        """The job's return value once it succeeds; raises JobFailed/JobCancelled/JobExpired,
        or ResultTimeout after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            row = await self.info_async()
            if row.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED):
                return outcome_of(row)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"job {self.id} still {row.state} after {timeout}s", job_id=self.id)
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await anyio.sleep(wait)
            delay = min(delay * 1.5, 0.5)

    def wait(self, timeout: float | None = None) -> Any:
        return self.app.client.run_sync(lambda: self.wait_async(timeout))

    async def cancel_async(self) -> str | None:
        """Cancel: a queued job at once; a running one cooperatively (its scope is cancelled)."""
        return await (await self.app.client.store()).cancel(self.id)

    def cancel(self) -> str | None:
        return self.app.client.run_sync(self.cancel_async)


def outcome_of(row: JobRow) -> Any:
    """A finished row as a producer sees it: the result, or the matching exception raised."""
    if row.state == State.SUCCEEDED:
        return decode_json(row.result) if row.result is not None else None
    info = _error(row)
    if row.state == State.CANCELLED:
        raise JobCancelled(f"job {row.id} was cancelled: {info.message}", job_id=row.id)
    if row.state == State.EXPIRED:
        raise JobExpired(f"job {row.id} expired before it started", job_id=row.id)
    raise JobFailed(row.id, info.type, info.message, info.traceback)


def _error(row: JobRow) -> ErrorInfo:
    try:
        data = decode_json(row.error) if row.error else {}
        return ErrorInfo(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
            attempt=int(data.get("attempt", row.attempt)),
        )
    except Exception:
        return ErrorInfo(type="Error", message=str(row.error))
