"""A job's policy: how many attempts, which errors are worth another one, how long to wait
between them, and the worker's limits that bound what an attempt may leave behind. Plain data,
read by ``decide`` and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from .errors import ConfigError

__all__ = ["DEFAULT_POLICY", "Backoff", "Policy"]

INT32_MAX: Final = 2**31 - 1


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap and equal jitter: half fixed, half random."""

    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        for name, value in (("backoff", self.base), ("backoff_max", self.cap)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name}={value!r}: accepted: a number of seconds, 0 or more")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); ``rand`` in [0, 1)."""
        raw = min(self.cap, self.base * (2 ** min(max(0, attempt - 1), 64)))
        return raw / 2 + rand * raw / 2 if self.jitter else raw


@dataclass(frozen=True)
class Policy:
    """What ``decide`` needs besides the attempt itself. The first four come from ``@app.job``;
    the rest are the worker's limits (``--max-lost``, ``--max-result``, ``--max-payload``),
    merged in by the worker with ``with_limits``."""

    max_attempts: int = 1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: Backoff = Backoff()
    ignore_result: bool = False
    max_lost: int = 5
    max_result: int = 1 << 20
    max_payload: int = 1 << 20

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or not 1 <= self.max_attempts <= INT32_MAX
        ):
            raise ConfigError(
                f"retries={self.max_attempts - 1 if isinstance(self.max_attempts, int) else self.max_attempts!r}: accepted: an int from 0 to {INT32_MAX - 1}"
            )
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise ConfigError(f"retry_on={self.retry_on!r}: accepted: exception classes")

    def retries(self, exc_type: type[BaseException]) -> bool:
        return issubclass(exc_type, self.retry_on)

    def with_limits(self, **limits: Any) -> Policy:
        return replace(self, **limits)


DEFAULT_POLICY: Final = Policy()  # for rows whose job is not registered here
