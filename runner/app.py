"""``App``: the registry of jobs, their policies, routing, and per-process lifespan hooks.

An App is inert data: building one, or decorating a job, touches no loop, engine or signal, so a
module that defines jobs can be imported by a producer, the supervisor (before forking) and every
worker alike. Enqueueing lives in ``client.py``; running one lives in ``run_job.py``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import random
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import ArgumentsError, ConfigError, UnknownJob
from .settings import check_url
from .wire import Envelope

__all__ = ["App", "Call", "Context", "JobDef", "JobOptions", "Lifespan", "WorkerInfo"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerInfo:
    """What a lifespan hook learns about the worker process it runs in."""

    slot: int
    pid: int
    owner: str
    concurrency: int
    queues: tuple[str, ...] | None


Lifespan = Callable[[WorkerInfo], contextlib.AbstractAsyncContextManager[Any]]


class Context:
    """Injected into a job that declares a parameter annotated ``Context``: who it is, and a
    channel back to the queue (progress) while it runs."""

    __slots__ = ("job_id", "name", "attempt", "max_attempts", "queue", "parent_id", "root_id", "meta", "_progress")

    def __init__(
        self,
        job_id: int,
        name: str,
        attempt: int,
        max_attempts: int,
        queue: str,
        parent_id: int | None,
        root_id: int | None,
        meta: dict[str, Any],
        progress: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.queue = queue
        self.parent_id = parent_id
        self.root_id = root_id
        self.meta = meta
        self._progress = progress

    async def progress(self, value: Any) -> None:
        """Record a small JSON value that producers and ``runner jobs show`` can read."""
        if self._progress is not None:
            await self._progress(value)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap and equal jitter: half fixed, half random."""

    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        raw = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return raw / 2 + random.uniform(0, raw / 2) if self.jitter else raw


@dataclass(frozen=True)
class JobOptions:
    """Per-call options; ``None`` means "the job's default"."""

    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | float | None = None
    expires: float | datetime | timedelta | None = None
    key: str | None = None
    key_ttl: float | timedelta | None = None  # the key also matches a job that succeeded this recently
    max_attempts: int | None = None
    timeout: float | None = None  # soft limit for this call (the job's own otherwise)
    hard_timeout: float | None = None  # hard limit for this call: the worker is killed past it
    parent_id: int | None = None
    root_id: int | None = None
    meta: dict[str, Any] | None = None
    session: AsyncSession | None = None  # enqueue inside the caller's transaction
    on_success: Call | Sequence[Call] | None = None  # enqueued when this job succeeds, result first
    on_failure: Call | Sequence[Call] | None = None  # enqueued when it fails for good, its id first
    immutable: bool = False  # when this call is chained: do not prepend the parent's result


def _epoch(value: datetime | float | None, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ArgumentsError("eta/expires datetimes must be timezone-aware (e.g. datetime.now(UTC))")
        return value.timestamp()
    return float(value)


@dataclass(frozen=True)
class Call:
    """A job plus its arguments and options, ready to become an Envelope (one row)."""

    job: JobDef
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: JobOptions = JobOptions()

    def envelope(self, now: float) -> Envelope:
        job, opts = self.job, self.options
        job.check_arguments(self.args, self.kwargs)
        run_at = _epoch(opts.eta, now)
        if opts.countdown is not None:
            run_at = now + float(opts.countdown)
        expires = opts.expires if opts.expires is not None else job.expires
        if isinstance(expires, timedelta):
            expires_at: float | None = now + expires.total_seconds()
        elif isinstance(expires, (int, float)):
            expires_at = now + float(expires)
        else:
            expires_at = _epoch(expires, now)
        return Envelope(
            name=job.name,
            args=list(self.args),
            kwargs=self.kwargs,
            queue=opts.queue or job.queue,
            priority=job.priority if opts.priority is None else opts.priority,
            max_attempts=opts.max_attempts or job.max_attempts,
            run_at=run_at,
            expires_at=expires_at,
            key=opts.key,
            key_ttl=opts.key_ttl.total_seconds() if isinstance(opts.key_ttl, timedelta) else opts.key_ttl,
            parent_id=opts.parent_id,
            root_id=opts.root_id,
            meta=self._meta(),
        )

    def _meta(self) -> dict[str, Any] | None:
        opts = self.options
        if opts.on_success is None and opts.on_failure is None and opts.timeout is None and opts.hard_timeout is None:
            return opts.meta
        meta = dict(opts.meta or {})
        for key, limit in (("timeout", opts.timeout), ("hard_timeout", opts.hard_timeout)):
            if limit is not None:
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
                    raise ArgumentsError(f"{key} must be a positive number of seconds, got {limit!r}")
                meta[key] = float(limit)
        for key, calls in (("on_success", opts.on_success), ("on_failure", opts.on_failure)):
            if calls is not None:
                meta[key] = [c.chained() for c in ([calls] if isinstance(calls, Call) else calls)]
        return meta

    def chained(self) -> dict[str, Any]:
        """This call as a chained-job spec in its parent's meta. Its arguments are checked when it
        runs, since the parent's result is prepended to them then."""
        opts = self.options
        return {
            "name": self.job.name,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "queue": opts.queue or self.job.queue,
            "priority": self.job.priority if opts.priority is None else opts.priority,
            "max_attempts": opts.max_attempts,
            "key": opts.key,
            "meta": self._meta(),
            "immutable": opts.immutable,
        }


class JobDef(Generic[P, R]):
    """A registered job: the function, its policy, and how its arguments bind."""

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        *,
        name: str,
        queue: str,
        priority: int = 0,
        retries: int = 0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        backoff: Backoff = Backoff(),
        timeout: float | None = None,
        hard_timeout: float | None = None,
        expires: float | timedelta | None = None,
        ignore_result: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = retries + 1
        self.retry_on = tuple(retry_on)
        self.backoff = backoff
        self.timeout = timeout
        self.hard_timeout = hard_timeout
        self.expires = expires
        self.ignore_result = ignore_result
        self.is_async = inspect.iscoroutinefunction(fn)
        self.session_param, self.context_param, self.signature, self._types = _inspect(fn)
        self._takes_nothing = not self.signature.parameters
        self._empty_bound = self.signature.bind() if self._takes_nothing else None
        if self.session_param and not self.is_async:
            raise ConfigError(f"job {name}: an AsyncSession needs an async def job; {fn.__qualname__} is sync")
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<job {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function inline, as if it were not a job (useful in tests)."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    # -- arguments -----------------------------------------------------------------------------

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise ArgumentsError if the call would not bind, before the row is written."""
        self.bind(args, kwargs)

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        if not args and not kwargs and self._takes_nothing:
            return self._empty_bound
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"arguments do not match {self.name}{self.signature}: {exc}") from None
        if self._types is not None:
            try:
                converted = msgspec.convert(bound.arguments, self._types)
            except msgspec.ValidationError as exc:
                raise ArgumentsError(f"arguments do not match {self.name}{self.signature}: {exc}") from None
            for pname in bound.arguments:
                bound.arguments[pname] = getattr(converted, pname)
        return bound

    # -- enqueueing (implemented in client.py) ---------------------------------------------------

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        return Call(self, tuple(args), dict(kwargs))

    def options(self, **options: Any) -> BoundOptions[P, R]:
        """Per-call options: queue, priority, countdown, eta, expires, key, key_ttl, max_attempts,
        timeout, hard_timeout, meta, parent_id, root_id, session (enqueue in the caller's transaction), on_success /
        on_failure (calls to enqueue after this one), immutable (take no parent result)."""
        try:
            return BoundOptions(self, JobOptions(**options))
        except TypeError:
            accepted = ", ".join(JobOptions.__dataclass_fields__)
            raise ArgumentsError(f"unknown option in {sorted(options)}; accepted: {accepted}") from None

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Enqueue from sync code; returns a ``JobHandle``."""
        return self.app.client.defer(self.call(*args, **kwargs))

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Enqueue from async code; returns a ``JobHandle``."""
        return await self.app.client.defer_async(self.call(*args, **kwargs))


class BoundOptions(Generic[P, R]):
    """``job.options(...)``: the same enqueue methods, with options applied."""

    def __init__(self, job: JobDef[P, R], options: JobOptions) -> None:
        self.job = job
        self._options = options

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        return Call(self.job, tuple(args), dict(kwargs), self._options)

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.job.app.client.defer(self.call(*args, **kwargs))

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return await self.job.app.client.defer_async(self.call(*args, **kwargs))


def _inspect(fn: Callable[..., Any]) -> tuple[str | None, str | None, inspect.Signature, type | None]:
    """Split a job's parameters into injected ones (session, context) and JSON arguments, and
    build a msgspec type that validates the arguments against the annotations."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: bind by name only
        hints = {}
    session_param = context_param = None
    params: list[inspect.Parameter] = []
    for param in sig.parameters.values():
        hint = hints.get(param.name)
        if isinstance(hint, type) and issubclass(hint, AsyncSession):
            session_param = param.name
        elif hint is Context:
            context_param = param.name
        else:
            params.append(param)
    args_sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return session_param, context_param, args_sig, None
    fields: list[tuple[Any, ...]] = []
    for param in params:
        hint = hints.get(param.name, Any)
        try:
            msgspec.inspect.type_info(hint)
        except Exception:  # a type msgspec cannot check: accept any JSON value
            hint = Any
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint, param.default))
    # Required fields must precede defaulted ones in a Struct; kw_only lifts that rule.
    types = msgspec.defstruct(f"{getattr(fn, '__name__', 'job')}_args", fields, kw_only=True) if fields else None
    return session_param, context_param, args_sig, types


class App:
    """A set of jobs and the defaults they run with.

    :param name: shown in logs.
    :param broker: queue database URL; the CLI's ``--broker``/``RUNNER_BROKER`` win when serving.
    :param database: the jobs' database URL if different from the broker (exactly-once then off).
    :param routes: ``{"glob of job names": "queue"}``, checked in order, over each job's default.
    """

    def __init__(
        self,
        name: str = "runner",
        *,
        broker: str | None = None,
        database: str | None = None,
        routes: dict[str, str] | None = None,
        default_queue: str = "default",
        max_payload: int = 1 << 20,
    ) -> None:
        self.name = name
        self.broker = check_url(broker) if broker else None
        self.database = check_url(database, "database") if database else None
        self.routes = dict(routes or {})
        self.default_queue = default_queue
        self.max_payload = max_payload
        self.jobs: dict[str, JobDef[Any, Any]] = {}
        self.lifespans: list[Lifespan] = []
        self.schedules: list[Any] = []  # Periodic entries (scheduler.py)
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<App {self.name} jobs={len(self.jobs)}>"

    def configure(
        self, *, broker: str | None = None, database: str | None = None, max_payload: int | None = None
    ) -> None:
        """Point producers at a database; drops the client so the next enqueue reconnects."""
        if broker is not None:
            self.broker = check_url(broker)
        if database is not None:
            self.database = check_url(database, "database")
        if max_payload is not None:
            self.max_payload = max_payload
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from .client import Client

            self._client = Client(self)
        return self._client

    def job(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: Sequence[type[BaseException]] = (Exception,),
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        jitter: bool = True,
        timeout: float | None = None,
        hard_timeout: float | None = None,
        expires: float | timedelta | None = None,
        ignore_result: bool = False,
    ) -> Any:
        """Register ``fn`` as a job. Usable bare (``@app.job``) or with options.

        :param retries: extra attempts after the first, for exceptions in ``retry_on``.
        :param timeout: soft limit in seconds: the job is cancelled, its session rolled back.
        :param hard_timeout: the supervisor kills the worker past this (for code that ignores
            cancellation); the job is then retried or failed by its policy.
        """

        def register(func: Callable[..., Any]) -> JobDef[Any, Any]:
            job_name = name or f"{func.__module__}.{func.__qualname__}"
            if job_name in self.jobs and self.jobs[job_name].fn is not func:
                raise ConfigError(f"two jobs are named {job_name!r}; give one of them name=...")
            definition: JobDef[Any, Any] = JobDef(
                self,
                func,
                name=job_name,
                queue=queue or self.route(job_name),
                priority=priority,
                retries=retries,
                retry_on=retry_on,
                backoff=Backoff(backoff, backoff_max, jitter),
                timeout=timeout,
                hard_timeout=hard_timeout,
                expires=expires,
                ignore_result=ignore_result,
            )
            self.jobs[job_name] = definition
            return definition

        return register(fn) if fn is not None else register

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        missed: str = "once",
        **options: Any,
    ) -> Callable[[Any], Any]:
        """Run a job on a schedule: ``cron="0 3 * * *"`` in ``tz``, or ``every=`` seconds.

        Stack it on ``@app.job`` (or on a plain function, which it registers). Every ``runner
        serve`` runs the scheduler; each fire time is enqueued once (see scheduler.py).
        ``missed="once"`` runs one catch-up after downtime, ``"skip"`` drops missed times.
        ``options`` are per-call options (queue, priority, expires, max_attempts).
        """
        from .scheduler import Periodic, parse_schedule

        schedule = parse_schedule(cron, every, tz)

        def register(target: Any) -> Any:
            job = target if isinstance(target, JobDef) else self.job(target)
            entry_name = name or job.name
            if any(p.name == entry_name for p in self.schedules):
                raise ConfigError(f"two periodic entries are named {entry_name!r}; give one of them name=...")
            self.schedules.append(
                Periodic(entry_name, job, schedule, tuple(args), dict(kwargs or {}), missed, dict(options))  # type: ignore[arg-type]
            )
            return job

        return register

    def route(self, job_name: str) -> str:
        for pattern, queue in self.routes.items():
            if fnmatch.fnmatchcase(job_name, pattern):
                return queue
        return self.default_queue

    def get(self, name: str) -> JobDef[Any, Any]:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "(none)"
            raise UnknownJob(f"unknown job {name!r}; registered jobs: {known}") from None

    def lifespan(self, factory: Lifespan) -> Lifespan:
        """Register an async context manager entered once per worker process, inside its loop,
        before the first job (build clients, warm caches) and exited after the last."""
        self.lifespans.append(factory)
        return factory

    def on_startup(self, fn: Callable[[WorkerInfo], Awaitable[None]]) -> Callable[[WorkerInfo], Awaitable[None]]:
        @contextlib.asynccontextmanager
        async def hook(info: WorkerInfo) -> AsyncIterator[None]:
            await fn(info)
            yield

        self.lifespans.append(hook)
        return fn

    def on_shutdown(self, fn: Callable[[WorkerInfo], Awaitable[None]]) -> Callable[[WorkerInfo], Awaitable[None]]:
        @contextlib.asynccontextmanager
        async def hook(info: WorkerInfo) -> AsyncIterator[None]:
            yield
            await fn(info)

        self.lifespans.append(hook)
        return fn

    # -- bulk enqueue --------------------------------------------------------------------------

    def defer_many(self, calls: Iterable[Call], *, session: AsyncSession | None = None) -> list[Any]:
        return self.client.defer_many(list(calls))

    async def defer_many_async(self, calls: Iterable[Call], *, session: AsyncSession | None = None) -> list[Any]:
        return await self.client.defer_many_async(list(calls), session=session)

    def handle(self, job_id: int) -> Any:
        """A handle for an existing job id (to wait on it, read its state, cancel it)."""
        from .client import JobHandle

        return JobHandle(self, int(job_id))
