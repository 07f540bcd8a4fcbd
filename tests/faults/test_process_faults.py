"""Process faults with real processes and real signals: SIGTERM under load, kill -9 mid-job, a job
past its hard limit, a blocked event loop, a whole host lost. The database is the witness."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.apps import basic

from ..conftest import sql, wait_until
from ..serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow


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
