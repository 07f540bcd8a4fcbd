"""Arguments reach the job as they were passed, or enqueue refuses them.

JSON has no datetime, Decimal, UUID, bytes, NaN or integer dict keys: encoded, they come back as
strings, ``null`` or string keys. A job whose parameter is annotated (``when: datetime``) gets the
original back, because the worker converts the arguments against the annotations; one that is not
would get a string it did not expect, with nothing said. So enqueue tries the trip for any value
that is not plain JSON and refuses the call when the job would receive something else.

Plain JSON (the common case, and every benchmark's) is recognised by a cheap walk and never
encoded twice.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ArgumentsError, SerializationError
from .wire import MAX_DEPTH, decode_json, encode_json_bytes

__all__ = ["PLAIN_JSON", "check_round_trip", "is_plain_json"]

PLAIN_JSON = "None, bool, int, float (finite), str, list, tuple (arrives as a list), dict with str keys"

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 60


_SCALARS: frozenset[type] = frozenset({str, int, bool, type(None)})  # float: only when finite


def is_plain_json(value: Any) -> bool:
    """True when ``value`` decodes from JSON to an equal value (tuples count as lists)."""
    kind = type(value)
    # The common call first: a flat list of ids and strings, or keywords with such values.
    if (kind is tuple or kind is list) and all(type(v) in _SCALARS for v in value):
        return True
    if kind is dict and all(type(k) is str and type(v) in _SCALARS for k, v in value.items()):
        return True
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if math.isfinite(item):
                continue
            return False
        if depth > MAX_DEPTH:
            return True  # too deep to send at all: the encoder says so, with the limit
        if kind is list or kind is tuple:
            stack.extend((child, depth + 1) for child in item)
        elif kind is dict:
            if any(type(k) is not str for k in item):
                return False
            stack.extend((child, depth + 1) for child in item.values())
        else:
            return False
    return True


def check_round_trip(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    sent: Mapping[str, Any],
    bind: Callable[[Sequence[Any], dict[str, Any]], Any],
) -> None:
    """Raise ``ArgumentsError`` naming the first argument the job would receive changed.

    ``sent`` is the call's arguments as enqueue already bound them; ``bind`` is the job's own
    binding (the one the worker uses), so an annotation that converts the JSON form back
    (``datetime``, ``UUID``, ``dict[int, int]``) makes the call acceptable."""
    if is_plain_json(args) and is_plain_json(kwargs):
        return
    try:
        wire_args = decode_json(encode_json_bytes(list(args)))
        wire_kwargs = decode_json(encode_json_bytes(dict(kwargs)))
    except SerializationError:
        return  # cannot be sent at all: encoding the row raises the precise error
    try:
        arrived = bind(wire_args, wire_kwargs).arguments
    except ArgumentsError as exc:
        raise ArgumentsError(f"the arguments of {name} would not bind when they reach the job, after JSON: {exc}") from None
    for param, value in sent.items():
        got = arrived.get(param)
        if not _same(value, got):
            missing, hint = _first_foreign(value)
            fix = (
                f"annotate the parameter with its type (e.g. {param}: {hint}) so runner converts it back, or pass"
                if hint
                else "pass"
            )
            raise ArgumentsError(
                f"argument {param!r} of {name} would reach the job changed: {_short.repr(value)} arrives as "
                f"{_short.repr(got)}, because JSON has no {missing}; {fix} plain JSON values ({PLAIN_JSON})"
            )


def _same(a: Any, b: Any) -> bool:
    """Equality where a tuple and a list with equal items are the same (JSON has only lists)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif type(x) is dict and type(y) is dict:
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _first_foreign(value: Any) -> tuple[str, str]:
    """What JSON lacks for the first value that is not plain JSON, and the annotation (if any)
    that would bring it back, for the message."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float and not math.isfinite(item):
            return "NaN or infinity", ""
        if kind is dict:
            foreign = [k for k in item if type(k) is not str]
            if foreign:
                key = type(foreign[0]).__name__
                return f"{key} dict keys", f"dict[{key}, ...]"
            stack.extend(item.values())
        elif kind in (list, tuple):
            stack.extend(item)
        elif not (kind in (str, int, bool, float) or item is None):
            return kind.__name__, kind.__name__
    return "such values", ""
