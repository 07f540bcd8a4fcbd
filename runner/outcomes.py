"""Batched outcome writes: many finished attempts, one guarded statement.

Jobs finish one by one; writing each outcome in its own transaction would cost a round trip (and,
on SQLite, a write lock) per job. Outcomes wait here while the previous batch is being written, so
batches form by themselves under load and a lone outcome is written at once when idle.
"""

from __future__ import annotations

import logging
import time

import anyio
import msgspec

from .db_unavailable import database_unavailable
from .errors import describe_exception
from .store import Outcome, Store, error_json
from .wire import State

__all__ = ["OutcomeWriter"]

log = logging.getLogger(__name__)


class OutcomeWriter:
    """Owns the buffer of unwritten outcomes for one worker."""

    def __init__(self, store: Store, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[Outcome] = []
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self.written = 0
        self.stale = 0  # outcomes whose row had moved on (lease lost): discarded by the guard

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Write batches until cancelled; database errors are retried with backoff, the buffer kept."""
        delay = 0.05
        while True:
            if not self._pending:
                self._idle.set()
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            try:
                await self.flush_once()
                delay = 0.05
            except Exception as exc:  # the database may be restarting: keep the outcomes, try again
                if await self._isolate_chains(exc):
                    continue
                log.warning("writing %d outcomes failed (%s); retrying in %.2fs", len(self._pending), exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _isolate_chains(self, exc: Exception) -> bool:
        """A batch with chained children failed for a reason other than the database's absence:
        write each such outcome alone, and one whose children cannot be inserted is written
        ``failed`` without them, so that one bad row can never hold the worker's other outcomes
        back forever. True if the buffer changed (try again at once)."""
        batch = self._pending[: self.max_batch]
        if database_unavailable(exc) or not any(o.children for o in batch):
            return False
        kept: list[Outcome] = []
        for outcome in batch:
            if not outcome.children:
                kept.append(outcome)
                continue
            try:
                with anyio.CancelScope(shield=True):
                    self.written += await self.store.finish([outcome])
            except Exception as one:
                if database_unavailable(one):
                    kept.append(outcome)
                    continue
                message = f"its chained jobs could not be enqueued ({describe_exception(one)[:2000]})"
                log.error("job %s: %s; marking it failed without them", outcome.id, message)
                error = error_json("ChainError", message)
                kept.append(msgspec.structs.replace(outcome, state=State.FAILED, result=None, error=error, children=(), finished_at=outcome.finished_at or time.time()))
        self._pending[: len(batch)] = kept
        return True

    async def flush_once(self) -> None:
        batch = self._pending[: self.max_batch]
        with anyio.CancelScope(shield=True):  # an outcome in flight must not be half-lost to a cancel
            matched = await self.store.finish(batch)
        del self._pending[: len(batch)]
        self.written += matched
        self.stale += len(batch) - matched
        if matched != len(batch):
            log.info("%d outcomes were for attempts that no longer own their job; discarded", len(batch) - matched)

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
