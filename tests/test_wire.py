"""The wire format: frames survive arbitrary chunking; junk is rejected, never half-decoded."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.wire import Drain, FrameReader, Heartbeat, Ready, Started, Stop, Stopped, decode_frame, encode_frame


FRAMES = [Ready(1, 0), Heartbeat(3, 9, 1234), Started(7, 123.5), Stopped("burst", False), Drain(30.0), Stop()]


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_frames_round_trip_through_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in FRAMES)
    reader, got, pos, i = FrameReader(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert got == FRAMES


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_junk_frames_raise_decode_errors_only(body: bytes) -> None:
    try:
        decode_frame(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        FrameReader().feed(b"\xff\xff\xff\xff")
