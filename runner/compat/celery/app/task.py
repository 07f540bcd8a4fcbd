"""``Task``: Celery's task class, its request context and its options.

Each task is one instance per process, created when the module defining it is imported (so
after the fork a worker process has its own copy: the ``DatabaseTask`` pattern of a lazily
created session attribute works per process). ``self.request`` is per *attempt*: a worker runs
several attempts at once (async tasks on the loop, sync tasks in threads), so the request lives
in a ``ContextVar``, not on the instance.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import traceback as tb
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import anyio.from_thread

import runner.compat.celery._state as _state

from ..bridge import current_state
from ..canvas import Signature, chunks, xmap, xstarmap
from ..exceptions import MaxRetriesExceededError, Retry
from ..result import AsyncResult

__all__ = ["Context", "ExceptionInfo", "Task"]


class Context:
    """``self.request``: what the running attempt knows about itself."""

    id: str | None = None
    custom_state: Any = None  # (state, meta) of update_state() when eager or called directly
    retries: int = 0
    args: Any = ()
    kwargs: Any = None
    is_eager: bool = False
    called_directly: bool = True
    hostname: str | None = None
    delivery_info: Any = None
    eta: str | None = None
    expires: str | None = None
    headers: Any = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    chord: Any = None
    callbacks: Any = None
    errbacks: Any = None
    timelimit: Any = (None, None)
    ignore_result: bool = False
    origin: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    utc: bool = True
    task: str | None = None
    properties: Any = None
    # shim internals
    job_id: int | None = None
    state: Any = None  # bridge.AttemptState in a worker
    runner_ctx: Any = None
    retry_requested: Any = None
    pending_call: bool = False
    progress: Any = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)
        if self.kwargs is None:
            self.kwargs = {}

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(*args, **kwargs)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("state", "runner_ctx", "retry_requested", "pending_call", "progress")
        }

    def __repr__(self) -> str:
        return f"<Context: {self.as_dict()!r}>"


class ExceptionInfo:
    """``einfo`` given to ``on_failure``/``on_retry``/``after_return``: ``.exception``, ``.type``,
    ``.traceback`` (text), ``.tb``."""

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc
        self.type = type(exc)
        self.tb = exc.__traceback__
        self.traceback = "".join(tb.format_exception(exc))
        self.internal = False

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


class Task:
    """Celery's ``Task``; subclass it for a custom ``base=`` (hooks, shared resources)."""

    name: str | None = None
    app: Any = None
    typing = True
    max_retries: int | None = 3
    default_retry_delay = 180
    rate_limit: str | None = None
    ignore_result = False
    store_errors_even_if_ignored = False
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout = True
    reject_on_worker_lost: bool | None = None
    track_started = False
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | int = False
    retry_backoff_max = 600
    retry_jitter = True
    throws: tuple[type[BaseException], ...] = ()
    expires: Any = None
    priority: int | None = None
    queue: str | None = None
    serializer: str | None = None
    abstract = True
    MaxRetriesExceededError = MaxRetriesExceededError

    Request = Context

    # Instance attributes written by a sync task are kept per worker thread: a runner worker
    # runs several sync tasks at once in its thread pool, where Celery's prefork ran one per
    # process, and the DatabaseTask pattern (``self._session`` created lazily, closed in
    # ``after_return``) must not share one session between concurrent tasks. Threads are
    # pooled, so a lazily created resource is reused by the next task on that thread.
    def __setattr__(self, name: str, value: Any) -> None:
        if current_state() is not None and not name.startswith("__"):
            local = self.__dict__.get("_celery_thread_attrs")
            if local is None:
                local = self.__dict__.setdefault("_celery_thread_attrs", threading.local())
            setattr(local, name, value)
            return
        object.__setattr__(self, name, value)

    def __getattribute__(self, name: str) -> Any:
        local = object.__getattribute__(self, "__dict__").get("_celery_thread_attrs")
        if local is not None:
            values = local.__dict__
            if name in values:
                return values[name]
        return object.__getattribute__(self, name)

    # -- the request ------------------------------------------------------------------------

    @property
    def _request_var(self) -> ContextVar[tuple[Context, ...]]:
        var = self.__dict__.get("_celery_request_var")
        if var is None:
            var = self.__dict__["_celery_request_var"] = ContextVar(f"celery_request:{self.name}", default=())
        return var

    @property
    def request(self) -> Context:
        stack = self._request_var.get()
        return stack[-1] if stack else Context()

    def push_request(self, *args: Any, **kwargs: Any) -> Any:
        request = args[0] if args and isinstance(args[0], Context) else Context(*args, **kwargs)
        return self._request_var.set((*self._request_var.get(), request))

    def pop_request(self, token: Any = None) -> None:
        if token is not None:
            self._request_var.reset(token)
        else:
            self._request_var.set(self._request_var.get()[:-1])

    # -- calling ------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run inline, as a plain function call (``request.called_directly`` is True)."""
        current = self.request
        if current.pending_call:  # the worker's own call into a custom __call__
            current.pending_call = False
            return self.run(*args, **kwargs)
        token = self.push_request(args=args, kwargs=kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request(token)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Tasks must define the run method.")

    def _get_app(self) -> Any:
        return self.app if self.app is not None else _state.get_current_app()

    @property
    def __name__(self) -> str:
        """The task class's name, on instances too (Celery's ``Task.__name__``): the function's
        name for a decorated task. Signal receivers and hooks log with it."""
        cls: type = type(self)
        return cls.__name__

    def check_arguments(self, args: Any, kwargs: Any) -> None:
        """Celery's ``typing``: arguments must bind to ``run``'s signature (TypeError if not)."""
        if not self.typing:
            return
        try:
            signature = inspect.signature(self.run)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            raise TypeError(f"{self.name}{signature}: {exc}") from None

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Enqueue; returns an ``AsyncResult`` (see the README for the options honoured)."""
        app = self._get_app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=link, link_error=link_error, **options)
        self.check_arguments(args, kwargs)
        return app.send_task_object(self, args, kwargs, task_id=task_id, link=link, link_error=link_error, options=options)

    async def aapply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> Any:
        """``apply_async`` for async callers (a shim extension): does not block the loop."""
        app = self._get_app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=link, link_error=link_error, **options)
        self.check_arguments(args, kwargs)
        return await app.send_task_object_async(
            self, args, kwargs, task_id=task_id, link=link, link_error=link_error, options=options
        )

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.aapply_async(args, kwargs)

    def apply(
        self,
        args: Any = None,
        kwargs: Any = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> Any:
        """Run now, in this process (eager); returns an ``EagerResult``. Retries run at once."""
        return self._get_app().apply_eager(
            self,
            tuple(args or ()),
            dict(kwargs or {}),
            task_id=task_id,
            retries=retries or 0,
            throw=throw,
            link=link,
            link_error=link_error,
            options=options,
        )

    # -- canvas -------------------------------------------------------------------------------

    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Any:
        starkwargs.setdefault("app", self.app)
        return Signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Any:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Any:
        return self.signature(args, kwargs, immutable=True)

    def chunks(self, it: Any, n: int) -> Any:
        """The items of ``it`` in chunks of ``n``: one task per chunk, run as a group."""
        return chunks(self.s(), it, n, app=self.app)

    def map(self, it: Any) -> Any:
        """One task that calls this one for each item of ``it``; returns the list of results."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Any) -> Any:
        """``map`` with each item unpacked as the arguments."""
        return xstarmap(self.s(), it, app=self.app)

    def replace(self, sig: Any) -> Any:
        """Celery's ``Task.replace`` is not supported: it would move this task's place in its
        workflow (what waits for it) to another canvas while it runs."""
        raise NotImplementedError(
            f"{self.name}: Task.replace() is not supported by the runner shim; return the value instead, or send the "
            "other canvas with a link= to what should follow"
        )

    # -- results ------------------------------------------------------------------------------

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:
        return AsyncResult(task_id, app=self._get_app(), task_name=self.name)

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any) -> None:
        """Record a custom state (``"PROGRESS"``) and JSON meta, readable via ``AsyncResult``."""
        request = self.request
        if task_id is not None and task_id != request.id:
            raise NotImplementedError("update_state(task_id=...) for another task is not supported by the runner shim")
        if request.runner_ctx is None:  # eager or called directly: kept on the request
            request.custom_state = (state, meta)
            return
        value = {**request.progress, "state": state, "meta": meta}
        request.progress = value
        ctx = request.runner_ctx
        if current_state() is not None:  # a sync task's thread
            anyio.from_thread.run(ctx.progress, value)
            return
        pending = asyncio.get_running_loop().create_task(ctx.progress(value))
        request.state.pending.append(pending)

    def send_event(self, type_: str, retry: bool = True, retry_policy: Any = None, **fields: Any) -> None:
        """Events are not emitted by runner (no event stream); accepted and ignored."""

    # -- retry --------------------------------------------------------------------------------

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Run this task again, same task id, ``request.retries + 1``; raises ``Retry``.

        Past ``max_retries``: re-raises ``exc`` if given, else ``MaxRetriesExceededError``."""
        request = self.request
        retries = request.retries
        max_retries = self.max_retries if max_retries is None else max_retries
        if request.called_directly:
            if exc is not None:
                raise exc
            raise Retry("Task can be retried", None)
        if max_retries is not None and retries >= max_retries:
            if exc is not None:
                raise exc
            raise self.MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args, task_kwargs=request.kwargs,
            )  # fmt: skip
        if eta is not None:
            when: Any = eta
            delay = max(0.0, eta.timestamp() - time.time())
        else:
            when = self.default_retry_delay if countdown is None else countdown  # as given, like Celery's
            delay = float(when)
        ret = Retry(exc=exc, when=when, is_eager=request.is_eager)
        ret.delay = delay  # type: ignore[attr-defined]
        ret.new_args = None if args is None else list(args)  # type: ignore[attr-defined]
        ret.new_kwargs = None if kwargs is None else dict(kwargs)  # type: ignore[attr-defined]
        ret.options = options  # type: ignore[attr-defined]
        if throw:
            raise ret
        request.retry_requested = ret
        return ret

    # -- hooks (def or async def in subclasses) -----------------------------------------------

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> Any:
        pass

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        pass

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        pass

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        pass

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo | None) -> None:
        pass

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
