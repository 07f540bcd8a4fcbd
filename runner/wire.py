"""The queue protocol: what a producer writes (``Envelope``), what a worker runs (``Attempt``),
and what each attempt leaves behind (``ErrorInfo``, ``AttemptRecord``).

Three layers, each plain frozen msgspec data with a version field, so old rows and new workers
(or the reverse) can meet during a rolling upgrade:

1. ``Envelope`` -- one job as a producer asks for it; maps column for column onto
   ``runner_jobs``. Arguments are JSON, so a row is readable in SQL and any language can enqueue
   with one ``INSERT``. Nothing here is ever pickled.
2. ``Attempt`` -- a claimed row, decoded once (``rows.py``) into typed fields: everything the
   worker needs to run it, decide its outcome and write that outcome back. A row that cannot be
   decoded becomes a ``BadRow`` instead, a value naming the column and what is accepted.
3. The supervisor <-> worker frames live in ``frames.py``.

System fields have their own columns (``timeout``, ``hard_timeout``, ``callbacks``,
``attempts``); ``meta`` belongs to the user alone. New fields always get defaults (msgspec's
schema-evolution rule) and decoders are built once, at import.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from .errors import PayloadTooLarge, SerializationError

__all__ = [
    "MAX_DEPTH",
    "MAX_HISTORY",
    "PROTOCOL_VERSION",
    "Attempt",
    "AttemptRecord",
    "BadRow",
    "Callbacks",
    "ChildSpec",
    "Cost",
    "Envelope",
    "ErrorInfo",
    "PlainEnvelope",
    "State",
    "amend",
    "check_depth",
    "decode_json",
    "encode_json",
    "encode_json_bytes",
]

PROTOCOL_VERSION: Final = 1  # the newest envelope version this code reads and writes
MAX_DEPTH: Final = 64  # deepest nesting of lists/objects accepted in any JSON column
MAX_HISTORY: Final = 20  # attempts kept in a row's history (the oldest are dropped)

Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
PositiveInt32 = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class State:
    """Job states as stored in ``runner_jobs.state``."""

    WAITING: Final = "waiting"  # waits for parents (runner_deps) to finish: a workflow's later step
    QUEUED: Final = "queued"  # waiting for run_at to pass and a worker to claim it
    RUNNING: Final = "running"  # leased by one worker; lease_token fences every later write
    SUCCEEDED: Final = "succeeded"  # finished; result holds the JSON return value
    FAILED: Final = "failed"  # out of attempts or not runnable; error says why
    CANCELLED: Final = "cancelled"  # cancelled by a person or a producer
    EXPIRED: Final = "expired"  # expires_at passed before any worker started it

    ALL: Final = ("waiting", "queued", "running", "succeeded", "failed", "cancelled", "expired")
    FINAL: Final = ("succeeded", "failed", "cancelled", "expired")


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A job to enqueue when its parent fails for good (an errback): it gets the parent's id
    prepended to its arguments unless ``immutable``. (What runs *after success* is a workflow
    step instead -- a row that waits for its parent, see ``workflows.py``.)"""

    name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None  # None: the parent's queue
    priority: Int32 = 0
    max_attempts: PositiveInt32 | None = None
    key: str | None = None
    timeout: Seconds | None = None
    hard_timeout: Seconds | None = None
    meta: dict[str, Any] | None = None
    immutable: bool = False


class Callbacks(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What ``runner_jobs.callbacks`` holds: the jobs to enqueue in the transaction that fails
    this one for good."""

    on_failure: tuple[ChildSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.on_failure)


NO_CALLBACKS: Final = Callbacks()


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One job as a producer asks for it; maps column for column onto ``runner_jobs``.
    ``gc=False``: a bulk enqueue makes tens of thousands at once, and an Envelope can never be
    part of a reference cycle (it holds JSON values), so the collector need not track it."""

    v: int = PROTOCOL_VERSION
    name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str = "default"
    priority: int = 0  # higher runs sooner within a queue
    max_attempts: int | None = None  # None: the job's own default
    run_at: float | None = None  # epoch seconds; None = now
    expires_at: float | None = None  # epoch seconds; None = never
    key: str | None = None  # idempotency key: one live job per key
    key_ttl: float | None = None  # not a column: also dedupe against a success this recent (s)
    timeout: float | None = None  # soft limit of this call, seconds (None: the job's own)
    hard_timeout: float | None = None  # hard limit of this call, seconds (None: the job's own)
    concurrency_key: str | None = None  # limits.py: at most concurrency_limit running per key
    concurrency_limit: int | None = None
    rate_key: str | None = None  # at most rate_limit starts per rate_period seconds per key
    rate_limit: int | None = None
    rate_period: float | None = None
    parent_id: int | None = None
    root_id: int | None = None
    meta: dict[str, Any] | None = None  # the user's own; runner never reads it
    callbacks: Callbacks | None = None
    # Workflows (workflows.py): wait for these jobs -- ids that exist, or the positions of
    # envelopes earlier in the same enqueue -- and then run, with their results if asked.
    after: tuple[int, ...] = ()
    after_batch: tuple[int, ...] = ()
    on_parent_failure: str | None = None  # "fail" (default), "cancel" or "run"
    with_results: str | None = None  # "one" (prepend the parent's result) or "list" (of all, in order)
    group_id: str | None = None


class PlainEnvelope(Envelope, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """An Envelope that sets no option: a call made with none, of a job with no limits or
    expiry, so only name, arguments, queue and priority. A type of its own so a bulk write sees
    that per row with one type check and sends just those columns (``sql.plain_rows``) instead
    of looking at twenty option fields of every row."""


def amend(env: Envelope, **changes: Any) -> Envelope:
    """``env`` with ``changes``, always as a full Envelope. (``msgspec.structs.replace`` keeps
    the type, and a PlainEnvelope that set an option would have the option dropped by the
    bulk path, which writes only a plain row's columns: use this, never ``replace``, on envelopes.)"""
    return Envelope(**{**msgspec.structs.asdict(env), **changes})


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What ``runner_jobs.error`` holds: enough for a person (and ``JobFailed``) to act on."""

    type: str
    message: str
    traceback: str = ""
    attempt: int = 0


class Cost(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one attempt of a session-taking job did to its database, measured on the attempt's
    own session (one session per attempt makes it exact; ``runner/cost.py``). Times are in
    milliseconds. Runner's own completion write is not included."""

    statements: int = 0  # statements the job's session sent (BEGIN included on SQLite)
    db_ms: float = 0.0  # time spent inside those statements
    rows: int = 0  # rows returned by queries plus rows affected by writes
    tx_ms: float = 0.0  # the transaction's length: from its start until the job returned
    pool_wait_ms: float = 0.0  # waiting for a connection (the pool; on SQLite also the writer lock)


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One entry of ``runner_jobs.attempts``, the job's bounded history (newest last): who ran
    the attempt, when, how it ended, and the error if it did not succeed."""

    attempt: int
    worker: str
    started_at: float
    finished_at: float
    outcome: str  # the state the row moved to: succeeded, failed, queued (retry/given back), ...
    error: ErrorInfo | None = None
    note: str = ""  # "given back at shutdown", "worker lost", ...
    cost: Cost | None = None  # session-taking jobs: what the attempt cost the database


class Attempt(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A claimed row, decoded once: every value typed and checked, so nothing downstream parses
    a column again. Built only by ``rows.decode_row``."""

    id: int
    token: int  # the fencing token this attempt holds; every write it makes is guarded by it
    owner: str  # the worker holding the lease
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    attempt: int  # 1 for the first attempt
    max_attempts: int | None  # the row's override; None: the job's policy
    lost: int  # workers that died holding this job so far
    run_at: float
    expires_at: float | None
    timeout: float | None
    hard_timeout: float | None
    key: str | None
    parent_id: int | None
    root_id: int | None
    meta: dict[str, Any]
    callbacks: Callbacks
    created_at: float
    started_at: float
    with_results: str | None = None  # "one" / "list": prepend its parents' results (workflows.py)


class BadRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A claimed row that cannot become an ``Attempt``; failed alone by ``decide``, with a
    message that names the column and what is accepted."""

    id: int
    token: int
    owner: str
    name: str
    attempt: int
    lost: int
    queue: str
    started_at: float
    error: ErrorInfo


# --- JSON for arguments, results, progress and the system columns ----------------------------

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()

ACCEPTED_VALUES: Final = (
    "None, bool, int, float, str, list, tuple, dict with str keys, datetime, date, time, UUID, "
    "Decimal, enum, dataclass, msgspec.Struct"
)


def encode_json_bytes(value: Any, what: str = "value") -> bytes:
    """Encode to JSON bytes, naming ``what`` in the error so the message points at the culprit."""
    try:
        return _json_encoder.encode(value)
    except RecursionError:
        raise SerializationError(f"{what} nests deeper than {MAX_DEPTH} levels; accepted: at most {MAX_DEPTH}") from None
    except (TypeError, msgspec.EncodeError, OverflowError, ValueError) as exc:
        raise SerializationError(f"{what} cannot be encoded as JSON ({exc}); accepted: {ACCEPTED_VALUES}") from None


def encode_json(value: Any, what: str = "value") -> str:
    return encode_json_bytes(value, what).decode()


def decode_json(text: str | bytes | None, what: str = "value") -> Any:
    """Decode JSON text; any failure (bad UTF-8, bad syntax, nesting deeper than ``MAX_DEPTH``)
    is a ``SerializationError`` naming ``what``."""
    if text is None:
        return None
    try:
        value = _json_decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise SerializationError(f"{what} nests deeper than {MAX_DEPTH} levels; accepted: at most {MAX_DEPTH}") from None
    if _may_be_deep(text):
        check_depth(value, what)
    return value


def _may_be_deep(text: str | bytes) -> bool:
    """A cheap bound: a document with few brackets cannot nest deeply."""
    if isinstance(text, str):
        return text.count("[") + text.count("{") > MAX_DEPTH
    return text.count(b"[") + text.count(b"{") > MAX_DEPTH


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise ``SerializationError`` if lists/dicts in ``value`` nest deeper than ``limit``.
    Iterative, so a hostile value cannot exhaust the stack while being checked."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise SerializationError(f"{what} nests deeper than {limit} levels; accepted: at most {limit}")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


def check_size(size: int, limit: int, what: str, hint: str = "") -> None:
    if size > limit:
        raise PayloadTooLarge(f"{what} are {size:,} bytes of JSON; the limit is {limit:,} (--max-payload){hint}")
