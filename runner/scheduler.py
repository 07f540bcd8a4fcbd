"""Periodic jobs without a beat process: every ``runner serve`` may run the scheduler, and each
fire time becomes a job exactly once, because firing is an ``INSERT`` into ``runner_schedule``
keyed by (schedule name, fire time) in the same transaction as the job's row.

Fire times are pure functions of the schedule (cron in a timezone, or a fixed interval aligned
to the Unix epoch), never of when a process started, so every host computes the same instants
and the primary key does the deduplication.

Missed fire times (every scheduler was down): ``missed="once"`` enqueues one run for the latest
missed time when a scheduler comes back; ``missed="skip"`` drops them. A schedule that has never
fired starts at its next fire time, as cron does. A fire time counts as missed when it is more
than ``MISFIRE_GRACE`` seconds in the past by the time a scheduler gets to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from cronsim import CronSim, CronSimError

from .errors import ConfigError

if TYPE_CHECKING:
    from .app import JobDef
    from .store import Store

__all__ = ["Cron", "Every", "MISFIRE_GRACE", "Periodic", "Scheduler", "parse_schedule"]

log = logging.getLogger("runner.scheduler")

MISFIRE_GRACE = 60.0
KEEP_HISTORY = 7 * 86400.0  # fire records older than this are pruned (the latest per name stays)
MAX_SLEEP = 30.0  # re-read the wall clock at least this often (suspend, clock steps)

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


def parse_schedule(
    cron: str | None = None, every: float | timedelta | None = None, tz: str = "UTC"
) -> Cron | Every:
    if (cron is None) == (every is None):
        raise ConfigError("a periodic job needs exactly one of cron='m h dom mon dow' or every=seconds/timedelta")
    if cron is not None:
        return Cron(cron, tz)
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)  # type: ignore[arg-type]
    return Every(seconds)


@dataclass(frozen=True)
class Periodic:
    """One schedule entry: which job, when, with what arguments."""

    name: str
    job: JobDef[Any, Any]
    schedule: Cron | Every
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    missed: Missed = "once"
    options: dict[str, Any] = field(default_factory=dict)  # queue, priority, expires, max_attempts

    def __post_init__(self) -> None:
        if self.missed not in ("once", "skip"):
            raise ConfigError(f"periodic {self.name}: missed={self.missed!r}; accepted: 'once' or 'skip'")
        self.job.check_arguments(self.args, self.kwargs)


class Scheduler:
    """Runs inside one worker per ``runner serve`` (slot 0), on that worker's loop and store."""

    def __init__(self, store: Store, entries: Sequence[Periodic]) -> None:
        self.store = store
        self.entries = list(entries)
        self.next_at: dict[str, float] = {}
        self.fired = 0

    async def start(self, now: float | None = None) -> None:
        """Catch up missed fire times by policy, then plan each entry's next fire time."""
        now = time.time() if now is None else now
        for entry in self.entries:
            last = await self.store.last_fire(entry.name)
            due = entry.schedule.latest_at_or_before(now)
            if last is not None and due > last:
                if entry.missed == "once" or now - due <= MISFIRE_GRACE:
                    await self._fire(entry, due)
                else:
                    log.info("periodic %s: skipped missed fire times up to %s", entry.name, _iso(due))
            self.next_at[entry.name] = entry.schedule.next_after(now)

    async def tick(self, now: float | None = None) -> float:
        """Fire whatever is due; returns the next instant anything is due."""
        now = time.time() if now is None else now
        for entry in self.entries:
            at = self.next_at[entry.name]
            if at > now:
                continue
            if now - at <= MISFIRE_GRACE or entry.missed == "once":
                await self._fire(entry, entry.schedule.latest_at_or_before(now))
            else:
                log.info("periodic %s: skipped missed fire time %s", entry.name, _iso(at))
            self.next_at[entry.name] = entry.schedule.next_after(now)
        return min(self.next_at.values(), default=now + MAX_SLEEP)

    async def run(self) -> None:
        await self.start()
        last_prune = 0.0
        while True:
            next_at = await self._tick_safely()
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                try:
                    await self.store.prune_schedule(time.time() - KEEP_HISTORY)
                except Exception as exc:
                    log.warning("could not prune schedule history (%s)", exc)
            await anyio.sleep(max(0.0, min(MAX_SLEEP, next_at - time.time())))

    async def _tick_safely(self) -> float:
        try:
            return await self.tick()
        except Exception as exc:  # the database is away: try again soon, the PK keeps it exact
            log.warning("scheduler tick failed (%s); retrying", exc)
            return time.time() + 1.0

    async def _fire(self, entry: Periodic, fire_at: float) -> int | None:
        call = entry.job.options(meta={"periodic": entry.name, "fire_at": fire_at}, **entry.options).call(
            *entry.args, **entry.kwargs
        )
        job_id = await self.store.fire(entry.name, fire_at, call.envelope(time.time()))
        if job_id is not None:
            self.fired += 1
            log.info("periodic %s fired for %s: job %d", entry.name, _iso(fire_at), job_id)
        return job_id


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
