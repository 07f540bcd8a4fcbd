"""``app.conf``: Celery's settings, with the names Celery 5 uses, and how each maps onto runner.

A dict with attribute access. ``config_from_object(obj, namespace="CELERY")`` reads
``CELERY_TASK_ALWAYS_EAGER`` as ``task_always_eager`` (Django style); the pre-4.0 uppercase names
(``app.conf.CELERY_ALWAYS_EAGER``, ``CELERYD_CONCURRENCY``, ``BROKER_URL``) read and write the
setting they became, as item or attribute. Settings that runner cannot honour raise ``ImproperlyConfigured`` with
what to do instead (a non-database broker, a serializer other than JSON).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ....settings import check_url
from ..exceptions import ImproperlyConfigured
from .defaults import DEFAULTS, OLD_NAMES

__all__ = ["DEFAULTS", "Settings", "broker_url", "check_serializer"]


def check_serializer(key: str, value: Any) -> None:
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
        check_serializer(key, value)


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

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(OLD_NAMES.get(key, key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(OLD_NAMES.get(key, key) if isinstance(key, str) else key)

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        key = OLD_NAMES.get(key, key)
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
        return super().get(OLD_NAMES.get(key, key), default)

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
            elif key in OLD_NAMES or key in DEFAULTS or key.islower():
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
