"""Jobs for the wake-up tests: a retry with a delay, and a key that only one job holds at a time."""

from __future__ import annotations

import anyio

from runner import App, ConcurrencyLimit, Context, Retry

app = App("waking")


@app.job
async def noop() -> None:
    return None


@app.job(retries=1)
async def retry_later(ctx: Context, delay: float) -> int:
    if ctx.attempt == 1:
        raise Retry(delay=delay, reason="not yet")
    return ctx.attempt


@app.job(concurrency=ConcurrencyLimit(1, key="one"))
async def one_at_a_time(tag: str, seconds: float) -> str:
    await anyio.sleep(seconds)
    return tag
