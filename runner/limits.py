"""Flow control as data: at most N jobs at once per key, at most N starts per period per key.

Both are enforced by the claim itself, on every host, strictly: PostgreSQL serialises claimers
per key (transaction-scoped advisory locks, then an exact count under them); SQLite has one
writer. A job's key is computed at enqueue from the call's arguments and stored in its own
column, so SQL can see it:

* ``key=None``: the job's name -- one limit for every call of this job;
* ``key="stripe"``: a constant shared by every job that names it;
* ``key=lambda tenant_id, **_: tenant_id``: computed from the call's arguments (by name); the
  value is namespaced by the job's name (``sync_tenant:42``), so two jobs keyed by the same
  tenant id do not share a limit unless they name a constant.

A concurrency slot is a ``running`` row: a job that ends in any way frees it in the statement
that ends it, and a slot held by a worker that died is free again when its job is given back or
its lease expires. Nothing is counted apart from the rows themselves, so nothing can leak.

A rate limit counts *starts* (claims) in fixed windows aligned to the epoch: ``"100/m"`` allows
at most 100 claims whose start falls in each minute ``[k*60, (k+1)*60)``. A retry, and a re-run
after a lost worker, is a start like any other. Jobs over the limit stay ``queued``; they never
fail for it.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import ArgumentsError, ConfigError

__all__ = ["ConcurrencyLimit", "Key", "RateLimit", "parse_rate"]

Key = str | Callable[..., Any] | None
MAX_KEY: Final = 200  # characters of a computed key
_PERIODS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def parse_rate(rate: str | tuple[int, float]) -> tuple[int, float]:
    """``"100/m"`` (or ``"10/s"``, ``"5/2h"``, ``(100, 60.0)``) -> (starts, period in seconds)."""
    if isinstance(rate, tuple) and len(rate) == 2:
        starts, period = rate
    elif isinstance(rate, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*", rate.lower())
        if not match or match[3] not in _PERIODS:
            raise ConfigError(f"rate {rate!r}: expected N/UNIT with UNIT one of s, m, h, d (e.g. '100/m', '10/s', '5/2h')")
        starts, period = int(match[1]), float(match[2] or 1) * _PERIODS[match[3]]
    else:
        raise ConfigError(f"rate {rate!r}: expected a string like '100/m' or a (starts, seconds) tuple")
    if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= 2**31 - 1:
        raise ConfigError(f"rate {rate!r}: the number of starts must be an int from 1 to {2**31 - 1}")
    if not (isinstance(period, (int, float)) and math.isfinite(period) and period > 0):
        raise ConfigError(f"rate {rate!r}: the period must be a number of seconds greater than 0")
    return starts, float(period)


def _check_key(key: Key, what: str) -> None:
    if key is None or callable(key):
        return
    if not isinstance(key, str) or not key or "\x00" in key or len(key) > MAX_KEY:
        raise ConfigError(
            f"{what} key={key!r}: accepted: None (the job's name), a non-empty str, or a function of the job's arguments"
        )


@dataclass(frozen=True)
class ConcurrencyLimit:
    """At most ``limit`` jobs with the same key ``running`` at once, across every host."""

    limit: int
    key: Key = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= 2**31 - 1:
            raise ConfigError(f"ConcurrencyLimit(limit={self.limit!r}): accepted: an int from 1 to {2**31 - 1}")
        _check_key(self.key, "ConcurrencyLimit")


@dataclass(frozen=True)
class RateLimit:
    """At most N starts per period with the same key, across every host (``"100/m"``)."""

    rate: str | tuple[int, float]
    key: Key = None

    def __post_init__(self) -> None:
        parse_rate(self.rate)
        _check_key(self.key, "RateLimit")

    @property
    def starts(self) -> int:
        return parse_rate(self.rate)[0]

    @property
    def period(self) -> float:
        return parse_rate(self.rate)[1]


def compute_key(key: Key, job_name: str, arguments: Mapping[str, Any], what: str) -> str:
    """The stored key for one call (see the module docstring); raises ArgumentsError naming the job."""
    if key is None:
        return job_name
    if isinstance(key, str):
        return key
    try:
        value = _call_with(key, arguments)
    except Exception as exc:
        raise ArgumentsError(f"{what} key of {job_name} raised {type(exc).__name__}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ArgumentsError(f"{what} key of {job_name} returned {value!r}; accepted: a str or an int")
    text = f"{job_name}:{value}"
    if "\x00" in text or len(text) > MAX_KEY:
        raise ArgumentsError(f"{what} key of {job_name} is {text[:60]!r}...: accepted: at most {MAX_KEY} characters, no NUL")
    return text


def _call_with(fn: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
    """Call ``fn`` with the arguments it names (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(**arguments)
    names = {p.name for p in params}
    return fn(**{k: v for k, v in arguments.items() if k in names})
