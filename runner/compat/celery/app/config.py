"""``app.conf``: Celery's settings, with the names Celery 5 uses, and how each maps onto runner.

A dict with attribute access. ``config_from_object(obj, namespace="CELERY")`` reads
``CELERY_TASK_ALWAYS_EAGER`` as ``task_always_eager`` (Django style); a few pre-4.0 uppercase
names are understood too. Settings that runner cannot honour raise ``ImproperlyConfigured`` with
what to do instead (a non-database broker, a serializer other than JSON).
"""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from typing import Any

from ....settings import check_url
from ..exceptions import ImproperlyConfigured

__all__ = ["DEFAULTS", "Settings", "broker_url"]

DEFAULTS: dict[str, Any] = {
    "broker_url": None,
    "result_backend": None,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": None,
    "task_default_queue": "celery",
    "task_default_priority": None,
    "task_routes": None,
    "task_acks_late": False,
    "task_reject_on_worker_lost": None,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_ignore_result": False,
    "task_annotations": None,
    "task_default_rate_limit": None,
    "task_track_started": False,
    "result_expires": timedelta(days=1),
    "worker_concurrency": None,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_prefetch_multiplier": 4,
    "beat_schedule": {},
    "timezone": None,
    "enable_utc": True,
    "imports": (),
    "include": (),
    "runner_bridge_asyncio_run": True,
}

_OLD_NAMES = {
    "BROKER_URL": "broker_url",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ROUTES": "task_routes",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERY_TIMEZONE": "timezone",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
}


def _check_serializer(key: str, value: Any) -> None:
    names = [value] if isinstance(value, str) else list(value or [])
    for name in names:
        short = str(name).rsplit("/", 1)[-1].lower()
        if short not in ("json",):
            raise ImproperlyConfigured(
                f"{key}={value!r}: runner stores arguments and results as JSON only ({short!r} is refused"
                + (": pickle would let anyone who can write to the queue run code in your workers" if "pickle" in short else "")
                + f"); set {key}={'json' if isinstance(value, str) else ['json']!r} and pass JSON-compatible values"
            )


def _check(key: str, value: Any) -> None:
    if key in ("task_serializer", "result_serializer", "accept_content", "result_accept_content") and value is not None:
        _check_serializer(key, value)


class Settings(dict):
    """Celery's ``app.conf``."""

    def __init__(self) -> None:
        super().__init__(DEFAULTS)
        self["beat_schedule"] = {}

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        key = _OLD_NAMES.get(key, key)
        _check(key, value)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(_OLD_NAMES.get(key, key), default)

    def from_object(self, obj: Any, namespace: str | None = None) -> None:
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            obj = importlib.import_module(module_name)
            if attr:
                obj = getattr(obj, attr)
        items = obj.items() if isinstance(obj, dict) else ((k, getattr(obj, k)) for k in dir(obj) if not k.startswith("_"))
        prefix = f"{namespace.rstrip('_')}_" if namespace else ""
        for key, value in items:
            if prefix:
                if not key.startswith(prefix):
                    continue
                self[key[len(prefix) :].lower()] = value
            elif key in _OLD_NAMES or key in DEFAULTS or key.islower():
                self[key] = value


def broker_url(conf: Settings, constructor: str | None = None) -> str | None:
    """The queue database: ``CELERY_BROKER_URL`` env, then ``conf.broker_url`` (constructor or
    config). ``None`` lets runner decide (``RUNNER_BROKER``, ``--broker``, its default)."""
    url = os.environ.get("CELERY_BROKER_URL") or conf.get("broker_url") or constructor
    if not url:
        return None
    scheme = str(url).split("://", 1)[0].lower()
    if scheme.startswith(("redis", "rediss", "amqp", "amqps", "pyamqp", "sqs", "memory", "filesystem", "kafka")):
        raise ImproperlyConfigured(
            f"broker URL {url!r}: runner keeps its queue in a SQLite or PostgreSQL table, not in "
            f"{scheme.split('+')[0]}. Set broker_url (or CELERY_BROKER_URL / RUNNER_BROKER / --broker) to "
            "sqlite:///path/to/queue.db or postgresql://user:pass@host/db "
            "(sqla+sqlite:// and sqla+postgresql:// also work)"
        )
    return check_url(str(url))
