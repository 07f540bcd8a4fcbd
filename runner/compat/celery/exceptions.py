"""Celery's exception names, raised with Celery's meaning by the shim."""

from __future__ import annotations

import builtins
import sys
from datetime import datetime
from typing import Any

from ...errors import ConfigError

__all__ = [
    "CeleryError",
    "ChordError",
    "Ignore",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NotRegistered",
    "ParentFailed",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskIdInUse",
    "TaskRevokedError",
    "Terminated",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
    "rebuild_exception",
]


class CeleryError(Exception):
    """Base of Celery's own errors."""


class ImproperlyConfigured(ConfigError):
    """A setting runner cannot honour (a redis:// broker, the pickle serializer)."""


class TaskError(CeleryError):
    """Task related errors."""


class NotRegistered(KeyError, TaskError):
    """No task of that name is registered."""


class MaxRetriesExceededError(TaskError):
    """``task.retry()`` was called after ``max_retries`` retries."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        super().__init__(*args)
        self.task_args = task_args
        self.task_kwargs = task_kwargs


class Retry(TaskError):
    """Raised by ``task.retry()``: the same task runs again after ``when`` (seconds or datetime)."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(message or (f"Retry in {when}" + (f": {exc!r}" if exc else "")))

    def humanize(self) -> str:
        return f"in {self.when}s" if isinstance(self.when, (int, float)) else f"at {self.when}"


RetryTaskError = Retry


class Ignore(TaskError):
    """Raised in a task: do not record a state for it (runner records success with no result)."""


class Reject(TaskError):
    """Raised in a task: reject the message; ``requeue=True`` puts it back on the queue."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class TaskRevokedError(TaskError):
    """The task was revoked (runner: cancelled or expired)."""


class ChordError(TaskError):
    """A task in a chord's header failed: the body is not run."""


class ParentFailed(CeleryError):
    """A canvas step that never ran because a step before it failed; its result reports the
    error of that step (runner writes the same condition as its own ``ParentFailed``)."""


# Error types of a step that ended because one it waited for did not succeed: runner's own, and
# the shim's (a chord body whose header never ran). Results follow them to the step that failed.
PROPAGATED: frozenset[str] = frozenset({"ParentFailed", "runner.compat.celery.exceptions.ParentFailed"})


class TaskIdInUse(CeleryError, ValueError):
    """A task id chosen for a step that waits for another is already the id of a task that has
    not finished: two unfinished runner jobs cannot share an id (its idempotency key)."""


class TimeoutError(CeleryError, builtins.TimeoutError):
    """``AsyncResult.get`` timed out."""


class WorkerLostError(Exception):
    """The worker running the task died."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task (sync or async) when its soft time limit passes; it may clean up."""


class TimeLimitExceeded(Exception):
    """The hard time limit passed: the worker was killed (stored as the task's error)."""


class Terminated(BaseException):
    """Raised into a sync task's thread by ``revoke(terminate=True)``; not an Exception, so that
    ``except Exception`` in the task does not swallow it."""


def rebuild_exception(type_name: str, message: str) -> BaseException:
    """An exception like the one the task raised, from the type name and message runner stored.

    Builtins and classes of modules already imported here are re-created as themselves; anything
    else becomes a subclass of Exception with the same name (nothing is imported on behalf of a
    stored string)."""
    module_name, _, cls_name = type_name.rpartition(".")
    cls: Any = None
    if not module_name:
        cls = getattr(builtins, cls_name, None)
    else:
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module is not None else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(message)
        except Exception:
            pass
    name = cls_name or "TaskFailure"
    made = type(name, (Exception,), {"__module__": module_name or "builtins"})
    return made(message)
