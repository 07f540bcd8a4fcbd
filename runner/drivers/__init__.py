"""Queue databases: one interface (``base.Driver``), a driver per database.

* ``base.py``     -- the interface and the rows it returns
* ``sql.py``      -- the SQL both drivers share
* ``postgres.py`` -- the PostgreSQL driver (asyncpg; SKIP LOCKED, LISTEN/NOTIFY, COPY)
* ``sqlite.py``   -- the SQLite driver (aiosqlite; one writer, and its control-plane file)
* ``engines.py``  -- engines for each database (SQLite's pragmas and writer lock)
* ``migrate_v1.py`` -- the upgrade from queue schema 1

``open_driver(url)`` is the only way in: it builds the engine(s) and returns the right driver.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import backend_of
from .base import CancelResult, Claimed, Driver, JobFilter, JobPage, JobRow, NodeRow, QueueCounts, StatsRow, WorkerRow
from .engines import create_engine, sqlite_path

__all__ = [
    "CancelResult",
    "Claimed",
    "Driver",
    "JobFilter",
    "JobPage",
    "JobRow",
    "NodeRow",
    "QueueCounts",
    "StatsRow",
    "WorkerRow",
    "open_driver",
]


def open_driver(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 2,
    max_payload: int = 1 << 20,
    engine: AsyncEngine | None = None,
) -> Driver:
    """A driver for the queue at ``url``. ``engine``: reuse one (a caller's session's engine)."""
    if backend_of(url) == "postgresql":
        from .postgres import PostgresDriver

        engine = engine or create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pre_ping=False)
        return PostgresDriver(engine, url=url, max_payload=max_payload)
    from .sqlite import SQLiteDriver, control_path

    engine = engine or create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    path = sqlite_path(url)
    control = engine if path is None else create_engine(f"sqlite:///{control_path(path)}", pool_size=2, max_overflow=4)
    return SQLiteDriver(engine, control, path=path, max_payload=max_payload)
