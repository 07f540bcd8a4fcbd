"""Writing outcomes: one interface, ``Completer.complete(outcome, session)``, three ways.

* ``InTransaction`` -- exactly-once: the guarded write rides in the job's own session
  transaction, so the job's writes and its completion commit together or not at all, and an
  attempt whose lease was lost (the token moved on) commits nothing: ``LeaseLost`` is raised
  and the job's scope rolls back.
* ``Batched`` -- for jobs without a session (and failures, whose session already rolled back):
  outcomes wait here while the previous batch is written, so batches form by themselves under
  load and a lone outcome is written at once when idle. One guarded statement per batch. While
  the worker's claim loop is busy, it takes the waiting outcomes with its next claim
  (``claim_with``): a finished batch and the next claim are one write, one commit.
* ``Direct`` -- one outcome, written before ``complete`` returns (eager mode, settlements).

A batch that fails for a reason other than the database's absence is retried outcome by outcome,
and an outcome whose own write keeps failing (children that cannot be inserted, say) is written
as a plain failure that says why, so one bad row never holds the others back.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from .db_unavailable import database_unavailable
from .decide import Outcome
from .drivers import Claimed, Driver
from .errors import LeaseLost, describe_exception
from .wire import Attempt, BadRow, ErrorInfo, State

__all__ = ["Batched", "Completer", "Direct", "InTransaction"]

log = logging.getLogger(__name__)


class Completer(ABC):
    """Writes an attempt's outcome. When ``complete`` returns the outcome is durable
    (``InTransaction``: inside the session's transaction, committed with it; ``Direct``:
    committed) or owned by the batch, which writes it within milliseconds and is flushed before
    the worker exits (``Batched``)."""

    @abstractmethod
    async def complete(self, outcome: Outcome, session: AsyncSession | None = None) -> None: ...


class InTransaction(Completer):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def complete(self, outcome: Outcome, session: AsyncSession | None = None) -> None:
        if session is None:
            raise TypeError("InTransaction.complete needs the job's session")
        if not await self.driver.complete_in(await session.connection(), outcome):
            raise LeaseLost(f"job {outcome.job_id}: its lease moved on (token {outcome.token}); nothing was committed")


class Direct(Completer):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def complete(self, outcome: Outcome, session: AsyncSession | None = None) -> None:
        with anyio.CancelScope(shield=True):
            await _write_isolated(self.driver, [outcome])


HAND_OVER_WAIT: Final = 0.05  # seconds outcomes wait for the busy claim loop before being written alone


class Batched(Completer):
    """Owns one worker's buffer of unwritten outcomes; ``run`` is a side task of the worker."""

    def __init__(self, driver: Driver, max_batch: int = 500, on_requeued: Callable[[], None] | None = None) -> None:
        self.driver = driver
        self.max_batch = max_batch
        self.on_requeued = on_requeued  # a retry was written: the claim loop re-reads the next run_at
        self._pending: list[Outcome] = []
        self._wake = anyio.Event()
        # Unset (``with_claims``) while the claim loop claims back to back: it will write what
        # waits here within milliseconds, with its next claim. Outcomes the claim could not
        # write (or whose combined write failed) are ``_alone``: this side writes them, at once.
        self._not_claiming = anyio.Event()
        self._not_claiming.set()
        self._taken = anyio.Event()
        self._alone: set[int] = set()
        # One flush at a time: the side task and a shutdown drain must never write the same
        # head of the buffer twice (the second write would be discarded by the guard, and its
        # delete would drop outcomes that were never written).
        self._flushing = anyio.Lock()

    async def complete(self, outcome: Outcome, session: AsyncSession | None = None) -> None:
        self._pending.append(outcome)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def in_flight(self) -> dict[int, int]:
        """``{job_id: token}`` of outcomes not written yet: their leases must still be renewed."""
        return {o.job_id: o.token for o in self._pending}

    async def run(self) -> None:
        """Write batches until cancelled; while the database is away, keep them and retry."""
        delay = 0.05
        while True:
            if not self._pending:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if self.with_claims and not self._alone:
                taken = self._taken = anyio.Event()
                with anyio.move_on_after(HAND_OVER_WAIT) as waited:
                    await taken.wait()
                if not waited.cancelled_caught:
                    continue  # the claim loop took them; look again
            try:
                await self.flush_once()
                delay = 0.05
            except Exception as exc:  # the database is away: keep the outcomes, try again
                log.warning("writing %d outcomes failed (%s); retrying in %.2fs", len(self._pending), exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def flush_once(self) -> None:
        async with self._flushing:
            batch = self._pending[: self.max_batch]
            if not batch:
                return
            with anyio.CancelScope(shield=True):  # an outcome in flight must not be half-lost to a cancel
                await _write_isolated(self.driver, batch)
            del self._pending[: len(batch)]
            self._alone.difference_update(o.job_id for o in batch)
        self._requeued(batch)

    async def claim_with(self, claim: Callable[[Sequence[Outcome]], Awaitable[Claimed]]) -> list[Attempt | BadRow]:
        """Claim through ``claim`` (``driver.claim_and_complete`` bound to the worker's claim),
        handing it the outcomes that wait here. They stay in the buffer, their leases renewed,
        until the claim's statement returns; what it did not write is written by ``run``, alone
        (so is everything, if the combined write failed: the claim loop then retries its claim)."""
        if not self._pending or self._alone:
            return (await claim(())).rows
        async with self._flushing:
            batch = self._pending[: self.max_batch]
            self._taken.set()
            try:
                with anyio.CancelScope(shield=True):
                    result = await claim(batch)
            except Exception:
                self._write_alone(batch)
                raise
            del self._pending[: len(batch)]
            if result.left:
                self._pending[:0] = result.left
                self._write_alone(result.left)
        stale = len(batch) - len(result.left) - result.written
        if stale:
            log.info("%d outcomes were for attempts that no longer own their job; discarded", stale)
        left = {o.job_id for o in result.left}
        self._requeued([o for o in batch if o.job_id not in left])
        return result.rows

    def claiming(self, busy: bool) -> None:
        """The claim loop says whether it is claiming back to back (it then writes what waits
        here with its next claim) or not (idle, failing, stopped: ``run`` writes at once)."""
        if busy:
            if self._not_claiming.is_set():
                self._not_claiming = anyio.Event()
        else:
            self._not_claiming.set()
            self._taken.set()

    @property
    def with_claims(self) -> bool:
        return not self._not_claiming.is_set()

    async def until_idle(self) -> None:
        """Return once the claim loop is not claiming back to back (at once if it is not)."""
        while self.with_claims:
            await self._not_claiming.wait()

    def _write_alone(self, outcomes: Sequence[Outcome]) -> None:
        self._alone.update(o.job_id for o in outcomes)
        self._wake.set()
        self._taken.set()  # ``run`` may be waiting for the claim loop: it need not

    def _requeued(self, written: Sequence[Outcome]) -> None:
        if self.on_requeued is not None and any(o.state == State.QUEUED for o in written):
            self.on_requeued()

    async def drain(self, timeout: float = 30.0) -> bool:
        """Write everything pending (on shutdown); False if the database would not take it in time."""
        with anyio.move_on_after(timeout):
            while self._pending:
                try:
                    await self.flush_once()
                except Exception as exc:
                    log.warning("writing outcomes on shutdown failed (%s); retrying", exc)
                    await anyio.sleep(0.5)
            return True
        return False


async def _write_isolated(driver: Driver, batch: list[Outcome]) -> int:
    """Write ``batch``; raises only when the database is away (the caller keeps and retries)."""
    try:
        matched = await driver.complete(batch)
    except Exception as exc:
        if database_unavailable(exc):
            raise
        return await _one_by_one(driver, batch, exc)
    if matched != len(batch):
        log.info("%d outcomes were for attempts that no longer own their job; discarded", len(batch) - matched)
    return matched


async def _one_by_one(driver: Driver, batch: list[Outcome], first: Exception) -> int:
    if len(batch) > 1:
        log.warning("writing a batch of %d outcomes failed (%s); writing them one by one", len(batch), first)
    matched = 0
    for outcome in batch:
        try:
            matched += await driver.complete([outcome])
            continue
        except Exception as exc:
            if database_unavailable(exc):
                raise
            problem = describe_exception(exc)[:2000]
        error = ErrorInfo(type="ChainError" if outcome.children else "OutcomeError", message=(
            f"the attempt ended {outcome.state}, but its outcome could not be written"
            f"{' with its chained jobs' if outcome.children else ''} ({problem}); marked failed instead"
        ), attempt=outcome.attempt)  # fmt: skip
        log.error("job %s: %s", outcome.job_id, error.message)
        try:
            matched += await driver.complete([outcome.failed_instead(error, time.time())])
        except Exception as exc:  # the row itself refuses any write; its lease will expire
            if database_unavailable(exc):
                raise
            log.error("job %s: even its failure could not be written (%s); its lease will expire", outcome.job_id, exc)
    return matched
