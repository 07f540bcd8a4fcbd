"""Running a Celery task: in a runner worker (one attempt of a runner job) and eagerly.

``make_entry(task)`` builds the ``async def`` that runner registers for a task. Per attempt it:
rebuilds Celery's ``request`` from the runner ``Context`` (``retries = attempt - 1``, the task id,
parent/root ids, headers, eta), then runs
``_trace`` -- prerun signal, ``before_start``, the body, autoretry, ``on_success``/``on_failure``/
``on_retry``, ``after_return``, the success/failure/retry signals, postrun -- on the worker's loop
for ``async def`` bodies, or in its thread pool for ``def`` bodies (``bridge.run_sync_body``), and
turns the outcome into what runner understands: a return value, ``runner.errors.Retry(delay)``
(same row, same id, attempt + 1), or the task's exception (the job fails; the traceback is kept).

Retry limits are Celery's: the runner job itself may run almost without limit, and
``task.retry()`` decides (``max_retries``, ``None`` = forever). ``retry(args=..., kwargs=...)``
becomes runner's ``Retry(new_args=..., new_kwargs=...)``: the row's arguments are replaced.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread

import runner.compat.celery._state as _state
import runner.compat.celery.signals as signals
import runner.compat.celery.states as states

from ...app import Context as RunnerContext
from ...errors import Retry as RunnerRetry
from ...wire import decode_json
from .app.task import Context, ExceptionInfo, Task
from .bridge import AttemptState, original_asyncio_run, run_sync_body, soft_limited
from .canvas import as_signatures
from .exceptions import PROPAGATED, ChordError, Ignore, ParentFailed, Reject, Retry, TaskRevokedError, rebuild_exception
from .producer import store_for
from .result import EagerResult, failed_cause
from .utils import uuid
from .utils.time import get_exponential_backoff_interval

__all__ = ["apply_eager", "backoff_countdown", "make_entry", "send_async"]

log = logging.getLogger("runner.compat.celery")

_current_request = _state.request_var
_HOSTNAME = f"celery@{socket.gethostname()}"


@dataclass
class Outcome:
    state: str
    retval: Any = None
    exc: BaseException | None = None
    retry: Retry | None = None
    reject: Reject | None = None


class _Body:
    """Marks the task body's awaitable, so a driver applies the soft time limit to it."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


def _is_async(task: Task) -> bool:
    if type(task).__call__ is not Task.__call__:
        return inspect.iscoroutinefunction(type(task).__call__)
    return inspect.iscoroutinefunction(task.run)


def backoff_countdown(retry_backoff: Any, retries: int, maximum: Any, full_jitter: bool) -> float:
    """Celery's autoretry countdown: ``get_exponential_backoff_interval`` with the factor
    ``int(max(1.0, retry_backoff))`` (so ``True`` and anything below 1 mean 1, and 2.5 means 2)
    and the maximum ``int(retry_backoff_max)``."""
    return get_exponential_backoff_interval(
        factor=int(max(1.0, float(retry_backoff))), retries=retries, maximum=int(maximum), full_jitter=full_jitter
    )


# -- the trace: one implementation, driven on the loop, in a thread, or eagerly ------------------


def _call(fn: Callable[..., Any], *args: Any, what: str) -> Generator[Any, Any, Any]:
    """Call a hook; await what an async hook returns; log (do not raise) its errors."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = yield result
        return result
    except Exception:
        log.exception("%s raised", what)
        return None


def _signal(sig: signals.Signal, **named: Any) -> Generator[Any, Any, None]:
    for fn, response in sig.send(**named):
        if inspect.isawaitable(response):
            try:
                yield response
            except Exception:
                log.exception("signal %s: async receiver %r raised", sig.name, fn)


def _trace(task: Task, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Generator[Any, Any, Outcome]:
    task_id = request.id
    token = task.push_request(request)
    current = _current_request.set(request)
    current_task = _state.task_var.set(task)
    outcome = Outcome(states.SUCCESS)
    try:
        yield from _signal(signals.task_prerun, sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
        try:
            try:
                before: Any = task.before_start(str(task_id), args, kwargs)
                if inspect.isawaitable(before):
                    yield before
                if type(task).__call__ is not Task.__call__:
                    request.pending_call = True
                    result = task(*args, **kwargs)
                else:
                    result = task.run(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = yield _Body(result)
                outcome.retval = result
                if request.retry_requested is not None:  # retry(throw=False), then returned
                    raise request.retry_requested
            except (Retry, Ignore, Reject):
                raise
            except Exception as exc:
                autoretry = tuple(task.autoretry_for or ())
                dont = tuple(task.dont_autoretry_for or ())
                if autoretry and isinstance(exc, autoretry) and not (dont and isinstance(exc, dont)):
                    retry_kwargs = dict(task.retry_kwargs or {})
                    if float(task.retry_backoff or 0):
                        retry_kwargs["countdown"] = backoff_countdown(
                            task.retry_backoff, request.retries, task.retry_backoff_max, task.retry_jitter
                        )
                    task.retry(exc=exc, **retry_kwargs)  # raises Retry, or exc once exhausted
                raise
        except Retry as retry:
            outcome = Outcome(states.RETRY, retval=retry, retry=retry)
            reason = retry.exc if retry.exc is not None else retry
            einfo = ExceptionInfo(reason)
            yield from _call(task.on_retry, reason, task_id, args, kwargs, einfo, what=f"{task.name}.on_retry")
            yield from _signal(signals.task_retry, sender=task, request=request, reason=retry, einfo=einfo)
        except Ignore as exc:
            outcome = Outcome(states.IGNORED, retval=exc)
        except Reject as exc:
            outcome = Outcome(states.REJECTED, retval=exc, exc=exc, reject=exc)
            yield from _signal(signals.task_rejected, sender=task, message=None, exc=exc)
        except Exception as exc:
            outcome = Outcome(states.FAILURE, retval=exc, exc=exc)
            einfo = ExceptionInfo(exc)
            yield from _call(task.on_failure, exc, task_id, args, kwargs, einfo, what=f"{task.name}.on_failure")
            yield from _signal(
                signals.task_failure, sender=task, task_id=task_id, exception=exc, args=args, kwargs=kwargs,
                traceback=exc.__traceback__, einfo=einfo,
            )  # fmt: skip
            yield from _call(
                task.after_return, states.FAILURE, exc, task_id, args, kwargs, einfo, what=f"{task.name}.after_return"
            )
        else:
            yield from _call(task.on_success, outcome.retval, task_id, args, kwargs, what=f"{task.name}.on_success")
            yield from _signal(signals.task_success, sender=task, result=outcome.retval)
            yield from _call(
                task.after_return, states.SUCCESS, outcome.retval, task_id, args, kwargs, None, what=f"{task.name}.after_return"
            )
        yield from _signal(
            signals.task_postrun, sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs,
            retval=outcome.retval, state=outcome.state,
        )  # fmt: skip
        return outcome
    finally:
        _current_request.reset(current)
        _state.task_var.reset(current_task)
        task.pop_request(token)


async def _drive_async(gen: Generator[Any, Any, Outcome], state: AttemptState) -> Outcome:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            if isinstance(item, _Body):
                value = await soft_limited(item.awaitable, state, arm=True)  # type: ignore[arg-type]
            else:
                value = await item
            error = None
        except BaseException as exc:  # thrown into the trace on the next turn
            value, error = None, exc


def _drive_sync(gen: Generator[Any, Any, Outcome], resolve: Callable[[Awaitable[Any]], Any]) -> Outcome:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value = resolve(item.awaitable if isinstance(item, _Body) else item)
            error = None
        except BaseException as exc:
            value, error = None, exc


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _resolve_in_worker(state: AttemptState) -> Callable[[Awaitable[Any]], Any]:
    """From a sync task's thread: await on the worker's loop (soft limit applies, as in a bridged
    ``asyncio.run``)."""

    def resolve(awaitable: Awaitable[Any]) -> Any:
        async def on_loop() -> Any:
            state.bridged_task = asyncio.current_task()
            try:
                return await soft_limited(_await(awaitable), state, arm=False)
            finally:
                state.bridged_task = None

        return anyio.from_thread.run(on_loop)

    return resolve


def _resolve_eager(awaitable: Awaitable[Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return original_asyncio_run(_await(awaitable))
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = original_asyncio_run(_await(awaitable))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="celery-eager")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- the runner job behind each task --------------------------------------------------------------


async def _row(task: Task, job_id: int) -> Any:
    return await (await store_for(task.app.runner)).get(job_id)


def _positional_params(task: Task) -> int:
    try:
        params = inspect.signature(task.run).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


async def _failed_parent(task: Task, parent_id: Any) -> Any:
    return await _row(task, int(parent_id)) if isinstance(parent_id, int) and not isinstance(parent_id, bool) else None


async def _errback_args(task: Task, args: list[Any], row: Any) -> list[Any]:
    """runner passes a failed parent's job id; Celery errbacks take ``(request, exc, traceback)``
    (or, old style, the task id)."""
    parent_id, rest = args[0], args[1:]
    meta = decode_json(row.meta) if row is not None and row.meta else {}
    parent_task_id = ((meta or {}).get("celery") or {}).get("id") or str(parent_id)
    if _positional_params(task) - len(rest) < 3:
        return [parent_task_id, *rest]
    error = decode_json(row.error) if row is not None and row.error else {}
    parent_meta = ((meta or {}).get("celery") or {}) if row is not None else {}
    parent = Context(
        id=parent_task_id, task=row.name if row is not None else None, called_directly=False,
        root_id=parent_meta.get("root_id"), parent_id=parent_meta.get("parent_id"), group=parent_meta.get("group"),
        group_index=parent_meta.get("group_index"), headers=parent_meta.get("headers"),
        args=decode_json(row.args) if row is not None else [], kwargs=decode_json(row.kwargs) if row is not None else {},
    )  # fmt: skip
    exc = rebuild_exception(str(error.get("type", "Exception")), str(error.get("message", "")))
    return [parent, exc, str(error.get("traceback", "")), *rest]


def make_entry(task: Task) -> Callable[..., Awaitable[Any]]:
    """The ``async def`` registered with runner for ``task``."""

    async def entry(*args: Any, runner_ctx: RunnerContext, **kwargs: Any) -> Any:
        return await execute(task, runner_ctx, list(args), kwargs)

    entry.__name__ = getattr(task.run, "__name__", "task")
    entry.__qualname__ = task.name or entry.__name__
    entry.__module__ = type(task).__module__
    entry.__doc__ = task.__doc__
    return entry


async def execute(task: Task, ctx: RunnerContext, args: list[Any], kwargs: dict[str, Any]) -> Any:
    app = task.app
    conf = app.conf
    meta = (ctx.meta or {}).get("celery") or {}
    progress: dict[str, Any] = {}
    if meta.get("errback"):
        failed = await _failed_parent(task, args[0])
        if failed is not None and _error_of(failed).get("type") in PROPAGATED:
            return None  # its task never ran (a step before it failed): Celery calls no errback
        args = args[1:] if meta.get("errback_immutable") else await _errback_args(task, args, failed)
    if meta.get("chord"):
        await _check_chord_header(task, ctx)
    soft = meta.get(
        "soft_time_limit", task.soft_time_limit if task.soft_time_limit is not None else conf.get("task_soft_time_limit")
    )
    state = AttemptState(soft_limit=float(soft) if soft else None, bridge=bool(conf.get("runner_bridge_asyncio_run", True)))
    task_id = str(meta.get("id") or ctx.job_id)
    info = app.worker_info
    headers = dict(meta.get("headers") or {})
    request = Context(
        id=task_id, task=task.name, retries=max(0, ctx.attempt - 1), args=tuple(args), kwargs=dict(kwargs),
        is_eager=False, called_directly=False, hostname=f"celery@{info.owner}" if info else _HOSTNAME,
        delivery_info={"exchange": "", "routing_key": ctx.queue, "priority": None, "redelivered": ctx.attempt > 1},
        eta=meta.get("eta"), expires=meta.get("expires"), headers=headers,
        root_id=meta.get("root_id") or (str(ctx.root_id) if ctx.root_id else task_id),
        parent_id=meta.get("parent_id") or (str(ctx.parent_id) if ctx.parent_id else None),
        group=meta.get("group"), group_index=meta.get("group_index"),
        timelimit=(meta.get("time_limit", task.time_limit), soft), shadow=meta.get("shadow"),
        ignore_result=bool(meta.get("ignore_result", task.ignore_result)), correlation_id=task_id,
        job_id=ctx.job_id, state=state, runner_ctx=ctx, progress=progress,
    )  # fmt: skip
    for name, value in headers.items():  # Celery: custom headers are request attributes too
        if not hasattr(Context, name) and name not in request.__dict__:
            setattr(request, name, value)
    trace = _trace(task, request, tuple(args), dict(kwargs))
    if _is_async(task):
        outcome = await _drive_async(trace, state)
    else:
        resolve = _resolve_in_worker(state)
        outcome = await run_sync_body(lambda: _drive_sync(trace, resolve), state)
    if state.pending:
        await asyncio.gather(*state.pending, return_exceptions=True)
    return await _conclude(outcome, request)


def _error_of(row: Any) -> dict[str, Any]:
    try:
        error = decode_json(row.error) if row is not None and row.error else {}
    except Exception:
        return {"message": str(row.error)}
    return error if isinstance(error, dict) else {}


def _celery_id(row: Any) -> str:
    try:
        meta = decode_json(row.meta) if row.meta else {}
    except Exception:
        meta = {}
    return str(((meta or {}).get("celery") or {}).get("id") or row.id)


async def _check_chord_header(task: Task, ctx: RunnerContext) -> None:
    """A chord body runs only if every header task succeeded (Celery's rule). Otherwise it fails
    before it starts: with ``ChordError`` naming the first header task that failed (its errbacks
    run), or, when that task never ran because a step before the chord failed, as that step's
    failure carried on (``ParentFailed``: no errbacks, its result reports that step's error)."""
    store = await store_for(task.app.runner)
    parents = await store.parent_results(ctx.job_id)
    failed = [parent_id for parent_id, state, _result in parents if state != "succeeded"]
    if not failed:
        return
    rows = {row.id: row for row in await store.get_many(failed)}
    culprit = rows.get(failed[0])
    if culprit is None:
        raise ChordError(f"Dependency {failed[0]} is gone (purged?)")
    error = _error_of(culprit)
    if error.get("type") in PROPAGATED:
        cause = await failed_cause(store, culprit)
        what = (
            f"{_celery_id(cause)} raised {_error_of(cause).get('type')}"
            if cause is not None
            else "a step before the chord failed"
        )
        raise ParentFailed(f"the chord's header never ran: {what}")
    if culprit.state in ("cancelled", "expired"):
        exc: BaseException = TaskRevokedError(error.get("message") or "revoked")
    else:
        exc = rebuild_exception(str(error.get("type", "Exception")), str(error.get("message", "")))
    raise ChordError(f"Dependency {_celery_id(culprit)} raised {exc!r}")


async def _conclude(outcome: Outcome, request: Context) -> Any:
    if outcome.state == states.SUCCESS:
        return None if request.ignore_result else outcome.retval
    if outcome.state == states.RETRY:
        retry = outcome.retry
        assert retry is not None
        new_args, new_kwargs = getattr(retry, "new_args", None), getattr(retry, "new_kwargs", None)
        raise RunnerRetry(
            delay=float(getattr(retry, "delay", 0.0)), reason=str(retry),
            new_args=None if new_args is None else list(new_args), new_kwargs=None if new_kwargs is None else dict(new_kwargs),
        )  # fmt: skip
    if outcome.state == states.IGNORED:
        return None
    if outcome.state == states.REJECTED and outcome.reject is not None and outcome.reject.requeue:
        raise RunnerRetry(delay=0.0, reason=f"rejected and requeued: {outcome.reject.reason}")
    assert outcome.exc is not None
    raise outcome.exc


# -- signals from async code ----------------------------------------------------------------------


async def send_async(signal_: signals.Signal, /, **named: Any) -> list[tuple[Any, Any]]:
    """Send ``signal_`` and await what its async receivers return; the (receiver, response) pairs."""
    responses = signal_.send(**named)
    for fn, response in responses:
        if inspect.isawaitable(response):
            try:
                await response
            except Exception:
                log.exception("signal %s: async receiver %r raised", signal_.name, fn)
    return responses


# -- eager ------------------------------------------------------------------------------------------


def apply_eager(
    task: Task,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    task_id: str | None,
    retries: int,
    throw: bool | None,
    link: Any,
    link_error: Any,
    options: dict[str, Any],
) -> Any:
    """``task.apply()`` and ``task_always_eager``: run in this thread now; ``retry()`` runs the
    next attempt at once (countdowns are not waited for)."""
    task_id = task_id or options.get("task_id") or uuid()
    parent = _state.current_request()
    while True:
        request = Context(
            id=task_id, task=task.name, retries=retries, args=args, kwargs=kwargs, is_eager=True,
            called_directly=False, hostname=_HOSTNAME, delivery_info={"is_eager": True, "routing_key": options.get("queue")},
            headers=dict(options.get("headers") or {}), root_id=(parent.root_id if parent else None) or task_id,
            parent_id=parent.id if parent else None, ignore_result=bool(options.get("ignore_result", task.ignore_result)),
        )  # fmt: skip
        outcome = _drive_sync(_trace(task, request, args, kwargs), _resolve_eager)
        if outcome.state != states.RETRY:
            break
        retries += 1
        retry = outcome.retry
        if getattr(retry, "new_args", None) is not None:
            args = tuple(retry.new_args)  # type: ignore[union-attr]
        if getattr(retry, "new_kwargs", None) is not None:
            kwargs = dict(retry.new_kwargs)  # type: ignore[union-attr]
    state = states.SUCCESS if outcome.state in (states.SUCCESS, states.IGNORED) else states.FAILURE
    result = EagerResult(
        task_id, outcome.retval if state == states.SUCCESS else outcome.exc, state, app=task.app, task_name=task.name
    )
    if state == states.SUCCESS:
        for callback in as_signatures(task.app, link):
            callback.clone(args=(outcome.retval,)).apply()
    else:
        for errback in as_signatures(task.app, link_error):
            errback.clone(args=(task_id,)).apply()
        propagate = task.app.conf.task_eager_propagates if throw is None else throw
        if propagate and outcome.exc is not None:
            raise outcome.exc
    return result
