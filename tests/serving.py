"""Helpers for tests that run `runner serve` as a real process against the test app."""

from __future__ import annotations

from typing import Any

import anyio
from sqlalchemy import text

from runner import create_engine
from tests.apps.basic import Base, app

from .conftest import sql


def prepare(url: str) -> None:
    """Create the test app's tables and its counter row before any worker starts."""

    async def run() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO counters (name, value) VALUES ('hits', 0)"))
        await engine.dispose()

    anyio.run(run)


def enqueue(url: str, calls: list[Any]) -> list[int]:
    app.configure(broker=url)
    try:
        return [h.id for h in app.defer_many(calls)]
    finally:
        app.client.close()


def states(url: str) -> dict[str, int]:
    return dict(sql(url, "SELECT state, count(*) FROM runner_jobs GROUP BY state"))


def serve_args(url: str, *extra: str) -> tuple[str, ...]:
    return ("-A", "tests.apps.basic", "--broker", url, *extra)
