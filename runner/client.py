"""The producer side: enqueue (single, bulk, transactional) and handles to wait on results.

A process that only produces never runs a worker, yet needs an engine, and an engine belongs to
the event loop it was used on. So the client keeps one driver per running loop (async callers)
and, for sync callers, runs a private loop in a daemon thread. Each loop's driver is disposed on
that loop when the loop shuts down (an async generator the loop finalises), so a script that
mixes ``defer()`` and ``await defer_async()`` exits silently. Inside a worker the client uses the
worker's own driver, so jobs that enqueue jobs open no new pool.

This module knows nothing of apps: it writes envelopes and reads rows.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import anyio
import anyio.from_thread
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from .drivers import CancelResult, Driver, JobRow, open_driver
from .errors import JobCancelled, JobError, JobExpired, JobFailed, ResultTimeout, RunnerError
from .gc_pause import paused_gc
from .settings import Settings
from .wire import AttemptRecord, Envelope, ErrorInfo, State, decode_json

__all__ = ["CancelResult", "Client", "GroupHandle", "JobHandle", "JobInfo", "in_worker_thread", "outcome_of", "worker_thread"]

T = TypeVar("T")

DEFAULT_BROKER: Final = "sqlite:///runner.db"

_thread = threading.local()


def worker_thread(token: Any) -> None:
    """Mark the current thread as a worker's job thread, bound to the loop of ``token``
    (``anyio.lowlevel.current_token()``); ``None`` clears the mark. The sync API then runs on
    the worker's own loop instead of a private one."""
    _thread.token = token


def in_worker_thread() -> Any:
    return getattr(_thread, "token", None)


class Client:
    """Enqueues into one queue database. Create via ``app.client``; cheap until first used.

    :param configured: a URL set by ``app.configure(broker=...)``: wins over everything.
    :param default: the App's constructor URL: ``RUNNER_BROKER`` wins over it.
    """

    def __init__(self, *, configured: str | None = None, default: str | None = None, max_payload: int = 1 << 20) -> None:
        self._configured = configured
        self._default = default
        self.max_payload = max_payload
        self._drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Driver] = weakref.WeakKeyDictionary()
        self._guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._session_drivers: weakref.WeakKeyDictionary[Any, Driver] = weakref.WeakKeyDictionary()
        self._bound: Driver | None = None
        self._portal: _SharedLoop | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def url(self) -> str:
        return self._configured or Settings.env_broker() or self._default or DEFAULT_BROKER

    def bind(self, driver: Driver | None) -> None:
        """Use ``driver`` for every enqueue in this process (the worker calls this)."""
        self._bound = driver

    @property
    def bound(self) -> Driver | None:
        return self._bound

    async def driver(self) -> Driver:
        """The driver for the running loop (created on first use, disposed when the loop ends)."""
        if self._bound is not None:
            return self._bound
        loop = asyncio.get_running_loop()
        driver = self._drivers.get(loop)
        if driver is None:
            # Made and stored before the first await: concurrent first callers share it.
            driver = self._drivers[loop] = open_driver(self.url, pool_size=10, max_overflow=10, max_payload=self.max_payload)
            guard = _dispose_at_loop_end(driver)
            await guard.asend(None)
            self._guards[loop] = guard
        await driver.ensure_schema()
        return driver

    # -- async API ----------------------------------------------------------------------------

    async def enqueue(self, envelopes: Sequence[Envelope], *, session: AsyncSession | None = None) -> list[JobHandle]:
        """Write ``envelopes``; with ``session``, inside its transaction (the rows exist iff it
        commits; the session must be on the queue database)."""
        if session is not None:
            # Everything goes through the session's own connection: on SQLite a second
            # connection would wait forever on the write lock this transaction holds.
            conn = await session.connection()
            driver = self._session_driver(conn.engine)
            await driver.ensure_schema_in(conn)
            ids = await driver.enqueue(envelopes, conn)
        else:
            ids = await (await self.driver()).enqueue(envelopes)
        with paused_gc():
            if session is None:
                return [JobHandle(self, job_id) for job_id in ids]  # no keyword: a third cheaper per handle
            return [JobHandle(self, job_id, transactional=True) for job_id in ids]

    async def set_paused(self, queue: str, paused: bool) -> None:
        if not isinstance(queue, str) or not queue or "\x00" in queue:
            raise RunnerError(f"queue {queue!r}: accepted: a non-empty queue name")
        await (await self.driver()).set_paused(queue, paused)

    def _session_driver(self, engine: Any) -> Driver:
        driver = self._session_drivers.get(engine)
        if driver is None:
            url = engine.url.render_as_string(hide_password=False)
            driver = self._session_drivers[engine] = open_driver(url, engine=engine, max_payload=self.max_payload)
        return driver

    # -- sync API -----------------------------------------------------------------------------

    def enqueue_sync(self, envelopes: Sequence[Envelope]) -> list[JobHandle]:
        """``enqueue`` from sync code. One row goes straight in on this thread where the database
        allows it (SQLite: a sync ``defer()`` is one INSERT, with no hand-off to a loop);
        everything else runs on the client's background loop."""
        if len(envelopes) == 1:
            driver = self._driver_here()
            if driver is not None:
                job_id = driver.enqueue_here(envelopes[0])
                if job_id is not None:
                    return [JobHandle(self, job_id)]
        return self.run_sync(self.enqueue, envelopes)

    def _driver_here(self) -> Driver | None:
        """The background loop's driver, if this thread is a plain sync caller that may use it
        directly (not a job's thread, whose enqueues belong to its worker's loop)."""
        if self._bound is not None or in_worker_thread() is not None:
            return None
        try:
            asyncio.get_running_loop()
            return None  # run_sync says why the sync API is wrong here
        except RuntimeError:
            pass
        portal = self._portal
        if portal is None or self._pid != os.getpid():
            return None
        return self._drivers.get(portal.loop)

    def run_sync(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``await fn(*args)`` from sync code: on the worker's loop from a job's thread, else
        on the client's own background loop."""
        token = in_worker_thread()
        if token is not None:
            return anyio.from_thread.run(fn, *args, token=token)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._ensure_portal().call(fn, *args)
        raise RunnerError("this is the sync API, called inside a running event loop: use the *_async variant")

    def _ensure_portal(self) -> _SharedLoop:
        with self._lock:
            if self._portal is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._portal = _SharedLoop()
                atexit.register(self.close)
            return self._portal

    async def aclose(self) -> None:
        """Dispose this loop's driver now (instead of when the loop ends)."""
        loop = asyncio.get_running_loop()
        self._drivers.pop(loop, None)
        guard = self._guards.pop(loop, None)
        if guard is not None:
            await guard.aclose()  # disposes the driver (the guard is the only thing that does)

    def close(self) -> None:
        """Dispose the background loop's driver and stop that loop (safe to call twice)."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is not None and self._pid == os.getpid():
            loop = portal.loop
            self._drivers.pop(loop, None)
            guard = self._guards.pop(loop, None)
            try:
                if guard is not None:
                    portal.call(guard.aclose)
            finally:
                portal.stop()


async def _dispose_at_loop_end(driver: Driver) -> AsyncGenerator[None, None]:
    """An async generator whose ``finally`` runs when the loop finalises its async generators
    (``asyncio.run`` and ``anyio.run`` do, just before closing it): the driver's connections
    are closed on the loop they were opened on."""
    try:
        yield
    finally:
        await driver.dispose()


class _SharedLoop:
    """The event loop of a process's sync callers, run by the callers themselves: a sync
    ``defer()`` runs it on its own thread until its coroutine is done, so nothing crosses
    threads. (Handing the call to a loop thread and back cost two thread wake-ups, a third of a
    PostgreSQL enqueue: 1,800 sync defers/s against 2,700 awaited ones.)

    A caller that arrives while another thread runs the loop hands its coroutine to that run
    and waits for it, so concurrent callers still share the loop (and its enqueue batching);
    the running caller keeps the loop going until every call handed to it is done. Between
    calls the loop does not run: a pooled connection just stays open until the next call.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._mutex = threading.Lock()
        self._running = False  # a thread is running the loop now
        self._riders = 0  # calls handed to that run and not done yet
        self._quiet: asyncio.Event | None = None  # set (on the loop) when the last rider is done

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        with self._mutex:
            ride = self._running
            if ride:
                self._riders += 1
            else:
                self._running = True
        if ride:
            return asyncio.run_coroutine_threadsafe(self._ride(fn, *args), self.loop).result()
        try:
            return self.loop.run_until_complete(self._run(fn, *args))
        finally:
            self._hand_back()

    @staticmethod
    async def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await fn(*args)

    async def _ride(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await fn(*args)
        finally:
            with self._mutex:
                self._riders -= 1
                if self._riders == 0 and self._quiet is not None:
                    self._quiet.set()

    def _hand_back(self) -> None:
        """Stop running the loop once no call rides on it; the next caller runs it again."""
        try:
            while True:
                with self._mutex:
                    if self._riders == 0:
                        return
                    quiet = self._quiet = asyncio.Event()
                self.loop.run_until_complete(quiet.wait())
        finally:
            with self._mutex:
                self._running = False
                self._quiet = None

    def stop(self) -> None:
        try:
            self.call(self.loop.shutdown_asyncgens)
        except Exception:
            pass
        with self._mutex:
            if not self._running:  # else another thread is mid-call (exiting with it): the loop goes with the process
                self.loop.close()


class _BackgroundLoop:
    """An event loop in a daemon thread for sync callers: a script that enqueues and exits must
    not hang on a loop thread the way a non-daemon portal thread would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="runner-client", daemon=True)
        self.thread.start()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def run() -> T:
            return await fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self) -> None:
        async def finish() -> None:
            await self.loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result(5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


# --- handles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    """A job as a producer reads it: JSON columns decoded, times as aware datetimes (UTC).
    A column that does not decode is given as its raw text (that may be why the job failed)."""

    id: int
    name: str
    queue: str
    state: str
    priority: int
    attempt: int
    max_attempts: int | None
    lost: int
    args: Any
    kwargs: Any
    result: Any
    error: ErrorInfo | None
    progress: Any
    meta: Any
    key: str | None
    parent_id: int | None
    root_id: int | None
    worker: str | None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    timeout: float | None
    hard_timeout: float | None
    attempts: list[AttemptRecord]

    @classmethod
    def of(cls, row: JobRow) -> JobInfo:
        return cls(
            id=row.id, name=row.name, queue=row.queue, state=row.state, priority=row.priority, attempt=row.attempt,
            max_attempts=row.max_attempts, lost=row.lost, args=_lenient(row.args), kwargs=_lenient(row.kwargs),
            result=_lenient(row.result), error=error_of(row), progress=_lenient(row.progress), meta=_lenient(row.meta),
            key=row.key, parent_id=row.parent_id, root_id=row.root_id, worker=row.lease_owner,
            created_at=_when(row.created_at), run_at=_when(row.run_at), started_at=_maybe_when(row.started_at),
            finished_at=_maybe_when(row.finished_at), expires_at=_maybe_when(row.expires_at), timeout=row.timeout,
            hard_timeout=row.hard_timeout, attempts=history_of(row),
        )  # fmt: skip


class JobHandle:
    """A job by id: read its state, wait for its result, cancel it. Cheap; holds no connection."""

    __slots__ = ("client", "id", "transactional")

    def __init__(self, client: Client, job_id: int, *, transactional: bool = False) -> None:
        self.client = client
        self.id = job_id
        self.transactional = transactional

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def row_async(self) -> JobRow:
        row = await (await self.client.driver()).get(self.id)
        if row is None:
            if self.transactional:
                raise RunnerError(
                    f"job {self.id} does not exist: it was enqueued inside a transaction that rolled back "
                    "(or has not committed yet), so the row was never written"
                )
            raise RunnerError(f"job {self.id} does not exist: never enqueued in this queue, or purged after --result-ttl")
        return row

    async def info_async(self) -> JobInfo:
        return JobInfo.of(await self.row_async())

    def info(self) -> JobInfo:
        return self.client.run_sync(self.info_async)

    async def state_async(self) -> str:
        return (await self.row_async()).state

    def state(self) -> str:
        return self.client.run_sync(self.state_async)

    async def wait_async(self, timeout: float | None = None, *, poll: float = 0.01) -> Any:
        """The job's return value once it succeeds; raises JobFailed/JobCancelled/JobExpired,
        or ResultTimeout after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            row = await self.row_async()
            if row.state in State.FINAL:
                return outcome_of(row)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"job {self.id} still {row.state} after {timeout}s", job_id=self.id)
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await anyio.sleep(wait)
            delay = min(delay * 1.5, 0.5)

    def wait(self, timeout: float | None = None) -> Any:
        return self.client.run_sync(self.wait_async, timeout)

    async def cancel_async(self) -> CancelResult:
        """Cancel: a queued job at once (``CANCELLED``); a running one within a second, its
        session rolled back (``REQUESTED``); ``FINISHED`` or ``NOT_FOUND`` change nothing."""
        return await (await self.client.driver()).cancel(self.id)

    def cancel(self) -> CancelResult:
        return self.client.run_sync(self.cancel_async)

    async def cancel_workflow_async(self) -> tuple[int, int]:
        """Cancel every unfinished job of the workflow this job belongs to (by its root): waiting
        and queued rows at once, running ones cooperatively. Returns (cancelled, requested)."""
        row = await self.row_async()
        return await (await self.client.driver()).cancel_workflow(row.root_id or row.id)

    def cancel_workflow(self) -> tuple[int, int]:
        return self.client.run_sync(self.cancel_workflow_async)


class GroupHandle:
    """The jobs of a group (or a workflow's several last steps), as one: ``wait`` returns their
    results in order. A member that did not succeed raises its error (the first, in member
    order), unless ``return_exceptions`` puts the exception in its place."""

    __slots__ = ("client", "group_id", "ids")

    def __init__(self, client: Client, ids: Sequence[int], group_id: str | None = None) -> None:
        self.client = client
        self.ids = list(ids)
        self.group_id = group_id

    def __repr__(self) -> str:
        return f"<GroupHandle {self.group_id or ''} {self.ids}>"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def handles(self) -> list[JobHandle]:
        return [JobHandle(self.client, i) for i in self.ids]

    async def states_async(self) -> list[str]:
        rows = {r.id: r for r in await (await self.client.driver()).get_many(self.ids)}
        return [rows[i].state if i in rows else "missing" for i in self.ids]

    def states(self) -> list[str]:
        return self.client.run_sync(self.states_async)

    async def wait_async(self, timeout: float | None = None, *, return_exceptions: bool = False, poll: float = 0.01) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            rows = {r.id: r for r in await (await self.client.driver()).get_many(self.ids)}
            missing = [i for i in self.ids if i not in rows]
            if missing:
                raise RunnerError(f"job {missing[0]} of this group does not exist (purged after --result-ttl?)")
            if all(rows[i].state in State.FINAL for i in self.ids):
                return [_outcome_or_error(rows[i], return_exceptions) for i in self.ids]
            if deadline is not None and time.monotonic() >= deadline:
                done = sum(rows[i].state in State.FINAL for i in self.ids)
                raise ResultTimeout(f"group: {done} of {len(self.ids)} jobs finished after {timeout}s")
            await anyio.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)

    def wait(self, timeout: float | None = None, *, return_exceptions: bool = False) -> list[Any]:
        async def run() -> list[Any]:
            return await self.wait_async(timeout, return_exceptions=return_exceptions)

        return self.client.run_sync(run)

    async def cancel_async(self) -> list[CancelResult]:
        driver = await self.client.driver()
        return [await driver.cancel(i) for i in self.ids]


def _outcome_or_error(row: JobRow, return_exceptions: bool) -> Any:
    try:
        return outcome_of(row)
    except JobError as exc:
        if return_exceptions:
            return exc
        raise


def outcome_of(row: JobRow) -> Any:
    """A finished row as a producer sees it: the result, or the matching exception raised."""
    if row.state == State.SUCCEEDED:
        return decode_json(row.result, f"the result of job {row.id}") if row.result is not None else None
    info = error_of(row) or ErrorInfo(type="Error", message="")
    if row.state == State.CANCELLED:
        raise JobCancelled(f"job {row.id} was cancelled: {info.message}", job_id=row.id)
    if row.state == State.EXPIRED:
        raise JobExpired(f"job {row.id} expired before it started", job_id=row.id)
    raise JobFailed(row.id, info.type, info.message, info.traceback)


_error_decoder = msgspec.json.Decoder(ErrorInfo)
_history_decoder = msgspec.json.Decoder(list[AttemptRecord])


def error_of(row: JobRow) -> ErrorInfo | None:
    if not row.error:
        return None
    try:
        return _error_decoder.decode(row.error)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return ErrorInfo(type="Error", message=str(row.error), attempt=row.attempt)


def history_of(row: JobRow) -> list[AttemptRecord]:
    try:
        return _history_decoder.decode(row.attempts or "[]")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return []


def _lenient(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return decode_json(text)
    except RunnerError:
        return text


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _maybe_when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
