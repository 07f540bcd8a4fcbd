"""``crontab`` and ``schedule`` as ``beat_schedule`` uses them, turned into runner schedules
(``App.periodic(cron=..., every=...)``: every ``runner serve`` runs the scheduler, each fire time
is enqueued once; no separate beat process)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ...errors import ConfigError

__all__ = ["crontab", "schedule", "solar", "to_runner"]


def _field(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)
    return str(value).replace(" ", "")


class crontab:
    """``crontab(minute='*', hour='*', day_of_week='*', day_of_month='*', month_of_year='*')``."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
        **kwargs: Any,
    ) -> None:
        self.minute = _field(minute)
        self.hour = _field(hour)
        self.day_of_week = _field(day_of_week)
        self.day_of_month = _field(day_of_month)
        self.month_of_year = _field(month_of_year)

    @property
    def expression(self) -> str:
        """The five-field cron expression (minute hour day-of-month month day-of-week)."""
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"

    def __repr__(self) -> str:
        return f"<crontab: {self.expression}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(self.expression)


class schedule:
    """A fixed interval: ``schedule(run_every=30)`` or ``schedule(timedelta(minutes=5))``."""

    def __init__(self, run_every: float | timedelta | None = None, relative: bool = False, **kwargs: Any) -> None:
        if run_every is None:
            raise ConfigError("schedule(run_every=...) needs an interval in seconds or a timedelta")
        self.run_every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=float(run_every))
        self.relative = relative

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    def __repr__(self) -> str:
        return f"<freq: {self.seconds:g}s>"


class solar:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ConfigError("solar schedules are not supported by runner; use crontab(...) or an interval")


def to_runner(value: Any) -> dict[str, Any]:
    """Keyword arguments for ``App.periodic``: ``{"cron": ...}`` or ``{"every": seconds}``."""
    if isinstance(value, crontab):
        return {"cron": value.expression}
    if isinstance(value, schedule):
        return {"every": value.seconds}
    if isinstance(value, timedelta):
        return {"every": value.total_seconds()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"every": float(value)}
    raise ConfigError(f"beat_schedule: unsupported schedule {value!r}; accepted: crontab(...), schedule(...), seconds, timedelta")
