"""The benchmark's databases: created fresh per step (only ``bench_*`` names are ever dropped),
seeded with users and profiles, and read back afterwards (active users, their time span, the
number of server sessions opened)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy import select, text

from jobs.models import Base, User
from runner.session import create_engine

from .procs import Child
from .settings import DB_PREFIX, PG_ADMIN, WORK


def pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def wait_for_postgres(timeout: float = 120.0) -> None:
    """Other test suites on this machine restart PostgreSQL; wait until it accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(PG_ADMIN, timeout=5)
            await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def fresh_postgres(name: str) -> str:
    """Drop and create database ``DB_PREFIX + name`` (the prefix must start with ``bench``: the
    benchmark never drops a database it does not own); returns its URL."""
    name = DB_PREFIX + name
    if not name.startswith("bench"):
        raise ValueError(f"refusing to drop {name!r}: the benchmark only owns bench* databases")
    await wait_for_postgres()
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg_url(name)


def fresh_sqlite(name: str) -> str:
    name = DB_PREFIX + name
    WORK.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (WORK / f"{name}.db{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{WORK / name}.db"


async def seed_users(url: str, n: int) -> None:
    """``n`` users (ids 1..n) with one profile each, all ``pending``."""
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            text("INSERT INTO users (id, email, status) VALUES (:id, :email, 'pending')"),
            [{"id": i, "email": f"user{i}@example.com"} for i in range(1, n + 1)],
        )
        await conn.execute(
            text("INSERT INTO profiles (id, user_id, display_name, logins) VALUES (:id, :id, :name, 0)"),
            [{"id": i, "name": f"User {i}"} for i in range(1, n + 1)],
        )
        if url.startswith("postgresql"):
            await conn.execute(text("ANALYZE users"))
            await conn.execute(text("ANALYZE profiles"))
    await engine.dispose()


async def active_users(url: str) -> tuple[int, float]:
    """How many users are active, and the seconds between the first and the last activation
    (``updated_at``): the W2 rate of systems without a queue table to read."""
    engine = create_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(User.status, User.updated_at).where(User.status == "active"))).all()
    await engine.dispose()
    if not rows:
        return 0, 0.0
    stamps = [r[1] for r in rows]
    return len(rows), (max(stamps) - min(stamps)).total_seconds()


async def sessions_opened(url: str) -> int | None:
    """``pg_stat_database.sessions`` for the database behind ``url`` (PostgreSQL 14+); None on
    SQLite. Read from the admin database so that reading it opens no session in ``url``'s."""
    if not url.startswith("postgresql"):
        return None
    name = url.rsplit("/", 1)[1]
    await asyncio.sleep(0.5)  # a backend's counters reach shared stats when it exits
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def watch_w2(url: str, n: int, start: Callable[[], list[Child]], timeout: float) -> dict[str, float]:
    """Run a reference's W2: start its workers, wait until ``n`` users are active (or the workers
    all exited), stop them. Polls through one connection opened *before* the session count is
    taken, so the count is the workers' alone. Rate from the activations' ``updated_at`` span."""
    conn = await asyncpg.connect(url)
    children: list[Child] = []
    try:
        await conn.fetchval("SELECT 1")
        await asyncio.sleep(1.1)  # let this backend's own connect reach the shared stats first
        await conn.fetchval("SELECT 1")
        before = await sessions_opened(url)
        children = start()
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM users WHERE status = 'active'") < n:
            for child in children:
                child.check_alive(allow_clean_exit=True)
            if all(c.proc.poll() is not None for c in children) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        for child in children:
            child.stop()
    after = await sessions_opened(url)
    await conn.close()
    active, span = await active_users(url)
    return {
        "w2": active / span if span else float("nan"), "w2_active_off": float(active - n),
        "w2_connections": float(after - before) if before is not None and after is not None else float("nan"),
    }  # fmt: skip
