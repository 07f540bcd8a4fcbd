"""Upgrade a queue from schema 1 to schema 2 (both databases).

Schema 1 carried per-call limits and chained jobs inside the user's ``meta``; schema 2 gives them
their own columns (``timeout``, ``hard_timeout``, ``callbacks``), keeps a history of attempts, and
adds checks that refuse values no worker could run. So the upgrade

1. moves the system fields of live rows out of ``meta`` (rows whose meta does not decode are left
   as they are: their worker will fail them, naming the column); jobs chained on success become
   workflow steps that wait for their parent;
2. fails, visibly, any row holding a value the new checks refuse (a ``run_at`` that is not a finite
   number, a negative counter), resetting only that value so the row can be kept and retried;
3. adds the columns and constraints (PostgreSQL), or rebuilds the table with them (SQLite, which
   cannot add a constraint to an existing table).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["upgrade_postgres", "upgrade_sqlite"]

_SYSTEM_KEYS: Final = ("timeout", "hard_timeout", "on_success", "on_failure")
_LIVE_WITH_SYSTEM_META: Final = text(
    "SELECT id, meta FROM runner_jobs WHERE meta IS NOT NULL AND state IN ('queued', 'running')"
    " AND (meta LIKE '%\"timeout\"%' OR meta LIKE '%\"on_success\"%' OR meta LIKE '%\"on_failure\"%')"
)
_MOVE: Final = text(
    "UPDATE runner_jobs SET meta = :meta, timeout = :timeout, hard_timeout = :hard_timeout, callbacks = :callbacks WHERE id = :id"
)
_MIGRATION_ERROR: Final = (
    '{"type":"SerializationError","message":"the upgrade to queue schema 2 found a value no worker could run in this row '
    "(run_at or expires_at not a finite number of epoch seconds, or a counter below 0); that value was reset and the job "
    'failed: check it, then `runner jobs retry ID`"}'
)

_PG_COLUMNS: Final = (
    "ALTER TABLE runner_jobs ADD COLUMN IF NOT EXISTS timeout DOUBLE PRECISION,"
    " ADD COLUMN IF NOT EXISTS hard_timeout DOUBLE PRECISION, ADD COLUMN IF NOT EXISTS callbacks TEXT,"
    " ADD COLUMN IF NOT EXISTS attempts JSONB NOT NULL DEFAULT '[]',"
    " ADD COLUMN IF NOT EXISTS concurrency_key TEXT, ADD COLUMN IF NOT EXISTS concurrency_limit INTEGER,"
    " ADD COLUMN IF NOT EXISTS rate_key TEXT, ADD COLUMN IF NOT EXISTS rate_limit INTEGER,"
    " ADD COLUMN IF NOT EXISTS rate_period DOUBLE PRECISION, ADD COLUMN IF NOT EXISTS group_id TEXT,"
    " ADD COLUMN IF NOT EXISTS waiting_for INTEGER NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS on_parent_failure TEXT,"
    " ADD COLUMN IF NOT EXISTS with_results TEXT, ADD COLUMN IF NOT EXISTS has_dependants INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runner_workers ADD COLUMN IF NOT EXISTS pid_started BIGINT NOT NULL DEFAULT 0,"
    " ADD COLUMN IF NOT EXISTS boot_id TEXT NOT NULL DEFAULT '', ADD COLUMN IF NOT EXISTS concurrency INTEGER NOT NULL DEFAULT 0,"
    " ADD COLUMN IF NOT EXISTS rss_kb BIGINT NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS running TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE runner_jobs DROP CONSTRAINT IF EXISTS runner_jobs_state_check",
    "DROP INDEX IF EXISTS runner_jobs_running",
)
_PG_SANITISE: Final = text(
    f"""
    UPDATE runner_jobs SET state = 'failed', finished_at = extract(epoch from clock_timestamp()), error = '{_MIGRATION_ERROR}',
        run_at = CASE WHEN run_at > '-Infinity'::float8 AND run_at < 'Infinity'::float8 THEN run_at ELSE 0 END,
        expires_at = CASE WHEN expires_at > '-Infinity'::float8 AND expires_at < 'Infinity'::float8 THEN expires_at END,
        attempt = GREATEST(attempt, 0), lost = GREATEST(lost, 0),
        max_attempts = CASE WHEN max_attempts >= 1 THEN max_attempts END
    WHERE NOT (run_at > '-Infinity'::float8 AND run_at < 'Infinity'::float8)
       OR (expires_at IS NOT NULL AND NOT (expires_at > '-Infinity'::float8 AND expires_at < 'Infinity'::float8))
       OR attempt < 0 OR lost < 0 OR max_attempts < 1
    """
)
_SQLITE_SANITISE: Final = text(
    f"""
    UPDATE runner_jobs SET state = 'failed', finished_at = ((julianday('now') - 2440587.5) * 86400.0), error = '{_MIGRATION_ERROR}',
        run_at = CASE WHEN typeof(run_at) IN ('integer', 'real') THEN run_at ELSE 0 END,
        expires_at = CASE WHEN typeof(expires_at) IN ('integer', 'real') THEN expires_at END,
        attempt = CASE WHEN typeof(attempt) = 'integer' AND attempt >= 0 THEN attempt ELSE 0 END,
        lost = CASE WHEN typeof(lost) = 'integer' AND lost >= 0 THEN lost ELSE 0 END,
        priority = CASE WHEN typeof(priority) = 'integer' THEN priority ELSE 0 END,
        max_attempts = CASE WHEN typeof(max_attempts) = 'integer' AND max_attempts >= 1 THEN max_attempts END
    WHERE typeof(run_at) NOT IN ('integer', 'real')
       OR (expires_at IS NOT NULL AND typeof(expires_at) NOT IN ('integer', 'real'))
       OR typeof(attempt) <> 'integer' OR attempt < 0 OR typeof(lost) <> 'integer' OR lost < 0
       OR typeof(priority) <> 'integer' OR (max_attempts IS NOT NULL AND (typeof(max_attempts) <> 'integer' OR max_attempts < 1))
       OR state NOT IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')
    """
)
_V1_COLUMNS: Final = (
    "id, v, name, args, kwargs, queue, priority, state, attempt, max_attempts, lost, run_at, expires_at, key, parent_id,"
    " root_id, meta, lease_owner, lease_token, lease_expires_at, cancel_requested, result, error, progress, created_at,"
    " started_at, finished_at"
)


async def upgrade_postgres(conn: AsyncConnection, checks: list[tuple[str, str]]) -> None:
    """``checks``: schema 2's (name, expression) constraints, as PostgreSQL spells them."""
    for statement in _PG_COLUMNS:
        await conn.execute(text(statement))
    await conn.execute(_PG_SANITISE)
    for name, check in checks:
        await conn.execute(text("ALTER TABLE runner_jobs DROP CONSTRAINT IF EXISTS " + name))
        await conn.execute(text("ALTER TABLE runner_jobs ADD CONSTRAINT " + name + " CHECK (" + check + ")"))


async def upgrade_sqlite(conn: AsyncConnection, create_v2: str) -> None:
    """``create_v2`` builds ``runner_jobs_v2`` with the new schema; rows are copied into it."""
    await conn.execute(_SQLITE_SANITISE)
    # The columns schema 2 added are copied as NULL/defaults; meta then moves into them.
    await conn.execute(text(create_v2))
    await conn.execute(text("INSERT INTO runner_jobs_v2 (" + _V1_COLUMNS + ") SELECT " + _V1_COLUMNS + " FROM runner_jobs"))
    # Keep ids never reused: the new table's sequence starts past the old one's.
    await conn.execute(
        text(
            "INSERT OR REPLACE INTO sqlite_sequence (name, seq) SELECT 'runner_jobs_v2', max(seq) FROM sqlite_sequence"
            " WHERE name IN ('runner_jobs', 'runner_jobs_v2')"
        )
    )
    await conn.execute(text("DROP TABLE runner_jobs"))
    await conn.execute(text("ALTER TABLE runner_jobs_v2 RENAME TO runner_jobs"))
    await conn.execute(text("DROP TABLE IF EXISTS runner_workers"))  # now in the control-plane file


async def move_system_meta(conn: AsyncConnection, enqueue: Any) -> None:
    """Live rows of schema 1 carried their limits and chained jobs in ``meta``. Limits move to
    their columns; errbacks to ``callbacks``; jobs chained on success become workflow steps that
    wait for their parent (``enqueue(conn, envelopes)``: the driver's workflow insert)."""
    for job_id, meta_text in (await conn.execute(_LIVE_WITH_SYSTEM_META)).all():
        try:
            meta = msgspec.json.decode(meta_text)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            continue  # left as it is: its worker fails it, naming the column
        if not isinstance(meta, dict):
            continue
        moved, successors = _split(meta)
        await conn.execute(_MOVE, {"id": job_id, **moved})
        if successors:
            await enqueue(conn, _steps(successors, job_id, in_batch=False, out=[]))


def _split(meta: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Schema 1's meta -> (schema 2's columns: meta, timeout, hard_timeout, callbacks; the specs
    chained on success)."""
    own = {k: v for k, v in meta.items() if k not in _SYSTEM_KEYS}
    failure = [
        _errback(s) for s in meta.get("on_failure") or [] if isinstance(s, dict) and isinstance(meta.get("on_failure"), list)
    ]
    success = [s for s in meta.get("on_success") or [] if isinstance(s, dict)] if isinstance(meta.get("on_success"), list) else []
    return {
        "meta": msgspec.json.encode(own).decode() if own else None,
        "timeout": _seconds(meta.get("timeout")),
        "hard_timeout": _seconds(meta.get("hard_timeout")),
        "callbacks": msgspec.json.encode({"on_failure": failure}).decode() if failure else None,
    }, success


def _errback(old: dict[str, Any]) -> dict[str, Any]:
    inner: dict[str, Any] = old["meta"] if isinstance(old.get("meta"), dict) else {}
    spec = {
        k: v
        for k, v in old.items()
        if k in ("name", "args", "kwargs", "queue", "priority", "max_attempts", "key", "immutable") and v is not None
    }
    own = {k: v for k, v in inner.items() if k not in _SYSTEM_KEYS}
    if own:
        spec["meta"] = own
    for key in ("timeout", "hard_timeout"):
        if _seconds(inner.get(key)) is not None:
            spec[key] = _seconds(inner.get(key))
    return spec


def _steps(specs: list[dict[str, Any]], parent: int, *, in_batch: bool, out: list[Any]) -> list[Any]:
    """Schema-1 on_success specs as waiting envelopes after ``parent`` (an id, or with
    ``in_batch`` a position in ``out``); their own chained jobs nest after them."""
    from ..wire import Callbacks, Envelope

    for old in specs:
        inner: dict[str, Any] = old["meta"] if isinstance(old.get("meta"), dict) else {}
        moved, successors = _split(inner)
        out.append(
            Envelope(
                name=str(old.get("name", "")),
                args=list(old.get("args") or []),
                kwargs=dict(old.get("kwargs") or {}),
                queue=str(old.get("queue") or "default"),
                priority=int(old.get("priority") or 0),
                max_attempts=old.get("max_attempts"),
                key=old.get("key"),
                timeout=moved["timeout"],
                hard_timeout=moved["hard_timeout"],
                meta=msgspec.json.decode(moved["meta"]) if moved["meta"] else None,
                callbacks=msgspec.json.decode(moved["callbacks"], type=Callbacks) if moved["callbacks"] else None,
                after=() if in_batch else (parent,),
                after_batch=(parent,) if in_batch else (),
                on_parent_failure="cancel",
                with_results=None if old.get("immutable") else "one",
            )  # fmt: skip
        )
        _steps(successors, len(out) - 1, in_batch=True, out=out)
    return out


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)
