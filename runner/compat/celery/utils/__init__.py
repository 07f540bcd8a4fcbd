"""Celery's ``celery.utils``: ``uuid`` (what task modules import from it); ``log`` and ``time``
are its submodules, as in Celery."""

from __future__ import annotations

from uuid import uuid4

__all__ = ["gen_unique_id", "uuid"]


def uuid(_uuid: object = uuid4) -> str:
    """A new task id: a random UUID as text, the form Celery uses (36 characters)."""
    return str(uuid4())


gen_unique_id = uuid
