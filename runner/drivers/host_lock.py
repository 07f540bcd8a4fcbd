"""The queue for SQLite's one writer among the worker processes of a host: a ``flock``.

SQLite lets one connection write at a time; a second one waits in SQLite's busy handler, which
sleeps in growing steps (1, 2, 5, ... up to 100 ms) and looks again. Two busy workers claiming
back to back spend most of their time in those sleeps. Workers that first queue on a ``flock``
of a file beside the queue are woken by the kernel the moment the holder lets go, so the writer
lock changes hands in microseconds. Only the worker's own claim and outcome writes take it; any
other writer (a job's session, a producer, the CLI) still meets the busy handler, so the lock is
a fast lane, never a second lock anyone could wait on forever: nothing that holds SQLite's write
lock ever waits for the ``flock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio

__all__ = ["HostWriterLock", "lock_path"]

T = TypeVar("T")


def lock_path(queue_path: str) -> str:
    """``runner.db`` -> ``runner.db-writer`` (beside SQLite's own ``-wal`` and ``-shm``)."""
    return f"{queue_path}-writer"


class HostWriterLock:
    """Opened lazily, in the process that uses it (a worker, after the fork)."""

    def __init__(self, queue_path: str) -> None:
        self.path = lock_path(queue_path)
        self._fd: int | None = None
        # Tasks of this process queue here first: a second flock on the same descriptor would
        # succeed at once, and the first holder's unlock would then free both.
        self._local: tuple[int, anyio.Lock, anyio.CapacityLimiter] | None = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self._loop_lock():
            fd = self._open()
            if fd is None:  # the directory refuses the file: SQLite's busy handler still works
                yield
                return
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Not cancellable while the thread waits: when it returns we hold the lock,
                    # and the finally below gives it back even if we were cancelled meanwhile.
                    await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread of its own, holding the lock: for a whole transaction run as one
        call (the flock is taken on that thread too: one crossing from the loop, not two)."""
        async with self._loop_lock():
            fd = self._open()
            # A limiter of its own: sync jobs filling anyio's default thread pool must not
            # hold back the worker's claims.
            return await anyio.to_thread.run_sync(_locked, fd, fn, limiter=self._limiter())

    def _loop_lock(self) -> anyio.Lock:
        return self._per_loop()[1]

    def _limiter(self) -> anyio.CapacityLimiter:
        return self._per_loop()[2]

    def _per_loop(self) -> tuple[int, anyio.Lock, anyio.CapacityLimiter]:
        loop = id(asyncio.get_running_loop())
        if self._local is None or self._local[0] != loop:
            self._local = (loop, anyio.Lock(), anyio.CapacityLimiter(1))
        return self._local

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _locked(fd: int | None, fn: Callable[[], T]) -> T:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        return fn()
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
