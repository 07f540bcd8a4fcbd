"""Run one claimed job: decode -> resolve -> bind -> run (scoped session, limits) -> outcome.

Every path ends in an ``Outcome`` (or, for exactly-once database jobs, in a committed row), so a
bad row, a missing job or a crashing job leaves a visible state and the worker goes on. The one
exception that escapes is the worker's own cancellation (shutdown): the worker then gives the
attempt back with a single statement.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
import traceback as tb
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .app import App, Context, JobDef
from .db_unavailable import database_unavailable
from .errors import (
    ArgumentsError,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    Retry,
    SerializationError,
    UnknownJob,
    describe_exception,
)
from .store import Outcome, Store, error_json
from .wire import Claimed, Envelope, State, decode_json, encode_json

__all__ = ["Executor", "Running"]

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A job in flight: what the worker needs to cancel it or to tell the supervisor about it."""

    claimed: Claimed
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str | None = None  # "cancelled" or "timeout" once the worker asked it to stop
    thread_id: int | None = None  # sync jobs: the thread to interrupt
    session: AsyncSession | None = None  # the attempt's session, once opened


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(tb.format_exception(exc))
    except Exception:
        return ""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    """Interrupt a sync job's thread with ``exc_type`` at its next bytecode (how a soft time
    limit or a cancel reaches sync code, as Celery's SoftTimeLimitExceeded does)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class Executor:
    """Turns a ``Claimed`` row into an ``Outcome``; holds nothing per job between calls."""

    def __init__(
        self,
        app: App,
        store: Store,
        sessions: async_sessionmaker[AsyncSession] | None,
        *,
        exactly_once: bool,
        max_payload: int,
        max_result: int,
        thread_limiter: anyio.CapacityLimiter,
        timeout_exception: type[BaseException] = JobTimeout,
    ) -> None:
        self.app = app
        self.store = store
        self.sessions = sessions
        self.exactly_once = exactly_once
        self.max_payload = max_payload
        self.max_result = max_result
        self.thread_limiter = thread_limiter
        self.timeout_exception = timeout_exception

    async def run(self, running: Running) -> Outcome | None:
        """Run the attempt; ``None`` means the outcome is already committed (exactly-once)."""
        claimed = running.claimed
        now = time.time()
        if claimed.expires_at is not None and now > claimed.expires_at:
            return self._final(claimed, State.EXPIRED, error=error_json("Expired", f"expired at {claimed.expires_at:.3f}, before it started"))
        try:
            job = self.app.get(claimed.name)
            args, kwargs, meta = self._decode(claimed)
            bound = job.bind(args, kwargs)
            timeout = meta.get("timeout", job.timeout)
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
                raise SerializationError(f"meta column: timeout must be a number of seconds or null, got {timeout!r}")
        except (UnknownJob, ArgumentsError, SerializationError, PayloadTooLarge) as exc:
            return self._final(claimed, State.FAILED, error=error_json(type(exc).__name__, str(exc), attempt=claimed.attempt))
        max_attempts = claimed.max_attempts or job.max_attempts
        injected: dict[str, Any] = {}
        if job.context_param:
            injected[job.context_param] = Context(
                claimed.id, job.name, claimed.attempt, max_attempts, claimed.queue,
                claimed.parent_id, claimed.root_id, meta, functools.partial(self._progress, running),
            )  # fmt: skip
        try:
            with running.scope:
                if timeout:
                    running.scope.deadline = anyio.current_time() + float(timeout)
                if job.session_param:
                    return await self._run_with_session(running, job, bound, injected, meta)
                value = await self._invoke(running, job, bound, injected)
            if running.scope.cancelled_caught:
                return self._stopped(running, job, max_attempts, timeout, meta)
            return self._success(claimed, job, value, meta)
        except Retry as exc:
            return self._retry_or_fail(claimed, job, max_attempts, exc, meta, delay=exc.delay, force=True)
        except (JobTimeout, self.timeout_exception) as exc:  # raised into a sync thread, or by the job
            if running.stop_reason == "cancelled":
                return self._final(claimed, State.CANCELLED, error=error_json("Cancelled", "cancelled while running", attempt=claimed.attempt))
            return self._retry_or_fail(claimed, job, max_attempts, exc, meta)
        except LeaseLost:
            log.warning("job %s lost its lease; its transaction was rolled back", claimed.id)
            return None
        except (DBAPIError, OSError) as exc:
            if database_unavailable(exc):
                # The database went away under the job (restart, failover): not the job's fault,
                # so the attempt is given back and the job runs again once the database answers.
                log.warning("job %s: database unavailable (%s); re-queued", claimed.id, type(getattr(exc, "orig", None) or exc).__name__)
                error = error_json("DatabaseUnavailable", describe_exception(exc), attempt=claimed.attempt)
                return Outcome(claimed.id, claimed.lease_token, State.QUEUED, error=error, run_at=time.time() + 1.0, attempt_delta=-1)
            return self._retry_or_fail(claimed, job, max_attempts, exc, meta)
        except Exception as exc:
            return self._retry_or_fail(claimed, job, max_attempts, exc, meta)

    # -- steps ----------------------------------------------------------------------------------

    def _decode(self, claimed: Claimed) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        size = len(claimed.args or "") + len(claimed.kwargs or "")
        if size > self.max_payload:
            raise PayloadTooLarge(f"arguments are {size:,} bytes of JSON; the limit is {self.max_payload:,} (--max-payload)")
        args = decode_json(claimed.args or "[]", "args column")
        kwargs = decode_json(claimed.kwargs or "{}", "kwargs column")
        meta = decode_json(claimed.meta, "meta column") if claimed.meta else {}
        if not isinstance(args, list):
            raise SerializationError(f"args column must be a JSON array, got {type(args).__name__}")
        if not isinstance(kwargs, dict):
            raise SerializationError(f"kwargs column must be a JSON object, got {type(kwargs).__name__}")
        if not isinstance(meta, dict):
            meta = {}
        return args, kwargs, meta

    async def _invoke(self, running: Running, job: JobDef[Any, Any], bound: Any, injected: dict[str, Any]) -> Any:
        args, kwargs = _call_arguments(bound, injected)
        if job.is_async:
            return await job.fn(*args, **kwargs)
        return await self._run_in_thread(running, functools.partial(job.fn, *args, **kwargs))

    async def _run_in_thread(self, running: Running, fn: Callable[[], Any]) -> Any:
        def call() -> Any:
            running.thread_id = threading.get_ident()
            try:
                return fn()
            finally:
                running.thread_id = None

        # The thread cannot be cancelled; a stop request interrupts it instead (see _watch_thread),
        # and we wait for it to return so that a slot never holds two jobs.
        failure: BaseException | None = None
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_thread, running)
                try:
                    value = await anyio.to_thread.run_sync(call, limiter=self.thread_limiter)
                except BaseException as exc:  # re-raised below, outside the task group
                    failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return value

    async def _watch_thread(self, running: Running) -> None:
        """Turn the job scope's deadline or cancel into an exception inside the sync job's thread."""
        while True:
            deadline = running.scope.deadline
            if running.stop_reason is None and deadline != float("inf") and anyio.current_time() >= deadline:
                running.stop_reason = "timeout"
            if running.stop_reason is not None and running.thread_id is not None:
                exc = self.timeout_exception if running.stop_reason == "timeout" else JobTimeout
                _raise_in_thread(running.thread_id, exc)
                await anyio.sleep(0.5)  # again, if the first landed inside a C call that swallowed it
                continue
            await anyio.sleep(0.02)

    async def _run_with_session(
        self, running: Running, job: JobDef[Any, Any], bound: Any, injected: dict[str, Any], meta: dict[str, Any]
    ) -> Outcome | None:
        assert self.sessions is not None and job.session_param is not None
        claimed = running.claimed
        session = running.session = self.sessions()
        try:
            value = await self._invoke(running, job, bound, {**injected, job.session_param: session})
            outcome = self._success(claimed, job, value, meta)
            if self.exactly_once:
                # The ack rides in the job's own transaction: business writes and completion
                # commit together or not at all, and a stale attempt (token moved on) commits nothing.
                conn = await session.connection()
                if await self.store.finish_in(conn, [outcome]) != 1:
                    raise LeaseLost(f"job {claimed.id} attempt {claimed.attempt}")
            if outcome.state == State.FAILED:  # result could not be stored: do not keep the writes
                await _shielded(session.rollback)
                return outcome
            await session.commit()
            return None if self.exactly_once else outcome
        except BaseException:
            await _shielded(session.rollback)
            raise
        finally:
            await _shielded(session.close)

    def _success(self, claimed: Claimed, job: JobDef[Any, Any], value: Any, meta: dict[str, Any]) -> Outcome:
        result = None
        if not job.ignore_result and value is not None:
            try:
                result = encode_json(value, f"the result of {job.name}")
            except SerializationError as exc:
                return self._final(claimed, State.FAILED, error=error_json("SerializationError", str(exc), attempt=claimed.attempt))
            if len(result) > self.max_result:
                message = f"the result of {job.name} is {len(result):,} bytes of JSON; the limit is {self.max_result:,} (--max-result)"
                return self._final(claimed, State.FAILED, error=error_json("ResultTooLarge", message, attempt=claimed.attempt))
        try:
            children = _children(claimed, meta.get("on_success"), value, "on_success", self.max_payload)
        except (SerializationError, PayloadTooLarge) as exc:
            message = f"the job returned, but its on_success chained jobs cannot be enqueued: {exc}"
            return self._final(claimed, State.FAILED, error=error_json(type(exc).__name__, message, attempt=claimed.attempt))
        outcome = self._final(claimed, State.SUCCEEDED, result=result)
        return msgspec.structs.replace(outcome, children=children) if children else outcome

    def _stopped(self, running: Running, job: JobDef[Any, Any], max_attempts: int, timeout: Any, meta: dict[str, Any]) -> Outcome:
        claimed = running.claimed
        if running.stop_reason == "cancelled":
            return self._final(claimed, State.CANCELLED, error=error_json("Cancelled", "cancelled while running", attempt=claimed.attempt))
        exc = JobTimeout(f"soft time limit of {timeout}s exceeded")
        return self._retry_or_fail(claimed, job, max_attempts, exc, meta)

    def _retry_or_fail(
        self,
        claimed: Claimed,
        job: JobDef[Any, Any],
        max_attempts: int,
        exc: BaseException,
        meta: dict[str, Any],
        *,
        delay: float | None = None,
        force: bool = False,
    ) -> Outcome:
        message = describe_exception(exc)
        error = error_json(_type_name(exc), message, _traceback(exc), attempt=claimed.attempt)
        retryable = force or isinstance(exc, job.retry_on)
        if retryable and claimed.attempt < max_attempts:
            wait = job.backoff.delay(claimed.attempt) if delay is None else max(0.0, float(delay))
            log.info("job %s %s attempt %d failed (%s: %s); retry in %.1fs", claimed.id, job.name, claimed.attempt, _type_name(exc), message, wait)
            return Outcome(claimed.id, claimed.lease_token, State.QUEUED, error=error, run_at=time.time() + wait)
        log.warning("job %s %s failed on attempt %d/%d: %s: %s", claimed.id, job.name, claimed.attempt, max_attempts, _type_name(exc), message)
        try:
            children = _children(claimed, meta.get("on_failure"), claimed.id, "on_failure", self.max_payload)
        except (SerializationError, PayloadTooLarge) as bad:
            children = ()
            message = f"{message} (its on_failure chained jobs cannot be enqueued: {bad})"
            error = error_json(_type_name(exc), message, _traceback(exc), attempt=claimed.attempt)
        outcome = self._final(claimed, State.FAILED, error=error)
        return msgspec.structs.replace(outcome, children=children) if children else outcome

    def _final(self, claimed: Claimed, state: str, *, result: str | None = None, error: str | None = None) -> Outcome:
        return Outcome(claimed.id, claimed.lease_token, state, result=result, error=error, finished_at=time.time())

    async def _progress(self, running: Running, value: Any) -> None:
        claimed, text = running.claimed, encode_json(value, "progress")
        if running.session is not None and self.exactly_once and self.store.backend == "sqlite":
            # The job's transaction holds SQLite's one write lock: a second connection would wait
            # on ourselves. Progress then rides in the job's transaction (visible at commit).
            await self.store.set_progress(claimed.id, claimed.lease_token, text, conn=await running.session.connection())
            return
        await self.store.set_progress(claimed.id, claimed.lease_token, text)


_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class _ChainSpec(msgspec.Struct):
    """One chained job as ``meta.on_success`` / ``meta.on_failure`` holds it. A row's meta may
    come from any producer (a raw INSERT), so it is checked here, before the outcome is written:
    a child that cannot be inserted would otherwise make its parent's outcome unwritable."""

    name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    priority: _Int32 | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None
    key: str | None = None
    meta: dict[str, Any] | None = None
    immutable: bool = False


def _children(claimed: Claimed, specs: Any, value: Any, which: str, max_payload: int) -> tuple[Envelope, ...]:
    """Envelopes for chained jobs (``meta.on_success`` / ``meta.on_failure``): each gets ``value``
    (the parent's result, or for failures the parent's id) prepended to its args unless it is
    ``immutable``, and the parent/root ids that tie a workflow together. Raises
    ``SerializationError`` / ``PayloadTooLarge`` naming the spec when one cannot be enqueued."""
    if not specs:
        return ()
    if not isinstance(specs, list):
        raise SerializationError(f"meta.{which} must be a list of chained jobs, got {type(specs).__name__}")
    children = []
    for i, raw in enumerate(specs):
        where = f"meta.{which}[{i}]"
        try:
            spec = msgspec.convert(raw, _ChainSpec)
        except msgspec.ValidationError as exc:
            raise SerializationError(f"{where} is not a valid chained job: {exc}") from None
        for field_name in ("name", "queue", "key"):
            if "\x00" in (getattr(spec, field_name) or ""):
                raise SerializationError(f"{where}: {field_name} contains a NUL character")
        args = list(spec.args)
        if not spec.immutable:
            args.insert(0, value)
        size = len(encode_json(args, f"arguments of chained job {spec.name} ({where})"))
        size += len(encode_json(spec.kwargs, f"keyword arguments of chained job {spec.name} ({where})"))
        if size > max_payload:
            raise PayloadTooLarge(
                f"arguments of chained job {spec.name} ({where}) would be {size:,} bytes of JSON; "
                f"the limit is {max_payload:,} (--max-payload)"
            )
        if spec.meta is not None:
            encode_json(spec.meta, f"meta of chained job {spec.name} ({where})")
        children.append(
            Envelope(
                name=spec.name,
                args=args,
                kwargs=spec.kwargs,
                queue=spec.queue or claimed.queue,
                priority=spec.priority or 0,
                max_attempts=spec.max_attempts,
                key=spec.key,
                parent_id=claimed.id,
                root_id=claimed.root_id or claimed.id,
                meta=spec.meta,
            )
        )
    return tuple(children)


def _call_arguments(bound: Any, injected: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for the real call. JSON arguments go by keyword where
    the signature allows, so injected parameters (session, context) can sit anywhere in it."""
    params = bound.signature.parameters
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return list(bound.args), {**bound.kwargs, **injected}
    args: list[Any] = []
    kwargs: dict[str, Any] = dict(injected)
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is kind.POSITIONAL_ONLY:
            args.append(value)
        elif kind is kind.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return args, kwargs


async def _shielded(fn: Callable[[], Awaitable[Any]]) -> None:
    with anyio.CancelScope(shield=True):
        await fn()
