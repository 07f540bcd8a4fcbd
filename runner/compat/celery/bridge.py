"""The ``asyncio.run`` bridge, and how soft time limits and revokes reach a running task.

**The bridge.** Ported Celery code runs async work from sync tasks with ``asyncio.run(main())``.
Under Celery that makes a new event loop per task, so a module-level pooled ``AsyncEngine`` ends
up bound to a dead loop ("attached to a different loop") and people fall back to ``NullPool``.
In a runner worker, a sync task body runs in a thread of the worker's thread pool while the
worker's one event loop keeps running. This module replaces ``asyncio.run`` (at import of the
shim) with a function that, **when called from the thread of a sync Celery task running in a
runner worker**, submits the coroutine to the worker's loop (``anyio.from_thread.run``) and
blocks the task's thread until it finishes. Every task therefore runs its coroutines on the same
long-lived loop, and a module-level engine keeps its pool: no NullPool, no new connections per
task, no loop errors. Called anywhere else (the producer, scripts, tests, plain threads), it is
the original ``asyncio.run``.

Limits: only ``asyncio.run`` is bridged (not ``loop.run_until_complete`` on a loop you create);
``from asyncio import run`` executed *before* ``runner.compat.celery`` is imported keeps the
original function; the coroutine shares the loop with other jobs, so a coroutine that blocks
(``time.sleep``) stalls that worker's other async jobs, as any blocking call on the loop would;
contextvars set inside it do not flow back to the thread. Turn it off with
``app.conf.runner_bridge_asyncio_run = False``.

**Soft time limits** raise ``SoftTimeLimitExceeded`` *inside* the task body: in an async body by
cancelling the task once and turning that ``CancelledError`` into ``SoftTimeLimitExceeded`` at the
body's await point (the body may catch it and clean up; it is not cancelled again); in a sync body
by raising it in the task's thread (``PyThreadState_SetAsyncExc``, like runner's own sync
timeouts), or, when the thread is waiting on a bridged ``asyncio.run``, inside that coroutine.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import ctypes
import threading
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ...client import worker_thread
from .exceptions import SoftTimeLimitExceeded, Terminated

__all__ = ["AttemptState", "install", "original_asyncio_run", "run_sync_body", "soft_limited"]

original_asyncio_run = asyncio.run
_local = threading.local()


@dataclass(eq=False)
class AttemptState:
    """What the loop side and the task's thread share about one attempt."""

    soft_limit: float | None = None
    bridge: bool = True
    deadline: float | None = None  # loop.time() based
    soft_fired: bool = False
    soft_delivered: bool = False
    soft_target: Any = None  # the asyncio task the soft limit was delivered to
    thread_id: int | None = None
    bridged_task: Any = None  # asyncio task running a bridged asyncio.run coroutine
    context: Any = None  # set on the loop side for the bridged coroutine (the Celery request)
    pending: list[Any] = field(default_factory=list)  # fire-and-forget progress writes


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class soft_limited:
    """Await ``coro``; a soft-limit cancellation of the task becomes ``SoftTimeLimitExceeded``
    raised at the coroutine's current await point. With ``arm``, start the timer here."""

    def __init__(self, coro: Coroutine[Any, Any, Any], state: AttemptState, *, arm: bool) -> None:
        self.coro = coro
        self.state = state
        self.arm = arm

    def __await__(self) -> Generator[Any, Any, Any]:
        state = self.state
        task = asyncio.current_task()
        handle = None
        if self.arm and state.soft_limit:
            loop = asyncio.get_running_loop()
            state.deadline = loop.time() + float(state.soft_limit)

            def fire() -> None:
                if not state.soft_fired and task is not None:
                    state.soft_fired, state.soft_target = True, task
                    task.cancel()

            handle = loop.call_at(state.deadline, fire)
        it = self.coro.__await__()
        value: Any = None
        exc: BaseException | None = None
        try:
            while True:
                try:
                    if exc is not None:
                        if (
                            isinstance(exc, asyncio.CancelledError)
                            and state.soft_fired
                            and not state.soft_delivered
                            and state.soft_target is task
                        ):
                            state.soft_delivered = True
                            if task is not None:
                                task.uncancel()
                            exc = SoftTimeLimitExceeded(f"soft time limit ({state.soft_limit}s) exceeded")
                        yielded = it.throw(exc)
                    else:
                        yielded = it.send(value)
                except StopIteration as stop:
                    return stop.value
                try:
                    value, exc = (yield yielded), None
                except BaseException as caught:  # delivered to the coroutine on the next turn
                    value, exc = None, caught
        finally:
            if handle is not None:
                handle.cancel()


async def run_sync_body(fn: Callable[[], Any], state: AttemptState) -> Any:
    """Run a sync task body in the worker's thread pool. A watcher on the loop delivers the soft
    limit into the thread (or into its bridged coroutine), and a cancellation (revoke with
    ``terminate=True``) as ``Terminated``; the thread is always waited for."""

    token = anyio.lowlevel.current_token()

    def call() -> Any:
        state.thread_id = threading.get_ident()
        _local.state = state
        worker_thread(token)  # the sync API (delay(), get()) runs on this worker's loop
        try:
            return fn()
        finally:
            worker_thread(None)
            _local.state = None
            state.thread_id = None

    done = False

    async def watch() -> None:
        try:
            if state.soft_limit:
                await anyio.sleep(float(state.soft_limit))
                if not done and not state.soft_fired:
                    state.soft_fired = True
                    bridged = state.bridged_task
                    if bridged is not None:
                        state.soft_target = bridged
                        bridged.cancel()
                    elif state.thread_id is not None:
                        state.soft_delivered = True
                        _raise_in_thread(state.thread_id, SoftTimeLimitExceeded)
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            if not done:  # the attempt itself is being cancelled (revoke terminate, fast stop)
                if state.bridged_task is not None:
                    state.bridged_task.cancel()
                elif state.thread_id is not None:
                    _raise_in_thread(state.thread_id, Terminated)
            raise

    failure: BaseException | None = None
    value: Any = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            value = await anyio.to_thread.run_sync(call)
        except Terminated:
            pass  # the CancelledError of the attempt follows at the task group's exit
        except BaseException as exc:
            failure = exc
        finally:
            done = True
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return value


def current_state() -> AttemptState | None:
    """The attempt whose sync body runs in this thread, if any."""
    return getattr(_local, "state", None)


def bridged_run(main: Coroutine[Any, Any, Any], *, debug: bool | None = None, **kwargs: Any) -> Any:
    """``asyncio.run`` replacement; see the module docstring."""
    state = current_state()
    if state is None or not state.bridge:
        if kwargs:
            return original_asyncio_run(main, debug=debug, **kwargs)
        return original_asyncio_run(main, debug=debug)
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")

    async def on_worker_loop() -> Any:
        state.bridged_task = asyncio.current_task()
        try:
            if state.soft_fired and not state.soft_delivered:
                main.close()
                state.soft_delivered = True
                raise SoftTimeLimitExceeded(f"soft time limit ({state.soft_limit}s) exceeded")
            return await soft_limited(main, state, arm=False)
        finally:
            state.bridged_task = None

    return anyio.from_thread.run(on_worker_loop)


def install() -> None:
    """Replace ``asyncio.run`` process-wide with the bridging version (idempotent)."""
    if asyncio.run is not bridged_run:
        asyncio.run = bridged_run
        asyncio.runners.run = bridged_run
