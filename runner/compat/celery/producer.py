"""Calling runner's async client from wherever Celery code calls ``delay()`` or ``get()``.

Celery's producer API is synchronous and works anywhere. runner's client has a sync API (a
private background loop, or the worker's loop from a job's thread) and an async one. Sync calls
made *inside a running event loop* -- an ``async def`` task, a coroutine run by the
``asyncio.run`` bridge, an async web handler -- cannot wait on that same loop, so they run on a
side loop in a daemon thread with its own small engine on the same queue database (blocking the
calling loop for that one statement, as Celery's blocking publish does). Async callers can use
the non-blocking forms instead: ``await task.adelay(...)``, ``await result`` / ``result.aget()``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ...app import App
from ...client import _BackgroundLoop
from ...drivers import Driver, open_driver

__all__ = ["call_sync", "in_running_loop", "store_for"]

_side: dict[str, Any] = {}
_side_lock = threading.Lock()


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _queue_url(app: App) -> str:
    bound = app.client.bound
    if bound is not None:  # inside a worker: the queue the worker serves
        return bound.engine.url.render_as_string(hide_password=False)
    return app.client.url


async def store_for(app: App) -> Driver:
    """The queue driver to use on the current loop: the client's own, or the side loop's."""
    side = _side.get("loop")
    if side is not None and side.thread is threading.current_thread():
        url = _side["url"]
        driver = _side["stores"].get(url)
        if driver is None:
            driver = open_driver(url, pool_size=2, max_overflow=2, max_payload=app.max_payload)
            await driver.ensure_schema()
            _side["stores"][url] = driver
        return driver
    return await app.client.driver()


def call_sync(app: App, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Run ``await fn(*args)`` from sync code, wherever that sync code runs."""
    if not in_running_loop():
        return app.client.run_sync(fn, *args)
    with _side_lock:
        if _side.get("pid") != os.getpid():
            _side.clear()
            _side.update(pid=os.getpid(), loop=_BackgroundLoop(), stores={})
        _side["url"] = _queue_url(app)
        loop = _side["loop"]
    return loop.call(fn, *args)
