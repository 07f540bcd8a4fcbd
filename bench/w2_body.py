"""The W2 job body every system runs: load a user with its profile eagerly (selectinload, through
the example app's repository), activate it, stamp ``updated_at``. The caller commits.

One function, so the systems differ only in how they obtain a session and commit it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from jobs.repositories import UserRepository


async def activate(session: AsyncSession, user_id: int) -> None:
    user = await UserRepository(session).get_by_id(user_id)  # SELECT user + SELECT profile (selectinload)
    assert user.profile is not None
    user.status = "active"
    user.updated_at = datetime.now(UTC)
