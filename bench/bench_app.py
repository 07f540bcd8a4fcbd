"""The runner app the benchmark serves (``runner serve -A bench.bench_app``): a no-op for W1 and
W3, and the W2 database job. W3 needs no job of its own: runner's queue table already holds
``created_at`` (set by the producer) and ``started_at`` (set by the claiming worker)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from runner import App, ConcurrencyLimit, RateLimit

from .w2_body import activate

app = App("bench")


@app.job(name="noop")
async def noop() -> None:
    return None


@app.job(name="activate")
async def activate_job(session: AsyncSession, user_id: int) -> None:
    """The session is the worker's, scoped to the attempt: the user's update and the job's
    completion commit in one transaction (exactly-once)."""
    await activate(session, user_id)


@app.job(name="noop_limited", concurrency=ConcurrencyLimit(5, key=lambda k: k))
async def noop_limited(k: int) -> None:
    """W1 under a concurrency limit on every job: 1,000 keys, at most 5 running per key."""
    return None


@app.job(name="noop_rated", rate=RateLimit((1_000_000, 1.0), key="bench"))
async def noop_rated() -> None:
    """W1 under a rate limit far above the drain rate: every claim counts its starts."""
    return None
