"""A pooled connection kept checked out between single enqueues, and handed back when they stop.

One awaited ``defer_async`` at a time is a round trip to the database plus a pool checkout and
return around it. On PostgreSQL the checkout and return (SQLAlchemy's pool, the reset on return,
the greenlet the reset runs on) cost a third as much as the INSERT itself: measured on one
asyncpg connection, 2,200 inserts/s through the pool against 2,900/s on a connection kept out.
So the connection that wrote the last single enqueue stays out for ``linger`` seconds, for the
next one; a producer that goes quiet gives it back to the pool after that, so an idle producer
holds nothing.

It serves one writer at a time on the loop it was taken on. A second user meanwhile (a write
whose caller was cancelled may still be finishing), or a user on another loop, gets an ordinary
pooled connection instead. A statement that fails gives the connection straight back to the
pool, which resets or discards it, exactly as an ordinary checkout would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["HeldConnection"]


class HeldConnection:
    def __init__(
        self,
        checkout: Callable[[], Awaitable[Any]],
        release: Callable[[Any], Coroutine[Any, Any, None]],
        pooled: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
        linger: float,
    ) -> None:
        self._checkout = checkout  # a pooled connection record (SQLAlchemy's "fairy")
        self._release = release  # hand a record back to the pool
        self._pooled = pooled  # an ordinary checkout, for a second user
        self._linger = linger
        self._fairy: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False
        self._used = 0.0  # loop time of the last write on it
        self._timer: asyncio.TimerHandle | None = None  # one, re-armed when it fires early: none per write
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """The driver connection to write on: the held one when it is free on this loop."""
        loop = asyncio.get_running_loop()
        if self._busy or (self._loop is not None and self._loop is not loop):
            async with self._pooled() as conn:
                yield conn
            return
        self._busy = True
        try:
            if self._fairy is None:
                self._fairy, self._loop = await self._checkout(), loop
            fairy = self._fairy
            try:
                yield fairy.driver_connection
            except BaseException:
                self._fairy = self._loop = None
                await self._release(fairy)
                raise
            self._used = loop.time()
            if self._timer is None:
                self._timer = loop.call_later(self._linger, self._let_go)
        finally:
            self._busy = False

    def _let_go(self) -> None:
        self._timer = None
        if self._fairy is None:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._used
        if self._busy or idle < self._linger:
            self._timer = loop.call_later(max(self._linger - idle, 0.01), self._let_go)
            return
        fairy, self._fairy, self._loop = self._fairy, None, None
        task: asyncio.Task[None] = loop.create_task(self._release(fairy))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Hand the held connection back (before the pool is disposed), if this loop holds it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        fairy, loop = self._fairy, self._loop
        if fairy is None or self._busy:
            return
        self._fairy = self._loop = None
        if loop is asyncio.get_running_loop():
            await self._release(fairy)
