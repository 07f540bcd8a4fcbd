"""The queue schema, written for the person who reads it in ``psql`` or ``sqlite3``.

One table, ``runner_jobs``, holds every job for its whole life. Timestamps are epoch seconds
(DOUBLE) on both backends so the same SQL compares them; ``to_timestamp(run_at)`` (PostgreSQL)
or ``datetime(run_at, 'unixepoch')`` (SQLite) shows them to a person. Arguments, results, errors
and progress are JSON text, so any language can enqueue with one INSERT::

    INSERT INTO runner_jobs (name, args) VALUES ('jobs.users.activate_user', '[42]');

``migrate`` is idempotent and versioned through ``runner_meta``; it refuses a schema newer than
this code instead of guessing.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import SchemaError

__all__ = ["SCHEMA_VERSION", "ddl", "migrate", "schema_version"]

SCHEMA_VERSION: Final = 1

_STATES = "'queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired'"

_COLUMNS = """
    {id},
    v            INTEGER NOT NULL DEFAULT 1,          -- envelope version that wrote the row
    name         TEXT    NOT NULL,                    -- registered job name; nothing else can run
    args         TEXT    NOT NULL DEFAULT '[]',       -- JSON array
    kwargs       TEXT    NOT NULL DEFAULT '{{}}',     -- JSON object
    queue        TEXT    NOT NULL DEFAULT 'default',
    priority     INTEGER NOT NULL DEFAULT 0,          -- higher runs sooner within a queue
    state        TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ({states})),
    attempt      INTEGER NOT NULL DEFAULT 0,          -- attempts that reached an outcome or are running
    max_attempts INTEGER,                             -- NULL: the job's own default
    lost         INTEGER NOT NULL DEFAULT 0,          -- times a worker died holding it
    run_at       {float} NOT NULL DEFAULT {now},      -- not before (ETA / countdown / retry backoff)
    expires_at   {float},                             -- never started after this: ends 'expired'
    key          TEXT,                                -- idempotency key: one live job per key
    parent_id    BIGINT,
    root_id      BIGINT,
    meta         TEXT,                                -- JSON: headers, callbacks, per-call limits
    lease_owner  TEXT,                                -- node:supervisor-pid:slot of the running worker
    lease_token  BIGINT  NOT NULL DEFAULT 0,          -- fencing token, +1 per claim; guards every write
    lease_expires_at {float},
    cancel_requested INTEGER NOT NULL DEFAULT 0,     -- 1: a running job should stop cooperatively
    result       TEXT,                                -- JSON return value
    error        TEXT,                                -- JSON {{type, message, traceback, attempt}}
    progress     TEXT,                                -- JSON, written by the running job
    created_at   {float} NOT NULL DEFAULT {now},
    started_at   {float},
    finished_at  {float}
"""

_INDEXES = [
    # The claim: the next runnable jobs of one queue, best priority first, then FIFO.
    "CREATE INDEX IF NOT EXISTS runner_jobs_claim ON runner_jobs (queue, priority DESC, run_at, id)"
    " WHERE state = 'queued'",
    # Lease renewal and rescue by owner, and the expired-lease sweep: only running rows.
    "CREATE INDEX IF NOT EXISTS runner_jobs_running ON runner_jobs (lease_owner, lease_expires_at)"
    " WHERE state = 'running'",
    # Idempotency as a lock: at most one queued-or-running job per key.
    "CREATE UNIQUE INDEX IF NOT EXISTS runner_jobs_live_key ON runner_jobs (key)"
    " WHERE key IS NOT NULL AND state IN ('queued', 'running')",
    # Keys of finished jobs: the key_ttl retention window and lookups by a caller-chosen id.
    "CREATE INDEX IF NOT EXISTS runner_jobs_key ON runner_jobs (key, finished_at) WHERE key IS NOT NULL",
    # Children of a job (chains, groups) and finished-job housekeeping.
    "CREATE INDEX IF NOT EXISTS runner_jobs_parent ON runner_jobs (parent_id) WHERE parent_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS runner_jobs_finished ON runner_jobs (finished_at) WHERE finished_at IS NOT NULL",
]

_SIDE_TABLES = [
    # Schema version and other small facts.
    "CREATE TABLE IF NOT EXISTS runner_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # One row per live worker process, upserted with each lease renewal: `runner status` reads it.
    """CREATE TABLE IF NOT EXISTS runner_workers (
        owner      TEXT PRIMARY KEY,   -- node:supervisor-pid:slot
        node       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        queues     TEXT NOT NULL,
        started_at {float} NOT NULL,
        seen_at    {float} NOT NULL,
        done       BIGINT NOT NULL DEFAULT 0
    )""",
    # Periodic jobs: the primary key makes each fire time enqueue once across every host.
    """CREATE TABLE IF NOT EXISTS runner_schedule (
        name     TEXT NOT NULL,
        fire_at  {float} NOT NULL,
        job_id   BIGINT,
        PRIMARY KEY (name, fire_at)
    )""",
]

_POSTGRES_EXTRA = [
    # Wake idle workers at once. Statement-level, so a bulk INSERT of 20,000 rows costs one NOTIFY.
    """CREATE OR REPLACE FUNCTION runner_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM pg_notify('runner_jobs', ''); RETURN NULL; END $$""",
    "DROP TRIGGER IF EXISTS runner_jobs_inserted ON runner_jobs",
    "CREATE TRIGGER runner_jobs_inserted AFTER INSERT ON runner_jobs"
    " FOR EACH STATEMENT EXECUTE FUNCTION runner_jobs_notify()",
]


def ddl(backend: str) -> list[str]:
    """Every statement that builds the current schema on ``backend`` ("sqlite" or "postgresql")."""
    if backend == "postgresql":
        fmt = {
            "id": "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            "float": "DOUBLE PRECISION",
            "now": "extract(epoch from clock_timestamp())",
            "states": _STATES,
        }
    else:
        # AUTOINCREMENT: an id is never reused after a purge, so an old handle never sees a new job.
        fmt = {
            "id": "id INTEGER PRIMARY KEY AUTOINCREMENT",
            "float": "REAL",
            "now": "((julianday('now') - 2440587.5) * 86400.0)",
            "states": _STATES,
        }
    statements = [f"CREATE TABLE IF NOT EXISTS runner_jobs ({_COLUMNS.format(**fmt)})"]
    statements += _INDEXES
    statements += [s.format(**fmt) for s in _SIDE_TABLES]
    if backend == "postgresql":
        statements += _POSTGRES_EXTRA
    return statements


async def schema_version(conn: AsyncConnection) -> int:
    """The installed version, 0 when the queue tables are absent."""
    backend = conn.dialect.name
    probe = (
        "SELECT to_regclass('runner_meta') IS NOT NULL"
        if backend == "postgresql"
        else "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'runner_meta'"
    )
    if not (await conn.execute(text(probe))).scalar():
        return 0
    value = (await conn.execute(text("SELECT value FROM runner_meta WHERE name = 'schema_version'"))).scalar()
    return int(value) if value is not None else 0


async def migrate(conn: AsyncConnection) -> tuple[int, int]:
    """Create or upgrade the schema inside the caller's transaction; returns (before, after)."""
    backend = conn.dialect.name
    if backend == "postgresql":
        # Two hosts starting at once must not race on CREATE: serialise migrators.
        await conn.execute(text("SELECT pg_advisory_xact_lock(7320431)"))
    before = await schema_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaError(
            f"the queue schema is version {before}, newer than this runner understands "
            f"({SCHEMA_VERSION}); upgrade runner on this host"
        )
    if before < SCHEMA_VERSION:
        for statement in ddl("postgresql" if backend == "postgresql" else "sqlite"):
            await conn.execute(text(statement))
        upsert = (
            "INSERT INTO runner_meta (name, value) VALUES ('schema_version', :v)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        )
        await conn.execute(text(upsert), {"v": str(SCHEMA_VERSION)})
    return before, SCHEMA_VERSION
