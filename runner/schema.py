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

__all__ = [
    "BUCKETS",
    "LIVE_STATES",
    "SCHEMA_VERSION",
    "STATS_SUMS",
    "Dialect",
    "constraints",
    "job_indexes",
    "job_table",
    "nodes_table",
    "side_tables",
    "workers_table",
]

SCHEMA_VERSION: Final = 3  # 3: runner_stats, runner_nodes, runner_jobs_ended

STATES: Final = "'waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired'"
# A key is live -- no second job may take it -- while its job is in one of these states.
LIVE_STATES: Final = "'waiting', 'queued', 'running'"


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
    # (A waiting workflow step holds its key too: releasing it must never meet a twin.)
    "CREATE UNIQUE INDEX IF NOT EXISTS runner_jobs_live_key ON runner_jobs (key)"
    f" WHERE key IS NOT NULL AND state IN ({LIVE_STATES})",
    # Keys of finished jobs: the key_ttl retention window and lookups by a caller-chosen id.
    "CREATE INDEX IF NOT EXISTS runner_jobs_key ON runner_jobs (key, finished_at) WHERE key IS NOT NULL",
    # Children of a job (chains, workflows).
    "CREATE INDEX IF NOT EXISTS runner_jobs_parent ON runner_jobs (parent_id) WHERE parent_id IS NOT NULL",
    # Result retention and "finished in the last minute".
    "CREATE INDEX IF NOT EXISTS runner_jobs_finished ON runner_jobs (finished_at) WHERE finished_at IS NOT NULL",
    # A workflow's jobs, by its first one (cancel a workflow; its tree on a job's page).
    "CREATE INDEX IF NOT EXISTS runner_jobs_root ON runner_jobs (root_id) WHERE root_id IS NOT NULL",
    # Workflow steps still waiting for parents: counted per queue by status and the dashboard.
    "CREATE INDEX IF NOT EXISTS runner_jobs_waiting ON runner_jobs (queue) WHERE state = 'waiting'",
    # The members of a group.
    "CREATE INDEX IF NOT EXISTS runner_jobs_group ON runner_jobs (group_id) WHERE group_id IS NOT NULL",
    # Concurrency limits: the running jobs of a key, counted by every claim that meets the key.
    "CREATE INDEX IF NOT EXISTS runner_jobs_limited ON runner_jobs (concurrency_key)"
    " WHERE state = 'running' AND concurrency_key IS NOT NULL",
    # Jobs a person may act on (retry, delete): counted per queue and listed newest first by the
    # dashboard without touching the million succeeded rows beside them.
    "CREATE INDEX IF NOT EXISTS runner_jobs_ended ON runner_jobs (state, id, queue) WHERE state IN ('failed', 'cancelled', 'expired')",
)

# Histogram bounds, in seconds, of runner_stats' run-time and queue-wait columns: ``run_b<i>``
# counts the attempts that ran at most ``BUCKETS[i]`` seconds (cumulative, as Prometheus reads
# histograms), ``wait_b<i>`` those that waited at most that long to be claimed.
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# The additive columns of runner_stats, in this order.
STATS_SUMS: Final = (
    "n", "run_s", "wait_s", "costed", "statements", "db_s", "db_rows", "tx_s", "pool_wait_s",
    *(f"run_b{i}" for i in range(len(BUCKETS))), *(f"wait_b{i}" for i in range(len(BUCKETS))),
)  # fmt: skip

_STATS_TABLE: Final = (
    """CREATE TABLE IF NOT EXISTS runner_stats (
        source      TEXT NOT NULL,    -- the worker (lease owner) and lane that wrote it; '*': folded history
        minute      BIGINT NOT NULL,  -- epoch minute in which the attempts ended; 0: older than two hours, folded
        name        TEXT NOT NULL,
        queue       TEXT NOT NULL,
        kind        TEXT NOT NULL,    -- succeeded, failed, cancelled, expired, retried, lost, given_back
        n           BIGINT NOT NULL DEFAULT 0,             -- attempts that ended so
        run_s       {float} NOT NULL DEFAULT 0,            -- their run time, summed (s)
        wait_s      {float} NOT NULL DEFAULT 0,            -- their wait from runnable to claimed, summed (s)
        costed      BIGINT NOT NULL DEFAULT 0,             -- attempts whose database cost was measured
        statements  BIGINT NOT NULL DEFAULT 0,             -- ... and their statements, time, rows, transactions, pool waits
        db_s        {float} NOT NULL DEFAULT 0,
        db_rows     BIGINT NOT NULL DEFAULT 0,
        tx_s        {float} NOT NULL DEFAULT 0,
        pool_wait_s {float} NOT NULL DEFAULT 0,
        """
    + ",\n        ".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in STATS_SUMS[9:])  # the histogram buckets
    + """,
        PRIMARY KEY (source, minute, name, queue, kind)
    )"""
)


_SIDE_TABLES: Final = (
    # Counters of ended attempts, written by each worker in the statement (or transaction) that
    # writes the outcomes, so they survive kill -9 and never count an attempt twice: one row per
    # (worker lane, minute, job, queue, kind), no row written by two workers; summed when read,
    # and minutes older than two hours folded into minute 0 by the retention sweep.
    _STATS_TABLE,
    "CREATE INDEX IF NOT EXISTS runner_stats_minute ON runner_stats (minute)",
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


# The hosts that ran workers, so the dashboard can show the ones that went away (a worker's own
# row is deleted when it stops). Upserted with each worker's row; beside it on SQLite.
NODES_TABLE: Final = """CREATE TABLE IF NOT EXISTS runner_nodes (
        node       TEXT PRIMARY KEY,
        first_seen {float} NOT NULL,
        seen_at    {float} NOT NULL
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


def nodes_table(d: Dialect) -> str:
    return NODES_TABLE.format(float=d.float_type)
