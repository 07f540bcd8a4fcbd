"""Periodic jobs without a beat process: every ``runner serve`` may run the scheduler, and each
fire time becomes a job exactly once, because firing is an ``INSERT`` into ``runner_schedule``
keyed by (schedule name, fire time) in the same transaction as the job's row.

Missed fire times (every scheduler was down): ``missed="once"`` enqueues one run for the latest
missed time when a scheduler comes back; ``missed="skip"`` drops them. A schedule that has never
fired starts at its next fire time, as cron does. A fire time counts as missed when it is more
than ``MISFIRE_GRACE`` seconds in the past by the time a scheduler gets to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

import anyio

from .app import Periodic
from .drivers import Driver

__all__ = ["MISFIRE_GRACE", "Scheduler"]

log = logging.getLogger("runner.scheduler")

MISFIRE_GRACE = 60.0
KEEP_HISTORY = 7 * 86400.0  # fire records older than this are pruned (the latest per name stays)
MAX_SLEEP = 30.0  # re-read the wall clock at least this often (suspend, clock steps)


class Scheduler:
    """Runs inside one worker per ``runner serve`` (slot 0), on that worker's loop and store."""

    def __init__(self, driver: Driver, entries: Sequence[Periodic]) -> None:
        self.driver = driver
        self.entries = list(entries)
        self.next_at: dict[str, float] = {}
        self.fired = 0

    async def start(self, now: float | None = None) -> None:
        """Catch up missed fire times by policy, then plan each entry's next fire time."""
        now = time.time() if now is None else now
        for entry in self.entries:
            last = await self.driver.last_fire(entry.name)
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
                    await self.driver.prune_schedule(time.time() - KEEP_HISTORY)
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
        job_id = await self.driver.fire(entry.name, fire_at, entry.call(fire_at).envelope(time.time()))
        if job_id is not None:
            self.fired += 1
            log.info("periodic %s fired for %s: job %d", entry.name, _iso(fire_at), job_id)
        return job_id


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
