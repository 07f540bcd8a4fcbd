"""The queue schema, written for the person who reads it in ``psql`` or ``sqlite3``.

One table, ``runner_jobs``, holds every job for its whole life. Timestamps are epoch seconds
(DOUBLE) on both backends so the same SQL compares them; ``to_timestamp(run_at)`` (PostgreSQL)
or ``datetime(run_at, 'unixepoch')`` (SQLite) shows them to a person. Arguments, results, errors
and progress are JSON text, so any language can enqueue with one INSERT::

    INSERT INTO runner_jobs (name, args) VALUES ('jobs.users.activate_user', '[42]');

The checks make the database refuse what no worker could run (a ``run_at`` that is not a finite
number, a negative counter), so a bad value fails at the ``INSERT`` that wrote it, naming the
constraint, instead of sitting in the table unseen. Each driver renders this with its own types
(``Dialect``); ``SCHEMA_VERSION`` is recorded in ``runner_meta`` and a newer one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SCHEMA_VERSION", "Dialect", "constraints", "job_indexes", "job_table", "side_tables", "workers_table"]

SCHEMA_VERSION: Final = 2

STATES: Final = "'waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired'"


@dataclass(frozen=True)
class Dialect:
    """How one database spells the schema's types and checks."""

    id_column: str
    float_type: str
    json_history: str  # the type of the attempts column
    now: str  # an expression for "now" in epoch seconds
    is_number: str  # a check template: {c} is a finite number
    is_integer: str  # a check template: {c} is an integer


_COLUMNS = """
    {id},
    v            INTEGER NOT NULL DEFAULT 1,          -- envelope version that wrote the row
    name         TEXT    NOT NULL,                    -- registered job name; nothing else can run
    args         TEXT    NOT NULL DEFAULT '[]',       -- JSON array
    kwargs       TEXT    NOT NULL DEFAULT '{{}}',     -- JSON object
    queue        TEXT    NOT NULL DEFAULT 'default',
    priority     INTEGER NOT NULL DEFAULT 0,          -- higher runs sooner within a queue
    state        TEXT    NOT NULL DEFAULT 'queued',
    attempt      INTEGER NOT NULL DEFAULT 0,          -- attempts that counted, or the one running
    max_attempts INTEGER,                             -- NULL: the job's own default
    lost         INTEGER NOT NULL DEFAULT 0,          -- times a worker died holding it
    run_at       {float} NOT NULL DEFAULT {now},      -- not before (ETA / countdown / retry backoff)
    expires_at   {float},                             -- never started after this: ends 'expired'
    timeout      {float},                             -- soft limit of this call, s (NULL: the job's)
    hard_timeout {float},                             -- hard limit of this call, s (NULL: the job's)
    concurrency_key   TEXT,                           -- at most concurrency_limit running jobs per key
    concurrency_limit INTEGER,
    rate_key     TEXT,                                -- at most rate_limit starts per rate_period s per key
    rate_limit   INTEGER,
    rate_period  {float},
    key          TEXT,                                -- idempotency key: one live job per key
    parent_id    BIGINT,                              -- the job it follows (a chain's previous step, a DAG's first parent)
    root_id      BIGINT,                              -- the first job of its chain or workflow
    group_id     TEXT,                                -- the group it was enqueued in (workflows.py)
    waiting_for  INTEGER NOT NULL DEFAULT 0,          -- parents (runner_deps) not finished yet: 'waiting' while > 0
    on_parent_failure TEXT,                           -- a dependant whose parent failed: 'fail', 'cancel' or 'run'
    with_results TEXT,                                -- parents' results prepended at run: 'one' (a chain) or 'list' (a chord)
    has_dependants INTEGER NOT NULL DEFAULT 0,        -- 1: its ending releases the jobs that wait for it
    meta         TEXT,                                -- JSON object: the user's own, never read by runner
    callbacks    TEXT,                                -- JSON {{"on_failure": [job specs]}}: errbacks
    lease_owner  TEXT,                                -- node:supervisor-pid:slot of the running worker
    lease_token  BIGINT  NOT NULL DEFAULT 0,          -- fencing token, +1 per claim; guards every write
    lease_expires_at {float},
    cancel_requested INTEGER NOT NULL DEFAULT 0,      -- 1: a running job should stop cooperatively
    result       TEXT,                                -- JSON return value
    error        TEXT,                                -- JSON {{type, message, traceback, attempt}}: the latest
    progress     TEXT,                                -- JSON, written by the running job
    attempts     {history} NOT NULL DEFAULT '[]',     -- JSON array: one record per attempt, newest last
    created_at   {float} NOT NULL DEFAULT {now},
    started_at   {float},                             -- when the current (or last) attempt was claimed
    finished_at  {float}
"""

_INDEXES: Final = (
    # The claim: the next runnable jobs of one queue, best priority first, then FIFO.
    "CREATE INDEX IF NOT EXISTS runner_jobs_claim ON runner_jobs (queue, priority DESC, run_at, id) WHERE state = 'queued'",
    # Lease renewal, the expired-lease sweep and a dead worker's rows: only running rows.
    "CREATE INDEX IF NOT EXISTS runner_jobs_running ON runner_jobs (lease_expires_at, lease_owner) WHERE state = 'running'",
    # Idempotency as a lock: at most one queued-or-running job per key.
    "CREATE UNIQUE INDEX IF NOT EXISTS runner_jobs_live_key ON runner_jobs (key)"
    " WHERE key IS NOT NULL AND state IN ('queued', 'running')",
    # Keys of finished jobs: the key_ttl retention window and lookups by a caller-chosen id.
    "CREATE INDEX IF NOT EXISTS runner_jobs_key ON runner_jobs (key, finished_at) WHERE key IS NOT NULL",
    # Children of a job (chains, workflows).
    "CREATE INDEX IF NOT EXISTS runner_jobs_parent ON runner_jobs (parent_id) WHERE parent_id IS NOT NULL",
    # Result retention and "finished in the last minute".
    "CREATE INDEX IF NOT EXISTS runner_jobs_finished ON runner_jobs (finished_at) WHERE finished_at IS NOT NULL",
    # A workflow's jobs, by its first one (cancel a workflow; its tree on a job's page).
    "CREATE INDEX IF NOT EXISTS runner_jobs_root ON runner_jobs (root_id) WHERE root_id IS NOT NULL",
    # The members of a group.
    "CREATE INDEX IF NOT EXISTS runner_jobs_group ON runner_jobs (group_id) WHERE group_id IS NOT NULL",
    # Concurrency limits: the running jobs of a key, counted by every claim that meets the key.
    "CREATE INDEX IF NOT EXISTS runner_jobs_limited ON runner_jobs (concurrency_key)"
    " WHERE state = 'running' AND concurrency_key IS NOT NULL",
)

_SIDE_TABLES: Final = (
    # Schema version and other small facts.
    "CREATE TABLE IF NOT EXISTS runner_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Workflows: job_id waits for parent_id; position orders a job's parents (and their results).
    """CREATE TABLE IF NOT EXISTS runner_deps (
        parent_id BIGINT NOT NULL,
        job_id    BIGINT NOT NULL,
        position  INTEGER NOT NULL,
        PRIMARY KEY (parent_id, job_id)
    )""",
    "CREATE INDEX IF NOT EXISTS runner_deps_job ON runner_deps (job_id, position)",
    # Rate limits: the starts of the current window of each key, bumped by the claim.
    """CREATE TABLE IF NOT EXISTS runner_rates (
        key          TEXT PRIMARY KEY,
        window_start {float} NOT NULL,
        starts       INTEGER NOT NULL
    )""",
    # Paused queues: claims on every host skip them; running jobs finish.
    """CREATE TABLE IF NOT EXISTS runner_queues (
        queue      TEXT PRIMARY KEY,
        paused     INTEGER NOT NULL DEFAULT 0,
        changed_at {float} NOT NULL
    )""",
    # Periodic jobs: the primary key makes each fire time enqueue once across every host.
    """CREATE TABLE IF NOT EXISTS runner_schedule (
        name     TEXT NOT NULL,
        fire_at  {float} NOT NULL,
        job_id   BIGINT,
        PRIMARY KEY (name, fire_at)
    )""",
)

# One row per live worker process, upserted with each lease renewal: `runner status` reads it.
# (On SQLite it lives in the control-plane file, with the leases, progress and cancel requests.)
WORKERS_TABLE: Final = """CREATE TABLE IF NOT EXISTS runner_workers (
        owner       TEXT PRIMARY KEY,   -- node:supervisor-pid:slot
        node        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        pid_started BIGINT NOT NULL DEFAULT 0,  -- process start, clock ticks since boot
        boot_id     TEXT NOT NULL DEFAULT '',   -- /proc/sys/kernel/random/boot_id
        queues      TEXT NOT NULL,
        concurrency INTEGER NOT NULL DEFAULT 0,
        started_at  {float} NOT NULL,
        seen_at     {float} NOT NULL,
        done        BIGINT NOT NULL DEFAULT 0,
        rss_kb      BIGINT NOT NULL DEFAULT 0,
        running     TEXT NOT NULL DEFAULT '[]'  -- JSON [[job id, started at], ...]
    )"""


def constraints(d: Dialect) -> list[tuple[str, str]]:
    """(name, check) for every constraint of the jobs table; the name is what a refused INSERT
    reports, so it says what is accepted."""
    number, integer = d.is_number.format, d.is_integer.format
    return [
        ("state_is_known", f"state IN ({STATES})"),
        ("run_at_is_epoch_seconds", number(c="run_at")),
        ("expires_at_is_epoch_seconds_or_null", f"expires_at IS NULL OR {number(c='expires_at')}"),
        (
            "timeouts_are_positive_seconds_or_null",
            f"(timeout IS NULL OR ({number(c='timeout')} AND timeout > 0))"
            f" AND (hard_timeout IS NULL OR ({number(c='hard_timeout')} AND hard_timeout > 0))",
        ),
        (
            "counters_are_integers_from_0",
            f"{integer(c='attempt')} AND attempt >= 0 AND {integer(c='lost')} AND lost >= 0 AND {integer(c='priority')}",
        ),
        ("max_attempts_is_positive_or_null", f"max_attempts IS NULL OR ({integer(c='max_attempts')} AND max_attempts >= 1)"),
        (
            "dependencies_are_well_formed",
            f"{integer(c='waiting_for')} AND waiting_for >= 0 AND {integer(c='has_dependants')}"
            " AND (on_parent_failure IS NULL OR on_parent_failure IN ('fail', 'cancel', 'run'))"
            " AND (with_results IS NULL OR with_results IN ('one', 'list'))",
        ),
        (
            "limits_have_a_key_and_a_positive_limit",
            "(concurrency_key IS NULL) = (concurrency_limit IS NULL)"
            f" AND (concurrency_limit IS NULL OR ({integer(c='concurrency_limit')} AND concurrency_limit >= 1))"
            " AND (rate_key IS NULL) = (rate_limit IS NULL) AND (rate_key IS NULL) = (rate_period IS NULL)"
            f" AND (rate_limit IS NULL OR ({integer(c='rate_limit')} AND rate_limit >= 1))"
            f" AND (rate_period IS NULL OR ({number(c='rate_period')} AND rate_period > 0))",
        ),
    ]


def job_table(d: Dialect, name: str = "runner_jobs") -> str:
    """``CREATE TABLE`` for the jobs table (``name`` lets a migration build a replacement)."""
    columns = _COLUMNS.format(id=d.id_column, float=d.float_type, history=d.json_history, now=d.now)
    checks = ",\n".join(f"    CONSTRAINT {n} CHECK ({c})" for n, c in constraints(d))
    return "CREATE TABLE IF NOT EXISTS " + name + " (" + columns + ",\n" + checks + ")"


def job_indexes() -> tuple[str, ...]:
    return _INDEXES


def side_tables(d: Dialect) -> list[str]:
    return [s.format(float=d.float_type) for s in _SIDE_TABLES]


def workers_table(d: Dialect) -> str:
    return WORKERS_TABLE.format(float=d.float_type)
