"""Jobs the test suite runs, in-process and under `runner serve -A tests.apps.basic`."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
import time
import uuid

import anyio
from sqlalchemy import Integer, String, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runner import App, Context, Retry

app = App("tests")

# Loops and engines seen by jobs in this process: one of each, for the whole life of a worker.
SEEN: dict[str, set[int]] = {"loops": set(), "engines": set()}


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class Ran(Base):
    """One row per successful attempt of `record`: proves "exactly once" by counting."""

    __tablename__ = "ran"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(String(50))
    pid: Mapped[int] = mapped_column(Integer)


@app.on_startup
async def create_tables(_info: object) -> None:
    from sqlalchemy.exc import DBAPIError

    from runner import session_scope

    try:
        async with session_scope() as session:
            await (await session.connection()).run_sync(Base.metadata.create_all)
    except DBAPIError:  # another worker created them at the same instant
        pass


@app.job
async def add(x: int, y: int) -> int:
    return x + y


@app.job
async def noop() -> None:
    return None


@app.job
def sync_add(x: int, y: int) -> int:
    return x + y


@app.job
async def boom(message: str = "boom") -> None:
    raise ValueError(message)


@app.job(retries=2, backoff=0.05, backoff_max=0.1)
async def flaky(ctx: Context, succeed_on: int) -> int:
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@app.job(retries=5, retry_on=(KeyError,), backoff=0.01)
async def only_keyerror_retries(kind: str) -> None:
    raise KeyError(kind) if kind == "key" else ValueError(kind)


@app.job(retries=3)
async def asks_retry(ctx: Context) -> int:
    if ctx.attempt < 3:
        raise Retry(delay=0.01, reason="not yet")
    return ctx.attempt


@app.job
async def record(session: AsyncSession, tag: str, sleep: float = 0.0) -> int:
    """Writes a row and bumps a counter in the job's session; committed with the completion."""
    await session.execute(text("INSERT INTO ran (tag, pid) VALUES (:tag, :pid)"), {"tag": tag, "pid": os.getpid()})
    if sleep:
        await anyio.sleep(sleep)
    await session.execute(text("UPDATE counters SET value = value + 1 WHERE name = :name"), {"name": "hits"})
    return os.getpid()


@app.job
async def record_then_fail(session: AsyncSession, tag: str) -> None:
    await session.execute(text("INSERT INTO ran (tag, pid) VALUES (:tag, :pid)"), {"tag": tag, "pid": os.getpid()})
    raise RuntimeError("after writing")


@app.job(timeout=0.3)
async def slow_with_session(session: AsyncSession, tag: str) -> None:
    await session.execute(text("INSERT INTO ran (tag, pid) VALUES (:tag, :pid)"), {"tag": tag, "pid": os.getpid()})
    await anyio.sleep(5)


@app.job(timeout=0.3)
def slow_sync(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


@app.job
def sleeps_in_thread(seconds: float) -> float:
    """Sync and with no limits of its own: only a per-call hard limit stops it early."""
    time.sleep(seconds)
    return seconds


@app.job
async def sleeper(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


@app.job
async def identity(session: AsyncSession) -> list[int]:
    """Which loop and engine ran this attempt (and a real query on that engine)."""
    await session.execute(text("SELECT 1"))
    loop = id(asyncio.get_running_loop())
    engine = id(session.bind)
    SEEN["loops"].add(loop)
    SEEN["engines"].add(engine)
    return [os.getpid(), loop, engine]


@app.job(hard_timeout=1.0, retries=1, backoff=0.01)
def blocks_forever(tag: str) -> None:
    """Ignores cancellation entirely: only the supervisor's SIGKILL ends it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, [])
    while True:
        time.sleep(0.05)


@app.job
async def blocks_loop(seconds: float) -> None:
    """Blocks the event loop itself (a bug in a job): heartbeats stop."""
    time.sleep(seconds)


@app.job
async def unencodable() -> object:
    return object()


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


@app.job
async def raises_bad_str() -> None:
    raise BadStr()


@app.job
async def big_result(size: int) -> str:
    return "x" * size


@app.job
async def reports_progress(ctx: Context) -> str:
    await ctx.progress({"step": 1})
    return "ok"


@app.job
async def parent_of_chain(x: int) -> int:
    return x * 10


@app.job
async def child_of_chain(parent_result: int, extra: int) -> int:
    return parent_result + extra


@app.job
async def writes_then_waits(session: AsyncSession, tag: str, seconds: float) -> None:
    """Writes, then waits: cancelling it mid-wait must roll the write back."""
    await session.execute(text("INSERT INTO ran (tag, pid) VALUES (:tag, :pid)"), {"tag": tag, "pid": os.getpid()})
    await session.flush()
    await anyio.sleep(seconds)


@app.job(ignore_result=True)
async def result_ignored() -> str:
    return "nobody reads this"


@app.job
async def waits_then_writes(session: AsyncSession, tag: str, seconds: float) -> None:
    """Waits before touching the session: on SQLite a job's transaction is the queue's one write
    lock, so a job that must stay cancellable waits first and writes after."""
    await anyio.sleep(seconds)
    await session.execute(text("INSERT INTO ran (tag, pid) VALUES (:tag, :pid)"), {"tag": tag, "pid": os.getpid()})


@app.job
async def progress_then_wait(ctx: Context, seconds: float) -> str:
    """Reports progress, then idles: its progress must be readable while it runs."""
    await ctx.progress({"step": 1})
    await anyio.sleep(seconds)
    await ctx.progress({"step": 2})
    return "done"


CALLS: dict[str, int] = {"runtime_error": 0}


async def raises_runtime_error() -> None:
    CALLS["runtime_error"] += 1
    raise RuntimeError("the callee's own RuntimeError")


@app.job
def sync_calls_the_loop() -> str:
    """A sync job using the sync API, whose callee raises RuntimeError: it must run once."""
    try:
        app.client.run_sync(raises_runtime_error)
    except RuntimeError as exc:
        return f"{exc} after {CALLS['runtime_error']} call(s)"
    return "no error"


@app.job(retries=1, retry_on=(TimeoutError,), backoff=0.01, timeout=0.2)
async def times_out_once(ctx: Context) -> int:
    if ctx.attempt == 1:
        await anyio.sleep(5)
    return ctx.attempt


@app.job
async def takes_kwargs(session: AsyncSession, **options: object) -> list[str]:
    return sorted(options)


@app.job
async def identity_of_args(value: object) -> object:
    return value


@app.job
async def typed_values(
    when: datetime.datetime, amount: decimal.Decimal, token: uuid.UUID, raw: bytes, counts: dict[int, int]
) -> list[str]:
    """Annotated: what JSON cannot carry comes back as the caller's value (round_trip.py)."""
    return [type(v).__name__ + ":" + (v.hex() if isinstance(v, bytes) else repr(v)) for v in (when, amount, token, raw, counts)]


@app.job
async def echo(value):  # type: ignore[no-untyped-def]
    """Unannotated on purpose: receives whatever JSON gives back."""
    return value
