"""SQLAlchemy 2.0 typed models of the example app: a User with a one-to-one Profile."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    profile: Mapped[Profile] = relationship(back_populates="user", uselist=False, lazy="raise")


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    logins: Mapped[int] = mapped_column(default=0, server_default="0")
    user: Mapped[User] = relationship(back_populates="profile", lazy="raise")

    __mapper_args__ = {"eager_defaults": True}


__all__ = ["Base", "Profile", "User", "func", "utcnow"]
