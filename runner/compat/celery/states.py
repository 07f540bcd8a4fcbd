"""Celery's task state names, and how runner's job states map onto them."""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})


def from_runner(state: str, attempt: int = 0, progress_state: str | None = None) -> str:
    """A runner job state (plus attempt and any custom state from ``update_state``) as Celery's."""
    if state == "queued":
        return RETRY if attempt > 0 else PENDING
    if state == "running":
        return progress_state or STARTED
    return {"succeeded": SUCCESS, "failed": FAILURE, "cancelled": REVOKED, "expired": REVOKED}.get(state, PENDING)
