"""One frozen ``Settings`` built at the edge (CLI flags over ``RUNNER_*`` env over defaults).

Nothing reads the environment at import time; the CLI calls ``Settings.load`` once and passes the
result down. Every value is cast and checked here, so a bad flag or env var fails before any
process is forked, with a message naming the setting, the bad value and what is accepted.
Unknown ``RUNNER_*`` variables are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["Settings", "async_url", "backend_of", "check_url"]

_SQLITE = ("sqlite", "sqlite+aiosqlite", "sqla+sqlite")
_POSTGRES = ("postgresql", "postgres", "postgresql+asyncpg", "sqla+postgresql", "sqla+postgres")
_ACCEPTED = "sqlite:///path/to/file.db, sqlite:///:memory:, or postgresql://user:pass@host:5432/dbname"


def check_url(url: str, what: str = "broker") -> str:
    """Return ``url`` if runner can use it, else raise ConfigError naming what is accepted."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{what} URL {url!r} is not a URL; accepted: {_ACCEPTED}")
    scheme = url.split("://", 1)[0].lower()
    if scheme in _SQLITE or scheme in _POSTGRES:
        if scheme in _POSTGRES and not urlsplit(url).hostname and "host=" not in url:
            raise ConfigError(f"{what} URL {url!r} names no host; accepted: {_ACCEPTED}")
        return url
    hint = ""
    if scheme.startswith(("redis", "amqp", "rediss", "sqs", "kafka")):
        hint = " runner keeps its queue in a database table, not in a message broker."
    raise ConfigError(f"{what} URL scheme {scheme!r} is not supported.{hint} Accepted: {_ACCEPTED}")


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    scheme = check_url(url).split("://", 1)[0].lower()
    return "sqlite" if scheme in _SQLITE else "postgresql"


def async_url(url: str) -> str:
    """Map a plain URL to SQLAlchemy's asyncio driver: sqlite -> aiosqlite, postgresql -> asyncpg."""
    check_url(url)
    _scheme, rest = url.split("://", 1)
    return ("sqlite+aiosqlite://" if backend_of(url) == "sqlite" else "postgresql+asyncpg://") + rest


def _int_in(low: int, high: int) -> Callable[[str | int], int]:
    """An integer flag with its range, checked when the flag is read: the message names both."""

    def cast(value: str | int) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"accepted: a whole number from {low:,} to {high:,}") from None
        if not low <= number <= high:
            raise ValueError(f"out of range; accepted: a whole number from {low:,} to {high:,}")
        return number

    return cast


def _float_in(low: float, high: float, *, above: bool = False) -> Callable[[str | float], float]:
    """Seconds (or another float) with its range; ``above``: the low end itself is excluded."""
    words = f"{'more than' if above else 'at least'} {low:g} and at most {high:g}"

    def cast(value: str | float) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"accepted: a number {words}") from None
        if not (low < number if above else low <= number) or not number <= high:
            raise ValueError(f"out of range; accepted: a number {words}")
        return number

    return cast


_positive_int = _int_in(1, 2**31 - 1)


def _optional_positive_int(value: str | int | None) -> int | None:
    if value in (None, "", "0", 0, "none"):
        return None
    return _positive_int(value)


_positive_float = _float_in(0, 10 * 365 * 86400.0, above=True)


def _optional_float(value: str | float | None) -> float | None:
    if value in (None, "", "none"):
        return None
    return _positive_float(value)


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("accepted: 1/0, true/false, yes/no, on/off")


def _queues(value: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    queues = tuple(q.strip() for q in items if q.strip())
    if not queues:
        raise ValueError("no queue named; accepted: comma-separated queue names, e.g. -Q default,emails")
    return queues


def _choice(*options: str) -> Callable[[str], str]:
    def cast(value: str) -> str:
        lowered = str(value).lower()
        if lowered not in options:
            raise ValueError(f"accepted: {', '.join(options)}")
        return lowered

    return cast


def _port(value: str | int) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("accepted: a TCP port from 1 to 65535")
    return number


def _optional_port(value: str | int | None) -> int | None:
    return None if value is None or value in ("", "0", 0, "none") else _port(value)


def _user_password(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    user, sep, password = str(value).partition(":")
    if not sep or not user or not password:
        raise ValueError("accepted: USER:PASSWORD, both non-empty")
    return str(value)


def _url(value: str) -> str:
    return check_url(value)


def _optional_url(value: str | None) -> str | None:
    return None if not value else check_url(value)


@dataclass(frozen=True)
class Settings:
    """Everything ``runner serve`` and the admin commands need, fixed before any fork."""

    app: str = "jobs"
    broker: str = "sqlite:///runner.db"
    database: str | None = None  # None: the broker URL (and then exactly-once DB jobs apply)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    concurrency: int = 8
    queues: tuple[str, ...] | None = None  # None: every queue
    burst: bool = False
    grace: float = 30.0
    lease_ttl: float = 30.0
    heartbeat_timeout: float = 30.0
    poll_interval: float = 1.0  # a safety net: NOTIFY (PostgreSQL) or a file-change check (SQLite) wakes workers first
    max_jobs_per_worker: int | None = None
    max_memory_per_worker: int | None = None  # MiB of RSS
    max_payload: int = 1 << 20
    max_result: int = 1 << 20
    max_lost: int = 5
    result_ttl: float = 7 * 86400.0
    scheduler: bool = True
    uvloop: bool = False
    log_level: str = "info"
    log_format: str = "text"
    node: str = field(default_factory=socket.gethostname)
    sql_echo: bool = False  # log every SQL statement (SQLAlchemy's engine echo); never implied by debug
    db_cost: bool = True  # measure what each session-taking attempt costs its database (runner/cost.py)
    metrics_port: int | None = None  # runner serve: a Prometheus scrape target on this port
    metrics_host: str = "127.0.0.1"
    dashboard_host: str = "127.0.0.1"  # runner dashboard: loopback unless told otherwise
    dashboard_port: int = 8080
    read_only: bool = False  # the dashboard shows, and refuses every change
    basic_auth: str | None = field(default=None, repr=False)  # USER:PASS the dashboard (and its /metrics) require

    @property
    def database_url(self) -> str:
        return self.database or self.broker

    @property
    def shared_database(self) -> bool:
        """True when jobs' sessions and the queue live in one database (exactly-once applies)."""
        return self.database is None or self.database == self.broker

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        suggested: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build from, lowest first: defaults, what the app ``suggested`` (its broker, the Celery
        shim's ``worker_concurrency``...), ``RUNNER_*`` in ``env``, then ``overrides`` (CLI
        flags; None = not given)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        for name, raw in (suggested or {}).items():
            if raw is not None and name in names:
                values[name] = _cast(name, raw, source=f"the app's {name}")
        for key, raw in env.items():
            if not key.startswith("RUNNER_"):
                continue
            name = _ENV_ALIASES.get(key, key[len("RUNNER_") :].lower())
            if name not in names:
                raise ConfigError(
                    f"unknown environment variable {key}; accepted: " + ", ".join(f"RUNNER_{n.upper()}" for n in sorted(names))
                )
            values[name] = _cast(name, raw, source=key)
        for name, raw in (overrides or {}).items():
            if raw is None:
                continue
            if name not in names:
                raise ConfigError(f"unknown setting {name!r}; accepted: {', '.join(sorted(names))}")
            values[name] = _cast(name, raw, source=f"--{name.replace('_', '-')}")
        return cls(**values)

    @classmethod
    def env_broker(cls, env: Mapping[str, str] | None = None) -> str | None:
        """The broker named by ``RUNNER_BROKER`` (or ``RUNNER_BROKER_URL``), checked; None if unset.
        What a producer process reads: it has no flags."""
        env = os.environ if env is None else env
        for key in ("RUNNER_BROKER", "RUNNER_BROKER_URL"):
            if env.get(key):
                return str(_cast("broker", env[key], source=key))
        return None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Celery habits: RUNNER_BROKER_URL reads as RUNNER_BROKER.
_ENV_ALIASES = {"RUNNER_BROKER_URL": "broker"}

_CASTS: dict[str, Callable[[Any], Any]] = {
    "app": str,
    "broker": _url,
    "database": _optional_url,
    "workers": _int_in(1, 1024),
    "concurrency": _int_in(1, 10_000),
    "queues": _queues,
    "burst": _bool,
    "grace": _float_in(0, 86400.0),
    "lease_ttl": _float_in(1.0, 86400.0),
    # Workers send a heartbeat every second: less than two of them would kill healthy workers.
    "heartbeat_timeout": _float_in(2.0, 86400.0),
    "poll_interval": _float_in(0.01, 3600.0),
    "max_jobs_per_worker": _optional_positive_int,
    "max_memory_per_worker": _optional_positive_int,
    "max_payload": _positive_int,
    "max_result": _positive_int,
    "max_lost": _positive_int,
    "result_ttl": _positive_float,
    "scheduler": _bool,
    "uvloop": _bool,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("text", "json"),
    "node": str,
    "sql_echo": _bool,
    "db_cost": _bool,
    "metrics_port": _optional_port,
    "metrics_host": str,
    "dashboard_host": str,
    "dashboard_port": _port,
    "read_only": _bool,
    "basic_auth": _user_password,
}


def _cast(name: str, raw: Any, *, source: str) -> Any:
    try:
        return _CASTS[name](raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}={raw!r} is not valid: {exc}") from None
