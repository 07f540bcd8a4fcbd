"""Stand-ins for what the README's examples use without defining it, for
``tests/test_readme_examples.py``: a user table with a profile and the repository the examples
call (``UserRepository(session).get_by_id``), a notes table for the Celery ``DatabaseTask``
example, and the ``app`` the README's testing example runs (``send_mail``, ``nightly_report``).

The examples' own jobs are defined in the tests, as the README writes them; only the testing
example needs module-level names, because its tests are module-level functions.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from runner import App, create_engine


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="new")
    # lazy="raise": a job that touches the profile without eager-loading it fails loudly (an
    # AsyncSession cannot lazy-load), so the README's "eager-loads the profile" is checked.
    profile: Mapped[Profile] = relationship(back_populates="user", lazy="raise")


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    display_name: Mapped[str] = mapped_column(String(100))
    user: Mapped[User] = relationship(back_populates="profile", lazy="raise")


class UserRepository:
    """The repository the README's jobs use: one query, the profile eager-loaded."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, user_id: int) -> User:
        query = select(User).options(selectinload(User.profile)).where(User.id == user_id)
        return (await self.session.execute(query)).scalar_one()


async def seed_users(url: str, ids: list[int]) -> None:
    """Create the users tables on ``url`` (the queue's database: the jobs share it) with users."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session, session.begin():
            for i in ids:
                session.add(User(id=i, email=f"user{i}@example.com", profile=Profile(display_name=f"User {i}")))
    finally:
        await engine.dispose()


async def user_statuses(url: str) -> dict[int, str]:
    engine = create_engine(url)
    try:
        async with AsyncSession(engine) as session:
            return {u.id: u.status for u in (await session.execute(select(User))).scalars()}
    finally:
        await engine.dispose()


class NoteBase(DeclarativeBase):
    pass


class Note(NoteBase):
    """The project's own (sync SQLAlchemy) table for the Celery ``DatabaseTask`` example."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


# -- the README's testing example: `app`, `send_mail`, `nightly_report` ------------------------

app = App("readme-shop")


@app.job
async def send_mail(to: str) -> str:
    return "sent"


@app.job
async def nightly_report(session: AsyncSession) -> None: ...
