"""Celery's ``celery.app`` package: the app object, ``shared_task`` and ``current_app``."""

from .base import Celery, current_app, shared_task
from .task import Context, Task

__all__ = ["Celery", "Context", "Task", "current_app", "shared_task"]
