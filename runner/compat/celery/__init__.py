"""A Celery 5.x compatible API on runner: replace the import prefix ``celery`` with
``runner.compat.celery`` and serve the app with ``runner serve -A proj`` (or ``proj.celery:app``).

Celery itself is not imported or required. What is supported, what differs and why is in the
README ("Porting from Celery"); the modules mirror Celery's: ``app`` (``Celery``, ``Task``),
``canvas``, ``result``, ``signals``, ``schedules``, ``states``, ``exceptions``, ``utils``
(``uuid``), ``utils.log``, ``utils.time``; ``runner.compat.kombu`` stands in for ``kombu``'s
``Queue``/``Exchange``. The shim's own modules: ``_state`` (what the others share, below all of
them), ``workflow`` (a canvas as one native runner workflow), ``execution`` (running a task
inside a runner worker), ``bridge`` (the ``asyncio.run`` bridge and soft time limits) and
``producer`` (calling runner's client from any context). Imports run one way: nothing imports a
module that imports it back.
"""

from __future__ import annotations

from . import bridge as _bridge
from . import signals, states
from ._state import current_task
from .app import Celery, Task, current_app, shared_task
from .canvas import Signature, chain, chord, chunks, group, maybe_signature, signature, subtask, xmap, xstarmap
from .result import AsyncResult, GroupResult
from .schedules import crontab
from .utils import uuid

_bridge.install()

__all__ = [
    "AsyncResult",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signals",
    "signature",
    "states",
    "subtask",
    "uuid",
    "xmap",
    "xstarmap",
]
