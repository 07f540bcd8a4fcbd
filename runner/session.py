"""The per-process engine and the scoped session a job runs in.

Why this module exists: an ``AsyncEngine`` belongs to the event loop its connections were made on.
runner builds one per worker process, after the fork, inside the worker's one loop, and keeps it
for the worker's life; jobs borrow sessions from it. ``session_scope`` is the unit of work:
commit on success, roll back on error, cancel or timeout, close always. The rollback and close
run shielded, so a cancelled job still returns its connection clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .drivers.engines import SQLiteWriterSession, create_engine, session_class, sqlite_path
from .errors import RunnerError

__all__ = ["create_engine", "current_sessionmaker", "make_sessionmaker", "session_scope", "sqlite_path", "use_sessionmaker"]

_current: ContextVar[async_sessionmaker[AsyncSession] | None] = ContextVar("runner_sessionmaker", default=None)
_process_default: list[async_sessionmaker[AsyncSession]] = []


def use_sessionmaker(factory: async_sessionmaker[AsyncSession] | None) -> None:
    """Make ``factory`` what ``session_scope()`` uses in this process (the worker sets it at boot)."""
    _process_default.clear()
    if factory is not None:
        _process_default.append(factory)
    _current.set(factory)


def current_sessionmaker() -> async_sessionmaker[AsyncSession]:
    factory = _current.get() or (_process_default[0] if _process_default else None)
    if factory is None:
        raise RunnerError(
            "no database session is available here: session_scope() works inside a runner worker, "
            "in eager mode, or when given bind=engine"
        )
    return factory


def make_sessionmaker(engine: AsyncEngine, *, metered: bool = False) -> async_sessionmaker[AsyncSession]:
    """Sessions on ``engine``. ``metered``: sessions a job's attempt can measure its database
    cost on (``runner/cost.py``; the worker's, unless ``--no-db-cost``)."""
    # expire_on_commit=False: a job's return value may read attributes after the commit.
    if not metered:
        return async_sessionmaker(engine, class_=session_class(engine), expire_on_commit=False, autoflush=True)
    from .cost import MeteredSession, MeteredSQLiteSession, MeteredSyncSession, install

    install(engine)
    cls = MeteredSQLiteSession if issubclass(session_class(engine), SQLiteWriterSession) else MeteredSession
    return async_sessionmaker(engine, class_=cls, sync_session_class=MeteredSyncSession, expire_on_commit=False, autoflush=True)


@contextlib.asynccontextmanager
async def session_scope(
    bind: AsyncEngine | None = None, *, factory: async_sessionmaker[AsyncSession] | None = None
) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on normal exit, rollback on any exception or cancellation. The
    runner opens each session-taking job's attempt with exactly this.

    :param bind: an engine to use instead of the worker's own (for scripts and tests).
    :param factory: a sessionmaker to use (the worker passes its own).
    """
    if factory is None:
        factory = make_sessionmaker(bind) if bind is not None else current_sessionmaker()
    session = factory()
    try:
        yield session
        await session.commit()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await session.rollback()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await session.close()
