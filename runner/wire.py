"""The queue protocol: the job envelope, the job states, and the supervisor <-> worker frames.

Three layers, each plain frozen msgspec data with a version field so that old rows and new
workers (or the reverse) can meet during a rolling upgrade:

1. ``Envelope`` -- what a producer asks for. Arguments are JSON, so a row is readable in SQL and
   any language can enqueue with one ``INSERT``. Nothing here is ever pickled.
2. ``State`` -- ``queued -> running(lease) -> succeeded | failed | cancelled | expired``, plus
   ``running -> queued`` for a retry or a lost lease. Every move is one guarded SQL statement
   (``store/claim.py``, ``store/finish.py``).
3. ``Frame`` -- length-prefixed msgpack frames on the socketpair between the supervisor and each
   worker: ``Ready``, ``Heartbeat``, ``Started`` (job, hard deadline), ``Finished``, ``Stopped``
   upwards; ``Drain`` and ``Stop`` downwards.

New fields always get defaults (msgspec's schema-evolution rule), and decoders are built once.
"""

from __future__ import annotations

import struct
from typing import Any, Final, Union

import msgspec

from .errors import SerializationError

__all__ = [
    "FINISHED_STATES",
    "PROTOCOL_VERSION",
    "Claimed",
    "Drain",
    "Envelope",
    "ErrorInfo",
    "Finished",
    "Frame",
    "FrameReader",
    "Heartbeat",
    "Ready",
    "Started",
    "State",
    "Stop",
    "Stopped",
    "decode_frame",
    "decode_json",
    "encode_frame",
    "encode_json",
]

PROTOCOL_VERSION: Final = 1


class State:
    """Job states as stored in ``runner_jobs.state``."""

    QUEUED: Final = "queued"  # waiting for run_at to pass and a worker to claim it
    RUNNING: Final = "running"  # leased by one worker; lease_token fences every later write
    SUCCEEDED: Final = "succeeded"  # finished; result holds the JSON return value
    FAILED: Final = "failed"  # out of attempts or not runnable; error says why
    CANCELLED: Final = "cancelled"  # cancelled by a person or a producer
    EXPIRED: Final = "expired"  # expires_at passed before any worker started it

    ALL: Final = ("queued", "running", "succeeded", "failed", "cancelled", "expired")


FINISHED_STATES: Final = frozenset({"succeeded", "failed", "cancelled", "expired"})


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One job as a producer asks for it; maps column-for-column onto ``runner_jobs``.
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
    parent_id: int | None = None
    root_id: int | None = None
    meta: dict[str, Any] | None = None  # headers, callbacks, per-call limits


class Claimed(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A row as a claim returns it: arguments still raw text, decoded later by the executor,
    so a row that cannot be decoded still belongs to someone who can mark it failed."""

    id: int
    name: str
    args: str | None
    kwargs: str | None
    queue: str
    attempt: int
    max_attempts: int | None
    lease_token: int
    expires_at: float | None
    parent_id: int | None
    root_id: int | None
    meta: str | None
    created_at: float
    run_at: float


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``runner_jobs.error`` holds: enough for a person (and ``JobFailed``) to act on."""

    type: str
    message: str
    traceback: str = ""
    attempt: int = 0


# --- supervisor <-> worker frames -----------------------------------------------------------


class Ready(msgspec.Struct, frozen=True, tag=True):
    """Worker -> supervisor: the loop, engine and startup hooks are up; claiming begins."""

    pid: int
    slot: int


class Heartbeat(msgspec.Struct, frozen=True, tag=True):
    """Worker -> supervisor, every second from inside the loop: proof the loop still turns."""

    running: int
    done: int
    rss_kb: int = 0


class Started(msgspec.Struct, frozen=True, tag=True):
    """Worker -> supervisor: job started; kill me if it is still running at ``hard_deadline``.
    ``limit`` is the hard limit itself, so the message on the job names it exactly."""

    job_id: int
    hard_deadline: float
    limit: float = 0.0


class Finished(msgspec.Struct, frozen=True, tag=True):
    """Worker -> supervisor: a job announced with ``Started`` is over."""

    job_id: int


class Stopped(msgspec.Struct, frozen=True, tag=True):
    """Worker -> supervisor: leaving on purpose (drained, recycled or broken); replace me unless
    the supervisor itself is stopping."""

    reason: str
    replace: bool = True


class Drain(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> worker: stop claiming, finish in-flight jobs within ``grace``, re-queue the rest."""

    grace: float


class Stop(msgspec.Struct, frozen=True, tag=True):
    """Supervisor -> worker: fast stop; cancel in-flight jobs now and re-queue them."""


Frame = Union[Ready, Heartbeat, Started, Finished, Stopped, Drain, Stop]

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20
_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    body = _frame_encoder.encode(frame)
    return _HEADER.pack(len(body)) + body


def decode_frame(body: bytes) -> Frame:
    """Decode one frame body; raises ``msgspec.DecodeError`` (or ``ValidationError``) on junk."""
    return _frame_decoder.decode(body)


class FrameReader:
    """Reassembles length-prefixed frames from a byte stream that arrives in arbitrary chunks."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
            frames.append(decode_frame(body))
        return frames


# --- JSON for arguments, results and progress ------------------------------------------------

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


def encode_json(value: Any, what: str = "value") -> str:
    """Encode to JSON text, naming ``what`` in the error so the message points at the culprit."""
    try:
        return _json_encoder.encode(value).decode()
    except (TypeError, msgspec.EncodeError, OverflowError, ValueError) as exc:
        raise SerializationError(
            f"{what} cannot be encoded as JSON ({exc}); accepted: None, bool, int, float, str, "
            "list, tuple, dict with str keys, datetime, date, UUID, Decimal, enum, dataclass, msgspec.Struct"
        ) from exc


def decode_json(text: str | bytes | None, what: str = "value") -> Any:
    if text is None:
        return None
    try:
        return _json_decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} is not valid JSON ({exc})") from exc
