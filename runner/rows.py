"""What a row is: a claimed row becomes an ``Attempt`` here, once, or a ``BadRow`` naming the
column that is wrong and what it accepts.

Rows may come from any producer (a raw ``INSERT`` from another language, a person in ``psql``),
so nothing in them is trusted: every column is type- and range-checked, JSON is decoded with a
depth limit, and the JSON columns together are held to ``--max-payload`` in bytes. Decoding never
raises: a bad row is a value the worker fails alone, and its neighbours in the same claim run.

Drivers hand rows over in ``CLAIM_COLUMNS`` order. On SQLite, text columns arrive as bytes
(``CAST(... AS BLOB)``), because invalid UTF-8 would otherwise raise inside the driver's fetch,
after the claim had already committed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from .errors import SerializationError
from .policy import INT32_MAX
from .wire import (
    NO_CALLBACKS,
    PROTOCOL_VERSION,
    Attempt,
    BadRow,
    Callbacks,
    ChildSpec,
    ErrorInfo,
    decode_json,
)

__all__ = ["CLAIM_COLUMNS", "decode_row"]

# The columns a claim (and the rescue reads) return, in this order.
CLAIM_COLUMNS: Final = (
    "id", "lease_token", "lease_owner", "v", "name", "args", "kwargs", "queue", "priority", "attempt",
    "max_attempts", "lost", "run_at", "expires_at", "timeout", "hard_timeout", "key", "parent_id", "root_id",
    "meta", "callbacks", "created_at", "started_at", "with_results",
)  # fmt: skip
TEXT_COLUMNS: Final = frozenset({"lease_owner", "name", "args", "kwargs", "queue", "key", "meta", "callbacks", "with_results"})
INT64_MAX: Final = 2**63 - 1

_callbacks = msgspec.json.Decoder(Callbacks)


class _Bad(Exception):
    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


def decode_row(raw: Sequence[Any], max_payload: int) -> Attempt | BadRow:
    """Decode one row given in ``CLAIM_COLUMNS`` order."""
    try:
        fast = _common_attempt(raw, max_payload)
    except Exception:
        fast = None  # the validating path below says what is wrong
    if fast is not None:
        return fast
    row = dict(zip(CLAIM_COLUMNS, raw))
    try:
        return _attempt(row, max_payload)
    except _Bad as bad:
        return _bad_row(row, ErrorInfo(type=bad.type, message=bad.message, attempt=_lenient_int(row.get("attempt"))))
    except Exception as exc:  # defence in depth: decoding must never take the worker down
        message = f"the row could not be decoded ({type(exc).__name__}: {exc})"
        return _bad_row(row, ErrorInfo(type="SerializationError", message=message))


def _attempt(row: dict[str, Any], max_payload: int) -> Attempt:
    version = _int(row, "v", 1, INT32_MAX)
    if version > PROTOCOL_VERSION:
        raise _Bad(
            "SerializationError",
            f"v column: the row was written by a newer runner (envelope version {version}); this worker reads "
            f"versions 1 to {PROTOCOL_VERSION}: upgrade runner here, then `runner jobs retry {row.get('id')}`",
        )
    texts = {name: _text(row, name) for name in ("args", "kwargs", "meta", "callbacks")}
    size = sum(len(t) for t in texts.values() if t is not None)
    if size > max_payload:
        raise _Bad(
            "PayloadTooLarge",
            f"arguments are {size:,} bytes of JSON (args, kwargs, meta and callbacks together); "
            f"the limit is {max_payload:,} (--max-payload)",
        )
    args = _json(texts["args"], "args", list, "a JSON array", default=[])
    kwargs = _json(texts["kwargs"], "kwargs", dict, "a JSON object", default={})
    meta = _json(texts["meta"], "meta", dict, "a JSON object or NULL", default={})
    return Attempt(
        id=_int(row, "id", -INT64_MAX, INT64_MAX),
        token=_int(row, "lease_token", -INT64_MAX - 1, INT64_MAX),
        owner=_str(row, "lease_owner", nullable=True) or "",
        name=_str(row, "name"),
        args=args,
        kwargs=kwargs,
        queue=_str(row, "queue"),
        priority=_int(row, "priority", -(2**31), INT32_MAX),
        attempt=_int(row, "attempt", 1, INT32_MAX),
        max_attempts=_optional_int(row, "max_attempts", 1, INT32_MAX),
        lost=_int(row, "lost", 0, INT32_MAX),
        run_at=_float(row, "run_at"),
        expires_at=_optional_float(row, "expires_at"),
        timeout=_optional_seconds(row, "timeout"),
        hard_timeout=_optional_seconds(row, "hard_timeout"),
        key=_str(row, "key", nullable=True),
        parent_id=_optional_int(row, "parent_id", -INT64_MAX, INT64_MAX),
        root_id=_optional_int(row, "root_id", -INT64_MAX, INT64_MAX),
        meta=meta,
        callbacks=_decode_callbacks(texts["callbacks"]),
        created_at=_float(row, "created_at"),
        started_at=_float(row, "started_at"),
        with_results=_choice(row, "with_results", ("one", "list")),
    )


def _common_attempt(raw: Sequence[Any], max_payload: int) -> Attempt | None:
    """The common row -- typed columns in range; no meta, errbacks or parent results; plain JSON
    arguments -- checked with inline tests, about a quarter of the cost of ``_attempt``: decoding
    is per job, on the hot path. Anything else returns None and takes ``_attempt``, whose errors
    name the problem; this accepts nothing ``_attempt`` refuses (tests/faults/test_fuzz.py)."""
    (
        id_, token, owner, v, name, args, kwargs, queue, priority, attempt, max_attempts, lost, run_at, expires_at,
        timeout, hard_timeout, key, parent_id, root_id, meta, callbacks, created_at, started_at, with_results,
    ) = raw  # fmt: skip
    if meta is not None or callbacks is not None or with_results is not None:
        return None
    if type(v) is not int or not 1 <= v <= PROTOCOL_VERSION:
        return None
    # SQLite hands text columns over as bytes (CAST AS BLOB): strict UTF-8 or the long path.
    if type(name) is bytes:
        name, queue, args, kwargs = name.decode(), queue.decode(), args.decode(), kwargs.decode()
        owner = owner.decode() if type(owner) is bytes else owner
        key = key.decode() if type(key) is bytes else key
    if not (type(name) is str and type(queue) is str and type(args) is str and type(kwargs) is str):
        return None
    if (owner is not None and type(owner) is not str) or (key is not None and type(key) is not str):
        return None
    # ASCII: no NUL to look for beyond this, no surrogates, and the length is the size in bytes.
    if not (name.isascii() and queue.isascii() and (owner or "").isascii() and (key or "").isascii()):
        return None
    if "\x00" in name or "\x00" in queue or (owner and "\x00" in owner) or (key and "\x00" in key):
        return None
    if not (args.isascii() and kwargs.isascii()) or len(args) + len(kwargs) > max_payload:
        return None
    for number in (id_, token, priority, attempt, lost):
        if type(number) is not int:
            return None
    if not (-INT64_MAX <= id_ <= INT64_MAX and -INT64_MAX - 1 <= token <= INT64_MAX and -(2**31) <= priority <= INT32_MAX):
        return None
    if not (1 <= attempt <= INT32_MAX and 0 <= lost <= INT32_MAX):
        return None
    for number in (max_attempts, parent_id, root_id):
        if number is not None and type(number) is not int:
            return None
    if max_attempts is not None and not 1 <= max_attempts <= INT32_MAX:
        return None
    if (parent_id is not None and not -INT64_MAX <= parent_id <= INT64_MAX) or (
        root_id is not None and not -INT64_MAX <= root_id <= INT64_MAX
    ):
        return None
    for seconds in (run_at, created_at, started_at):
        if type(seconds) is not float or not math.isfinite(seconds):
            return None
    if expires_at is not None and (type(expires_at) is not float or not math.isfinite(expires_at)):
        return None
    for limit in (timeout, hard_timeout):
        if limit is not None and (type(limit) is not float or not (math.isfinite(limit) and limit > 0)):
            return None
    positional = [] if args == "[]" else decode_json(args, "args column")
    named = {} if kwargs == "{}" else decode_json(kwargs, "kwargs column")
    if type(positional) is not list or type(named) is not dict:
        return None
    return Attempt(
        id=id_, token=token, owner=owner or "", name=name, args=positional, kwargs=named, queue=queue,
        priority=priority, attempt=attempt, max_attempts=max_attempts, lost=lost, run_at=run_at,
        expires_at=expires_at, timeout=timeout, hard_timeout=hard_timeout, key=key, parent_id=parent_id,
        root_id=root_id, meta={}, callbacks=NO_CALLBACKS, created_at=created_at, started_at=started_at,
        with_results=None,
    )  # fmt: skip


def _bad_row(row: dict[str, Any], error: ErrorInfo) -> BadRow:
    return BadRow(
        id=_lenient_int(row.get("id")),
        token=_lenient_int(row.get("lease_token")),
        owner=_lenient_str(row.get("lease_owner")),
        name=_lenient_str(row.get("name")),
        attempt=_lenient_int(row.get("attempt")),
        lost=max(0, min(_lenient_int(row.get("lost")), INT32_MAX)),
        queue=_lenient_str(row.get("queue")),
        started_at=_lenient_float(row.get("started_at")),
        error=error,
    )


# --- columns --------------------------------------------------------------------------------


def _text(row: dict[str, Any], name: str) -> bytes | None:
    """A text column as UTF-8 bytes (checked), or None."""
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(
                "SerializationError", f"{name} column is not valid UTF-8 text (byte {exc.start}); accepted: UTF-8 JSON text"
            ) from None
        return data
    raise _Bad("SerializationError", f"{name} column holds a {type(value).__name__}; accepted: text")


def _str(row: dict[str, Any], name: str, *, nullable: bool = False) -> Any:
    data = _text(row, name)
    if data is None:
        if nullable:
            return None
        raise _Bad("SerializationError", f"{name} column is NULL; accepted: text")
    text = data.decode("utf-8")
    if "\x00" in text:
        raise _Bad("SerializationError", f"{name} column contains a NUL character; accepted: text without NUL")
    return text


def _choice(row: dict[str, Any], name: str, accepted: tuple[str, ...]) -> Any:
    value = _str(row, name, nullable=True)
    if value is not None and value not in accepted:
        raise _Bad("SerializationError", f"{name} column holds {value!r}; accepted: {', '.join(accepted)} or NULL")
    return value


def _json(data: bytes | None, name: str, kind: type, accepted: str, *, default: Any) -> Any:
    if data is None:
        if default is not None and name in ("args", "kwargs"):
            raise _Bad("SerializationError", f"{name} column is NULL; accepted: {accepted}")
        return default
    try:
        value = decode_json(data, f"{name} column")
    except SerializationError as exc:
        raise _Bad("SerializationError", str(exc)) from None
    if value is None and name == "meta":
        return default
    if not isinstance(value, kind):
        raise _Bad("SerializationError", f"{name} column must be {accepted}, got {_json_kind(value)}")
    return value


def _decode_callbacks(data: bytes | None) -> Callbacks:
    if data is None:
        return NO_CALLBACKS
    try:
        decode_json(data, "callbacks column")  # depth and syntax first, with their own messages
        callbacks = _callbacks.decode(data)
    except SerializationError as exc:
        raise _Bad("SerializationError", str(exc)) from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _Bad(
            "SerializationError",
            f'callbacks column is not valid ({exc}); accepted: {{"on_failure": [job specs]}}',
        ) from None
    _check_specs(callbacks.on_failure, "on_failure")
    return callbacks


def _check_specs(specs: Sequence[ChildSpec], where: str) -> None:
    """What the spec's type cannot say: text fields without NUL (PostgreSQL refuses it)."""
    for i, spec in enumerate(specs):
        for name in ("name", "queue", "key"):
            if "\x00" in (getattr(spec, name) or ""):
                raise _Bad(
                    "SerializationError",
                    f"callbacks column: $.{where}[{i}].{name} contains a NUL character; accepted: text without NUL",
                )


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _int(row: dict[str, Any], name: str, low: int, high: int) -> int:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("SerializationError", f"{name} column holds {value!r}; accepted: an integer from {low} to {high}")
    if not low <= value <= high:
        raise _Bad("SerializationError", f"{name} column holds {value}; accepted: an integer from {low} to {high}")
    return value


def _optional_int(row: dict[str, Any], name: str, low: int, high: int) -> int | None:
    return None if row.get(name) is None else _int(row, name, low, high)


def _float(row: dict[str, Any], name: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad("SerializationError", f"{name} column holds {value!r}; accepted: epoch seconds (a finite number)")
    return float(value)


def _optional_float(row: dict[str, Any], name: str) -> float | None:
    return None if row.get(name) is None else _float(row, name)


def _optional_seconds(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise _Bad("SerializationError", f"{name} column holds {value!r}; accepted: a number of seconds greater than 0, or NULL")
    return float(value)


def _lenient_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _lenient_float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0.0


def _lenient_str(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""
