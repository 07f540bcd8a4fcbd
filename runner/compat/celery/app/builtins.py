"""The tasks every Celery app has (Celery's ``celery.app.builtins``): ``celery.map`` and
``celery.starmap``, behind ``task.map``, ``task.starmap`` and ``task.chunks`` (a group of
``celery.starmap`` tasks). They run in a worker like any task and call the mapped task inline for each
item (``request.called_directly`` is True there, as in Celery)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ..canvas import signature

__all__ = ["add_builtins"]


def _value(result: Any) -> Any:
    """An async task called inline returns a coroutine: run it (on the worker's loop, through
    the ``asyncio.run`` bridge, when in a worker)."""
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        return asyncio.run(wait())
    return result


def add_builtins(app: Any) -> None:
    """Register the built-in tasks on ``app``."""

    @app.task(name="celery.map")  # type: ignore[untyped-decorator]  # the shim's decorators are untyped
    def xmap(task: Any, it: list[Any]) -> list[Any]:
        run = signature(task, app=app).type
        return [_value(run(item)) for item in it]

    @app.task(name="celery.starmap")  # type: ignore[untyped-decorator]
    def xstarmap(task: Any, it: list[Any]) -> list[Any]:
        run = signature(task, app=app).type
        return [_value(run(*item)) for item in it]
