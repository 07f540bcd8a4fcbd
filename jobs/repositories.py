"""Repositories: the only place the example app writes queries; jobs read as business steps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .models import Profile, User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, user_id: int) -> User:
        """The user with its profile loaded eagerly (lazy loads would fail on AsyncSession)."""
        user = await self.session.scalar(select(User).options(selectinload(User.profile)).where(User.id == user_id))
        if user is None:
            raise LookupError(f"user {user_id} does not exist")
        return user

    async def paginate(self, *, after_id: int = 0, limit: int = 100, status: str | None = None) -> Sequence[User]:
        query = select(User).where(User.id > after_id).order_by(User.id).limit(limit)
        if status is not None:
            query = query.where(User.status == status)
        return (await self.session.scalars(query)).all()

    async def set_status(self, user_id: int, status: str) -> tuple[int, str] | None:
        """One UPDATE ... RETURNING: no read-modify-write race."""
        row = (
            await self.session.execute(
                update(User)
                .where(User.id == user_id)
                .values(status=status, updated_at=datetime.now(UTC))
                .returning(User.id, User.status)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def add(self, email: str, display_name: str) -> User:
        user = User(email=email, profile=Profile(display_name=display_name))
        self.session.add(user)
        await self.session.flush()
        return user

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.session.execute(select(User.status, func.count()).group_by(User.status))
        return dict(rows.all())
