"""An app with a one-second periodic job, for the scheduler tests under real `runner serve`."""

from __future__ import annotations

import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import App, Context

app = App("periodic")


@app.periodic(every=1, name="heartbeat-every-second")
@app.job
async def beat(session: AsyncSession, ctx: Context) -> int:
    """Records which fire time it ran for; a doubled fire would show as two rows for one time."""
    await session.execute(
        text("INSERT INTO beats (fire_at, pid) VALUES (:fire_at, :pid)"),
        {"fire_at": ctx.run_at, "pid": os.getpid()},
    )
    return os.getpid()


@app.periodic(cron="0 3 * * *", tz="Europe/Paris", missed="skip")
@app.job
async def nightly() -> None:
    """Never due during a test; there to show a cron entry coexisting with an interval one."""
