"""``decide`` and ``before_run`` as tables: events x policies -> outcomes.

Pure unit tests: no database, no clock, no randomness (``now`` and ``rand`` are passed in). Each
table row reads as one line of the table in ``runner/decide.py``'s docstring: the attempt's
counters, the policy, the event, and the outcome written back (state, attempt and lost counters,
run_at, error, children, history record).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import msgspec
import pytest

from runner.decide import (
    Cancelled,
    DatabaseAway,
    Expired,
    Frozen,
    GaveBack,
    HardKilled,
    NotRunnable,
    Outcome,
    Raised,
    RetryRequested,
    Returned,
    SoftTimeout,
    WorkerLost,
    before_run,
    decide,
)
from runner.errors import JobTimeout, TimeLimitExceeded
from runner.policy import INT32_MAX, Backoff, Policy
from runner.wire import Attempt, AttemptRecord, BadRow, Callbacks, ChildSpec, Envelope, ErrorInfo, State

NOW = 1000.0
STARTED = 990.0
OWNER = "worker-7"
JOB_ID = 41
TOKEN = 9

# Every attempt carries an errback, so each table row shows whether it got enqueued.
CLEANUP = ChildSpec(name="cleanup", args=["x"])
CALLBACKS = Callbacks(on_failure=(CLEANUP,))


def attempt(**changes: Any) -> Attempt:
    """A claimed attempt; every field given (Attempt has no defaults)."""
    fields: dict[str, Any] = {
        "id": JOB_ID, "token": TOKEN, "owner": OWNER, "name": "jobs.add", "args": [1, 2], "kwargs": {}, "queue": "default", "priority": 0,
        "attempt": 1, "max_attempts": None, "lost": 0, "run_at": 980.0, "expires_at": None, "timeout": None, "hard_timeout": None,
        "key": None, "parent_id": None, "root_id": None, "meta": {}, "callbacks": CALLBACKS, "created_at": 970.0, "started_at": STARTED,
    }  # fmt: skip
    fields.update(changes)
    return Attempt(**fields)


def bad_row(**changes: Any) -> BadRow:
    fields: dict[str, Any] = {
        "id": JOB_ID, "token": TOKEN, "owner": OWNER, "name": "jobs.add", "attempt": 2, "lost": 1, "queue": "default", "started_at": STARTED,
        "error": ErrorInfo(type="SerializationError", message="column args is not valid JSON; accepted: a JSON array"),
    }  # fmt: skip
    fields.update(changes)
    return BadRow(**fields)


def err(type_: str = "ValueError", message: str = "boom") -> ErrorInfo:
    return ErrorInfo(type=type_, message=message, traceback="Traceback ...", attempt=1)


def raised(exc_type: type[BaseException], message: str = "boom") -> Raised:
    return Raised(err(exc_type.__name__, message), exc_type)


def fixed(base: float = 2.0) -> Backoff:
    """No jitter: the delay after attempt n is exactly base * 2 ** (n - 1)."""
    return Backoff(base=base, cap=300.0, jitter=False)


# --- policies: the columns of the tables ------------------------------------------------------

ONE = Policy(backoff=fixed())  # max_attempts=1: no retries (unless the row's max_attempts says so)
THREE = Policy(max_attempts=3, backoff=fixed())  # retry_on=(Exception,)
THREE_VALUE = Policy(max_attempts=3, retry_on=(ValueError,), backoff=fixed())
THREE_TIMEOUT = Policy(max_attempts=3, retry_on=(TimeoutError,), backoff=fixed())
LOST3 = Policy(max_lost=3)
IGNORE = Policy(ignore_result=True)
SMALL_RESULT = Policy(max_result=10)
SMALL_PAYLOAD = Policy(max_payload=50)

FROZEN_WHY = "the worker's event loop stopped answering"
LEASE_WHY = "the lease expired"
SOFT = "soft time limit of 0.3s exceeded"
HARD = "hard time limit of 2s exceeded; the worker running it was killed"
DB_ERROR = ErrorInfo(type="DatabaseUnavailable", message="connection reset by peer", attempt=1)
NOT_RUNNABLE = ErrorInfo(type="UnknownJob", message="unknown job 'jobs.add'; registered jobs: (none)", attempt=1)


class Want(NamedTuple):
    """The expected outcome. ``message`` is a substring of the error's message; ``children``
    the names of the chained jobs enqueued; ``note`` the history record's note."""

    state: str
    attempt: int
    lost: int = 0
    run_at: float | None = None
    error: str | None = None  # error type
    message: str = ""
    children: tuple[str, ...] = ()
    note: str = ""


Q, F, S = State.QUEUED, State.FAILED, State.SUCCEEDED

# (id, the attempt's changes, policy, event, expected outcome). rand=0.5 throughout (no jitter here).
TABLE = [
    # Returned ------------------------------------------------------------------------------
    pytest.param({}, ONE, Returned({"n": 3}), Want(S, 1), id="returned-succeeds"),
    pytest.param({}, ONE, Returned(None), Want(S, 1), id="returned-None-succeeds"),
    pytest.param({}, IGNORE, Returned({"n": 3}), Want(S, 1), id="returned-ignore_result"),
    pytest.param({}, THREE, Returned(object()), Want(F, 1, error="SerializationError", message="the result of jobs.add cannot be encoded as JSON", children=("cleanup",)), id="returned-not-json-fails"),
    pytest.param({}, SMALL_RESULT, Returned("x" * 20), Want(F, 1, error="ResultTooLarge", message="22 bytes of JSON; the limit is 10 (--max-result)", children=("cleanup",)), id="returned-over-max_result-fails"),
    # Raised --------------------------------------------------------------------------------
    pytest.param({}, THREE, raised(ValueError), Want(Q, 1, run_at=NOW + 2, error="ValueError", message="boom", note="retry in 2s"), id="raised-attempt1of3-retries"),
    pytest.param({"attempt": 2}, THREE, raised(ValueError), Want(Q, 2, run_at=NOW + 4, error="ValueError", note="retry in 4s"), id="raised-attempt2of3-retries-later"),
    pytest.param({"attempt": 3}, THREE, raised(ValueError), Want(F, 3, error="ValueError", message="boom", children=("cleanup",)), id="raised-attempt3of3-fails"),
    pytest.param({}, ONE, raised(ValueError), Want(F, 1, error="ValueError", children=("cleanup",)), id="raised-no-retries-fails"),
    pytest.param({}, THREE_VALUE, raised(ValueError), Want(Q, 1, run_at=NOW + 2, error="ValueError", note="retry in 2s"), id="raised-in-retry_on-retries"),
    pytest.param({}, THREE_VALUE, raised(UnicodeError), Want(Q, 1, run_at=NOW + 2, error="UnicodeError", note="retry in 2s"), id="raised-subclass-in-retry_on-retries"),
    pytest.param({}, THREE_VALUE, raised(KeyError), Want(F, 1, error="KeyError", children=("cleanup",)), id="raised-not-in-retry_on-fails"),
    pytest.param({}, THREE, raised(KeyboardInterrupt), Want(F, 1, error="KeyboardInterrupt", children=("cleanup",)), id="raised-BaseException-not-Exception-fails"),
    pytest.param({"max_attempts": 5, "attempt": 3}, ONE, raised(ValueError), Want(Q, 3, run_at=NOW + 8, error="ValueError", note="retry in 8s"), id="raised-row-max_attempts-overrides-policy"),
    pytest.param({"max_attempts": 5, "attempt": 5}, ONE, raised(ValueError), Want(F, 5, error="ValueError", children=("cleanup",)), id="raised-row-max_attempts-exhausted-fails"),
    # RetryRequested ------------------------------------------------------------------------
    pytest.param({}, THREE, RetryRequested(err("Retry", "later")), Want(Q, 1, run_at=NOW + 2, error="Retry", message="later", note="retry requested, in 2s"), id="retry-no-delay-uses-backoff"),
    pytest.param({}, THREE, RetryRequested(err("Retry", "later"), delay=30.0), Want(Q, 1, run_at=NOW + 30, error="Retry", note="retry requested, in 30s"), id="retry-with-delay"),
    pytest.param({}, THREE, RetryRequested(err("Retry", "later"), delay=-5.0), Want(Q, 1, run_at=NOW, error="Retry", note="retry requested, in 0s"), id="retry-negative-delay-is-now"),
    pytest.param({}, THREE, RetryRequested(err("Retry", "later"), delay=math.nan), Want(Q, 1, run_at=NOW, error="Retry", note="retry requested, in 0s"), id="retry-nan-delay-is-now"),
    pytest.param({}, ONE, RetryRequested(err("Retry", "later")), Want(F, 1, error="Retry", message="later: retry requested, but no attempts were left (attempt 1 of 1;", children=("cleanup",)), id="retry-no-attempts-left-fails"),
    pytest.param({"attempt": 3}, THREE, RetryRequested(err("Retry", "later"), delay=5.0), Want(F, 3, error="Retry", message="no attempts were left (attempt 3 of 3;", children=("cleanup",)), id="retry-attempt3of3-fails"),
    # SoftTimeout: as Raised(JobTimeout) ----------------------------------------------------
    pytest.param({}, THREE_TIMEOUT, SoftTimeout(0.3), Want(Q, 1, run_at=NOW + 2, error="JobTimeout", message=SOFT, note="retry in 2s"), id="soft-retry_on-TimeoutError-retries"),
    pytest.param({}, THREE, SoftTimeout(0.3), Want(Q, 1, run_at=NOW + 2, error="JobTimeout", message=SOFT, note="retry in 2s"), id="soft-retry_on-Exception-retries"),
    pytest.param({}, THREE_VALUE, SoftTimeout(0.3), Want(F, 1, error="JobTimeout", message=SOFT, children=("cleanup",)), id="soft-not-in-retry_on-fails"),
    pytest.param({"attempt": 3}, THREE_TIMEOUT, SoftTimeout(0.3), Want(F, 3, error="JobTimeout", message=SOFT, children=("cleanup",)), id="soft-attempts-exhausted-fails"),
    # HardKilled: as Raised(TimeLimitExceeded) ----------------------------------------------
    pytest.param({}, THREE_TIMEOUT, HardKilled(2.0), Want(Q, 1, run_at=NOW + 2, error="TimeLimitExceeded", message=HARD, note="retry in 2s"), id="hard-retry_on-TimeoutError-retries"),
    pytest.param({}, THREE, HardKilled(2.0), Want(Q, 1, run_at=NOW + 2, error="TimeLimitExceeded", message=HARD, note="retry in 2s"), id="hard-retry_on-Exception-retries"),
    pytest.param({}, THREE_VALUE, HardKilled(2.0), Want(F, 1, error="TimeLimitExceeded", message=HARD, children=("cleanup",)), id="hard-not-in-retry_on-fails"),
    pytest.param({}, ONE, HardKilled(2.0), Want(F, 1, error="TimeLimitExceeded", message=HARD, children=("cleanup",)), id="hard-no-retries-fails"),
    # Frozen: given back until --max-lost ----------------------------------------------------
    pytest.param({"lost": 0}, LOST3, Frozen(), Want(Q, 0, lost=1, error="WorkerUnresponsive", message=f"{FROZEN_WHY} while running this job; given back", note=FROZEN_WHY), id="frozen-lost0-given-back"),
    pytest.param({"lost": 1, "attempt": 2}, LOST3, Frozen(), Want(Q, 1, lost=2, error="WorkerUnresponsive", note=FROZEN_WHY), id="frozen-lost1-given-back"),
    pytest.param({"lost": 2}, LOST3, Frozen(), Want(F, 1, lost=3, error="WorkerUnresponsive", message="3 times (--max-lost 3)", children=("cleanup",)), id="frozen-at-max_lost-fails"),
    pytest.param({"lost": INT32_MAX}, LOST3, Frozen(), Want(F, 1, lost=INT32_MAX, error="WorkerUnresponsive", children=("cleanup",)), id="frozen-lost-at-int32-max-stays"),
    # WorkerLost: given back until --max-lost ------------------------------------------------
    pytest.param({"lost": 0}, LOST3, WorkerLost(LEASE_WHY), Want(Q, 0, lost=1, error="WorkerLost", message=f"{LEASE_WHY} while running this job; given back", note=LEASE_WHY), id="lost-lost0-given-back"),
    pytest.param({"lost": 1, "attempt": 3}, LOST3, WorkerLost(LEASE_WHY), Want(Q, 2, lost=2, error="WorkerLost", note=LEASE_WHY), id="lost-lost1-given-back"),
    pytest.param({"lost": 2}, LOST3, WorkerLost(LEASE_WHY), Want(F, 1, lost=3, error="WorkerLost", message=f"{LEASE_WHY} while running this job, 3 times (--max-lost 3)", children=("cleanup",)), id="lost-at-max_lost-fails"),
    pytest.param({"lost": 7}, LOST3, WorkerLost(LEASE_WHY), Want(F, 1, lost=8, error="WorkerLost", children=("cleanup",)), id="lost-past-max_lost-fails"),
    pytest.param({"lost": INT32_MAX}, LOST3, WorkerLost(LEASE_WHY), Want(F, 1, lost=INT32_MAX, error="WorkerLost", children=("cleanup",)), id="lost-at-int32-max-stays"),
    pytest.param({"lost": INT32_MAX - 1}, Policy(max_lost=INT32_MAX), WorkerLost(LEASE_WHY), Want(F, 1, lost=INT32_MAX, error="WorkerLost", children=("cleanup",)), id="lost-reaches-int32-max"),
    # Cancelled -----------------------------------------------------------------------------
    pytest.param({}, THREE, Cancelled(), Want(State.CANCELLED, 1, error="Cancelled", message="cancelled while running"), id="cancelled-attempts-left"),
    pytest.param({}, ONE, Cancelled(), Want(State.CANCELLED, 1, error="Cancelled", message="cancelled while running"), id="cancelled-no-attempts-left"),
    # Expired -------------------------------------------------------------------------------
    pytest.param({"expires_at": 999.0}, THREE, Expired(), Want(State.EXPIRED, 0, error="Expired", message="expired at 999.000, before it started"), id="expired-given-back"),
    pytest.param({"expires_at": 999.0, "attempt": 0}, ONE, Expired(), Want(State.EXPIRED, 0, error="Expired"), id="expired-attempt0-stays-0"),
    # DatabaseAway: never counts ------------------------------------------------------------
    pytest.param({}, THREE, DatabaseAway(DB_ERROR), Want(Q, 0, run_at=NOW + 1, error="DatabaseUnavailable", message="connection reset", note="the database went away; given back"), id="db-away-given-back"),
    pytest.param({"attempt": 3, "lost": 2}, ONE, DatabaseAway(DB_ERROR), Want(Q, 2, lost=2, run_at=NOW + 1, error="DatabaseUnavailable", note="the database went away; given back"), id="db-away-no-attempts-left-still-given-back"),
    # GaveBack: never counts, keeps the row's run_at ----------------------------------------
    pytest.param({}, THREE, GaveBack(), Want(Q, 0, note="given back: the worker stopped before it finished"), id="gave-back"),
    pytest.param({"attempt": 3, "lost": 2}, ONE, GaveBack(), Want(Q, 2, lost=2, note="given back: the worker stopped before it finished"), id="gave-back-no-attempts-left"),
    # NotRunnable ---------------------------------------------------------------------------
    pytest.param({}, THREE, NotRunnable(NOT_RUNNABLE), Want(F, 1, error="UnknownJob", message="unknown job", children=("cleanup",)), id="not-runnable-attempts-left-fails"),
    pytest.param({}, ONE, NotRunnable(NOT_RUNNABLE), Want(F, 1, error="UnknownJob", children=("cleanup",)), id="not-runnable-fails"),
]  # fmt: skip


def check(outcome: Outcome, item: Attempt | BadRow, want: Want) -> None:
    assert outcome.job_id == item.id and outcome.token == item.token
    assert outcome.state == want.state
    assert outcome.attempt == want.attempt
    assert outcome.lost == want.lost
    assert outcome.run_at == want.run_at
    if want.error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert outcome.error.type == want.error
        assert want.message in outcome.error.message
    assert tuple(child.name for child in outcome.children) == want.children
    # a final state records when it finished; a queued row is not finished
    assert outcome.finished_at == (None if want.state == State.QUEUED else NOW)
    assert outcome.record == AttemptRecord(
        attempt=item.attempt, worker=OWNER, started_at=STARTED, finished_at=NOW, outcome=want.state,
        error=outcome.error, note=want.note,
    )  # fmt: skip
    if want.state != State.SUCCEEDED:
        assert outcome.result is None
    assert outcome.args is None and outcome.kwargs is None


@pytest.mark.parametrize(("changes", "policy", "event", "want"), TABLE)
def test_event_x_policy(changes: dict[str, Any], policy: Policy, event: Any, want: Want) -> None:
    item = attempt(**changes)
    check(decide(item, policy, event, now=NOW), item, want)


@pytest.mark.parametrize(
    ("policy", "value", "result"),
    [
        pytest.param(ONE, {"n": 3}, b'{"n":3}', id="stored-as-json"),
        pytest.param(ONE, [1, "a", None], b'[1,"a",null]', id="list"),
        pytest.param(ONE, None, None, id="None-stores-nothing"),
        pytest.param(IGNORE, {"n": 3}, None, id="ignore_result-stores-nothing"),
        pytest.param(IGNORE, object(), None, id="ignore_result-not-even-encoded"),
        pytest.param(Policy(max_result=7), {"n": 3}, b'{"n":3}', id="exactly-max_result"),
    ],
)
def test_returned_result(policy: Policy, value: Any, result: bytes | None) -> None:
    item = attempt(callbacks=Callbacks())
    outcome = decide(item, policy, Returned(value), now=NOW)
    assert outcome.state == State.SUCCEEDED
    assert outcome.result == result
    assert outcome.error is None and outcome.children == ()


# --- BadRow: failed with its decoding error, whatever the event ------------------------------

EVERY_EVENT = [
    pytest.param(Returned({"n": 1}), id="Returned"),
    pytest.param(raised(ValueError), id="Raised"),
    pytest.param(RetryRequested(err("Retry", "later"), delay=1.0, args=[1]), id="RetryRequested"),
    pytest.param(SoftTimeout(0.3), id="SoftTimeout"),
    pytest.param(HardKilled(2.0), id="HardKilled"),
    pytest.param(Frozen(), id="Frozen"),
    pytest.param(WorkerLost(LEASE_WHY), id="WorkerLost"),
    pytest.param(Cancelled(), id="Cancelled"),
    pytest.param(Expired(), id="Expired"),
    pytest.param(DatabaseAway(DB_ERROR), id="DatabaseAway"),
    pytest.param(GaveBack(), id="GaveBack"),
    pytest.param(NotRunnable(NOT_RUNNABLE), id="NotRunnable"),
]


@pytest.mark.parametrize(
    "policy", [pytest.param(ONE, id="one"), pytest.param(THREE, id="three"), pytest.param(LOST3, id="lost3")]
)
@pytest.mark.parametrize("event", EVERY_EVENT)
def test_bad_row_fails_with_its_decoding_error(event: Any, policy: Policy) -> None:
    row = bad_row()
    outcome = decide(row, policy, event, now=NOW)
    want = Want(
        F, 2, lost=1, error="SerializationError", message="column args is not valid JSON", note="the row could not be decoded"
    )
    check(outcome, row, want)
    assert outcome.error == row.error  # its decoding error, unchanged


# --- chained jobs ----------------------------------------------------------------------------

RICH = ChildSpec(
    name="notify", args=["a"], kwargs={"k": 1}, queue="mail", priority=5, max_attempts=4, key="k-1", timeout=3.0,
    hard_timeout=9.0, meta={"m": 1},
)  # fmt: skip


@pytest.mark.parametrize(
    ("which", "spec", "root_id", "event", "want"),
    [
        # on_failure: the parent's id is prepended
        pytest.param("on_failure", ChildSpec(name="c", args=["a"]), None, raised(ValueError),
                     Envelope(name="c", args=[JOB_ID, "a"], queue="default", parent_id=JOB_ID, root_id=JOB_ID), id="failure-prepends-id"),
        pytest.param("on_failure", ChildSpec(name="c", args=["a"]), 7, NotRunnable(NOT_RUNNABLE),
                     Envelope(name="c", args=[JOB_ID, "a"], queue="default", parent_id=JOB_ID, root_id=7), id="failure-keeps-root_id"),
        pytest.param("on_failure", ChildSpec(name="c", args=["a"], immutable=True), None, WorkerLost(LEASE_WHY),
                     Envelope(name="c", args=["a"], queue="default", parent_id=JOB_ID, root_id=JOB_ID), id="failure-immutable-unchanged"),
        pytest.param("on_failure", RICH, None, Frozen(),
                     Envelope(name="notify", args=[JOB_ID, "a"], kwargs={"k": 1}, queue="mail", priority=5, max_attempts=4, key="k-1",
                              timeout=3.0, hard_timeout=9.0, parent_id=JOB_ID, root_id=JOB_ID, meta={"m": 1}), id="failure-copies-spec-fields"),
    ],
)  # fmt: skip
def test_children(which: str, spec: ChildSpec, root_id: int | None, event: Any, want: Envelope) -> None:
    item = attempt(callbacks=Callbacks(**{which: (spec,)}), root_id=root_id, lost=LOST3.max_lost - 1)
    outcome = decide(item, LOST3, event, now=NOW)
    assert outcome.state == State.FAILED
    assert outcome.children == (want,)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(raised(ValueError), id="Raised"),
        pytest.param(NotRunnable(NOT_RUNNABLE), id="NotRunnable"),
        pytest.param(RetryRequested(err("Retry", "later")), id="RetryRequested"),
    ],
)
def test_on_failure_children_that_cannot_be_enqueued_still_fail_the_job(event: Any) -> None:
    item = attempt(callbacks=Callbacks(on_failure=(ChildSpec(name="c", args=["y" * 100]),)))
    outcome = decide(item, Policy(max_payload=50), event, now=NOW)
    assert outcome.state == State.FAILED and outcome.children == ()
    assert outcome.error is not None
    assert outcome.error.type == event.error.type  # the original error, explained further
    assert "(its on_failure chained jobs cannot be enqueued: " in outcome.error.message
    assert "on_failure[0]" in outcome.error.message


# --- RetryRequested with new arguments --------------------------------------------------------


@pytest.mark.parametrize(
    ("new_args", "new_kwargs", "args", "kwargs"),
    [
        pytest.param(None, None, None, None, id="keeps-the-row's"),
        pytest.param([3, "b"], None, b'[3,"b"]', None, id="new-args"),
        pytest.param(None, {"x": 1}, None, b'{"x":1}', id="new-kwargs"),
        pytest.param([3], {"x": [1, 2]}, b"[3]", b'{"x":[1,2]}', id="both"),
        pytest.param([], None, b"[]", None, id="empty-args"),
    ],
)
def test_retry_with_new_arguments(new_args: Any, new_kwargs: Any, args: bytes | None, kwargs: bytes | None) -> None:
    item = attempt()
    event = RetryRequested(err("Retry", "later"), delay=5.0, args=new_args, kwargs=new_kwargs)
    outcome = decide(item, THREE, event, now=NOW)
    assert (outcome.state, outcome.attempt, outcome.run_at) == (State.QUEUED, 1, NOW + 5)
    assert (outcome.args, outcome.kwargs) == (args, kwargs)


@pytest.mark.parametrize(
    ("new_args", "new_kwargs", "error", "message"),
    [
        pytest.param([object()], None, "SerializationError", "the retry arguments of jobs.add cannot be encoded", id="args-not-json"),
        pytest.param(None, {"x": object()}, "SerializationError", "the retry keyword arguments of jobs.add cannot be encoded", id="kwargs-not-json"),
        pytest.param(["y" * 100], None, "PayloadTooLarge", "the retry arguments of jobs.add are 104 bytes of JSON; the limit is 50", id="args-too-large"),
        pytest.param(None, {"x": "y" * 100}, "PayloadTooLarge", "the retry keyword arguments of jobs.add are", id="kwargs-too-large"),
    ],
)  # fmt: skip
def test_retry_with_new_arguments_that_cannot_be_stored(new_args: Any, new_kwargs: Any, error: str, message: str) -> None:
    item = attempt()
    event = RetryRequested(err("Retry", "later"), args=new_args, kwargs=new_kwargs)
    outcome = decide(item, Policy(max_attempts=3, max_payload=50), event, now=NOW)
    check(outcome, item, Want(F, 1, error=error, message=message, children=("cleanup",)))


# --- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "attempt_no", "raw"),
    [
        pytest.param(Backoff(base=1, cap=300, jitter=True), 1, 1.0, id="jitter-attempt1"),
        pytest.param(Backoff(base=1, cap=300, jitter=True), 2, 2.0, id="jitter-attempt2"),
        pytest.param(Backoff(base=1, cap=300, jitter=True), 5, 16.0, id="jitter-attempt5"),
        pytest.param(Backoff(base=1, cap=300, jitter=True), 10, 300.0, id="jitter-capped"),
        pytest.param(Backoff(base=1, cap=300, jitter=True), 10_000, 300.0, id="jitter-huge-attempt-capped"),
        pytest.param(Backoff(base=0.5, cap=3, jitter=True), 3, 2.0, id="jitter-base-half"),
    ],
)
@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_backoff_with_jitter_is_between_half_and_raw(backoff: Backoff, attempt_no: int, raw: float, rand: float) -> None:
    policy = Policy(max_attempts=INT32_MAX, backoff=backoff)
    outcome = decide(attempt(attempt=attempt_no), policy, raised(ValueError), now=NOW, rand=rand)
    assert outcome.state == State.QUEUED
    assert outcome.run_at is not None
    wait = outcome.run_at - NOW
    assert raw / 2 <= wait <= raw
    assert wait == pytest.approx(raw / 2 + rand * raw / 2)
    assert wait == pytest.approx(backoff.delay(attempt_no, rand))


def test_backoff_jitter_spreads_between_rand_0_and_rand_0999() -> None:
    policy = Policy(max_attempts=3, backoff=Backoff(base=1, cap=300, jitter=True))
    low = decide(attempt(attempt=2), policy, raised(ValueError), now=NOW, rand=0.0)
    high = decide(attempt(attempt=2), policy, raised(ValueError), now=NOW, rand=0.999)
    assert low.run_at == NOW + 1.0  # raw / 2
    assert high.run_at is not None and NOW + 1.99 < high.run_at < NOW + 2.0  # just under raw


@pytest.mark.parametrize(
    ("backoff", "attempt_no", "wait"),
    [
        pytest.param(Backoff(base=1, cap=300, jitter=False), 1, 1.0, id="attempt1"),
        pytest.param(Backoff(base=1, cap=300, jitter=False), 4, 8.0, id="attempt4"),
        pytest.param(Backoff(base=1, cap=300, jitter=False), 9, 256.0, id="attempt9-under-cap"),
        pytest.param(Backoff(base=1, cap=300, jitter=False), 10, 300.0, id="attempt10-capped"),
        pytest.param(Backoff(base=3, cap=10, jitter=False), 2, 6.0, id="base3"),
        pytest.param(Backoff(base=3, cap=10, jitter=False), 3, 10.0, id="base3-capped"),
        pytest.param(Backoff(base=0, cap=10, jitter=False), 3, 0.0, id="base0"),
    ],
)
@pytest.mark.parametrize("rand", [0.0, 0.999])
def test_backoff_without_jitter_is_exact(backoff: Backoff, attempt_no: int, wait: float, rand: float) -> None:
    policy = Policy(max_attempts=INT32_MAX, backoff=backoff)
    for event in (raised(ValueError), SoftTimeout(1.0), HardKilled(1.0), RetryRequested(err("Retry", "later"))):
        outcome = decide(attempt(attempt=attempt_no), policy, event, now=NOW, rand=rand)
        assert outcome.state == State.QUEUED
        assert outcome.run_at == NOW + wait


# --- timeouts are TimeoutErrors -----------------------------------------------------------


@pytest.mark.parametrize("exc_type", [JobTimeout, TimeLimitExceeded])
def test_runner_timeouts_are_timeout_errors(exc_type: type[BaseException]) -> None:
    assert issubclass(exc_type, TimeoutError)
    assert THREE_TIMEOUT.retries(exc_type)
    assert not THREE_VALUE.retries(exc_type)


# --- before_run ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "policy", "want"),
    [
        pytest.param({}, ONE, None, id="may-run"),
        pytest.param({"expires_at": 2000.0}, ONE, None, id="not-yet-expired"),
        pytest.param({"expires_at": NOW}, ONE, None, id="expires-exactly-now-may-run"),
        pytest.param({"expires_at": 999.0}, ONE, Expired(), id="expired"),
        pytest.param({"expires_at": 999.0, "attempt": 99}, ONE, Expired(), id="expired-wins-over-counter"),
        pytest.param({"attempt": 3}, THREE, None, id="last-attempt-may-run"),
        pytest.param({"attempt": 4}, THREE, "attempt counter 4 is past max_attempts 3", id="counter-past-policy"),
        pytest.param({"attempt": 2}, ONE, "attempt counter 2 is past max_attempts 1", id="counter-past-default"),
        pytest.param({"attempt": 5, "max_attempts": 5}, ONE, None, id="row-max_attempts-overrides"),
        pytest.param({"attempt": 6, "max_attempts": 5}, THREE, "attempt counter 6 is past max_attempts 5", id="counter-past-row-max_attempts"),
        pytest.param({"attempt": INT32_MAX}, THREE, f"attempt counter {INT32_MAX} is past max_attempts 3", id="counter-int32-max"),
    ],
)  # fmt: skip
def test_before_run(changes: dict[str, Any], policy: Policy, want: Any) -> None:
    item = attempt(**changes)
    early = before_run(item, policy, NOW)
    if isinstance(want, str):
        assert isinstance(early, NotRunnable)
        assert early.error.type == "SerializationError"
        assert want in early.error.message
        assert early.error.attempt == item.attempt
        # and decide fails it, with its on_failure children
        check(
            decide(item, policy, early, now=NOW),
            item,
            Want(F, item.attempt, error="SerializationError", message=want, children=("cleanup",)),
        )
    else:
        assert early == want
        if want is not None:
            check(
                decide(item, policy, early, now=NOW),
                item,
                Want(State.EXPIRED, item.attempt - 1, error="Expired", message="before it started"),
            )


# --- purity: same inputs, same outcome; never raises -------------------------------------

ITEMS = [
    pytest.param(attempt(expires_at=2000.0), id="first-attempt"),
    pytest.param(attempt(attempt=3, max_attempts=3, lost=4, expires_at=999.0, root_id=5), id="last-attempt"),
    pytest.param(attempt(attempt=0, lost=INT32_MAX, expires_at=1.0), id="extreme-counters"),
    pytest.param(bad_row(), id="bad-row"),
]

POLICIES = [
    pytest.param(ONE, id="one"),
    pytest.param(
        Policy(max_attempts=5, retry_on=(ValueError,), backoff=Backoff(base=1, cap=300, jitter=True), max_lost=1),
        id="five-jitter",
    ),
    pytest.param(Policy(max_attempts=5, ignore_result=True, max_result=1, max_payload=1), id="tiny-limits"),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("item", ITEMS)
@pytest.mark.parametrize("event", EVERY_EVENT)
def test_decide_is_pure_and_never_raises(event: Any, item: Attempt | BadRow, policy: Policy) -> None:
    before = msgspec.structs.asdict(item)
    first = decide(item, policy, event, now=NOW, rand=0.25)
    second = decide(item, policy, event, now=NOW, rand=0.25)
    assert isinstance(first, Outcome)
    assert first == second
    assert msgspec.structs.asdict(item) == before  # the input is not touched
    assert first.state in State.ALL and first.state != State.RUNNING
    assert 0 <= first.attempt <= INT32_MAX and 0 <= first.lost <= INT32_MAX
    assert first.record.worker == OWNER and first.record.finished_at == NOW


@pytest.mark.parametrize("policy", POLICIES)
def test_expired_without_expires_at_does_not_raise(policy: Policy) -> None:
    item = attempt(expires_at=None)
    outcome = decide(item, policy, Expired(), now=NOW)
    assert (outcome.state, outcome.attempt) == (State.EXPIRED, 0)


def test_failed_instead_drops_everything_but_the_failure() -> None:
    item = attempt()
    outcome = decide(item, ONE, RetryRequested(err("Retry", "later")), now=NOW)
    ok = decide(item, THREE, RetryRequested(err("Retry", "later"), args=[9]), now=NOW)
    assert ok.args == b"[9]" and outcome.state == State.FAILED
    error = ErrorInfo(type="PayloadTooLarge", message="children too large")
    failed = ok.failed_instead(error, now=NOW + 1)
    assert (failed.state, failed.error, failed.run_at, failed.finished_at) == (State.FAILED, error, None, NOW + 1)
    assert (failed.args, failed.kwargs, failed.result, failed.children) == (None, None, None, ())
    assert failed.record.outcome == State.FAILED and failed.record.error == error and failed.record.finished_at == NOW + 1
    assert (failed.attempt, failed.lost, failed.job_id, failed.token) == (ok.attempt, ok.lost, ok.job_id, ok.token)


def test_a_bare_retry_with_no_attempts_left_says_so_once() -> None:
    """``raise Retry(delay=60)`` on a job with the default retries=0: the message says why it
    failed (no attempts left) without repeating Retry's default reason."""
    item = attempt()
    outcome = decide(item, Policy(), RetryRequested(err("Retry", "retry requested"), delay=60), now=NOW)
    assert outcome.state == State.FAILED and outcome.error is not None
    assert outcome.error.message.startswith("retry requested, but no attempts were left (attempt 1 of 1;"), outcome.error.message
