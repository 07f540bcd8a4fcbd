"""Finished rows, fast: what ``runner_jobs`` holds after a month in production with the default
``--result-ttl`` (7 days kept), written by ``INSERT ... SELECT generate_series`` in chunks.

The rows look like runner's own: several job names (none of them the benchmark's ``noop``, so
each measurement reads only its own jobs), JSON args, ``succeeded`` with one attempt, a lease
owner and token, the attempt record in ``attempts`` (JSONB), ``finished_at`` spread over the last
6.9 days, oldest ids first -- so the ``runner_jobs_finished`` index is populated and the retention
purge (which deletes only rows older than 7 days) finds nothing to delete, as in a steady state.
Afterwards ``VACUUM (ANALYZE)``: production's autovacuum would have set the visibility map and
statistics long since (on this server it is off, so the benchmark does it).

``settle`` runs before every measurement: ``VACUUM (ANALYZE)`` removes the dead tuples the
previous measurement left (without it, each step would also measure the churn of the steps before
it -- that is the churn section's question, not this one's), and ``CHECKPOINT`` flushes what
seeding and vacuum dirtied, so the checkpointer's writes do not land inside the next drain.
"""

from __future__ import annotations

import time

import asyncpg

CHUNK = 500_000
SPREAD = 6.9 * 86400  # seconds of history, inside the 7-day result TTL

_INSERT = """
    INSERT INTO runner_jobs (name, args, kwargs, queue, state, attempt, run_at, lease_owner, lease_token,
                             lease_expires_at, attempts, created_at, started_at, finished_at)
    SELECT (ARRAY['report.daily', 'email.send', 'activate', 'sync.account'])[1 + g % 4],
           '[' || g || ']', '{}', 'default', 'succeeded', 1, t, 'vm:' || (1000 + g % 7) || ':' || (g % 2), 1,
           t + 30.2,
           jsonb_build_array(jsonb_build_object('worker', 'vm:' || (1000 + g % 7) || ':' || (g % 2), 'attempt', 1,
                             'outcome', 'succeeded', 'started_at', t + 0.2, 'finished_at', t + 0.25)),
           t, t + 0.2, t + 0.25
    FROM (SELECT g, $3::float8 - $4::float8 * (1 - g::float8 / $5::float8) AS t
          FROM generate_series($1::bigint, $2::bigint) AS g) AS s
"""


async def add_finished(url: str, have: int, want: int, total: int) -> float:
    """Grow the finished rows from ``have`` to ``want`` (of ``total`` planned, which fixes each
    row's age); returns the seconds it took, VACUUM included."""
    if want <= have:
        return 0.0
    t = time.perf_counter()
    now = time.time() - 60
    conn = await asyncpg.connect(url)
    try:
        for start in range(have, want, CHUNK):
            stop = min(want, start + CHUNK) - 1
            await conn.execute(_INSERT, start, stop, now, SPREAD, total)
    finally:
        await conn.close()
    await settle(url)
    return time.perf_counter() - t


async def settle(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) runner_jobs")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
