"""Celery's signals: ``@signal.connect`` (bare or with ``sender=``), ``signal.connect(fn)``,
``disconnect`` and ``send``. Receivers may be ``def`` or ``async def``: the shim awaits what an
async receiver returns (on the worker's loop for process and async-task signals, through the
bridge for sync tasks).

Where they are sent: ``worker_process_init``, ``worker_ready`` and ``setup_logging`` once per
worker process as it starts (inside its loop, before the first job); ``worker_shutting_down`` and
``worker_process_shutdown`` as it stops; ``before_task_publish``/``after_task_publish`` in the
producer around the INSERT; the ``task_*`` signals around each attempt in the worker.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "celeryd_init",
    "setup_logging",
    "task_failure",
    "task_internal_error",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutting_down",
]

log = logging.getLogger("runner.compat.celery")


def _sender_matches(wanted: Any, sender: Any) -> bool:
    if wanted is None or wanted is sender:
        return True
    if isinstance(wanted, str):
        return wanted == sender or wanted == getattr(sender, "name", None)
    if isinstance(sender, str):
        return sender == getattr(wanted, "name", None)
    try:
        return bool(wanted == sender)
    except Exception:
        return False


class Signal:
    """A named hook point; receivers are called with ``signal=`` and ``sender=`` plus the
    signal's own keyword arguments, and must accept ``**kwargs``."""

    def __init__(self, name: str | None = None, providing_args: Any = None) -> None:
        self.name = name or "signal"
        self.receivers: list[tuple[Any, Any, bool]] = []  # (receiver or weakref, sender, weak)

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    def connect(self, *args: Any, sender: Any = None, weak: bool = False, dispatch_uid: Any = None, **kwargs: Any) -> Any:
        """``@sig.connect``, ``@sig.connect(sender=...)`` or ``sig.connect(fn, sender=...)``."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if dispatch_uid is not None:
                self.receivers = [r for r in self.receivers if getattr(r[0], "_dispatch_uid", None) != dispatch_uid]
            ref: Any = fn
            if weak:
                ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
            if dispatch_uid is not None:
                try:
                    fn._dispatch_uid = dispatch_uid  # type: ignore[attr-defined]
                except AttributeError:
                    pass
            if not any(self._live(r) is fn and s is sender for r, s, _w in self.receivers):
                self.receivers.append((ref, sender, weak))
            return fn

        if args and callable(args[0]):
            return register(args[0])
        return register

    @staticmethod
    def _live(ref: Any) -> Any:
        return ref() if isinstance(ref, weakref.ref) else ref

    def disconnect(self, receiver: Any = None, sender: Any = None, weak: bool = False, dispatch_uid: Any = None) -> bool:
        before = len(self.receivers)
        self.receivers = [
            (r, s, w) for r, s, w in self.receivers
            if not (self._live(r) is receiver and (sender is None or s is sender))
        ]  # fmt: skip
        return len(self.receivers) != before

    def live_receivers(self, sender: Any) -> list[Callable[..., Any]]:
        found = []
        for ref, wanted, _weak in list(self.receivers):
            fn = self._live(ref)
            if fn is not None and _sender_matches(wanted, sender):
                found.append(fn)
        return found

    @property
    def has_receivers(self) -> bool:
        return bool(self.receivers)

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Any, Any]]:
        """Call every matching receiver; an exception in one is logged, not raised (as Celery's
        ``send`` does), and an async receiver's coroutine is returned in the response list for
        the caller to await (the shim does)."""
        responses = []
        for fn in self.live_receivers(sender):
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                log.exception("signal %s: receiver %r raised %r", self.name, fn, exc)
                responses.append((fn, exc))
        return responses

    send_robust = send


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_retry = Signal("task_retry")
task_failure = Signal("task_failure")
task_internal_error = Signal("task_internal_error")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
celeryd_init = Signal("celeryd_init")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
beat_init = Signal("beat_init")
