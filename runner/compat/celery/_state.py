"""What the shim's modules share at run time, kept below all of them (Celery's ``celery._state``):
the apps created so far, the current one, shared tasks waiting for apps, and the request of the
task attempt running in this context.

Every other module of the shim may import this one; it imports none of them, so the modules
above it never need to import each other back. ``app/base.py`` registers how to build the
default app (``set_default_app_factory``) when it is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = [
    "all_apps",
    "current_app",
    "current_request",
    "current_task",
    "get_current_app",
    "register_app",
    "request_var",
    "set_default_app_factory",
    "shared_tasks",
    "task_var",
]

lock = threading.RLock()
_current: list[Any] = []  # apps in creation order; the last one is current
all_apps: list[Any] = []
shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []  # (function, options) of @shared_task
_factory: list[Callable[[], Any]] = []

# The Celery request, and the task, of the task attempt running in this context (None outside one).
request_var: ContextVar[Any] = ContextVar("celery_current_request", default=None)
task_var: ContextVar[Any] = ContextVar("celery_current_task", default=None)


def current_request() -> Any:
    """The request of the task attempt running in this context, if any."""
    return request_var.get()


def set_default_app_factory(factory: Callable[[], Any]) -> None:
    _factory[:] = [factory]


def register_app(app: Any, *, set_as_current: bool) -> None:
    with lock:
        all_apps.append(app)
        if set_as_current:
            _current.append(app)


def set_current(app: Any) -> None:
    with lock:
        _current.append(app)


def get_current_app() -> Any:
    """The app most recently created (or a default one, as Celery's ``current_app``)."""
    with lock:
        if not _current:
            if not _factory:
                raise RuntimeError("no Celery app: import runner.compat.celery and create Celery(...) first")
            _factory[0]()
        return _current[-1]


class _CurrentApp:
    """``current_app``: a proxy to the app most recently created, as in Celery."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_app(), name)

    def __call__(self) -> Any:
        return get_current_app()

    def __repr__(self) -> str:
        return f"<current_app proxy to {get_current_app()!r}>"


current_app: Any = _CurrentApp()


class _CurrentTask:
    """``current_task``: the task running in this context (falsy outside one), as in Celery."""

    def __getattr__(self, name: str) -> Any:
        task = task_var.get()
        if task is None:
            raise AttributeError(f"current_task.{name}: no task is running here")
        return getattr(task, name)

    def __bool__(self) -> bool:
        return task_var.get() is not None

    def _get_current_object(self) -> Any:
        return task_var.get()

    def __repr__(self) -> str:
        return f"<current_task proxy to {task_var.get()!r}>"


current_task: Any = _CurrentTask()
