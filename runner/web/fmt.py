"""Template filters: times, durations, counts and JSON as a person reads them."""

from __future__ import annotations

import json
import time
from typing import Any

from ..wire import decode_json

__all__ = ["FILTERS", "ago", "clock", "count", "duration", "first_line", "pretty_json"]


def clock(ts: float | None) -> str:
    """An absolute UTC time (the page's script shows it in the reader's own zone)."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    delta = (time.time() if now is None else now) - ts
    return f"in {duration(-delta)}" if delta < 0 else f"{duration(delta)} ago"


def count(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{round(value):,}"


def pretty_json(text: str | None) -> str:
    """A JSON column indented; shown as stored when it does not decode (that may be the bug)."""
    if text is None:
        return "null"
    try:
        return json.dumps(decode_json(text), indent=2, ensure_ascii=False, sort_keys=False)
    except Exception:
        return text


def first_line(text: Any, width: int = 140) -> str:
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


FILTERS = {
    "clock": clock, "iso": iso, "duration": duration, "ago": ago, "count": count, "pretty_json": pretty_json,
    "first_line": first_line, "ms": ms,
}  # fmt: skip
