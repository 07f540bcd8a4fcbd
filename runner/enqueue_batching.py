"""Concurrent single enqueues from one event loop share one INSERT and one commit.

A web app or an async producer calls ``job.defer_async()`` from many tasks at once. Each call
alone costs a statement and a commit (a WAL flush on PostgreSQL), and the database, not Python,
becomes the ceiling. Here the first caller writes at once; callers that arrive while a write is
in flight wait for it and then go together in the next one, so batches form only under load and
a lone caller pays nothing extra. Each caller still gets its own id only after its row is
committed: durability is unchanged.

One bad row never fails its neighbours: a batch that fails for any reason other than the
database's absence is retried row by row, so each caller gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["EnqueueBatcher"]

Row = dict[str, Any]
InsertRows = Callable[[list[Row], float], Awaitable[list[int]]]


class EnqueueBatcher:
    """Coalesces keyless single-row enqueues of one loop (a Store lives in one loop)."""

    def __init__(self, insert: InsertRows, is_unavailable: Callable[[BaseException], bool], max_batch: int = 500) -> None:
        self._insert = insert
        self._is_unavailable = is_unavailable
        self._max_batch = max_batch
        self._waiting: list[tuple[Row, float, asyncio.Future[int]]] = []
        self._lock = asyncio.Lock()  # binds to the loop that first waits on it (3.10+)
        self._inside = 0  # callers now in enqueue(), writing or waiting

    async def enqueue(self, row: Row, now: float) -> int:
        self._inside += 1
        try:
            if self._inside == 1:
                # Alone (no other caller anywhere in here, none waiting for the lock): write
                # inline, holding the lock so that callers who arrive meanwhile batch behind it.
                # No task, no shield: the row is this caller's alone. (A task and a shield per
                # call were a quarter of a single SQLite enqueue.)
                async with self._lock:
                    return (await self._insert([row], now))[0]
            return await self._batched(row, now)
        finally:
            self._inside -= 1

    async def _batched(self, row: Row, now: float) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (row, now, future)
        self._waiting.append(entry)
        try:
            async with self._lock:
                while not future.done():
                    batch = self._waiting[: self._max_batch]
                    del self._waiting[: self._max_batch]
                    # A task of its own, awaited through a shield: if this caller is cancelled
                    # mid-write, the others in the batch still get their ids.
                    await asyncio.shield(asyncio.ensure_future(self._write(batch)))
        except asyncio.CancelledError:
            if entry in self._waiting:  # never taken: nothing was written for this caller
                self._waiting.remove(entry)
            else:  # in flight: the row may land; nobody reads its outcome any more
                future.add_done_callback(_consume)
            raise
        return future.result()

    async def _write(self, batch: list[tuple[Row, float, asyncio.Future[int]]]) -> None:
        try:
            ids = await self._insert([row for row, _, _ in batch], min(now for _, now, _ in batch))
        except Exception as exc:
            if len(batch) == 1 or self._is_unavailable(exc):
                _fail(batch, exc)
                return
            for one in batch:  # find the culprit: every other row still goes in
                await self._write([one])
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        for (_, _, future), new_id in zip(batch, ids):
            if not future.done():
                future.set_result(new_id)


def _fail(batch: list[tuple[Row, float, asyncio.Future[int]]], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _consume(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()  # read, so asyncio does not log an exception nobody awaited
