"""The W2 limit: the job body run by a bare asyncio script, no queue at all, in ``processes``
processes of ``concurrency`` lanes each -- runner's ``-w`` and ``-c`` -- on PostgreSQL or SQLite.

With ``processes=1`` and ``w × c`` lanes it is the old one-process floor (one core of Python
against runner's one per worker); with ``processes = w`` it is the ceiling runner is held to.
Each process takes every ``processes``-th user id, connects and warms its pool, then starts at
one agreed wall-clock instant; the rate is N over the span from that instant to the last
process's end. ``python -m bench.ref_bare URL START STEP N CONCURRENCY START_AT`` is one process.

SQLite has one writer: lanes of a process take an ``asyncio.Lock`` around each transaction (as
runner's sessions do), and ``BEGIN IMMEDIATE`` makes processes queue on the busy timeout instead of
failing a read-then-write transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from runner.settings import async_url

from . import seed
from .costs import Meter
from .procs import Child, python
from .w2_body import activate


def _engine(url: str, concurrency: int) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return create_async_engine(async_url(url), pool_size=concurrency, max_overflow=2)
    engine = create_async_engine(async_url(url), pool_size=concurrency, max_overflow=2, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None
        cur = dbapi.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _lanes(url: str, ids: list[int], concurrency: int, start_at: float | None) -> tuple[float, float, int]:
    engine = _engine(url, concurrency)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    writer = asyncio.Lock() if url.startswith("sqlite") else None
    todo = iter(ids)
    failed = 0

    @contextlib.asynccontextmanager
    async def turn() -> AsyncIterator[None]:
        if writer is None:
            yield
            return
        async with writer:
            yield

    async def lane() -> None:
        nonlocal failed
        for user_id in todo:  # lanes share one iterator: each id is taken once
            try:
                async with turn(), sessions() as session, session.begin():
                    await activate(session, user_id)
            except Exception:
                failed += 1

    # Every lane's connection opened before the timing (and their codecs set up): runner's
    # workers open theirs at start-up, outside their drain span too.
    warm = [await engine.connect() for _ in range(concurrency)]
    for conn in warm:
        await conn.close()
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    t1 = time.time()
    await engine.dispose()
    return t0, t1, failed


def run_w2(url: str, n: int, users: int, concurrency: int, processes: int = 1) -> dict[str, float]:
    asyncio.run(seed.seed_users(url, users))
    before = asyncio.run(seed.sessions_opened(url))
    if processes == 1:
        t0, t1, failed = asyncio.run(_lanes(url, list(range(1, n + 1)), concurrency, None))
    else:
        start_at = time.time() + 3.0  # every process connected and warm by then
        xacts = Meter.before(url)
        children = [
            Child(
                f"bare-w2-{i}",
                python("-m", "bench.ref_bare", url, str(i + 1), str(processes), str(n), str(concurrency), repr(start_at)),
                is_worker=True,
            )  # fmt: skip
            for i in range(processes)
        ]
        meter = Meter(url, [c.proc.pid for c in children])
        try:
            for child in children:
                child.wait(600)
        finally:
            for child in children:
                child.stop()
        spans = [json.loads(c.log_path.read_text().strip().splitlines()[-1]) for c in children]
        t0, t1, failed = min(s[0] for s in spans), max(s[1] for s in spans), sum(s[2] for s in spans)
    after = asyncio.run(seed.sessions_opened(url))
    costs = meter.figures("w2", n, t0, t1, xacts) if processes > 1 else {}
    active, _ = asyncio.run(seed.active_users(url))
    return {
        "w2": n / (t1 - t0), "w2_failed": float(failed), "w2_active_off": float(active - n),
        "w2_connections": float(after - before) if before is not None and after is not None else float("nan"),
        **costs,
    }  # fmt: skip


if __name__ == "__main__":
    _, url, first, step, n, conc, start = sys.argv
    ids = list(range(int(first), int(n) + 1, int(step)))
    print(json.dumps(asyncio.run(_lanes(url, ids, int(conc), float(start)))))
