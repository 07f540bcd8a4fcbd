"""A Celery 5.x compatible API on runner: replace the import prefix ``celery`` with
``runner.compat.celery`` and serve the app with ``runner serve -A proj`` (or ``proj.celery:app``).

Celery itself is not imported or required. What is supported, what differs and why is in the
README ("Porting from Celery"); the modules mirror Celery's: ``app`` (``Celery``, ``Task``),
``canvas``, ``result``, ``signals``, ``schedules``, ``states``, ``exceptions``, ``utils.log``; plus
``execution`` (running a task inside a runner worker), ``bridge`` (the ``asyncio.run`` bridge and
soft time limits) and ``producer`` (calling runner's client from any context).
"""

from __future__ import annotations

from . import bridge as _bridge
from . import signals, states
from .app import Celery, Task, current_app, shared_task
from .canvas import Signature, chain, chord, group, maybe_signature, signature, subtask
from .result import AsyncResult, GroupResult
from .schedules import crontab

_bridge.install()

__all__ = [
    "AsyncResult",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "chain",
    "chord",
    "crontab",
    "current_app",
    "group",
    "maybe_signature",
    "shared_task",
    "signals",
    "signature",
    "states",
    "subtask",
]
