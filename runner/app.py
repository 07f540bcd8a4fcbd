"""``App``: the registry of jobs, their policies, routing, and per-process lifespan hooks.

An App is inert data: building one, or decorating a job, touches no loop, engine or signal, so a
module that defines jobs can be imported by a producer, the supervisor (before forking) and every
worker alike. Enqueueing goes through ``client.py`` (which knows nothing of apps); running a job
lives in ``run_job.py``; what happens to an attempt, in ``decide.py``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import math
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from .client import Client, GroupHandle, JobHandle
from .errors import ArgumentsError, ConfigError, UnknownJob
from .gc_pause import paused_gc
from .limits import ConcurrencyLimit, RateLimit, compute_key
from .policy import INT32_MAX, Backoff, Policy
from .round_trip import check_round_trip
from .schedules import Cron, Every, Missed, parse_schedule
from .settings import check_url
from .wire import Callbacks, ChildSpec, Envelope, PlainEnvelope, amend
from .workflows import Group, check_parent_failure, ids_of, plan

__all__ = ["App", "BoundOptions", "Call", "Context", "JobDef", "JobOptions", "Lifespan", "Periodic", "WorkerInfo"]

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

    __slots__ = ("_progress", "attempt", "job_id", "max_attempts", "meta", "name", "parent_id", "queue", "root_id", "run_at")

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
        *,
        run_at: float = 0.0,
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.queue = queue
        self.parent_id = parent_id
        self.root_id = root_id
        self.meta = meta
        self.run_at = run_at  # when it was due (epoch seconds): its ETA, retry time or periodic fire time
        self._progress = progress

    async def progress(self, value: Any) -> None:
        """Record a small JSON value that producers and ``runner jobs show`` can read at once."""
        if self._progress is not None:
            await self._progress(value)


@dataclass(frozen=True)
class JobOptions:
    """Per-call options; ``None`` means "the job's default". Checked by ``Call.envelope``."""

    queue: str | None = None
    priority: int | None = None
    countdown: float | timedelta | None = None
    eta: datetime | float | None = None
    expires: float | datetime | timedelta | None = None
    key: str | None = None
    key_ttl: float | timedelta | None = None  # the key also matches a job that succeeded this recently
    max_attempts: int | None = None
    timeout: float | None = None  # soft limit for this call (the job's own otherwise)
    hard_timeout: float | None = None  # hard limit for this call: the worker is killed past it
    concurrency_key: str | None = None  # this call's concurrency key (the job's ConcurrencyLimit applies)
    rate_key: str | None = None  # this call's rate key (the job's RateLimit applies)
    parent_id: int | None = None
    root_id: int | None = None
    meta: dict[str, Any] | None = None
    session: AsyncSession | None = None  # enqueue inside the caller's transaction
    on_success: Any = None  # a call (or workflow step) run after this one succeeds, its result first
    on_failure: Call | ChildSpec | Sequence[Call | ChildSpec] | None = None  # enqueued when it fails for good, its id first
    immutable: bool = False  # when this call follows another: do not prepend the parent's result
    depends_on: Sequence[Any] | None = None  # JobHandles or ids: start only when all of them have finished
    on_parent_failure: str | None = None  # when a parent fails: "fail" (default), "cancel" or "run"
    with_results: bool = False  # with depends_on: prepend the list of the parents' results


NO_OPTIONS: Final = JobOptions()  # a Call made without options: Call.envelope's fast path


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(JobOptions))


def _bad(option: str, value: Any, accepted: str) -> ArgumentsError:
    return ArgumentsError(f"option {option}={value!r} is not valid; accepted: {accepted}")


def _number(option: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(option, value, "a finite number of seconds" + ("" if not strict else " greater than 0"))
    if value < minimum or (strict and value <= minimum):
        raise _bad(option, value, f"a number of seconds {'greater than' if strict else 'of at least'} {minimum:g}")
    return float(value)


def _instant(option: str, value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise _bad(option, value, "a timezone-aware datetime (e.g. datetime.now(UTC) + ...), or epoch seconds")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(option, value, "a timezone-aware datetime, or epoch seconds (a finite number)")
    return float(value)


def _text(option: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _bad(option, value, "a non-empty str without NUL characters")
    return value


def _int(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(option, value, f"an int from {low} to {high}")
    return value


class Call(msgspec.Struct, frozen=True, gc=False):
    """A job plus its arguments and options, ready to become an Envelope (one row). A Struct,
    not a frozen dataclass: a bulk enqueue makes one per row, and a frozen dataclass's
    ``__init__`` (a ``object.__setattr__`` per field) cost a microsecond of the row's budget.
    ``gc=False``: tens of thousands made in a loop otherwise set off collections that cost as
    much again; a Call cannot be in a reference cycle unless its kwargs dict is later made to
    hold the Call itself."""

    job: JobDef[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: JobOptions = NO_OPTIONS

    def envelope(self, now: float, *, check_arguments: bool = True) -> Envelope:
        """The row this call writes. Every option is checked here, the same way for every
        database, so a bad one is an ``ArgumentsError`` naming it and what is accepted."""
        job, opts = self.job, self.options
        if opts is NO_OPTIONS and job.plain:
            return self._plain_envelope(check_arguments)
        check_arguments = check_arguments and not (opts.depends_on and opts.with_results)  # results come first, later
        bound = job.bind(self.args, self.kwargs) if check_arguments or job.keyed else None
        if bound is not None and check_arguments and job.faithful_arguments:
            check_round_trip(job.name, self.args, self.kwargs, bound.arguments, job.bind)
        run_at = None
        if opts.eta is not None:
            run_at = _instant("eta", opts.eta)
        if opts.countdown is not None:
            run_at = now + _number("countdown", opts.countdown)
        expires = opts.expires if opts.expires is not None else job.expires
        expires_at = None
        if isinstance(expires, datetime):
            expires_at = _instant("expires", expires)
        elif expires is not None:
            expires_at = now + _number("expires", expires, strict=True)
        return Envelope(
            name=job.name,
            args=list(self.args),
            kwargs=self.kwargs,
            queue=job.queue if opts.queue is None else _text("queue", opts.queue),
            priority=job.priority if opts.priority is None else _int("priority", opts.priority, -(2**31), INT32_MAX),
            max_attempts=None if opts.max_attempts is None else _int("max_attempts", opts.max_attempts, 1, INT32_MAX),
            run_at=run_at,
            expires_at=expires_at,
            key=None if opts.key is None else _text("key", opts.key),
            key_ttl=None if opts.key_ttl is None else _number("key_ttl", opts.key_ttl),
            timeout=None if opts.timeout is None else _number("timeout", opts.timeout, strict=True),
            hard_timeout=None if opts.hard_timeout is None else _number("hard_timeout", opts.hard_timeout, strict=True),
            **job.limit_columns(bound.arguments if bound is not None else {}, opts),
            parent_id=None if opts.parent_id is None else _int("parent_id", opts.parent_id, -(2**63) + 1, 2**63 - 1),
            root_id=None if opts.root_id is None else _int("root_id", opts.root_id, -(2**63) + 1, 2**63 - 1),
            meta=self._meta(),
            callbacks=self._callbacks(),
            **self._dependencies(),
        )

    def _plain_envelope(self, check_arguments: bool) -> Envelope:
        """No options, and a job with no limits or expiry: only the arguments to check. (The
        bulk path's common case: this is a third of what ``envelope`` costs otherwise.)"""
        job = self.job
        if check_arguments and (self.args or self.kwargs or not job._takes_nothing):  # else: nothing to check
            bound = job.bind(self.args, self.kwargs)
            if job.faithful_arguments:
                check_round_trip(job.name, self.args, self.kwargs, bound.arguments, job.bind)
        return PlainEnvelope(name=job.name, args=list(self.args), kwargs=self.kwargs, queue=job.queue, priority=job.priority)

    def _dependencies(self) -> dict[str, Any]:
        opts = self.options
        if opts.depends_on is None:
            if opts.with_results or opts.on_parent_failure is not None:
                raise _bad(
                    "with_results" if opts.with_results else "on_parent_failure",
                    opts.with_results or opts.on_parent_failure,
                    "only with depends_on=[...]",
                )
            return {}
        if isinstance(opts.depends_on, (str, bytes)) or not isinstance(opts.depends_on, Sequence) or not opts.depends_on:
            raise _bad("depends_on", opts.depends_on, "a non-empty list of JobHandles or job ids")
        return {
            "after": ids_of(opts.depends_on),
            "on_parent_failure": check_parent_failure(opts.on_parent_failure or "fail"),
            "with_results": "list" if opts.with_results else None,
        }

    def _meta(self) -> dict[str, Any] | None:
        meta = self.options.meta
        if meta is not None and not isinstance(meta, dict):
            raise _bad("meta", meta, "a dict of JSON values, or None")
        return meta

    def _callbacks(self) -> Callbacks | None:
        failure = _specs("on_failure", self.options.on_failure)
        return Callbacks(on_failure=failure) if failure else None

    def chained(self) -> ChildSpec:
        """This call as an errback in its parent's row. Its arguments are checked when it runs,
        since the parent's id is prepended to them then."""
        env = self.envelope(0.0, check_arguments=False)
        return ChildSpec(
            name=env.name, args=env.args, kwargs=env.kwargs, queue=env.queue, priority=env.priority,
            max_attempts=env.max_attempts, key=env.key, timeout=env.timeout, hard_timeout=env.hard_timeout,
            meta=env.meta, immutable=bool(self.options.immutable),
        )  # fmt: skip


def _shifted(envelopes: list[Envelope], offset: int) -> list[Envelope]:
    """A plan's envelopes placed at ``offset`` in a larger batch: their positions move too."""
    if not offset:
        return envelopes
    return [amend(e, after_batch=tuple(i + offset for i in e.after_batch)) if e.after_batch else e for e in envelopes]


def _specs(option: str, value: Any) -> tuple[ChildSpec, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, (Call, ChildSpec)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, (Call, ChildSpec)) for i in items):
        raise _bad(option, value, "a job.call(...) (or job.options(...).call(...)), a ChildSpec, or a list of them")
    specs = tuple(i.chained() if isinstance(i, Call) else i for i in items)
    try:  # a hand-built ChildSpec is checked as strictly as a worker will decode it
        return _SPECS.decode(_SPEC_ENCODER.encode(specs))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
        raise _bad(option, value, f"chained jobs that fit ChildSpec ({exc})") from None


_SPECS = msgspec.json.Decoder(tuple[ChildSpec, ...])
_SPEC_ENCODER = msgspec.json.Encoder()


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
        policy: Policy = Policy(),
        timeout: float | None = None,
        hard_timeout: float | None = None,
        expires: float | timedelta | None = None,
        concurrency: ConcurrencyLimit | None = None,
        rate: RateLimit | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.rate = rate
        self.keyed = callable(getattr(concurrency, "key", None)) or callable(getattr(rate, "key", None))
        # Refuse arguments that JSON would change on the way (round_trip.py). The Celery shim turns
        # it off: Celery projects pass datetimes to unannotated tasks and expect what kombu gives.
        self.faithful_arguments = True
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.policy = policy
        self.timeout = timeout
        self.hard_timeout = hard_timeout
        self.expires = expires
        self.is_async = inspect.iscoroutinefunction(fn)
        self.session_param, self.context_param, self.signature, self._types = _inspect(fn)
        self.injected = frozenset(p for p in (self.session_param, self.context_param) if p)
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
        return self.fn(*args, **kwargs)

    @property
    def max_attempts(self) -> int:
        return self.policy.max_attempts

    @property
    def plain(self) -> bool:
        """No limits and no expiry: a call without options writes name, arguments, queue and
        priority, nothing else."""
        return self.concurrency is None and self.rate is None and self.expires is None

    def limit_columns(self, arguments: Mapping[str, Any], opts: JobOptions) -> dict[str, Any]:
        """The flow-control columns of one call (limits.py): keys computed from its arguments."""
        columns: dict[str, Any] = {}
        if opts.concurrency_key is not None and self.concurrency is None:
            raise _bad(
                "concurrency_key", opts.concurrency_key, "a key for a job registered with concurrency=ConcurrencyLimit(...)"
            )
        if opts.rate_key is not None and self.rate is None:
            raise _bad("rate_key", opts.rate_key, "a key for a job registered with rate=RateLimit(...)")
        if self.concurrency is not None:
            key = (
                _text("concurrency_key", opts.concurrency_key)
                if opts.concurrency_key is not None
                else compute_key(self.concurrency.key, self.name, arguments, "the concurrency")
            )
            columns.update(concurrency_key=key, concurrency_limit=self.concurrency.limit)
        if self.rate is not None:
            key = (
                _text("rate_key", opts.rate_key)
                if opts.rate_key is not None
                else compute_key(self.rate.key, self.name, arguments, "the rate")
            )
            columns.update(rate_key=key, rate_limit=self.rate.starts, rate_period=self.rate.period)
        return columns

    # -- arguments -----------------------------------------------------------------------------

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise ArgumentsError if the call would not bind, before the row is written."""
        self.bind(args, kwargs)

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        if not args and not kwargs and self._takes_nothing:
            return self._empty_bound  # type: ignore[return-value]
        taken = self.injected.intersection(kwargs)
        if taken:
            raise ArgumentsError(
                f"arguments do not match {self.name}{self.signature}: keyword argument {sorted(taken)[0]!r} names a "
                "parameter runner injects (the session or the context); it cannot be passed as an argument"
            )
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"arguments do not match {self.name}{self.signature}: {exc}") from None
        if self._types is not None:
            try:
                converted: Any = msgspec.convert(bound.arguments, self._types, str_keys=True)
            except msgspec.ValidationError as exc:
                raise ArgumentsError(f"arguments do not match {self.name}{self.signature}: {exc}") from None
            for pname in bound.arguments:
                bound.arguments[pname] = getattr(converted, pname)
        return bound

    # -- enqueueing ------------------------------------------------------------------------------

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        return Call(self, tuple(args), dict(kwargs))

    def options(self, **options: Any) -> BoundOptions[P, R]:
        """Per-call options: queue, priority, countdown, eta, expires, key, key_ttl, max_attempts,
        timeout, hard_timeout, meta, parent_id, root_id, session (enqueue in the caller's
        transaction), on_success / on_failure (calls to enqueue after this one), immutable."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ArgumentsError(f"unknown option {unknown[0]!r} (of {sorted(options)}); accepted: {', '.join(OPTION_NAMES)}")
        return BoundOptions(self, JobOptions(**options))

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue from sync code."""
        return self.app.defer(self.call(*args, **kwargs))

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Enqueue from async code."""
        return await self.app.defer_async(self.call(*args, **kwargs))


class BoundOptions(Generic[P, R]):
    """``job.options(...)``: the same enqueue methods, with options applied."""

    def __init__(self, job: JobDef[P, R], options: JobOptions) -> None:
        self.job = job
        self._options = options

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        return Call(self.job, tuple(args), dict(kwargs), self._options)

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self.job.app.defer(self.call(*args, **kwargs))

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return await self.job.app.defer_async(self.call(*args, **kwargs))


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
    struct_fields: list[tuple[Any, ...]] = []
    for param in params:
        hint = hints.get(param.name, Any)
        try:
            msgspec.inspect.type_info(hint)
        except Exception:  # a type msgspec cannot check: accept any JSON value
            hint = Any
        if param.default is inspect.Parameter.empty:
            struct_fields.append((param.name, hint))
        else:
            struct_fields.append((param.name, hint, param.default))
    # Required fields must precede defaulted ones in a Struct; kw_only lifts that rule.
    types = msgspec.defstruct(f"{getattr(fn, '__name__', 'job')}_args", struct_fields, kw_only=True) if struct_fields else None
    return session_param, context_param, args_sig, types


@dataclass(frozen=True)
class Periodic:
    """One schedule entry: which job, when, with what arguments."""

    name: str
    job: JobDef[Any, Any]
    schedule: Cron | Every
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    missed: Missed = "once"
    options: dict[str, Any] = field(default_factory=dict)  # queue, priority, expires, max_attempts

    def __post_init__(self) -> None:
        if self.missed not in ("once", "skip"):
            raise ConfigError(f"periodic {self.name}: missed={self.missed!r}; accepted: 'once' or 'skip'")
        self.job.check_arguments(self.args, self.kwargs)

    def call(self, fire_at: float) -> Call:
        """The call for one fire time: due at that instant (``ctx.run_at`` in the job)."""
        return self.job.options(**{**self.options, "eta": fire_at}).call(*self.args, **self.kwargs)


class App:
    """A set of jobs and the defaults they run with.

    :param name: shown in logs.
    :param broker: queue database URL; ``RUNNER_BROKER`` (and for ``runner serve``, ``--broker``)
        wins over it; ``configure(broker=...)`` wins over both.
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
        self.schedules: list[Periodic] = []
        self.configured_broker: str | None = None
        self._client: Client | None = None

    def __repr__(self) -> str:
        return f"<App {self.name} jobs={len(self.jobs)}>"

    def configure(self, *, broker: str | None = None, database: str | None = None, max_payload: int | None = None) -> None:
        """Point producers at a database (over ``RUNNER_BROKER`` and the constructor's); drops
        the client so the next enqueue reconnects."""
        if broker is not None:
            self.configured_broker = check_url(broker)
        if database is not None:
            self.database = check_url(database, "database")
        if max_payload is not None:
            self.max_payload = max_payload
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> Client:
        """The producer for this app's queue (one per process; cheap until first used)."""
        if self._client is None:
            self._client = Client(configured=self.configured_broker, default=self.broker, max_payload=self.max_payload)
        return self._client

    @overload
    def job(
        self,
        fn: Callable[..., Any],
        /,
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
        concurrency: ConcurrencyLimit | int | None = None,
        rate: RateLimit | str | None = None,
    ) -> JobDef[..., Any]: ...

    @overload
    def job(
        self,
        fn: None = None,
        /,
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
        concurrency: ConcurrencyLimit | int | None = None,
        rate: RateLimit | str | None = None,
    ) -> Callable[[Callable[..., Any]], JobDef[..., Any]]: ...

    def job(
        self,
        fn: Callable[..., Any] | None = None,
        /,
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
        concurrency: ConcurrencyLimit | int | None = None,
        rate: RateLimit | str | None = None,
    ) -> JobDef[..., Any] | Callable[[Callable[..., Any]], JobDef[..., Any]]:
        """Register ``fn`` as a job. Usable bare (``@app.job``) or with options.

        :param retries: extra attempts after the first, for exceptions in ``retry_on``.
        :param concurrency: at most this many running at once, on every host (an int: for the
            whole job; ``ConcurrencyLimit(limit, key=...)``: per key). See ``runner/limits.py``.
        :param rate: at most this many starts per period, on every host (``"100/m"``, or
            ``RateLimit("100/m", key=...)`` per key).
        :param timeout: soft limit in seconds: the job is cancelled, its session rolled back.
        :param hard_timeout: the supervisor kills the worker past this (for code that ignores
            cancellation); the job is then retried or failed by its policy.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < INT32_MAX:
            raise ConfigError(f"retries={retries!r}: accepted: an int from 0 to {INT32_MAX - 1}")
        for what, seconds in (("timeout", timeout), ("hard_timeout", hard_timeout)):
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0):
                raise ConfigError(f"{what}={seconds!r}: accepted: a number of seconds greater than 0, or None")
        policy = Policy(
            max_attempts=retries + 1, retry_on=tuple(retry_on), backoff=Backoff(backoff, backoff_max, jitter),
            ignore_result=ignore_result,
        )  # fmt: skip
        limit: Any = (
            ConcurrencyLimit(concurrency) if isinstance(concurrency, int) and not isinstance(concurrency, bool) else concurrency
        )
        per: Any = RateLimit(rate) if isinstance(rate, (str, tuple)) else rate
        if limit is not None and not isinstance(limit, ConcurrencyLimit):
            raise ConfigError(f"concurrency={concurrency!r}: accepted: an int, or ConcurrencyLimit(limit, key=...)")
        if per is not None and not isinstance(per, RateLimit):
            raise ConfigError(f"rate={rate!r}: accepted: '100/m' and the like, or RateLimit('100/m', key=...)")

        def register(func: Callable[..., Any]) -> JobDef[Any, Any]:
            job_name = name or f"{func.__module__}.{func.__qualname__}"
            if job_name in self.jobs and self.jobs[job_name].fn is not func:
                raise ConfigError(f"two jobs are named {job_name!r}; give one of them name=...")
            definition: JobDef[Any, Any] = JobDef(
                self, func, name=job_name, queue=queue or self.route(job_name), priority=priority, policy=policy,
                timeout=timeout, hard_timeout=hard_timeout, expires=expires, concurrency=limit, rate=per,
            )  # fmt: skip
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
        schedule = parse_schedule(cron, every, tz)

        def register(target: Any) -> Any:
            job = target if isinstance(target, JobDef) else self.job(target)
            entry_name = name or job.name
            if any(p.name == entry_name for p in self.schedules):
                raise ConfigError(f"two periodic entries are named {entry_name!r}; give one of them name=...")
            job.options(**options)  # unknown options fail here, at import
            self.schedules.append(Periodic(entry_name, job, schedule, tuple(args), dict(kwargs or {}), missed, dict(options)))  # type: ignore[arg-type]
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

    def queues(self) -> tuple[str, ...]:
        """Every queue the app's jobs and routes name, the default one first."""
        named = {job.queue for job in self.jobs.values()} | set(self.routes.values())
        return (self.default_queue, *sorted(named - {self.default_queue}))

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

    # -- enqueue -----------------------------------------------------------------------------------

    def defer(self, call: Call) -> JobHandle:
        """Enqueue one call from sync code."""
        return self.defer_many([call], session=None)[0]

    async def defer_async(self, call: Call) -> JobHandle:
        """Enqueue one call from async code (in ``call.options.session``'s transaction if set)."""
        return (await self.defer_many_async([call], session=call.options.session))[0]

    def defer_many(self, calls: Iterable[Call], *, session: AsyncSession | None = None) -> list[JobHandle]:
        """Enqueue many calls in one statement from sync code. A session (an ``AsyncSession``)
        needs the async API: its transaction lives on your event loop."""
        calls = list(calls)
        if session is not None or any(c.options.session is not None for c in calls):
            raise ArgumentsError(
                "session= needs the async API (await app.defer_many_async(calls, session=...)): an AsyncSession's transaction lives on your event loop"
            )
        if len(calls) == 1 and calls[0].options.on_success is None:
            # Built here, so a database that can write on this thread (SQLite) needs no loop at all.
            return self.client.enqueue_sync([calls[0].envelope(time.time())])
        return self.client.run_sync(self.defer_many_async, calls)

    async def defer_many_async(self, calls: Iterable[Call], *, session: AsyncSession | None = None) -> list[JobHandle]:
        """Enqueue many calls in one statement; with ``session`` (or a call's own
        ``options(session=...)``), inside that transaction: the rows exist iff it commits."""
        calls = list(calls)
        if not calls:
            return []
        session = session or next((c.options.session for c in calls if c.options.session is not None), None)
        now = time.time()
        with paused_gc():
            if not any(c.options.on_success is not None for c in calls):
                envelopes = [c.envelope(now) for c in calls]
                return await self.client.enqueue(envelopes, session=session)
            # A call with on_success is a small chain: its successors wait for it in the same batch.
            envelopes, mine = [], []
            for call in calls:
                built, _ = plan(call, now)
                mine.append(len(envelopes))
                envelopes += _shifted(built.envelopes, len(envelopes))
        handles = await self.client.enqueue(envelopes, session=session)
        return [handles[i] for i in mine]

    def defer_workflow(self, step: Any) -> JobHandle | GroupHandle:
        """Enqueue a workflow (``group``, ``chain``, ``chord``, any nesting) from sync code."""
        return self.client.run_sync(self.defer_workflow_async, step)

    async def defer_workflow_async(self, step: Any, *, session: AsyncSession | None = None) -> JobHandle | GroupHandle:
        """Enqueue every step of a workflow in one transaction; returns the handle of its
        output: the last job of a chain, the callback of a chord, the members of a group."""
        built, tails = plan(step, time.time())
        handles = await self.client.enqueue(built.envelopes, session=session)
        if isinstance(step, Group) or len(tails) > 1:
            ids = [handles[i].id for i in tails]
            gid = step.group_id if isinstance(step, Group) and step.group_id else built.envelopes[tails[0]].group_id
            return GroupHandle(self.client, ids, gid)
        return handles[tails[0]]

    # -- flow control ------------------------------------------------------------------------------

    async def pause_async(self, queue: str) -> None:
        """Stop every host claiming from ``queue`` (running jobs finish); ``resume`` undoes it."""
        await self.client.set_paused(queue, True)

    async def resume_async(self, queue: str) -> None:
        await self.client.set_paused(queue, False)

    def pause(self, queue: str) -> None:
        self.client.run_sync(self.pause_async, queue)

    def resume(self, queue: str) -> None:
        self.client.run_sync(self.resume_async, queue)

    def handle(self, job_id: int) -> JobHandle:
        """A handle for an existing job id (to wait on it, read its state, cancel it)."""
        return JobHandle(self.client, int(job_id))
