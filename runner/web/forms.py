"""Query strings and forms, checked: a bad value is a ``BadRequest`` (HTTP 400) naming the
field and what is accepted, never a 500 and never a silently ignored filter."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from ..drivers import JobFilter
from ..wire import State

__all__ = ["ACTIONS", "BadRequest", "JobQuery", "parse_ids", "parse_query"]

ACTIONS: Final = ("retry", "cancel", "delete")
MAX_TEXT: Final = 200
MAX_LIMIT: Final = 500
_FILTER_FIELDS: Final = ("state", "queue", "name", "q", "key", "id", "since", "until", "limit")


class BadRequest(Exception):
    """Input the dashboard cannot act on; the message says what is accepted."""


@dataclass(frozen=True)
class JobQuery:
    """The jobs page's filter as the person typed it (for the form) and as the driver takes it."""

    where: JobFilter
    limit: int
    raw: dict[str, str]  # the non-empty filter fields, to rebuild links and the bulk form

    def page(self, before: int | None) -> JobQuery:
        return replace(self, where=replace(self.where, before_id=before))


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT or "\x00" in value:
        raise BadRequest(f"{name}: at most {MAX_TEXT} characters, without NUL")
    return value


def _int(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = _text(params, name)
    if value is None:
        return None
    if not re.fullmatch(r"\d{1,19}", value) or not low <= int(value) <= high:
        raise BadRequest(f"{name}={value!r} is not valid; accepted: a whole number from {low} to {high}")
    return int(value)


def parse_time(value: str, name: str) -> float:
    """``2026-01-31T14:05`` (UTC, as a datetime-local input sends it; seconds and an offset may
    follow) or epoch seconds."""
    if re.fullmatch(r"\d{1,12}(\.\d+)?", value):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name}={value!r} is not a time; accepted: YYYY-MM-DDTHH:MM[:SS] (UTC unless it has an offset) or epoch seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_query(params: Mapping[str, str]) -> JobQuery:
    """The jobs list's filter, from a query string or the bulk form's hidden fields."""
    state = _text(params, "state")
    if state is not None and state not in State.ALL:
        raise BadRequest(f"state={state!r} is not a job state; accepted: {', '.join(State.ALL)}")
    since = _text(params, "since")
    until = _text(params, "until")
    where = JobFilter(
        state=state,
        queue=_text(params, "queue"),
        name=_text(params, "name"),
        contains=_text(params, "q"),
        key=_text(params, "key"),
        job_id=_int(params, "id", 1, 2**63 - 1),
        before_id=_int(params, "before", 1, 2**63 - 1),
        created_after=None if since is None else parse_time(since, "since"),
        created_before=None if until is None else parse_time(until, "until"),
    )
    if where.created_after is not None and where.created_before is not None and where.created_after >= where.created_before:
        raise BadRequest("since must be earlier than until")
    limit = _int(params, "limit", 1, MAX_LIMIT) or 50
    raw = {k: str(params[k]).strip() for k in _FILTER_FIELDS if (params.get(k) or "").strip()}
    return JobQuery(where=where, limit=limit, raw=raw)


def parse_ids(values: list[str]) -> list[int]:
    ids = []
    for value in values:
        if not re.fullmatch(r"\d{1,19}", value.strip()):
            raise BadRequest(f"ids: {value!r} is not a job id; accepted: whole numbers")
        ids.append(int(value))
    if len(ids) > 10_000:
        raise BadRequest("ids: at most 10,000 selected jobs at once; use 'all matching the filter' for more")
    return ids


def action_of(value: Any) -> str:
    if value not in ACTIONS:
        raise BadRequest(f"action={value!r} is not known; accepted: {', '.join(ACTIONS)}")
    return str(value)
