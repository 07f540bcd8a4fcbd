"""One process of a limit reference: the fastest loop we can write for the work, straight on
asyncpg or sqlite3, on runner's own table, indexes and trigger, and none of runner's machinery.

``python -m bench.limit_worker MODE URL LANES BATCH`` with MODE

* ``pg-drain``     -- LANES connections, each looping: finish its previous batch and claim the
  next BATCH rows (``FOR UPDATE SKIP LOCKED``) in *one* statement; exits when the queue is empty.
* ``pg-listen``    -- W3: one ``LISTEN`` connection; each NOTIFY wakes a claim loop on a second
  connection that claims and finishes until the queue is empty; runs until SIGTERM.
* ``sqlite-drain`` -- the same as ``pg-drain`` on one sqlite3 connection: one ``BEGIN IMMEDIATE``
  per batch finishes the previous batch and claims the next; writers of the host queue on a
  ``flock`` (woken by the kernel at once) instead of SQLite's sleeping busy handler.

Why a ceiling and not a strawman: every trick a hand-written loop may use is used (prepared
statements, one round trip per batch, no decode of columns it does not need), as long as it stays
*correct*: each job is claimed exactly once (the claim bumps ``attempt``; the harness checks
every row ends ``succeeded`` with ``attempt = 1``) and every claimed job is marked done.
Leases and fencing are not kept: that is runner's job, and its cost is what the ratio shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

# Finish the lane's previous batch and claim its next in one statement. The two halves touch
# disjoint rows (ours are 'running', the picked ones 'queued'), so one snapshot serves both.
PG_CLAIM_FINISH = """
    WITH done AS (
        UPDATE runner_jobs SET state = 'succeeded', finished_at = $3 WHERE id = ANY($1::bigint[])
    ), picked AS (
        SELECT id FROM runner_jobs
        WHERE state = 'queued' AND queue = 'default' AND run_at <= $3
        ORDER BY priority DESC, run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    UPDATE runner_jobs AS j SET state = 'running', attempt = j.attempt + 1, started_at = $3
    FROM picked WHERE j.id = picked.id
    RETURNING j.id
"""
PG_FINISH = "UPDATE runner_jobs SET state = 'succeeded', finished_at = $2 WHERE id = ANY($1::bigint[])"

SQLITE_CLAIM = """
    UPDATE runner_jobs SET state = 'running', attempt = attempt + 1, started_at = ?
    WHERE id IN (
        SELECT id FROM runner_jobs
        WHERE state = 'queued' AND queue = 'default' AND run_at <= ?
        ORDER BY priority DESC, run_at, id
        LIMIT ?
    )
    RETURNING id
"""


async def _pg_lane(conn: asyncpg.Connection, batch: int) -> int:
    held: list[int] = []
    done = 0
    while True:
        rows = await conn.fetch(PG_CLAIM_FINISH, held, batch, time.time())
        done += len(held)
        held = [r[0] for r in rows]
        if not held:
            return done


async def pg_drain(url: str, lanes: int, batch: int) -> None:
    conns = [await asyncpg.connect(url) for _ in range(lanes)]
    try:
        await asyncio.gather(*(_pg_lane(c, batch) for c in conns))
    finally:
        for c in conns:
            await c.close()


async def pg_listen(url: str, lanes: int, batch: int) -> None:
    """Claim on each NOTIFY; ``lanes`` claim connections share the wake-ups."""
    listener = await asyncpg.connect(url)
    conns = [await asyncpg.connect(url) for _ in range(lanes)]
    wake = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await listener.add_listener("runner_jobs", lambda *_: wake.set())

    async def lane(conn: asyncpg.Connection) -> None:
        while not stop.is_set():
            await wake.wait()
            wake.clear()
            held: list[int] = []
            while True:
                rows = await conn.fetch(PG_CLAIM_FINISH, held, batch, time.time())
                held = [r[0] for r in rows]
                if not held:
                    break

    tasks = [asyncio.create_task(lane(c)) for c in conns]
    wake.set()  # anything enqueued before we listened
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in (listener, *conns):
        with contextlib.suppress(Exception):
            await c.close()


def sqlite_drain(url: str, batch: int) -> None:
    path = url.split("sqlite:///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    lock = open(Path(path).with_suffix(".limit-lock"), "a+b")
    held: list[Any] = []
    while True:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            if held:
                marks = ",".join("?" * len(held))
                conn.execute(f"UPDATE runner_jobs SET state = 'succeeded', finished_at = ? WHERE id IN ({marks})", [now, *held])
            held = [r[0] for r in conn.execute(SQLITE_CLAIM, (now, now, batch)).fetchall()]
            conn.execute("COMMIT")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        if not held:
            break
    conn.close()


def main(argv: list[str]) -> None:
    mode, url, lanes, batch = argv[0], argv[1], int(argv[2]), int(argv[3])
    if mode == "pg-drain":
        asyncio.run(pg_drain(url, lanes, batch))
    elif mode == "pg-listen":
        asyncio.run(pg_listen(url, lanes, batch))
    elif mode == "sqlite-drain":
        sqlite_drain(url, batch)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
