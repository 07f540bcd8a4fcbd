"""Celery's ``celery.utils.time``: the retry backoff formula and the time helpers task modules use."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, tzinfo

__all__ = ["get_exponential_backoff_interval", "humanize_seconds", "maybe_make_aware", "maybe_timedelta", "timezone"]


def get_exponential_backoff_interval(factor: int, retries: int, maximum: int, full_jitter: bool = False) -> int:
    """Celery's formula: ``min(maximum, factor * 2**retries)``; with full jitter, a uniform
    integer in ``[0, countdown]``. Never negative."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0, countdown)


def maybe_timedelta(delta: int | float | timedelta) -> timedelta:
    """Seconds as a ``timedelta``; a ``timedelta`` as it is."""
    if isinstance(delta, (int, float)):
        return timedelta(seconds=delta)
    return delta


def maybe_make_aware(dt: datetime, tz: tzinfo | None = None, naive_as_utc: bool = True) -> datetime:
    """A naive datetime taken as UTC (or ``tz``); an aware one as it is."""
    if dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=tz or UTC)


def humanize_seconds(secs: float, prefix: str = "", sep: str = "", now: str = "now", microseconds: bool = False) -> str:
    """``humanize_seconds(90)`` -> ``"1.50 minutes"``, as Celery words it."""
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= seconds:
            value = secs / seconds
            return f"{prefix}{sep}{value:.2f} {unit}{'s' if value != 1 else ''}"
    if secs >= 1 or (microseconds and secs > 0):
        return f"{prefix}{sep}{secs:.2f} second{'s' if secs != 1 else ''}"
    return now


class _Timezone:
    """``timezone.utc`` and ``timezone.get_timezone(name)``."""

    utc = UTC

    @staticmethod
    def get_timezone(name: str | tzinfo) -> tzinfo:
        if isinstance(name, tzinfo):
            return name
        from zoneinfo import ZoneInfo

        return UTC if name.upper() == "UTC" else ZoneInfo(name)


timezone = _Timezone()
