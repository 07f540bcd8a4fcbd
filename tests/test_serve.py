"""`runner serve` as a real process: drain, SIGTERM, kill -9, hard limits, hung loops, two hosts.

Every test checks the database afterwards: the only witness that matters.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import pytest

from runner import create_engine
from tests.apps import basic
from tests.apps.basic import Base, app

from .conftest import sql, wait_until

pytestmark = pytest.mark.slow


def prepare(url: str) -> None:
    """Create the test app's tables and its counter row before any worker starts."""

    async def run() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("INSERT INTO counters (name, value) VALUES ('hits', 0)"))
        await engine.dispose()

    anyio.run(run)


def enqueue(url: str, calls: list[Any]) -> list[int]:
    app.configure(broker=url)
    try:
        return [h.id for h in app.defer_many(calls)]
    finally:
        app.client.close()


def states(url: str) -> dict[str, int]:
    return dict(sql(url, "SELECT state, count(*) FROM runner_jobs GROUP BY state"))


def serve_args(url: str, *extra: str) -> tuple[str, ...]:
    return ("-A", "tests.apps.basic", "--broker", url, *extra)


def test_two_workers_drain_a_thousand_jobs(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    enqueue(broker_url, [basic.record.call(f"t{i}") for i in range(1000)])
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "8", "--burst"))
    assert proc.wait(120) == 0, proc.output[-3000:]
    assert states(broker_url) == {"succeeded": 1000}
    assert sql(broker_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(1000, 1000)]
    assert sql(broker_url, "SELECT value FROM counters") == [(1000,)]
    pids = {p for (p,) in sql(broker_url, "SELECT DISTINCT pid FROM ran")}
    assert len(pids) == 2, f"expected both workers to run jobs, saw pids {pids}"


def test_sigterm_drains_gracefully_and_nothing_is_lost(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    enqueue(broker_url, [basic.record.call(f"t{i}", 0.05) for i in range(400)])
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "4", "--grace", "10"))
    wait_until(lambda: states(broker_url).get("succeeded", 0) >= 20, 60, "some jobs to finish")
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.output[-3000:]
    after = states(broker_url)
    assert "running" not in after, after
    assert after.get("succeeded", 0) + after.get("queued", 0) == 400
    assert sql(broker_url, "SELECT count(*) FROM ran")[0][0] == after.get("succeeded", 0)
    # A restart finishes the rest.
    again = serve(*serve_args(broker_url, "-w", "2", "-c", "8", "--burst"))
    assert again.wait(120) == 0
    assert states(broker_url) == {"succeeded": 400}
    assert sql(broker_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(400, 400)]


def test_kill_9_of_a_worker_mid_job_requeues_at_once(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    (job_id,) = enqueue(broker_url, [basic.record.call("victim", 30.0)])
    # A long lease proves the rescue comes from the replacement worker, not from lease expiry.
    proc = serve(*serve_args(broker_url, "-w", "1", "-c", "2", "--lease-ttl", "300"))
    wait_until(lambda: states(broker_url).get("running") == 1, 30, "the job to start")
    (victim_pid,) = proc.worker_pids()
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: sql(broker_url, f"SELECT lost FROM runner_jobs WHERE id = {job_id}") == [(1,)], 20, "the rescue")
    assert time.monotonic() - killed_at < 15
    wait_until(lambda: states(broker_url) == {"running": 1}, 20, "the job to run again")
    assert proc.worker_pids() != [victim_pid]
    proc.signal(signal.SIGINT)
    proc.wait_for("draining workers", 10)
    proc.signal(signal.SIGINT)  # second Ctrl-C: stop fast, re-queue
    assert proc.wait(30) == 0, proc.output[-3000:]
    assert states(broker_url) == {"queued": 1}
    assert sql(broker_url, "SELECT count(*) FROM ran") == [(0,)]  # the killed attempt left nothing


def test_hard_time_limit_kills_and_replaces_the_worker(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    (stuck,) = enqueue(broker_url, [basic.blocks_forever.call("x")])
    others = enqueue(broker_url, [basic.add.call(i, i) for i in range(20)])
    proc = serve(*serve_args(broker_url, "-w", "1", "-c", "4", "--burst"))
    assert proc.wait(90) == 0, proc.output[-3000:]
    assert "passed their hard time limit" in proc.output
    ((state, attempt, error),) = sql(broker_url, f"SELECT state, attempt, error FROM runner_jobs WHERE id = {stuck}")
    assert (state, attempt) == ("failed", 2), error  # retries=1: two attempts, both killed
    assert "TimeLimitExceeded" in error
    assert states(broker_url) == {"succeeded": len(others), "failed": 1}


def test_a_blocked_event_loop_gets_the_worker_replaced(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    enqueue(broker_url, [basic.blocks_loop.call(30)])
    proc = serve(*serve_args(broker_url, "-w", "1", "-c", "2", "--heartbeat-timeout", "2", "--lease-ttl", "300"))
    wait_until(lambda: "silent for" in proc.output, 30, "the supervisor to notice the silence")
    good = enqueue(broker_url, [basic.add.call(1, 2)])
    wait_until(lambda: sql(broker_url, f"SELECT state FROM runner_jobs WHERE id = {good[0]}") == [("succeeded",)], 30, "the next good job")
    proc.signal(signal.SIGTERM)
    proc.wait(60)


def test_two_hosts_share_one_postgres_queue(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    enqueue(pg_url, [basic.record.call(f"t{i}") for i in range(1500)])
    first = serve(*serve_args(pg_url, "-w", "2", "-c", "8", "--burst", "--node", "host-a"))
    second = serve(*serve_args(pg_url, "-w", "2", "-c", "8", "--burst", "--node", "host-b"))
    assert first.wait(120) == 0 and second.wait(120) == 0
    assert states(pg_url) == {"succeeded": 1500}
    assert sql(pg_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(1500, 1500)]
    owners = {o.split(":")[0] for (o,) in sql(pg_url, "SELECT DISTINCT lease_owner FROM runner_jobs")}
    assert owners == {"host-a", "host-b"}


def test_whole_host_lost_survivor_takes_over_after_lease_expiry(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    enqueue(pg_url, [basic.record.call(f"t{i}", 0.05) for i in range(300)])
    doomed = serve(*serve_args(pg_url, "-w", "2", "-c", "4", "--node", "doomed", "--lease-ttl", "3"))
    wait_until(lambda: states(pg_url).get("running", 0) >= 4, 30, "the doomed host to hold jobs")
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # supervisor and workers at once
    survivor = serve(*serve_args(pg_url, "-w", "2", "-c", "8", "--burst", "--node", "survivor", "--lease-ttl", "3"))
    assert survivor.wait(120) == 0, survivor.output[-3000:]
    assert states(pg_url) == {"succeeded": 300}
    assert sql(pg_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(300, 300)]


def test_workers_recycle_after_max_jobs_and_nothing_is_lost(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    enqueue(broker_url, [basic.record.call(f"r{i}") for i in range(300)])
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "4", "--max-jobs-per-worker", "40", "--burst"))
    assert proc.wait(120) == 0, proc.output[-3000:]
    assert states(broker_url) == {"succeeded": 300}
    assert sql(broker_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(300, 300)]
    recycled = proc.output.count("recycled")
    pids = sql(broker_url, "SELECT count(DISTINCT pid) FROM ran")[0][0]
    assert recycled >= 4 and pids >= 5, f"{recycled} recycles, {pids} worker pids ran jobs"


def test_workers_recycle_above_max_memory_and_nothing_is_lost(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    enqueue(pg_url, [basic.record.call(f"m{i}", 0.02) for i in range(200)])
    # 1 MiB: every worker is over it at its first heartbeat, so each recycles about once a second.
    proc = serve(*serve_args(pg_url, "-w", "1", "-c", "4", "--max-memory-per-worker", "1", "--burst"))
    assert proc.wait(120) == 0, proc.output[-3000:]
    assert states(pg_url) == {"succeeded": 200}
    assert sql(pg_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(200, 200)]
    assert "--max-memory-per-worker 1): recycling" in proc.output
