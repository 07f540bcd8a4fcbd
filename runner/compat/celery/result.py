"""``AsyncResult``, ``GroupResult`` and ``EagerResult``, read from the job rows.

Results live in the queue table (``runner_jobs.result``/``error``/``progress``): ``backend=`` and
``result_backend`` are accepted and ignored. A task id is the Celery id of one job: the
``task_id=`` a caller chose, or the UUID the shim gave it when it was sent; both are the job's
idempotency key (an indexed column), so ``AsyncResult(id)`` finds the job by it. A job that was
not sent through the shim (a periodic fire, an errback) is known by its runner job id, as text.

A workflow step that never ran because a step before it failed (runner ends it with
``ParentFailed``) reports that step's error, as Celery marks the rest of a chain failed with the
exception that stopped it. Every blocking method works from sync code; ``await result`` /
``await result.aget()`` is the non-blocking form for async callers.
"""

from __future__ import annotations

import time
import traceback as tb
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio

import runner.compat.celery._state as _state
import runner.compat.celery.states as states

from ...wire import decode_json
from .exceptions import PROPAGATED, TaskRevokedError, TimeoutError, rebuild_exception
from .producer import call_sync, store_for

__all__ = ["AsyncResult", "EagerResult", "GroupResult", "ResultSet", "result_from_tuple"]

_FINISHED = ("succeeded", "failed", "cancelled", "expired")


def _app(app: Any) -> Any:
    return app if app is not None else _state.get_current_app()


def _error(row: Any) -> dict[str, Any]:
    try:
        value = decode_json(row.error) if row.error else {}
    except Exception:
        value = {"message": str(row.error)}
    return value if isinstance(value, dict) else {}


def _progress(row: Any) -> dict[str, Any]:
    try:
        value = decode_json(row.progress) if row.progress else {}
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


class AsyncResult:
    """A task's result by task id (see the module docstring)."""

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: Any = None,
        parent: Any = None,
        job_id: int | None = None,
    ) -> None:
        self.id = str(id)
        self.app = _app(app)
        self.task_name = task_name
        self.parent = parent
        self._job_id = job_id
        self._final: Any = None  # the row once finished (it no longer changes)
        self._cause: Any = None  # for a step that never ran: the row of the step that failed

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return isinstance(other, str) and other == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        """The task id (Celery's old name for ``id``)."""
        return self.id

    def as_tuple(self) -> tuple[Any, ...]:
        return ((self.id, self.parent and self.parent.as_tuple()), None)

    # -- reading the row --------------------------------------------------------------------

    async def _store(self) -> Any:
        return await store_for(self.app.runner)

    async def _resolve(self, store: Any) -> int | None:
        """The job behind the id: by key (every id the shim gives out is one), or, for a job
        that was not sent through the shim, by its runner job id."""
        if self._job_id is not None:
            return self._job_id
        row = await store.get_by_key(self.id)
        if row is None and self.id.isdigit():
            row = await store.get(int(self.id))
        if row is not None:
            self._job_id = row.id
        return self._job_id

    async def _row_async(self) -> Any:
        if self._final is not None:
            return self._final
        store = await self._store()
        job_id = await self._resolve(store)
        if job_id is None:
            return None
        row = await store.get(job_id)
        if row is not None and row.state in _FINISHED:
            if row.state != "succeeded" and _error(row).get("type") in PROPAGATED:
                self._cause = await failed_cause(store, row)
            self._final = row
        return row

    def _row(self) -> Any:
        if self._final is not None:
            return self._final
        return call_sync(self.app.runner_app, self._row_async)

    # -- state ----------------------------------------------------------------------------------

    def _state_of(self, row: Any) -> str:
        if row is None:
            return states.PENDING
        if self._cause is not None and row is self._final:
            return states.FAILURE  # Celery marks the rest of a chain failed, with the same error
        custom = _progress(row).get("state") if row.state == "running" else None
        return states.from_runner(row.state, row.attempt, custom)

    @property
    def state(self) -> str:
        return self._state_of(self._row())

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def _value(self, row: Any) -> Any:
        state = self._state_of(row)
        if state == states.SUCCESS:
            return decode_json(row.result) if row.result is not None else None
        if state == states.FAILURE:
            error = _error(self._cause if self._cause is not None and row is self._final else row)
            return rebuild_exception(str(error.get("type", "Exception")), str(error.get("message", "")))
        if state == states.REVOKED:
            return TaskRevokedError(_error(row).get("message") or "revoked")
        if row is not None and row.state == "running":
            return _progress(row).get("meta")
        return None

    @property
    def result(self) -> Any:
        return self._value(self._row())

    info = result

    @property
    def traceback(self) -> str | None:
        row = self._row()
        if self._state_of(row) != states.FAILURE:
            return None
        source = self._cause if self._cause is not None else row
        return str(_error(source).get("traceback") or "") or None

    @property
    def date_done(self) -> Any:
        row = self._row()
        if row is None or row.finished_at is None:
            return None
        return datetime.fromtimestamp(row.finished_at, UTC)

    @property
    def retries(self) -> int:
        row = self._row()
        return max(0, (row.attempt if row is not None else 0) - 1)

    @property
    def name(self) -> str | None:
        row = self._row()
        return row.name if row is not None else self.task_name

    @property
    def args(self) -> Any:
        row = self._row()
        return decode_json(row.args) if row is not None else None

    @property
    def kwargs(self) -> Any:
        row = self._row()
        return decode_json(row.kwargs) if row is not None else None

    @property
    def queue(self) -> str | None:
        row = self._row()
        return row.queue if row is not None else None

    # -- waiting ----------------------------------------------------------------------------------

    async def _wait(self, timeout: float | None, interval: float) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.02, interval)
        while True:
            row = await self._row_async()
            if row is not None and row.state in _FINISHED:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("The operation timed out.")
            wait = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            await anyio.sleep(wait)
            delay = min(delay * 1.5, interval)

    def _outcome(self, row: Any, propagate: bool) -> Any:
        value = self._value(row)
        if self._state_of(row) in states.PROPAGATE_STATES and propagate:
            raise value
        return value

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        callback: Any = None,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Wait for the result; re-raises the task's exception (``propagate``)."""
        request = _state.current_request()
        if disable_sync_subtasks and request is not None and not request.is_eager:
            raise RuntimeError("Never call result.get() within a task! See Celery's 'Avoid launching synchronous subtasks'")
        return call_sync(self.app.runner_app, self._get, timeout, propagate, interval, follow_parents)

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """``get`` for async callers: ``await result.aget()`` or ``await result``."""
        self.app._apply_broker()
        return await self._get(timeout, propagate, interval, True)

    async def _get(self, timeout: float | None, propagate: bool, interval: float, follow_parents: bool) -> Any:
        row = await self._wait(timeout, interval)
        if follow_parents and propagate and self.parent is not None:
            # Celery raises the error of the first failed step before this one (the one nearest
            # the start), as a failed chord header task's, not the body's ChordError.
            for node in reversed(list(self._parents())):
                await node._throw_if_failed()
        return self._outcome(row, propagate)

    def _parents(self) -> Any:
        node = self.parent
        while node is not None:
            yield node
            node = getattr(node, "parent", None)

    async def _throw_if_failed(self) -> None:
        row = await self._row_async()
        if row is not None and row.state in _FINISHED and self._state_of(row) in states.PROPAGATE_STATES:
            raise self._value(row)

    def __await__(self) -> Any:
        return self.aget().__await__()

    # -- control ------------------------------------------------------------------------------

    async def _revoke(self, terminate: bool) -> None:
        store = await self._store()
        job_id = await self._resolve(store)
        if job_id is None:
            return
        if not terminate:
            row = await store.get(job_id)
            if row is None or row.state not in ("queued", "waiting"):
                return  # like Celery without terminate: a running task runs to the end
        await store.cancel(job_id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Any = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Cancel a queued task; with ``terminate=True`` also stop it if running (async: the
        task is cancelled at its next await; sync: ``Terminated`` is raised in its thread)."""
        call_sync(self.app.runner_app, self._revoke, terminate)

    def forget(self) -> None:
        """Accepted; runner deletes finished rows itself after ``result_expires``."""


async def failed_cause(store: Any, row: Any) -> Any:
    """The row whose failure ended ``row`` (a step that never ran): up its parents until one
    that failed by itself. None if that row is gone."""
    seen = {row.id}
    current = row
    while current is not None and _error(current).get("type") in PROPAGATED:
        parents, _ = await store.dependencies(current.id)
        rows = {r.id: r for r in await store.get_many(parents)}
        ended = [rows[p] for p in parents if p in rows and rows[p].state != "succeeded" and p not in seen]
        if not ended:
            return None
        current = ended[0]
        seen.add(current.id)
    return current


class EagerResult(AsyncResult):
    """The result of ``apply()`` or eager mode: already known."""

    def __init__(
        self, id: str, ret_value: Any, state: str, traceback: str | None = None, app: Any = None, task_name: str | None = None
    ) -> None:
        self.id = str(id)
        self.app = app
        self.task_name = task_name
        self.parent = None
        self._value_ = ret_value
        self._state = state
        self._traceback = traceback
        if isinstance(ret_value, BaseException) and traceback is None:
            self._traceback = "".join(tb.format_exception(ret_value))

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value_

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback if self._state == states.FAILURE else None

    def get(  # type: ignore[override]  # an eager result has nothing to wait for or follow
        self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True, **kwargs: Any
    ) -> Any:
        if self._state in states.PROPAGATE_STATES and propagate:
            raise self._value_
        return self._value_

    wait = get  # type: ignore[assignment]

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        return self.get(propagate=propagate)

    async def _throw_if_failed(self) -> None:
        if self._state in states.PROPAGATE_STATES:
            raise self._value_

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        self._state = states.REVOKED

    def forget(self) -> None:
        pass


class ResultSet:
    """Several results, read together."""

    def __init__(self, results: Any, app: Any = None, **kwargs: Any) -> None:
        self.results = list(results or [])
        self._app_ = app

    @property
    def app(self) -> Any:
        return _app(self._app_ or next((getattr(r, "app", None) for r in self.results), None))

    @app.setter
    def app(self, value: Any) -> None:
        self._app_ = value

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def add(self, result: Any) -> None:
        self.results.append(result)

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    async def _throw_if_failed(self) -> None:
        for r in self.results:
            await r._throw_if_failed()

    def revoke(self, connection: Any = None, terminate: bool = False, **kwargs: Any) -> None:
        for r in self.results:
            r.revoke(terminate=terminate)

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Any = None,
        no_ack: bool = True,
        on_message: Any = None,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(
                r.get(timeout=remaining, propagate=propagate, interval=interval, disable_sync_subtasks=disable_sync_subtasks)
            )
        return values

    get = join
    join_native = join

    async def aget(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(await r.aget(timeout=remaining, propagate=propagate, interval=interval))
        return values

    def __await__(self) -> Any:
        return self.aget().__await__()


class GroupResult(ResultSet):
    """The results of a ``group`` (in order)."""

    def __init__(self, id: str | None = None, results: Any = None, parent: Any = None, app: Any = None, **kwargs: Any) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent
        self._native = False  # sent by the shim: its members carry its id already

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    @property
    def children(self) -> list[Any]:
        return self.results

    def save(self, backend: Any = None) -> GroupResult:
        """Keep the group for ``GroupResult.restore(id)``. A group the shim sent is already kept
        (its members carry its id); one built by hand is kept in a small job of its own."""
        if not self._native:
            self.app.save_group(self)
        return self

    def delete(self, backend: Any = None) -> None:
        """Accepted; runner deletes finished rows itself after ``result_expires``."""

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: Any = None) -> GroupResult | None:
        """The group saved (or sent by the shim) under ``id``, or None."""
        return _app(app).restore_group(id)

    def as_tuple(self) -> tuple[Any, ...]:
        return ((self.id, self.parent and self.parent.as_tuple()), [r.as_tuple() for r in self.results])


def result_from_tuple(r: Any, app: Any = None) -> Any:
    """A result from its ``as_tuple()`` form (a ``GroupResult`` when it has members)."""
    (id_, parent), nodes = r
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        return GroupResult(id_, [result_from_tuple(n, app) for n in nodes], parent=parent_result, app=app)
    return AsyncResult(id_, app=app, parent=parent_result)
