"""The floor/ceiling reference: the W2 job body run by a bare asyncio script with one engine and
the same total concurrency as runner (workers × -c), no queue at all. It shows what this
database, driver and ORM can do on this machine; runner's W2 rate is printed as a fraction of it.

Note it is one process, so it has a single core of Python; runner has one per worker."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from runner.settings import async_url

from . import seed
from .w2_body import activate


async def _run(url: str, n: int, concurrency: int) -> tuple[float, int]:
    engine = create_async_engine(async_url(url), pool_size=concurrency, max_overflow=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    ids = iter(range(1, n + 1))
    failed = 0

    async def lane() -> None:
        nonlocal failed
        for user_id in ids:  # lanes share one iterator: each id is taken once
            try:
                async with sessions() as session, session.begin():
                    await activate(session, user_id)
            except Exception:
                failed += 1

    async with engine.connect():  # first connection outside the timing
        pass
    t = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    rate = n / (time.perf_counter() - t)
    await engine.dispose()
    return rate, failed


def run_w2(url: str, n: int, users: int, concurrency: int) -> dict[str, float]:
    asyncio.run(seed.seed_users(url, users))
    before = asyncio.run(seed.sessions_opened(url))
    rate, failed = asyncio.run(_run(url, n, concurrency))
    after = asyncio.run(seed.sessions_opened(url))
    active, _ = asyncio.run(seed.active_users(url))
    return {
        "w2": rate, "w2_failed": float(failed), "w2_active_off": float(active - n),
        "w2_connections": float(after - before) if before is not None and after is not None else float("nan"),
    }  # fmt: skip
