"""Run one attempt in a scoped session: resolve -> bind -> run (limits, cancel) -> event ->
``decide`` -> complete.

The row was decoded once, by the driver (``rows.py``); what happens next is decided once, by
``decide``. This module turns what the job did into an event and hands the outcome to a
completer. A job that takes an ``AsyncSession`` runs inside ``session_scope``; when the queue is
its database, its completion is written in that same transaction before the commit (exactly
once). The one exception that escapes is the worker's own cancellation (shutdown): the worker
then gives the attempt back.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import random
import threading
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .app import App, Context, JobDef
from .client import worker_thread
from .complete import Completer, InTransaction
from .cost import Meter, start_meter
from .db_unavailable import database_unavailable
from .decide import (
    Cancelled,
    DatabaseAway,
    Event,
    NotRunnable,
    Outcome,
    Raised,
    RetryRequested,
    Returned,
    SoftTimeout,
    before_run,
    decide,
)
from .drivers import Driver
from .errors import ArgumentsError, JobTimeout, LeaseLost, Retry, SerializationError, describe_exception, type_name
from .policy import DEFAULT_POLICY, Policy
from .session import session_scope
from .wire import Attempt, BadRow, ErrorInfo, State, decode_json, encode_json

__all__ = ["JobRunner", "Running"]

log = logging.getLogger("runner.jobs")

MAX_TRACEBACK = 16_000  # characters of traceback kept per attempt


def new_scope() -> anyio.CancelScope:
    """A fresh cancel scope of the running backend's own type: ``anyio.CancelScope()`` looks the
    backend up on every call, a microsecond per job on the hot path."""
    global _SCOPE_TYPE
    if _SCOPE_TYPE is None:
        _SCOPE_TYPE = type(anyio.CancelScope())
    return _SCOPE_TYPE()


_SCOPE_TYPE: type[anyio.CancelScope] | None = None


@dataclass
class Running:
    """An attempt in flight: what the worker needs to cancel it or report it."""

    attempt: Attempt
    scope: anyio.CancelScope = field(default_factory=new_scope)
    stop_reason: str | None = None  # "cancelled", "timeout" or "lease lost" once asked to stop
    thread_id: int | None = None  # sync jobs: the thread to interrupt
    started: float = field(default_factory=time.monotonic)
    lane: int = -1  # the worker's job slot running it (its counter row, when completed in its transaction)
    meter: Meter | None = None  # session-taking jobs: what the attempt costs its database


class _ParentsGone(Exception):
    """A workflow step cannot get its parents' results."""


class _Unstorable(Exception):
    """The job returned, but its outcome is a failure (result not JSON, too large): roll its
    writes back and write the failure instead."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    """Interrupt a sync job's thread with ``exc_type`` at its next bytecode (how a soft time
    limit or a cancel reaches sync code, as Celery's SoftTimeLimitExceeded does)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


def error_info(exc: BaseException, attempt: int) -> ErrorInfo:
    try:
        trace = "".join(tb.format_exception(exc))[-MAX_TRACEBACK:]
    except Exception:  # a broken exception must not break the worker
        trace = ""
    return ErrorInfo(type=type_name(exc), message=describe_exception(exc), traceback=trace, attempt=attempt)


class JobRunner:
    """Runs attempts for one worker; holds nothing per attempt between calls."""

    def __init__(
        self,
        app: App,
        driver: Driver,
        *,
        sessions: async_sessionmaker[AsyncSession] | None,
        exactly_once: bool,
        completer: Completer,
        thread_limiter: anyio.CapacityLimiter,
        limits: dict[str, int],
        meter_costs: bool = False,
    ) -> None:
        self.app = app
        self.driver = driver
        self.sessions = sessions
        self.exactly_once = exactly_once
        self.completer = completer
        self.in_transaction = InTransaction(driver)
        self.thread_limiter = thread_limiter
        self.limits = limits
        self.meter_costs = meter_costs  # the sessions are metered (cost.py): record each attempt's cost
        self._policies: dict[str, Policy] = {}

    def policy(self, name: str) -> Policy:
        """The job's policy with this worker's limits (max lost, result and payload sizes)."""
        policy = self._policies.get(name)
        if policy is None:
            job = self.app.jobs.get(name)
            policy = self._policies[name] = (job.policy if job else DEFAULT_POLICY).with_limits(**self.limits)
        return policy

    async def end(
        self, item: Attempt | BadRow, event: Event, completer: Completer | None = None, running: Running | None = None
    ) -> Outcome:
        """Decide ``event`` for ``item`` and hand the outcome to ``completer`` (the batch by default)."""
        outcome = decide(item, self.policy(item.name), event, now=time.time(), rand=random.random())
        if running is not None and running.meter is not None:
            outcome = _with_cost(outcome, running.meter)
        await (completer or self.completer).complete(outcome)
        _log(item, outcome)
        return outcome

    async def run(self, running: Running) -> None:
        """One attempt, from start to its outcome handed over."""
        attempt = running.attempt
        job = self.app.jobs.get(attempt.name)
        policy = self.policy(attempt.name)
        early = before_run(attempt, policy, time.time())
        if early is None and job is None:
            known = ", ".join(sorted(self.app.jobs)) or "(none)"
            message = f"unknown job {attempt.name!r}; registered jobs: {known}"
            early = NotRunnable(ErrorInfo(type="UnknownJob", message=message, attempt=attempt.attempt))
        if early is not None:
            await self.end(attempt, early)
            return
        assert job is not None
        try:
            args = await self._with_parent_results(attempt) if attempt.with_results else attempt.args
        except _ParentsGone as gone:
            await self.end(attempt, NotRunnable(ErrorInfo(type="ParentFailed", message=str(gone), attempt=attempt.attempt)))
            return
        try:
            bound = job.bind(args, attempt.kwargs)
        except ArgumentsError as exc:
            await self.end(attempt, NotRunnable(ErrorInfo(type="ArgumentsError", message=str(exc), attempt=attempt.attempt)))
            return
        timeout = attempt.timeout or job.timeout
        if log.isEnabledFor(logging.DEBUG):
            waited = max(0.0, attempt.started_at - attempt.run_at) * 1000
            log.debug(
                "job %d %s started: attempt %d, waited %.1f ms in queue %s", attempt.id, attempt.name, attempt.attempt,
                waited, attempt.queue, extra={"job_id": attempt.id, "job": attempt.name, "queue": attempt.queue,
                                              "attempt": attempt.attempt, "waited_ms": round(waited, 3)},
            )  # fmt: skip
        event = await self._attempt(running, job, bound, timeout)
        if event is not None:
            await self.end(attempt, event, running=running)

    async def _attempt(self, running: Running, job: JobDef[Any, Any], bound: Any, timeout: float | None) -> Event | None:
        """What happened; None when the outcome is already written (in the job's transaction)
        or must not be (the lease was lost)."""
        try:
            with running.scope:
                if timeout:
                    running.scope.deadline = anyio.current_time() + float(timeout)
                if job.session_param:
                    return await self._with_session(running, job, bound)
                value = await self._invoke(running, job, bound, None)
            if running.scope.cancelled_caught:
                return self._stopped(running, timeout)
            return Returned(value)
        except _Unstorable as unstorable:
            await self.completer.complete(unstorable.outcome)
            _log(running.attempt, unstorable.outcome)
            return None
        except Retry as exc:
            error = ErrorInfo(type="Retry", message=exc.reason or "retry requested", attempt=running.attempt.attempt)
            return RetryRequested(error, exc.delay, exc.new_args, exc.new_kwargs)
        except JobTimeout as exc:  # raised into a sync job's thread (or by the job itself)
            if running.stop_reason is not None:
                return self._stopped(running, timeout)
            return Raised(error_info(exc, running.attempt.attempt), type(exc))
        except LeaseLost as exc:
            log.warning("job %s lost its lease; nothing it did was committed (%s)", running.attempt.id, exc)
            return None
        except Exception as exc:
            if database_unavailable(exc):
                # The database went away under the job (restart, failover): not the job's fault.
                return DatabaseAway(
                    ErrorInfo(type="DatabaseUnavailable", message=describe_exception(exc)[:2000], attempt=running.attempt.attempt)
                )
            return Raised(error_info(exc, running.attempt.attempt), type(exc))

    async def _with_parent_results(self, attempt: Attempt) -> list[Any]:
        """A workflow step's arguments: its parents' results first -- the one parent's (a chain
        step) or the list of all, in order (a chord's callback; None for a parent that did not
        succeed, when the step runs anyway)."""
        parents = await self.driver.parent_results(attempt.id)
        if not parents:
            raise _ParentsGone(
                f"the jobs job {attempt.id} waits for are gone (purged after --result-ttl?); their results cannot be passed"
            )
        values = []
        for parent_id, state, result in parents:
            if state == State.SUCCEEDED and result is not None:
                try:
                    values.append(decode_json(result, f"the result of job {parent_id}"))
                except SerializationError as exc:
                    raise _ParentsGone(str(exc)) from None
            else:
                values.append(None)
        return [values[0] if attempt.with_results == "one" else values, *attempt.args]

    def _stopped(self, running: Running, timeout: float | None) -> Event | None:
        if running.stop_reason == "cancelled":
            return Cancelled()
        if running.stop_reason == "lease lost":
            log.warning("job %s lost its lease while running; it was stopped and nothing was committed", running.attempt.id)
            return None
        return SoftTimeout(float(timeout or 0.0))

    async def _with_session(self, running: Running, job: JobDef[Any, Any], bound: Any) -> Event | None:
        attempt = running.attempt
        async with session_scope(factory=self.sessions) as session:
            meter = running.meter = start_meter(session) if self.meter_costs else None
            try:
                value = await self._invoke(running, job, bound, session)
                if meter is not None and (session.new or session.dirty or session.deleted):
                    await session.flush()  # the job's own writes, measured as the job's
            finally:
                if meter is not None:
                    meter.stop()  # what follows (the completion write, the commit) is runner's
            # The job returned: from here on, a soft limit or a cancel must not split its commit.
            with anyio.CancelScope(shield=True):
                outcome = decide(attempt, self.policy(attempt.name), Returned(value), now=time.time(), rand=random.random())
                if meter is not None:
                    outcome = _with_cost(outcome, meter)
                if outcome.state != State.SUCCEEDED:
                    raise _Unstorable(outcome)
                if self.exactly_once:
                    outcome = msgspec.structs.replace(outcome, lane=running.lane)  # its own counter row: no waiting
                    # The ack rides in the job's own transaction: business writes and completion
                    # commit together or not at all; a stale attempt (token moved on) commits nothing.
                    await self.in_transaction.complete(outcome, session)
                await session.commit()
        if not self.exactly_once:  # the job's database is not the queue's: at-least-once
            await self.completer.complete(outcome)
        _log(attempt, outcome)
        return None

    async def _invoke(self, running: Running, job: JobDef[Any, Any], bound: Any, session: AsyncSession | None) -> Any:
        injected: dict[str, Any] = {}
        if session is not None and job.session_param:
            injected[job.session_param] = session
        if job.context_param:
            injected[job.context_param] = self._context(running, job)
        args, kwargs = _call_arguments(bound, injected)
        if job.is_async:
            return await job.fn(*args, **kwargs)
        return await self._run_in_thread(running, functools.partial(job.fn, *args, **kwargs))

    def _context(self, running: Running, job: JobDef[Any, Any]) -> Context:
        a = running.attempt
        return Context(
            a.id, job.name, a.attempt, a.max_attempts or job.max_attempts, a.queue, a.parent_id, a.root_id, a.meta,
            functools.partial(self._progress, a), run_at=a.run_at,
        )  # fmt: skip

    async def _progress(self, attempt: Attempt, value: Any) -> None:
        text = encode_json(value, "progress")
        if len(text.encode()) > self.limits.get("max_result", 1 << 20):
            raise SerializationError(
                f"progress is {len(text.encode()):,} bytes of JSON; the limit is {self.limits['max_result']:,} (--max-result)"
            )
        await self.driver.set_progress(attempt.id, attempt.token, text)

    async def _run_in_thread(self, running: Running, fn: Callable[[], Any]) -> Any:
        token = anyio.lowlevel.current_token()

        def call() -> Any:
            running.thread_id = threading.get_ident()
            worker_thread(token)
            try:
                return fn()
            finally:
                worker_thread(None)
                running.thread_id = None

        # The thread cannot be cancelled; a stop request interrupts it instead (_watch_thread),
        # and we wait for it to return so that a slot never holds two jobs.
        failure: BaseException | None = None
        value: Any = None
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
        """Turn the job scope's deadline or cancel into a JobTimeout inside the sync job's thread."""
        while True:
            deadline = running.scope.deadline
            if running.stop_reason is None and deadline != float("inf") and anyio.current_time() >= deadline:
                running.stop_reason = "timeout"
            if running.stop_reason is not None and running.thread_id is not None:
                _raise_in_thread(running.thread_id, JobTimeout)
                await anyio.sleep(0.5)  # again, if the first landed inside a C call that swallowed it
                continue
            await anyio.sleep(0.02)


def _with_cost(outcome: Outcome, meter: Meter) -> Outcome:
    return msgspec.structs.replace(outcome, record=msgspec.structs.replace(outcome.record, cost=meter.cost()))


def _log(item: Attempt | BadRow, outcome: Outcome) -> None:
    """One line per ended attempt: info for successes, retries and give-backs, warning for
    failures. The values also travel as fields (``extra``), so ``--log-format json`` carries
    them as keys."""
    level = logging.WARNING if outcome.state == State.FAILED else logging.INFO
    if not log.isEnabledFor(level):
        return
    took = (outcome.record.finished_at - outcome.record.started_at) * 1000
    error = outcome.error
    fields: dict[str, Any] = {
        "job_id": item.id, "job": item.name, "queue": item.queue, "attempt": item.attempt,
        "outcome": outcome.kind or outcome.state, "ms": round(took, 3),
    }  # fmt: skip
    if error is not None:
        fields.update(error_type=error.type, error=error.message)
    cost = outcome.record.cost
    if cost is not None:
        fields.update(db_statements=cost.statements, db_ms=cost.db_ms)
    if outcome.state == State.SUCCEEDED:
        log.info("job %d %s succeeded in %.1f ms, attempt %d", item.id, item.name, took, item.attempt, extra=fields)
        return
    why = f"{error.type}: {error.message}" if error is not None else ""
    if outcome.state == State.QUEUED:
        log.info("job %d %s attempt %d: %s (%s)", item.id, item.name, item.attempt, outcome.record.note, why, extra=fields)
    elif outcome.state == State.FAILED:
        log.warning("job %d %s failed on attempt %d: %s", item.id, item.name, item.attempt, why, extra=fields)
    else:
        log.info("job %d %s %s", item.id, item.name, outcome.state, extra=fields)


def _call_arguments(bound: Any, injected: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for the real call. JSON arguments go by keyword where
    the signature allows, so injected parameters (session, context) can sit anywhere in it."""
    params = bound.signature.parameters
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return list(bound.args), {**bound.kwargs, **injected}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is kind.POSITIONAL_ONLY:
            args.append(value)
        elif kind is kind.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    kwargs.update(injected)  # injected last: a row can never replace them (bind refuses the names too)
    return args, kwargs
