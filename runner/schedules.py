"""Schedules as data: cron in a timezone, a fixed interval, and the periodic entries of an app.

Fire times are pure functions of the schedule (cron via ``cronsim``, DST-aware; intervals aligned
to the Unix epoch), never of when a process started, so every host computes the same instants
and the database keeps one job per instant (``scheduler.py`` fires them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import ConfigError

__all__ = ["Cron", "Every", "Missed", "parse_schedule", "zone"]

Missed = Literal["once", "skip"]


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression evaluated in a timezone (DST handled by cronsim)."""

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        zone(self.tz)
        try:
            CronSim(self.expr, datetime.now(zone(self.tz)))
        except CronSimError as exc:
            raise ConfigError(f"bad cron expression {self.expr!r}: {exc}; expected 5 fields like '*/5 * * * *'") from None

    def next_after(self, t: float) -> float:
        start = datetime.fromtimestamp(t, zone(self.tz))
        return next(CronSim(self.expr, start)).timestamp()

    def latest_at_or_before(self, t: float) -> float:
        start = datetime.fromtimestamp(t + 1.0, zone(self.tz))
        return next(CronSim(self.expr, start, reverse=True)).timestamp()

    def __str__(self) -> str:
        return f"cron {self.expr!r} ({self.tz})"


@dataclass(frozen=True)
class Every:
    """A fixed interval. Fire times are multiples of the interval since the epoch (plus an
    optional offset), so all hosts agree on them."""

    seconds: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not self.seconds >= 1.0:
            raise ConfigError(f"a periodic interval must be at least 1 second; got {self.seconds!r}")

    def next_after(self, t: float) -> float:
        k = (t - self.offset) // self.seconds + 1
        return self.offset + k * self.seconds

    def latest_at_or_before(self, t: float) -> float:
        return self.offset + ((t - self.offset) // self.seconds) * self.seconds

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'") from None


def parse_schedule(cron: str | None = None, every: float | timedelta | None = None, tz: str = "UTC") -> Cron | Every:
    if (cron is None) == (every is None):
        raise ConfigError("a periodic job needs exactly one of cron='m h dom mon dow' or every=seconds/timedelta")
    if cron is not None:
        return Cron(cron, tz)
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)  # type: ignore[arg-type]
    return Every(seconds)
