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


# -- argument binding and row decoding: any JSON, only the documented errors ---------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@given(st.lists(JSON, max_size=4), st.dictionaries(st.text(max_size=6), JSON, max_size=4))
@settings(max_examples=300, deadline=None)
def test_binding_any_json_gives_arguments_or_arguments_error(args: list[object], kwargs: dict[str, object]) -> None:
    from runner.errors import ArgumentsError
    from tests.apps import basic

    for job in (basic.add, basic.record, basic.noop, basic.flaky):
        try:
            job.bind(args, kwargs)
        except ArgumentsError as exc:
            assert str(exc).startswith(f"arguments do not match {job.name}(")


@given(st.one_of(st.binary(max_size=40).map(lambda b: b.decode("latin-1")), JSON.map(lambda v: msgspec.json.encode(v).decode())))
@settings(max_examples=300, deadline=None)
def test_decoding_any_row_text_gives_values_or_serialization_error(text: str) -> None:
    from runner.errors import PayloadTooLarge, SerializationError
    from runner.executor import Executor
    from runner.wire import Claimed

    executor = Executor.__new__(Executor)
    executor.max_payload = 1 << 20
    row = Claimed(1, "tests.apps.basic.add", text, text, "default", 1, None, 1, None, None, None, text, 0.0, 0.0)
    try:
        args, kwargs, meta = executor._decode(row)
    except (SerializationError, PayloadTooLarge) as exc:
        assert "column" in str(exc) or "limit" in str(exc)
    else:
        assert isinstance(args, list) and isinstance(kwargs, dict) and isinstance(meta, dict)
