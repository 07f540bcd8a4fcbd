"""``python -m bench.dashboard``: the dashboard, /metrics and `runner status` at a million rows.

Seeds each backend with 1,000,000 succeeded jobs spread over a week (the retention window),
2,000 failed ones with tracebacks, 10,000 queued (a fifth of them scheduled later), 32 running,
two hours of counters as the workers and the fold leave them, 16 workers on 4 hosts and a week of
five per-minute schedules; then times every page through the ASGI app in this process (no
network: the figure is the server's work, queries and rendering), and `runner status`'s own
work. Median and p95 of ``--repeat`` requests, in milliseconds. Target: 200 ms.

    python -m bench.dashboard                   # both backends, 1M rows (seeding takes a minute or two)
    python -m bench.dashboard --rows 100000 --only sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from runner.drivers import open_driver
from runner.schema import BUCKETS, STATS_SUMS
from runner.session import create_engine
from runner.settings import Settings

from . import seed

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = 20
QUEUES = ("default", "emails", "reports", "billing")
WEEK = 7 * 86400
TARGET_MS = 200.0


def _series(backend: str, n: int) -> str:
    if backend == "postgresql":
        return f"generate_series(1, {n}) AS s(i)"
    return f"(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) SELECT i FROM c) AS s"


def _concat(backend: str, *parts: str) -> str:
    return " || ".join(parts) if backend == "sqlite" else "concat(" + ", ".join(parts) + ")"


def _queue_expr(i: str) -> str:
    return "CASE " + " ".join(f"WHEN {i} % 4 = {k} THEN '{q}'" for k, q in enumerate(QUEUES)) + " END"


async def seed_queue(url: str, rows: int) -> None:
    """The jobs table and its neighbours, as a busy week leaves them."""
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    driver = open_driver(url, pool_size=1)
    await driver.migrate()
    await driver.dispose()
    engine = create_engine(url, pool_size=1)
    now = time.time()
    start = now - WEEK
    step = WEEK / max(rows, 1)
    name = _concat(backend, "'app.jobs.task_'", f"CAST(i % {NAMES} AS TEXT)" if backend == "sqlite" else f"i % {NAMES}")
    as_text = (lambda e: f"CAST({e} AS TEXT)") if backend == "sqlite" else (lambda e: f"({e})::text")
    created = f"({start} + i * {step})"
    record = _concat(
        backend, "'[{\"attempt\":1,\"worker\":\"host-'", as_text("i % 4"), "':100:'", as_text("i % 4"),
        "'\",\"started_at\":'", as_text(f"{created} + 0.01"), "',\"finished_at\":'", as_text(f"{created} + 0.03"),
        "',\"outcome\":\"succeeded\",\"cost\":{\"statements\":4,\"db_ms\":1.2,\"rows\":3,\"tx_ms\":2.5,\"pool_wait_ms\":0.01}}]'",
    )  # fmt: skip
    if backend == "postgresql":
        record = f"({record})::jsonb"
    args = _concat(backend, "'['", as_text("i"), "']'")
    result = _concat(backend, '\'{"ok":true,"id":\'', as_text("i"), "'}'")
    order_key = _concat(backend, "'order-'", as_text("i"))
    key = f"CASE WHEN i % 50 = 0 THEN {order_key} END"
    trace = "Traceback (most recent call last):\\n" + '  File \\"/srv/app/jobs.py\\", line 42, in charge\\n' * 12
    error = '\'{"type":"PaymentDeclined","message":"card declined for order","traceback":"' + trace + '","attempt":3}\''
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"""
            INSERT INTO runner_jobs (name, args, kwargs, queue, state, attempt, lease_owner, lease_token, result, attempts,
                                     key, created_at, run_at, started_at, finished_at)
            SELECT {name}, {args}, '{{}}', {_queue_expr('i')}, 'succeeded', 1, 'host-1:100:0', 1, {result}, {record},
                   {key}, {created}, {created}, {created} + 0.01, {created} + 0.03
            FROM {_series(backend, rows)}""")  # fmt: skip
        await conn.exec_driver_sql(f"""
            INSERT INTO runner_jobs (name, args, queue, state, attempt, max_attempts, error, attempts, created_at, run_at,
                                     started_at, finished_at)
            SELECT {name}, {args}, {_queue_expr('i')}, 'failed', 3, 3, {error}, '[]', {now - 3600} + i, {now - 3600} + i,
                   {now - 3600} + i, {now - 3600} + i + 0.5
            FROM {_series(backend, 2000)}""")  # fmt: skip
        await conn.exec_driver_sql(f"""
            INSERT INTO runner_jobs (name, args, queue, state, created_at, run_at)
            SELECT {name}, {args}, {_queue_expr('i')}, 'queued', {now} - i * 0.01,
                   CASE WHEN i % 5 = 0 THEN {now} + i ELSE {now} - i * 0.01 END
            FROM {_series(backend, 10_000)}""")  # fmt: skip
        owner = _concat(backend, "'host-'", as_text("i % 4"), "':100:'", as_text("i % 4"))
        await conn.exec_driver_sql(f"""
            INSERT INTO runner_jobs (name, args, queue, state, attempt, lease_owner, lease_token, lease_expires_at, created_at,
                                     run_at, started_at)
            SELECT {name}, {args}, {_queue_expr('i')}, 'running', 1, {owner},
                   1, {now} + 30, {now} - 5, {now} - 5, {now} - 2
            FROM {_series(backend, 32)}""")  # fmt: skip
        await _seed_stats(conn, now)
        for host in range(4):
            for slot in range(4):
                await conn.exec_driver_sql(f"""INSERT INTO runner_schedule (name, fire_at, job_id)
                    SELECT 'every-minute-{host}-{slot}', {int(now // 60) * 60} - i * 60, i FROM {_series(backend, 2016)}""")  # fmt: skip
        if backend == "postgresql":
            for table in ("runner_jobs", "runner_stats", "runner_schedule"):
                await conn.execute(text(f"ANALYZE {table}"))
        else:
            await conn.execute(text("ANALYZE"))
    await engine.dispose()
    await _seed_workers(url, now)


async def _seed_stats(conn: Any, now: float) -> None:
    """Two hours of folded minutes (20 jobs x 3 outcomes), the current minute as 256 lanes leave
    it, and the history before that folded into minute 0."""
    minute = int(now // 60)
    columns = ("source", "minute", "name", "queue", "kind", *STATS_SUMS)
    rows = []

    def row(source: str, m: int, job: int, kind: str, n: int) -> dict[str, Any]:
        values: dict[str, Any] = dict.fromkeys(STATS_SUMS, 0)
        values.update(n=n, run_s=0.02 * n, wait_s=0.005 * n, costed=n, statements=4 * n, db_s=0.0012 * n, db_rows=3 * n,
                      tx_s=0.0025 * n, pool_wait_s=0.00001 * n)  # fmt: skip
        for i, bound in enumerate(BUCKETS):
            values[f"run_b{i}"] = n if bound >= 0.025 else 0
            values[f"wait_b{i}"] = n if bound >= 0.005 else 0
        return {"source": source, "minute": m, "name": f"app.jobs.task_{job}", "queue": QUEUES[job % 4], "kind": kind, **values}

    for m in range(minute - 120, minute):
        for job in range(NAMES):
            busy = 20 + (m * 37 + job * 11) % 41  # a little variety, so the charts look like a day's work
            failed = 3 if (m + job) % 17 == 0 else (m + job) % 3 // 2
            rows += [row("*", m, job, "succeeded", busy), row("*", m, job, "failed", failed), row("*", m, job, "retried", 2)]
    for lane in range(256):
        rows += [
            row(f"host-{lane % 4}:100:{lane // 64}/{lane % 32}", minute, (lane + k) % NAMES, "succeeded", 3) for k in range(2)
        ]
    for job in range(NAMES):
        rows.append(row("*", 0, job, "succeeded", 1_000_000 // NAMES))
    statement = text(f"INSERT INTO runner_stats ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})")
    await conn.execute(statement, rows)


async def _seed_workers(url: str, now: float) -> None:
    from runner.drivers import WorkerRow

    driver = open_driver(url, pool_size=1)
    try:
        await driver.ensure_schema()
        for host in range(4):
            for slot in range(4):
                running = f"[[{host * 4 + slot + 1}, {now - 2}]]"
                await driver.worker_seen(
                    WorkerRow(
                        owner=f"host-{host}:100:{slot}",
                        node=f"host-{host}",
                        pid=1000 + slot,
                        pid_started=0,
                        boot_id="",
                        queues=",".join(QUEUES),
                        concurrency=32,
                        started_at=now - 3600,
                        seen_at=now,
                        done=50_000,
                        rss_kb=90_000,
                        running=running,
                    )  # fmt: skip
                )
    finally:
        await driver.dispose()


def _pages(failed_id: int, now: float) -> list[tuple[str, str]]:
    day = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 3 * 86400))
    day_end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 3 * 86400 + 3600))
    return [
        ("overview", "/"),
        ("jobs, newest", "/jobs"),
        ("jobs, state=failed", "/jobs?state=failed"),
        ("jobs, queued in one queue", "/jobs?state=queued&queue=emails"),
        ("jobs, name prefix (windowed)", "/jobs?name=app.jobs.task_7"),
        ("jobs, name substring (windowed)", "/jobs?q=task_13"),
        ("jobs, by key", "/jobs?key=order-500000"),
        ("jobs, one hour three days ago", f"/jobs?since={day}&until={day_end}"),
        ("jobs, deep page (before=500000)", "/jobs?before=500000"),
        ("job detail (failed, traceback)", f"/jobs/{failed_id}"),
        ("workers", "/workers"),
        ("periodic (16 schedules, a week each)", "/periodic"),
        ("/metrics", "/metrics"),
    ]


async def time_pages(url: str, repeat: int) -> dict[str, tuple[float, float]]:
    from runner.admin import _status
    from runner.web import dashboard

    board = dashboard(url)
    figures: dict[str, tuple[float, float]] = {}
    engine = create_engine(url, pool_size=1)
    async with engine.connect() as conn:
        failed_id = int((await conn.execute(text("SELECT min(id) FROM runner_jobs WHERE state = 'failed'"))).scalar() or 1)
    await engine.dispose()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=board), base_url="http://bench") as client:
            for label, path in _pages(failed_id, time.time()):
                samples = []
                for i in range(repeat + 1):
                    t = time.perf_counter()
                    response = await client.get(path)
                    if i:  # the first request warms caches and the pool
                        samples.append((time.perf_counter() - t) * 1000)
                    if response.status_code != 200:
                        raise AssertionError(f"{path}: {response.status_code}\n{response.text[:2000]}")
                figures[label] = _summary(samples)
        driver = open_driver(url, pool_size=1)
        try:
            settings = Settings(broker=url)
            samples = []
            for i in range(repeat + 1):
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    await _status(driver, settings, as_json=False)
                if i:
                    samples.append((time.perf_counter() - t) * 1000)
            figures["runner status (its queries and table)"] = _summary(samples)
        finally:
            await driver.dispose()
    finally:
        await board.aclose()
    return figures


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def render(results: dict[str, dict[str, tuple[float, float]]], rows: int) -> str:
    backends = list(results)
    head = "| page | " + " | ".join(f"{b} median ms | {b} p95 ms" for b in backends) + " |"
    lines = [head, "|---" * (1 + 2 * len(backends)) + "|"]
    labels = list(next(iter(results.values())))
    for label in labels:
        cells = []
        for b in backends:
            median, p95 = results[b][label]
            cells += [f"{median:.1f}" + ("" if median <= TARGET_MS else " MISSED"), f"{p95:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = (
        f"{rows:,} succeeded + 2,000 failed + 10,000 queued + 32 running jobs; in-process ASGI requests (queries and"
        f" rendering, no network). Target {TARGET_MS:.0f} ms."
    )
    return note + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="succeeded jobs to seed; default 1000000")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page; default 15")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one backend")
    ns = parser.parse_args(argv)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for backend in ("sqlite", "postgresql"):
        if ns.only and backend != ns.only:
            continue
        url = seed.fresh_sqlite("dashboard") if backend == "sqlite" else asyncio.run(seed.fresh_postgres("dashboard"))
        t = time.perf_counter()
        asyncio.run(seed_queue(url, ns.rows))
        print(f"bench.dashboard: {backend}: seeded in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
        results[backend] = asyncio.run(time_pages(url, ns.repeat))
    report = render(results, ns.rows)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dashboard-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text(report + "\n")
    print(f"\nbench.dashboard: written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
