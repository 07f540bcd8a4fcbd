"""Engines for each database, with the settings runner's guarantees depend on.

PostgreSQL: asyncpg, a pool sized to the worker's concurrency, no pre-ping on the worker's engine
(a dead connection fails one statement and is dropped). SQLite: aiosqlite with WAL,
``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` for every transaction -- a deferred transaction
that reads and then writes fails at once with SQLITE_BUSY when another process wrote in between,
while an immediate one waits its turn on the busy timeout -- and sessions that queue for the one
writer in the event loop rather than in SQLite's sleeping busy handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, StaticPool

from ..errors import RunnerError
from ..settings import async_url, backend_of

__all__ = ["SQLiteWriterSession", "create_engine", "session_class", "sqlite_path"]

SQLITE_BUSY_TIMEOUT_S = 30.0


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 2,
    pre_ping: bool = True,
    recycle: float = 1800.0,
    **kwargs: Any,
) -> AsyncEngine:
    """An ``AsyncEngine`` on the async driver for ``url``, sized for ``pool_size`` concurrent jobs.

    SQLite gets WAL, ``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` for every transaction: a
    deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    process wrote in between, while an immediate one waits its turn on the busy timeout.
    """
    if backend_of(url) == "sqlite":
        return _sqlite_engine(url, pool_size=pool_size, max_overflow=max_overflow, **kwargs)
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=recycle,
        pool_timeout=60,
        **kwargs,
    )


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    rest = url.split("://", 1)[1] if "://" in url else url
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") or ":memory:" in url else path


def _sqlite_engine(url: str, *, pool_size: int, max_overflow: int, **kwargs: Any) -> AsyncEngine:
    memory = sqlite_path(url) is None
    if memory:
        # Each :memory: connection is its own database: share one connection.
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        kwargs.setdefault("poolclass", AsyncAdaptedQueuePool)
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", max_overflow)
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
    engine = create_async_engine(async_url(url), **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of the driver's own deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Single statements run in autocommit (see StoreBase._read in store/base.py): no lock held between them.
        if not conn.get_execution_options().get("runner_autocommit"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_class(engine: AsyncEngine) -> type[AsyncSession]:
    """The session class jobs get on ``engine``: on SQLite, one that queues for the writer lock."""
    return SQLiteWriterSession if engine.dialect.name == "sqlite" else AsyncSession


class SQLiteWriterSession(AsyncSession):
    """An AsyncSession that, on SQLite, waits for a per-process writer lock in the event loop
    before its first statement, and gives it back when its transaction ends.

    SQLite has one writer, and every runner transaction on it is BEGIN IMMEDIATE. Sessions of one
    worker would otherwise queue inside SQLite's busy handler, which sleeps in growing steps (up
    to 100 ms) between attempts; a job that awaits something slow before it first touches the
    database holds nothing meanwhile.
    """

    writer: anyio.Lock | None = None  # set per process (per loop) by writer_lock()
    _holds = False

    async def _take(self) -> None:
        if self._holds:
            return
        try:
            with anyio.fail_after(SQLITE_BUSY_TIMEOUT_S):
                await writer_lock().acquire()
        except TimeoutError:
            raise RunnerError(
                f"database is locked: no SQLite write lock within {SQLITE_BUSY_TIMEOUT_S:g}s; SQLite has one "
                "writer, so a job must not open a second session (session_scope) while its own is in a "
                "transaction, nor hold a transaction open for that long"
            ) from None
        self._holds = True

    def _give(self) -> None:
        if self._holds:
            self._holds = False
            writer_lock().release()

    async def connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().connection(*args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().execute(*args, **kwargs)

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().scalar(*args, **kwargs)

    async def scalars(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().scalars(*args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().get(*args, **kwargs)

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().stream(*args, **kwargs)

    async def flush(self, *args: Any, **kwargs: Any) -> None:
        await self._take()
        await super().flush(*args, **kwargs)

    async def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().run_sync(*args, **kwargs)

    async def refresh(self, *args: Any, **kwargs: Any) -> None:
        await self._take()
        await super().refresh(*args, **kwargs)

    async def merge(self, *args: Any, **kwargs: Any) -> Any:
        await self._take()
        return await super().merge(*args, **kwargs)

    async def commit(self) -> None:
        if self.new or self.dirty or self.deleted:
            await self._take()  # a commit that flushes writes
        try:
            await super().commit()
        finally:
            self._give()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            self._give()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._give()


_writer_locks: dict[int, anyio.Lock] = {}


def writer_lock() -> anyio.Lock:
    """The SQLite writer lock of the running loop (one per worker process)."""
    key = id(asyncio.get_running_loop())
    lock = _writer_locks.get(key)
    if lock is None:
        if len(_writer_locks) > 64:  # loops of finished tests/scripts
            _writer_locks.clear()
        lock = _writer_locks[key] = anyio.Lock()
    return lock
