"""Jobs for the workflow tests: arithmetic to check results flow, and a log of who ran when."""

from __future__ import annotations

import os
import time

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import App

app = App("flows")


@app.job
async def add(x: int, y: int) -> int:
    return x + y


@app.job
async def tsum(values: list[int | None], extra: int = 0) -> int:
    return sum(v or 0 for v in values) + extra


@app.job
async def double(x: int) -> int:
    return 2 * x


@app.job
async def fail(message: str) -> None:
    raise ValueError(message)


@app.job
async def node(session: AsyncSession, name: str, seconds: float = 0.0) -> str:
    """A DAG node: records its name and the instant it ran, in its own transaction."""
    if seconds:
        await anyio.sleep(seconds)
    await session.execute(
        text("INSERT INTO ran_nodes (name, at, pid) VALUES (:n, :t, :p)"), {"n": name, "t": time.time(), "p": os.getpid()}
    )
    return name


@app.job
async def member(session: AsyncSession, i: int, seconds: float = 0.01) -> int:
    """A chord member that writes: proves each member's effect happens once under kill -9."""
    await session.execute(
        text("INSERT INTO ran_nodes (name, at, pid) VALUES (:n, :t, :p)"), {"n": f"m{i}", "t": time.time(), "p": os.getpid()}
    )
    await anyio.sleep(seconds)
    return i


@app.job
async def collect(session: AsyncSession, values: list[int]) -> int:
    """A chord callback: records that it ran, and with what."""
    await session.execute(
        text("INSERT INTO ran_nodes (name, at, pid) VALUES (:n, :t, :p)"),
        {"n": f"callback:{len(values)}:{sum(values)}", "t": time.time(), "p": os.getpid()},
    )
    return sum(values)
