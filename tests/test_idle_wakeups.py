"""An idle worker costs nothing and still starts work on time: delayed jobs and retries when due,
jobs held back by a pause or a limit without a claim loop spinning, SQLite commits seen at once.

Real `runner serve` processes on both backends; the database records when each attempt started.
CPU is read from /proc for the worker processes (the spin these guard against burns a whole core).
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.drivers.file_watch import FileWatch
from tests.apps import waking

from .conftest import sql, wait_until

pytestmark = pytest.mark.slow

APP = ("-A", "tests.apps.waking")
TICK = 0.01  # seconds per clock tick in /proc/<pid>/stat on Linux (USER_HZ 100)


def _defer(url: str, job: Any, *args: Any, **options: Any) -> int:
    waking.app.configure(broker=url)
    try:
        return int((job.options(**options) if options else job).defer(*args).id)
    finally:
        waking.app.client.close()


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * TICK


def _idle_serve(url: str, serve: Any) -> Any:
    proc = serve(*APP, "--broker", url, "-w", "1", "-c", "4", "--no-scheduler")
    first = _defer(url, waking.noop)
    wait_until(lambda: sql(url, f"SELECT state FROM runner_jobs WHERE id = {first}") == [("succeeded",)], 60, "the worker")
    time.sleep(1.5)  # past start-up: the worker sits in its idle wait now
    return proc


def test_delayed_jobs_and_retries_start_when_due_not_at_the_next_poll(broker_url: str, serve: Any) -> None:
    _idle_serve(broker_url, serve)
    delayed = _defer(broker_url, waking.noop, countdown=1.2)
    retried = _defer(broker_url, waking.retry_later, 1.2)
    wait_until(
        lambda: (
            sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE state = 'succeeded' AND id IN ({delayed}, {retried})")[0][0]
            == 2
        ),
        20,
        "both jobs",
    )
    rows = {
        i: (s - r)
        for i, s, r in sql(broker_url, f"SELECT id, started_at, run_at FROM runner_jobs WHERE id IN ({delayed}, {retried})")
    }
    # started_at is the start of the last attempt; run_at when it became due. A worker that waited
    # for its poll instead (1 s on PostgreSQL, 10 s on SQLite with inotify) would be far later.
    for job_id, late in rows.items():
        assert -0.01 <= late < 0.25, f"job {job_id} started {late:.3f}s after it was due"
    assert sql(broker_url, f"SELECT attempt FROM runner_jobs WHERE id = {retried}") == [(2,)]


def test_jobs_in_a_paused_queue_do_not_make_workers_spin(broker_url: str, serve: Any) -> None:
    proc = _idle_serve(broker_url, serve)
    waking.app.configure(broker=broker_url)
    try:
        waking.app.pause("default")
    finally:
        waking.app.client.close()
    for _ in range(5):
        _defer(broker_url, waking.noop)
    time.sleep(0.5)
    pids = proc.worker_pids()
    before = _cpu_seconds(pids)
    time.sleep(3)
    used = _cpu_seconds(pids) - before
    assert used < 0.3, f"idle workers used {used:.2f} s of CPU in 3 s beside a paused queue (a claim loop spinning?)"
    assert sorted(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state")) == [("queued", 5), ("succeeded", 1)]


def test_jobs_held_back_by_a_concurrency_limit_wait_without_spinning(broker_url: str, serve: Any) -> None:
    proc = _idle_serve(broker_url, serve)
    ids = [_defer(broker_url, waking.one_at_a_time, f"t{i}", 1.5) for i in range(3)]
    wait_until(
        lambda: sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'running'")[0][0] == 1, 10, "the first job"
    )
    pids = proc.worker_pids()
    before = _cpu_seconds(pids)
    time.sleep(1.0)
    used = _cpu_seconds(pids) - before
    assert used < 0.5, f"a worker waiting on a saturated key used {used:.2f} s of CPU in 1 s"
    wait_until(lambda: sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'succeeded'")[0][0] == 4, 20, "all three")
    spans = sorted(sql(broker_url, f"SELECT started_at, finished_at FROM runner_jobs WHERE id IN ({', '.join(map(str, ids))})"))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, "two jobs of a limit-1 key overlapped"
        assert start - end < 0.5, f"the next job of the key started {start - end:.2f}s after its slot freed"


@pytest.mark.anyio
async def test_a_commit_from_another_process_wakes_the_sqlite_watch(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    watch = FileWatch.of_database(path, fallback=0.005)
    try:
        assert watch.native, "inotify is on every Linux this runs on"
        assert not await watch.wait(0.2), "woke with nothing written"
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:

                async def write() -> None:
                    await anyio.sleep(0.1)
                    conn.execute("INSERT INTO t VALUES (1)")

                tg.start_soon(write)
                started = time.monotonic()
                assert await watch.wait(1.0)
                assert time.monotonic() - started < 0.5
        # a change to a file beside it that is not the queue's does not count
        (tmp_path / "other.txt").write_text("x")
        assert not await watch.wait(0.2)
    finally:
        watch.close()
        conn.close()
