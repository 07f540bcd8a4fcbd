"""The wire format: frames survive arbitrary chunking; junk is rejected, never half-decoded."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.frames import Drain, FrameReader, Heartbeat, Ready, Started, Stop, Stopped, StopReason, decode_frame, encode_frame
from runner.rows import CLAIM_COLUMNS, decode_row

FRAMES = [Ready(1, 0), Heartbeat(), Started(7, 123.5, 1.0), Stopped(StopReason.CRASHED, "boom"), Drain(30.0), Stop()]


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


def _row(
    name: object, args: object, kwargs: object, meta: object, callbacks: object = None, **columns: object
) -> tuple[object, ...]:
    """A claimed row in CLAIM_COLUMNS order, with any values in its columns."""
    values = {
        "id": 1, "lease_token": 1, "lease_owner": "fuzz:1:0", "v": 1, "name": name, "args": args, "kwargs": kwargs,
        "queue": "default", "priority": 0, "attempt": 1, "max_attempts": None, "lost": 0, "run_at": 0.0,
        "expires_at": None, "timeout": None, "hard_timeout": None, "key": None, "parent_id": None, "root_id": None,
        "meta": meta, "callbacks": callbacks, "created_at": 0.0, "started_at": 0.0, "with_results": None,
    }  # fmt: skip
    values.update(columns)
    return tuple(values[c] for c in CLAIM_COLUMNS)


ANY_COLUMN = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20), st.text(max_size=10),
    JSON.map(lambda v: msgspec.json.encode(v).decode()),
)  # fmt: skip


@given(st.one_of(st.binary(max_size=40).map(lambda b: b.decode("latin-1")), JSON.map(lambda v: msgspec.json.encode(v).decode())))
@settings(max_examples=300, deadline=None)
def test_decoding_any_row_text_gives_an_attempt_or_a_bad_row(text: str) -> None:
    from runner.wire import Attempt, BadRow

    item = decode_row(_row("tests.apps.basic.add", text, text, text, text), 1 << 20)
    if isinstance(item, BadRow):
        assert "column" in item.error.message or "limit" in item.error.message, item.error
    else:
        assert isinstance(item, Attempt) and isinstance(item.args, list) and isinstance(item.kwargs, dict)


@given(st.dictionaries(st.sampled_from(CLAIM_COLUMNS), ANY_COLUMN, max_size=6))
@settings(max_examples=500, deadline=None)
def test_any_value_in_any_column_decodes_to_a_value_never_an_exception(columns: dict[str, object]) -> None:
    from runner.wire import Attempt, BadRow

    base = dict(zip(CLAIM_COLUMNS, _row("x", "[]", "{}", None)))
    base.update(columns)
    item = decode_row(tuple(base[c] for c in CLAIM_COLUMNS), 1 << 20)
    assert isinstance(item, (Attempt, BadRow))


# -- a whole attempt on an arbitrary row: always an Outcome, never an exception ---------------------

CHAIN_VALUE = st.one_of(JSON, st.integers(min_value=-(2**40), max_value=2**40))
CHAIN_SPEC = st.fixed_dictionaries(
    {"name": st.one_of(st.just("tests.apps.basic.noop"), JSON)},
    optional=dict.fromkeys(
        ("args", "kwargs", "queue", "priority", "max_attempts", "key", "meta", "immutable", "timeout"), CHAIN_VALUE
    ),
)
CHAINS = st.one_of(JSON, st.lists(st.one_of(CHAIN_SPEC, CHAIN_SPEC, JSON), max_size=3))
CALLBACKS = st.fixed_dictionaries({}, optional={"on_failure": CHAINS})
ROW_TEXT = st.one_of(
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")), JSON.map(lambda v: msgspec.json.encode(v).decode())
)
_encode = lambda v: msgspec.json.encode(v).decode()
# Weighted towards rows that bind and run, so that the outcome paths (results, chains) get fuzzed
# as much as the decoding ones.
NAMES = st.sampled_from(
    [
        "tests.apps.basic.add", "tests.apps.basic.noop", "tests.apps.basic.noop", "tests.apps.basic.parent_of_chain",
        "tests.apps.basic.boom", "tests.apps.basic.boom", "tests.apps.basic.only_keyerror_retries",
        "tests.apps.basic.unencodable", "tests.apps.basic.raises_bad_str", "os.system", "", "tests.apps.basic.add'; --",
    ]
)  # fmt: skip
ARGS = st.one_of(st.sampled_from(["[]", "[1, 2]", "[3]", '["x"]']), ROW_TEXT, st.lists(JSON, max_size=3).map(_encode))
KWARGS = st.one_of(st.sampled_from(["{}", ""]), ROW_TEXT)
META_TEXT = st.one_of(st.none(), ROW_TEXT, JSON.map(_encode))
CALLBACKS_TEXT = st.one_of(st.none(), ROW_TEXT, CALLBACKS.map(_encode), CALLBACKS.map(_encode), CALLBACKS.map(_encode))
DOCUMENTED = {
    "UnknownJob", "ArgumentsError", "SerializationError", "PayloadTooLarge", "ValueError", "KeyError", "JobTimeout",
    "tests.apps.basic.BadStr", "ResultTooLarge",
}  # fmt: skip


def _attempt(name: str, args: str, kwargs: str, meta: str | None, callbacks: str | None) -> None:
    """Run one attempt of this row as the worker does; it must end in an Outcome whose error (if
    any) is one of the documented ones, and whose chained children can all be inserted."""
    import anyio

    from runner.complete import Completer
    from runner.decide import NotRunnable, Outcome
    from runner.run_job import JobRunner, Running
    from runner.wire import BadRow
    from tests.apps.basic import app

    written: list[Outcome] = []

    class Capture(Completer):
        async def complete(self, outcome: Outcome, session: object = None) -> None:
            written.append(outcome)

    item = decode_row(_row(name, args, kwargs, meta, callbacks), 4096)

    async def attempt() -> None:
        runner = JobRunner(
            app, None, sessions=None, exactly_once=False, completer=Capture(),  # type: ignore[arg-type]
            thread_limiter=anyio.CapacityLimiter(2), limits={"max_lost": 5, "max_result": 4096, "max_payload": 4096},
        )  # fmt: skip
        with anyio.fail_after(10):
            if isinstance(item, BadRow):
                await runner.end(item, NotRunnable(item.error))
            else:
                await runner.run(Running(item))

    anyio.run(attempt)
    (outcome,) = written
    assert outcome.state in ("succeeded", "failed", "queued")
    if outcome.error is not None:
        assert outcome.error.type in DOCUMENTED, outcome.error
        assert outcome.error.message
    for child in outcome.children:  # what the completer will insert: always insertable
        assert isinstance(child.name, str) and "\x00" not in child.name
        assert isinstance(child.queue, str) and isinstance(child.priority, int) and abs(child.priority) < 2**31
        assert child.key is None or isinstance(child.key, str)
        assert child.max_attempts is None or (isinstance(child.max_attempts, int) and 0 < child.max_attempts < 2**31)
        assert len(msgspec.json.encode(child.args)) + len(msgspec.json.encode(child.kwargs)) <= 4096


@given(NAMES, ARGS, KWARGS, META_TEXT, CALLBACKS_TEXT)
@settings(max_examples=300, deadline=None)
def test_running_any_row_ends_in_an_outcome_with_a_documented_error(
    name: str, args: str, kwargs: str, meta: str | None, callbacks: str | None
) -> None:
    """Rows no producer API would write: any name, any text in the columns."""
    _attempt(name, args, kwargs, meta, callbacks)


RUNNABLE = st.sampled_from(
    [("tests.apps.basic.noop", "[]"), ("tests.apps.basic.boom", '["no"]'), ("tests.apps.basic.parent_of_chain", "[3]"),
     ("tests.apps.basic.unencodable", "[]")]
)  # fmt: skip


@given(RUNNABLE, CALLBACKS)
@settings(max_examples=300, deadline=None)
def test_any_chained_jobs_end_in_an_outcome_that_can_be_written(job: tuple[str, str], callbacks: dict[str, object]) -> None:
    """Jobs that run (succeed or fail) under arbitrary ``callbacks``: the chained-job specs. (The
    bug this found: a malformed spec raised out of the executor and took the worker down, or built
    a child whose INSERT failed and held the worker's outcome writer in a retry loop for good.)"""
    _attempt(*job, "{}", None, msgspec.json.encode(callbacks).decode())


@given(st.dictionaries(st.sampled_from(CLAIM_COLUMNS), ANY_COLUMN, max_size=6), st.booleans())
@settings(max_examples=1500, deadline=None)
def test_the_common_row_shortcut_agrees_with_the_validating_decoder(columns: dict[str, object], as_bytes: bool) -> None:
    """decode_row takes a shortcut for common rows; whatever it accepts, the validating decoder
    accepts with the same value (and it may decline anything)."""
    from runner.rows import _attempt, _common_attempt

    base = dict(zip(CLAIM_COLUMNS, _row("tests.apps.basic.add", "[1, 2]", "{}", None)))
    base.update(columns)
    if as_bytes:  # as SQLite hands text over
        base = {c: v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v for c, v in base.items()}
    raw = tuple(base[c] for c in CLAIM_COLUMNS)
    try:
        fast = _common_attempt(raw, 1 << 20)
    except Exception:
        fast = None
    if fast is not None:
        assert fast == _attempt(dict(zip(CLAIM_COLUMNS, raw)), 1 << 20)


def test_the_common_row_takes_the_shortcut() -> None:
    from runner.rows import _common_attempt

    raw = _row("tests.apps.basic.add", "[1, 2]", "{}", None)
    assert _common_attempt(raw, 1 << 20) is not None
    as_bytes = tuple(v.encode() if isinstance(v, str) else v for v in raw)
    assert _common_attempt(as_bytes, 1 << 20) == _common_attempt(raw, 1 << 20)
