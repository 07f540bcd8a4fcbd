"""What one attempt cost its database, measured on the attempt's own session.

Why it can be exact: a session-taking job gets one session per attempt, and a session holds one
connection at a time, so every statement on that connection while the attempt runs is the
attempt's. The engine's cursor events (installed once per engine, ``install``) find the attempt's
``Meter`` in the connection's ``info``, put there when the session begins its transaction; the
runner stops the meter before it writes the job's completion, so runner's own statements are
never charged to the job.

* statements, and the time spent in them: ``before``/``after_cursor_execute``;
* rows: returned by queries (the async drivers buffer a result at execute time) or affected by writes;
* transaction length: from the session's BEGIN until the job returned (its trailing flush included);
* pool wait: from the session's first need of a connection (``MeteredSession``) until its
  transaction began (on SQLite this includes the wait for the process's writer lock and the
  ``BEGIN IMMEDIATE``).

The cost is a ``wire.Cost`` in the attempt's history; ``python -m bench`` measures the overhead
(``--no-db-cost`` turns it off).
"""

from __future__ import annotations

import time
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from .drivers.engines import SQLiteWriterSession
from .wire import Cost

__all__ = ["Meter", "MeteredSQLiteSession", "MeteredSession", "MeteredSyncSession", "install", "start_meter"]

KEY: Final = "runner_meter"
_installed: set[int] = set()


class Meter:
    """One attempt's running totals; ``stop`` freezes them (later statements are not counted)."""

    __slots__ = ("_t", "active", "asked_at", "db", "pool_wait", "rows", "statements", "stopped_at", "tx_start")

    def __init__(self) -> None:
        self.active = True
        self.asked_at: float | None = None  # when the session first needed a connection
        self.statements = 0
        self.rows = 0
        self.db = 0.0
        self.pool_wait = 0.0
        self.tx_start: float | None = None
        self.stopped_at: float | None = None
        self._t = 0.0

    def stop(self) -> None:
        if self.active:
            self.active = False
            self.stopped_at = time.perf_counter()

    def cost(self) -> Cost:
        tx = 0.0
        if self.tx_start is not None:
            tx = (self.stopped_at or time.perf_counter()) - self.tx_start
        return Cost(
            statements=self.statements, db_ms=round(self.db * 1000, 3), rows=self.rows, tx_ms=round(tx * 1000, 3),
            pool_wait_ms=round(self.pool_wait * 1000, 3),
        )  # fmt: skip


def install(engine: AsyncEngine) -> None:
    """Listen to ``engine``'s statements (once per engine): a connection without an active
    meter costs one dict lookup per statement."""
    sync = engine.sync_engine
    if id(sync) in _installed:
        return
    _installed.add(id(sync))
    event.listen(sync, "before_cursor_execute", _before)
    event.listen(sync, "after_cursor_execute", _after)


def start_meter(session: AsyncSession) -> Meter | None:
    """Meter ``session`` (one made by a metered sessionmaker) for one attempt; None otherwise."""
    if not isinstance(session, MeteredSession):
        return None
    meter = Meter()
    session.meter = meter
    session.sync_session.info[KEY] = meter
    return meter


def _before(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    meter = conn.info.get(KEY)
    if meter is not None and meter.active:
        meter._t = time.perf_counter()


def _after(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    meter = conn.info.get(KEY)
    if meter is None or not meter.active:
        return
    meter.db += time.perf_counter() - meter._t
    meter.statements += 1
    if cursor.description is not None:
        buffered = getattr(cursor, "_rows", None)  # the asyncio adapters fetch results at execute time
        meter.rows += len(buffered) if buffered is not None else 0
    elif cursor.rowcount and cursor.rowcount > 0:
        meter.rows += cursor.rowcount


class MeteredSyncSession(Session):
    """The sync half of a metered session: its transaction start hands the meter to the connection."""


@event.listens_for(MeteredSyncSession, "after_begin")
def _after_begin(session: Session, transaction: Any, connection: Connection) -> None:
    meter = session.info.get(KEY)
    if meter is not None and meter.active:
        connection.info[KEY] = meter
        if meter.tx_start is None:
            meter.tx_start = time.perf_counter()
            if meter.asked_at is not None:  # checkout (and on SQLite the writer lock and BEGIN) just ended
                meter.pool_wait = meter.tx_start - meter.asked_at


class MeteredSession(AsyncSession):
    """An AsyncSession that notes when it first needs a connection, when it carries a meter:
    the pool wait runs from there to its transaction's start (``after_begin``), measured
    without an extra round into the session's greenlet."""

    meter: Meter | None = None

    async def _first_use(self) -> None:
        meter = self.meter
        if meter is not None and meter.asked_at is None:
            meter.asked_at = time.perf_counter()

    async def connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().connection(*args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().execute(*args, **kwargs)

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().scalar(*args, **kwargs)

    async def scalars(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().scalars(*args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().get(*args, **kwargs)

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().stream(*args, **kwargs)

    async def flush(self, *args: Any, **kwargs: Any) -> None:
        await self._first_use()
        await super().flush(*args, **kwargs)

    async def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().run_sync(*args, **kwargs)

    async def refresh(self, *args: Any, **kwargs: Any) -> None:
        await self._first_use()
        await super().refresh(*args, **kwargs)

    async def merge(self, *args: Any, **kwargs: Any) -> Any:
        await self._first_use()
        return await super().merge(*args, **kwargs)


class MeteredSQLiteSession(MeteredSession, SQLiteWriterSession):
    """Metered, and queueing for SQLite's one writer: the timed first connection includes the
    wait for the writer lock, which is the job's wait for its database there."""
