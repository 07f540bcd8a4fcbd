"""What happens to an attempt: ``decide(attempt, policy, event) -> Outcome``. Pure: no I/O, no
clock (``now`` is passed in), no randomness (``rand`` is).

This is the only place that applies attempts, backoff, ``retry_on``, ``max_lost``, result and
payload limits, and ``on_failure`` children (errbacks). Every path that ends an attempt --
the job runner, the hard-kill settlement, the expired-lease sweep, the give-back at shutdown --
builds an event and asks here; drivers only write what comes back.

=================  ==========================================  ================================
event              attempts left and the error is retryable    otherwise
=================  ==========================================  ================================
Returned           succeeded                                   failed (+ on_failure) if the result
                                                               is not JSON or over --max-result
Raised             queued at now + backoff                     failed (+ on_failure)
RetryRequested     queued at now + delay (or backoff)          failed, saying no attempts were
                                                               left (+ on_failure)
SoftTimeout        as Raised(JobTimeout)                       as Raised(JobTimeout)
HardKilled         as Raised(TimeLimitExceeded)                as Raised(TimeLimitExceeded)
Frozen             queued, attempt given back, lost + 1        failed at --max-lost (+ on_failure)
WorkerLost         queued, attempt given back, lost + 1        failed at --max-lost (+ on_failure)
Cancelled          cancelled                                   cancelled
Expired            expired, attempt given back                 expired
DatabaseAway       queued at now + 1 s, attempt given back     (never counts)
GaveBack           queued, attempt given back                  (never counts)
NotRunnable        failed (+ on_failure)                       failed (+ on_failure)
=================  ==========================================  ================================

``RetryRequested`` is the job's own request, so ``retry_on`` does not apply to it; only the
attempts left do. A ``BadRow`` (a row that could not be decoded) is failed with its decoding error whatever the
event: it cannot be run, and its callbacks cannot be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from .errors import JobTimeout, PayloadTooLarge, SerializationError, TimeLimitExceeded
from .policy import INT32_MAX, Policy
from .wire import (
    Attempt,
    AttemptRecord,
    BadRow,
    ChildSpec,
    Envelope,
    ErrorInfo,
    State,
    check_depth,
    encode_json_bytes,
)

__all__ = [
    "GIVEN_BACK",
    "KINDS",
    "LOST",
    "RETRIED",
    "Cancelled",
    "DatabaseAway",
    "Event",
    "Expired",
    "Frozen",
    "GaveBack",
    "HardKilled",
    "NotRunnable",
    "Outcome",
    "Raised",
    "RetryRequested",
    "Returned",
    "SoftTimeout",
    "WorkerLost",
    "before_run",
    "decide",
]

DATABASE_RETRY_DELAY: Final = 1.0

# How an attempt ended, as the counters (and /metrics) name it: the final states, and three ways
# back to the queue -- a retry (the attempt counted), a lost worker, a give-back (neither counts).
RETRIED: Final = "retried"
LOST: Final = "lost"
GIVEN_BACK: Final = "given_back"
KINDS: Final = (*State.FINAL, RETRIED, LOST, GIVEN_BACK)


# --- events: what happened to an attempt ------------------------------------------------------


class Returned(msgspec.Struct, frozen=True):
    """The job returned ``value``."""

    value: Any


class Raised(msgspec.Struct, frozen=True):
    """The job raised; ``exc_type`` is matched against ``retry_on``."""

    error: ErrorInfo
    exc_type: type[BaseException]


class RetryRequested(msgspec.Struct, frozen=True):
    """The job raised ``Retry``: another attempt after ``delay`` s (None: the backoff),
    optionally with new arguments."""

    error: ErrorInfo
    delay: float | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


class SoftTimeout(msgspec.Struct, frozen=True):
    limit: float


class HardKilled(msgspec.Struct, frozen=True):
    """The supervisor killed the worker because this job passed its hard limit."""

    limit: float


class Frozen(msgspec.Struct, frozen=True):
    """The supervisor killed the worker holding this job because its loop stopped answering."""


class WorkerLost(msgspec.Struct, frozen=True):
    """The worker holding this job died, or its lease expired; ``why`` says which."""

    why: str


class Cancelled(msgspec.Struct, frozen=True):
    """Cancelled on request while running."""


class Expired(msgspec.Struct, frozen=True):
    """``expires_at`` passed before the job started."""


class DatabaseAway(msgspec.Struct, frozen=True):
    """The database went away under the job: not the job's fault."""

    error: ErrorInfo


class GaveBack(msgspec.Struct, frozen=True):
    """The worker is stopping and did not finish the attempt (or never started it)."""


class NotRunnable(msgspec.Struct, frozen=True):
    """Unknown job, arguments that do not bind, an attempt counter past its limit."""

    error: ErrorInfo


Event = (
    Returned | Raised | RetryRequested | SoftTimeout | HardKilled | Frozen | WorkerLost | Cancelled | Expired
    | DatabaseAway | GaveBack | NotRunnable
)  # fmt: skip


# --- the outcome: what to write -----------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How one attempt ends, as one guarded write: ``WHERE id = job_id AND lease_token = token
    AND state = 'running'``. Counters are final values, never increments, so SQL does no
    arithmetic a hostile row could overflow."""

    job_id: int
    token: int
    state: str
    attempt: int  # the row's attempt counter after this write
    lost: int
    record: AttemptRecord  # appended to the row's history
    result: bytes | None = None  # JSON
    error: ErrorInfo | None = None
    run_at: float | None = None  # queued: not before (None keeps the row's)
    finished_at: float | None = None
    args: bytes | None = None  # JSON; a retry with new arguments (None keeps the row's)
    kwargs: bytes | None = None
    children: tuple[Envelope, ...] = ()
    # For the counters the drivers write with the outcome (runner_stats): what the attempt was,
    # how it ended, and how long it waited to be claimed. ``lane``: which of the worker's counter
    # rows it goes to (its slot, when written in the job's own transaction; -1: the batch's).
    name: str = ""
    queue: str = ""
    kind: str = ""  # one of KINDS
    waited: float = 0.0  # seconds from runnable (run_at) to claimed
    lane: int = -1

    def failed_instead(self, error: ErrorInfo, now: float) -> Outcome:
        """This outcome turned into a plain failure (used when its children cannot be written)."""
        record = msgspec.structs.replace(self.record, outcome=State.FAILED, error=error, finished_at=now)
        return msgspec.structs.replace(
            self, state=State.FAILED, result=None, error=error, run_at=None, finished_at=now, children=(), record=record,
            args=None, kwargs=None, kind=State.FAILED,
        )  # fmt: skip


# --- the decision -------------------------------------------------------------------------------


def before_run(attempt: Attempt, policy: Policy, now: float) -> Expired | NotRunnable | None:
    """An event that ends the attempt before it starts, or None if it may run."""
    if attempt.expires_at is not None and now > attempt.expires_at:
        return Expired()
    limit = attempt.max_attempts or policy.max_attempts
    if attempt.attempt > limit:
        message = (
            f"attempt counter {attempt.attempt} is past max_attempts {limit}: the row's attempt column was "
            "changed by hand or by another program; accepted: 0 to max_attempts - 1 before a claim"
        )
        return NotRunnable(ErrorInfo(type="SerializationError", message=message, attempt=attempt.attempt))
    return None


def decide(item: Attempt | BadRow, policy: Policy, event: Event, *, now: float, rand: float = 0.5) -> Outcome:
    """The outcome of ``event`` for ``item`` under ``policy`` (see the table above)."""
    if isinstance(item, BadRow):
        return _final(item, State.FAILED, now, error=item.error, note="the row could not be decoded")
    match event:
        case Returned(value):
            return _returned(item, policy, value, now)
        case Raised(error, exc_type):
            return _failed_attempt(item, policy, error, retryable=policy.retries(exc_type), now=now, rand=rand)
        case RetryRequested():
            return _retry_requested(item, policy, event, now, rand)
        case SoftTimeout(limit):
            error = ErrorInfo(type="JobTimeout", message=f"soft time limit of {limit:g}s exceeded", attempt=item.attempt)
            return _failed_attempt(item, policy, error, retryable=policy.retries(JobTimeout), now=now, rand=rand)
        case HardKilled(limit):
            message = f"hard time limit of {limit:g}s exceeded; the worker running it was killed"
            error = ErrorInfo(type="TimeLimitExceeded", message=message, attempt=item.attempt)
            return _failed_attempt(item, policy, error, retryable=policy.retries(TimeLimitExceeded), now=now, rand=rand)
        case Frozen():
            return _lost(item, policy, "WorkerUnresponsive", "the worker's event loop stopped answering", now)
        case WorkerLost(why):
            return _lost(item, policy, "WorkerLost", why, now)
        case Cancelled():
            error = ErrorInfo(type="Cancelled", message="cancelled while running", attempt=item.attempt)
            return _final(item, State.CANCELLED, now, error=error)
        case Expired():
            when = "" if item.expires_at is None else f" at {item.expires_at:.3f}"
            message = f"expired{when}, before it started"
            error = ErrorInfo(type="Expired", message=message)
            return _final(item, State.EXPIRED, now, error=error, attempt=item.attempt - 1)
        case DatabaseAway(error):
            return _requeue(item, now, run_at=now + DATABASE_RETRY_DELAY, error=error, note="the database went away; given back")
        case GaveBack():
            return _requeue(item, now, run_at=None, error=None, note="given back: the worker stopped before it finished")
        case NotRunnable(error):
            return _failed_for_good(item, policy, error, now)
    raise TypeError(f"decide: unknown event {event!r}")  # pragma: no cover - the union is closed


def _returned(item: Attempt, policy: Policy, value: Any, now: float) -> Outcome:
    result: bytes | None = None
    if not policy.ignore_result and value is not None:
        try:
            result = encode_json_bytes(value, f"the result of {item.name}")
        except SerializationError as exc:
            return _failed_for_good(
                item, policy, ErrorInfo(type="SerializationError", message=str(exc), attempt=item.attempt), now
            )
        if len(result) > policy.max_result:
            message = (
                f"the result of {item.name} is {len(result):,} bytes of JSON; the limit is {policy.max_result:,} (--max-result)"
            )
            return _failed_for_good(item, policy, ErrorInfo(type="ResultTooLarge", message=message, attempt=item.attempt), now)
    return _final(item, State.SUCCEEDED, now, result=result)


def _failed_attempt(item: Attempt, policy: Policy, error: ErrorInfo, *, retryable: bool, now: float, rand: float) -> Outcome:
    if retryable and item.attempt < (item.max_attempts or policy.max_attempts):
        wait = policy.backoff.delay(item.attempt, rand)
        return _retry(item, now, now + wait, error, note=f"retry in {wait:.3g}s")
    return _failed_for_good(item, policy, error, now)


def _retry_requested(item: Attempt, policy: Policy, event: RetryRequested, now: float, rand: float) -> Outcome:
    limit = item.max_attempts or policy.max_attempts
    if item.attempt >= limit:
        reason = event.error.message
        # Retry() without a reason says "retry requested" already: do not say it twice.
        said = "" if reason in ("", "retry requested") else f"{reason}: "
        message = (
            f"{said}retry requested, but no attempts were left (attempt {item.attempt} of {limit}; "
            "raise the job's retries=, or max_attempts= per call)"
        )
        return _failed_for_good(item, policy, msgspec.structs.replace(event.error, message=message), now)
    wait = policy.backoff.delay(item.attempt, rand) if event.delay is None else _seconds(event.delay)
    try:
        args = None if event.args is None else _arguments(event.args, f"the retry arguments of {item.name}", policy)
        kwargs = None if event.kwargs is None else _arguments(event.kwargs, f"the retry keyword arguments of {item.name}", policy)
    except (SerializationError, PayloadTooLarge) as exc:
        error = ErrorInfo(type=type(exc).__name__, message=str(exc), attempt=item.attempt)
        return _failed_for_good(item, policy, error, now)
    outcome = _retry(item, now, now + wait, event.error, note=f"retry requested, in {wait:.3g}s")
    return msgspec.structs.replace(outcome, args=args, kwargs=kwargs) if args or kwargs else outcome


def _failed_for_good(item: Attempt, policy: Policy, error: ErrorInfo, now: float) -> Outcome:
    try:
        children = _children(item, item.callbacks.on_failure, item.id, "on_failure", policy)
    except (SerializationError, PayloadTooLarge) as exc:
        message = f"{error.message} (its on_failure chained jobs cannot be enqueued: {exc})"
        return _final(item, State.FAILED, now, error=msgspec.structs.replace(error, message=message))
    return _final(item, State.FAILED, now, error=error, children=children)


def _lost(item: Attempt, policy: Policy, type_: str, why: str, now: float) -> Outcome:
    lost = min(item.lost + 1, INT32_MAX)
    if lost < policy.max_lost:
        error = ErrorInfo(type=type_, message=f"{why} while running this job; given back", attempt=item.attempt)
        return msgspec.structs.replace(_requeue(item, now, run_at=None, error=error, note=why, kind=LOST), lost=lost)
    message = (
        f"{why} while running this job, {lost} times (--max-lost {policy.max_lost}); it was not retried again "
        "(the job may be crashing or freezing its worker)"
    )
    outcome = _failed_for_good(item, policy, ErrorInfo(type=type_, message=message, attempt=item.attempt), now)
    return msgspec.structs.replace(outcome, lost=lost)


def _final(
    item: Attempt | BadRow,
    state: str,
    now: float,
    *,
    result: bytes | None = None,
    error: ErrorInfo | None = None,
    children: tuple[Envelope, ...] = (),
    attempt: int | None = None,
    note: str = "",
) -> Outcome:
    return Outcome(
        job_id=item.id, token=item.token, state=state, attempt=item.attempt if attempt is None else max(0, attempt),
        lost=item.lost, result=result, error=error, finished_at=now, children=children,
        record=_record(item, state, now, error, note), name=item.name, queue=item.queue, kind=state, waited=_waited(item),
    )  # fmt: skip


def _retry(item: Attempt, now: float, run_at: float, error: ErrorInfo, note: str) -> Outcome:
    return Outcome(
        job_id=item.id, token=item.token, state=State.QUEUED, attempt=item.attempt, lost=item.lost, error=error,
        run_at=run_at, record=_record(item, State.QUEUED, now, error, note), name=item.name, queue=item.queue,
        kind=RETRIED, waited=_waited(item),
    )  # fmt: skip


def _requeue(
    item: Attempt, now: float, *, run_at: float | None, error: ErrorInfo | None, note: str, kind: str = GIVEN_BACK
) -> Outcome:
    """Back to the queue without counting the attempt."""
    return Outcome(
        job_id=item.id, token=item.token, state=State.QUEUED, attempt=max(0, item.attempt - 1), lost=item.lost,
        error=error, run_at=run_at, record=_record(item, State.QUEUED, now, error, note), name=item.name,
        queue=item.queue, kind=kind, waited=_waited(item),
    )  # fmt: skip


def _waited(item: Attempt | BadRow) -> float:
    """Seconds the attempt waited between becoming runnable and being claimed."""
    return max(0.0, item.started_at - item.run_at) if isinstance(item, Attempt) else 0.0


def _record(item: Attempt | BadRow, state: str, now: float, error: ErrorInfo | None, note: str) -> AttemptRecord:
    return AttemptRecord(
        attempt=item.attempt, worker=item.owner, started_at=item.started_at, finished_at=now, outcome=state,
        error=error, note=note,
    )  # fmt: skip


def _seconds(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def _arguments(value: Any, what: str, policy: Policy) -> bytes:
    check_depth(value, what)
    encoded = encode_json_bytes(value, what)
    if len(encoded) > policy.max_payload:
        raise PayloadTooLarge(f"{what} are {len(encoded):,} bytes of JSON; the limit is {policy.max_payload:,} (--max-payload)")
    return encoded


def _children(item: Attempt, specs: Sequence[ChildSpec], value: Any, which: str, policy: Policy) -> tuple[Envelope, ...]:
    """Envelopes for errbacks: each gets ``value`` (the parent's id) prepended to its args unless
    it is ``immutable``, and the parent/root ids that tie a workflow together. Raises naming the
    spec when one cannot be enqueued."""
    children = []
    for i, spec in enumerate(specs):
        where = f"{which}[{i}]"
        args = spec.args if spec.immutable else [value, *spec.args]
        size = len(_arguments(args, f"arguments of chained job {spec.name} ({where})", policy))
        size += len(_arguments(spec.kwargs, f"keyword arguments of chained job {spec.name} ({where})", policy))
        if size > policy.max_payload:
            raise PayloadTooLarge(
                f"arguments of chained job {spec.name} ({where}) would be {size:,} bytes of JSON; "
                f"the limit is {policy.max_payload:,} (--max-payload)"
            )
        children.append(
            Envelope(
                name=spec.name,
                args=args,
                kwargs=spec.kwargs,
                queue=spec.queue or item.queue,
                priority=spec.priority,
                max_attempts=spec.max_attempts,
                key=spec.key,
                timeout=spec.timeout,
                hard_timeout=spec.hard_timeout,
                parent_id=item.id,
                root_id=item.root_id or item.id,
                meta=spec.meta,
            )  # fmt: skip
        )
    return tuple(children)
