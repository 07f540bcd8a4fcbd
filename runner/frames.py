"""Supervisor <-> worker frames: length-prefixed (4-byte big-endian) msgpack of tagged Structs.

Upwards: ``Ready``, ``Heartbeat``, ``Started`` (job, hard deadline), ``Finished``, ``Stopped``
(why, typed). Downwards: ``Drain`` and ``Stop``. The supervisor acts on ``Stopped.reason``:
a crash is restarted with backoff, never taken for a drain.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Final

import msgspec

__all__ = [
    "Drain",
    "Finished",
    "Frame",
    "FrameReader",
    "Heartbeat",
    "Ready",
    "Started",
    "Stop",
    "StopReason",
    "Stopped",
    "decode_frame",
    "encode_frame",
]


class StopReason(StrEnum):
    """Why a worker leaves. The supervisor replaces RECYCLED at once, restarts CRASHED and
    STARTUP_FAILED with backoff (and gives up on a slot that never gets ready), and lets the
    others go."""

    DRAINED = "drained"  # asked to stop (Drain/Stop frame, SIGTERM to the worker)
    BURST_DONE = "burst_done"  # --burst: nothing runnable or running anywhere
    RECYCLED = "recycled"  # --max-jobs-per-worker / --max-memory-per-worker
    ORPHANED = "orphaned"  # the supervisor is gone
    CRASHED = "crashed"  # a bug after Ready: restart
    STARTUP_FAILED = "startup_failed"  # never got Ready (database away, a lifespan hook raised)

    @property
    def wants_replacement(self) -> bool:
        return self in (StopReason.RECYCLED, StopReason.CRASHED, StopReason.STARTUP_FAILED)


class Ready(msgspec.Struct, frozen=True, tag=True):
    """The loop, engine and startup hooks are up; claiming begins."""

    pid: int
    slot: int


class Heartbeat(msgspec.Struct, frozen=True, tag=True):
    """Sent every second from inside the loop: proof the loop still turns."""


class Started(msgspec.Struct, frozen=True, tag=True):
    """Job started; kill me if it is still running at ``hard_deadline`` (epoch seconds).
    ``limit`` is the hard limit itself, so the message on the job names it exactly."""

    job_id: int
    hard_deadline: float
    limit: float


class Finished(msgspec.Struct, frozen=True, tag=True):
    """A job announced with ``Started`` is over."""

    job_id: int


class Stopped(msgspec.Struct, frozen=True, tag=True):
    """Leaving, and why; ``detail`` is the log line a person needs (the exception, the hook)."""

    reason: StopReason
    detail: str = ""


class Drain(msgspec.Struct, frozen=True, tag=True):
    """Stop claiming, finish in-flight jobs within ``grace``, give the rest back."""

    grace: float


class Stop(msgspec.Struct, frozen=True, tag=True):
    """Fast stop: cancel in-flight jobs now and give them back."""


Frame = Ready | Heartbeat | Started | Finished | Stopped | Drain | Stop

_HEADER = struct.Struct(">I")
MAX_FRAME: Final = 1 << 20
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    return _HEADER.pack(len(body)) + body


def decode_frame(body: bytes) -> Frame:
    """Decode one frame body; raises ``msgspec.DecodeError`` (or ``ValidationError``) on junk."""
    return _decoder.decode(body)


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
