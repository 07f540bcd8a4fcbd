"""Jobs under flow control, for the limit tests under real `runner serve`."""

from __future__ import annotations

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import App, ConcurrencyLimit, RateLimit

app = App("limited", routes={"reports.*": "reports"})


@app.job(concurrency=ConcurrencyLimit(3, key=lambda tenant, **_: tenant))
async def per_tenant(session: AsyncSession, tenant: int, seconds: float) -> int:
    """Holds its slot for ``seconds``; the session write proves the job really ran once."""
    await anyio.sleep(seconds)
    await session.execute(text("INSERT INTO ran_limited (tenant) VALUES (:t)"), {"t": tenant})
    return tenant


@app.job(rate=RateLimit("50/s", key="api"))
async def call_api(n: int) -> int:
    return n


@app.job(name="reports.build")
async def build_report(seconds: float) -> None:
    await anyio.sleep(seconds)
