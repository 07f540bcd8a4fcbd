"""Jobs of the example app. Each gets a session scoped to its attempt: committed on return,
rolled back on error, cancel or timeout."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from runner import Context

from .app import app
from .repositories import UserRepository

log = logging.getLogger("jobs")


@app.job(retries=3)
async def activate_user(session: AsyncSession, user_id: int) -> dict[str, object]:
    user = await UserRepository(session).get_by_id(user_id)
    user.status = "active"
    user.updated_at = datetime.now(UTC)
    log.info("activated user %s (%s)", user.id, user.profile.display_name)
    return {"id": user.id, "status": user.status}


@app.job
async def record_login(session: AsyncSession, user_id: int) -> int:
    user = await UserRepository(session).get_by_id(user_id)
    user.profile.logins += 1
    return user.profile.logins


@app.job(queue="reports")
async def status_report(session: AsyncSession, ctx: Context) -> dict[str, int]:
    counts = await UserRepository(session).count_by_status()
    await ctx.progress({"done": True})
    log.info("user status report: %s", counts)
    return counts


@app.job
def send_welcome_email(email: str) -> str:
    """A sync job: runs in the worker's thread pool, never on the loop."""
    log.info("sent welcome email to %s", email)
    return email
