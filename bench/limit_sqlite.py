"""The limit on SQLite: plain ``sqlite3`` on runner's own schema and indexes (made by runner's
migration), WAL and ``synchronous=NORMAL`` as runner sets them, no queue library.

* single-call enqueue: one ``INSERT`` per call in autocommit, one call at a time;
* bulk enqueue: ``executemany`` in one transaction, in calls of 1,000 and in one call of N;
* W1 drain: ``w`` processes (``limit_worker.py sqlite-drain``), each claiming ``c`` rows per
  ``BEGIN IMMEDIATE`` and finishing its previous batch in the same transaction;
* W2: ``ref_bare.py`` in ``w`` processes of ``c`` lanes on the same file.

The sync calls are the fastest way to drive SQLite from Python (aiosqlite adds a thread hop per
statement); runner's own enqueue figures are async, so this only flatters the ceiling.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from . import ref_bare
from .costs import Meter
from .limit_pg import migrate
from .procs import Child, python
from .stats import best_rate

INSERT = "INSERT INTO runner_jobs (name, args, kwargs, queue, run_at, created_at) VALUES (?, ?, ?, ?, ?, ?)"


def _connect(url: str) -> sqlite3.Connection:
    conn = sqlite3.connect(url.split("sqlite:///", 1)[1], isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def single_rate(conn: sqlite3.Connection, n: int) -> float:
    """One INSERT per call in autocommit, best of SEGMENTS (``stats.py``), as on PostgreSQL."""
    conn.execute(INSERT, ("noop", "[]", "{}", "default", time.time(), time.time()))

    def one() -> None:
        now = time.time()
        conn.execute(INSERT, ("noop", "[]", "{}", "default", now, now))

    return best_rate(one, n)


def bulk_rate(conn: sqlite3.Connection, n: int, per_call: int) -> float:
    conn.execute("DELETE FROM runner_jobs")
    t = time.perf_counter()
    left = n
    while left > 0:
        k = min(per_call, left)
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, [("noop", "[]", "{}", "default", now, now)] * k)
        conn.execute("COMMIT")
        left -= k
    return n / (time.perf_counter() - t)


def drain_span(url: str, n: int) -> tuple[float, float, float]:
    conn = _connect(url)
    try:
        good, total, first, last = conn.execute(
            "SELECT count(CASE WHEN state = 'succeeded' AND attempt = 1 THEN 1 END), count(*), min(started_at),"
            " max(finished_at) FROM runner_jobs WHERE name = 'noop'"
        ).fetchone()
    finally:
        conn.close()
    if good != n or total != n:
        raise AssertionError(f"limit SQLite drain: {good} of {total} rows succeeded exactly once, expected {n}")
    return n / (last - first), first, last


def run_w1(url: str, n: int, n_single: int, workers: int, concurrency: int) -> dict[str, float]:
    asyncio.run(migrate(url))
    conn = _connect(url)
    try:
        figures = {"enqueue_async1": single_rate(conn, n_single), "enqueue_bulk_1k": bulk_rate(conn, n, 1_000)}
        figures["enqueue_bulk"] = bulk_rate(conn, n, n)
    finally:
        conn.close()
    children = [
        Child(
            f"limit-sqlite-drain-{i}",
            python("-m", "bench.limit_worker", "sqlite-drain", url, "1", str(concurrency)),
            is_worker=True,
        )  # fmt: skip
        for i in range(workers)
    ]
    meter = Meter(url, [c.proc.pid for c in children])
    try:
        for child in children:
            child.wait(600)
    finally:
        for child in children:
            child.stop()
    figures["drain"], first, last = drain_span(url, n)
    figures.update(meter.figures("drain", n, first, last, None))
    return figures


def run_w2(url: str, n: int, users: int, workers: int, concurrency: int) -> dict[str, float]:
    return ref_bare.run_w2(url, n, users, concurrency, processes=workers)
