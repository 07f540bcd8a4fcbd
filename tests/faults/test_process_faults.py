"""Process faults with real processes and real signals: SIGTERM under load (scenario 4), kill -9 of
a worker mid-job, a job past its hard limit and a job that blocks the event loop (scenario 5).
The database is the witness."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from tests.apps import basic

from ..conftest import sql, wait_until
from ..serving import enqueue, prepare, serve_args, states
from . import scaled

pytestmark = pytest.mark.slow


def test_sigterm_under_load_exits_0_within_grace_and_a_restart_finishes(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    # On SQLite a `record` holds the one write lock through its sleep: keep that short there.
    pause = 0.01 if broker_url.startswith("sqlite") else 0.05
    jobs, grace = scaled(300), 2.0
    # Jobs longer than the grace period are running when SIGTERM comes: they must be cancelled
    # at the end of the grace and given back (not failed, no attempt spent).
    long_ids = enqueue(broker_url, [basic.sleeper.call(30.0) for _ in range(3)])
    enqueue(broker_url, [basic.record.call(f"t{i}", pause) for i in range(jobs)])
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "4", "--grace", str(grace)))
    long_list = ",".join(map(str, long_ids))
    wait_until(
        lambda: (
            states(broker_url).get("succeeded", 0) >= 20
            and sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE id IN ({long_list}) AND state = 'running'") == [(3,)]
        ),
        60,
        "a busy run: short jobs finishing, the long ones running",
    )
    proc.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert proc.wait(60) == 0, proc.output[-3000:]
    took = time.monotonic() - signalled
    assert took < grace + 5, f"exit took {took:.1f}s with a {grace}s grace period"
    after = states(broker_url)
    assert "running" not in after and "failed" not in after, after
    assert after.get("succeeded", 0) + after.get("queued", 0) == jobs + 3
    assert sql(broker_url, f"SELECT state, attempt, lost FROM runner_jobs WHERE id IN ({long_list})") == [("queued", 0, 0)] * 3
    done = after.get("succeeded", 0)
    assert sql(broker_url, "SELECT count(*) FROM ran") == [(done,)], "a cancelled job's writes were committed"
    assert sql(broker_url, "SELECT value FROM counters") == [(done,)]
    # A restart finishes the rest (the long ones would take 30 s: cancel them first).
    sql(broker_url, f"UPDATE runner_jobs SET state = 'cancelled' WHERE id IN ({long_list})")
    again = serve(*serve_args(broker_url, "-w", "2", "-c", "8", "--burst"))
    assert again.wait(120) == 0, again.output[-3000:]
    assert states(broker_url) == {"succeeded": jobs, "cancelled": 3}
    assert sql(broker_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(jobs, jobs)]
    assert sql(broker_url, "SELECT value FROM counters") == [(jobs,)]
    print(f"\nSIGTERM under load: exit 0 after {took:.1f}s (grace {grace}s), {done} done, {jobs + 3 - done} re-queued")


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


def test_a_per_call_hard_limit_kills_a_job_that_has_none_of_its_own(broker_url: str, serve: Any) -> None:
    """...and the killed job's on_failure callback runs, as for any other failure."""
    prepare(broker_url)
    errback = basic.record.options(immutable=True).call("errback ran")
    (stuck,) = enqueue(
        broker_url, [basic.sleeps_in_thread.options(hard_timeout=1.0, max_attempts=1, on_failure=errback).call(120)]
    )
    others = enqueue(broker_url, [basic.add.call(i, i) for i in range(10)])
    proc = serve(*serve_args(broker_url, "-w", "1", "-c", "4", "--burst"))
    assert proc.wait(90) == 0, proc.output[-3000:]
    assert proc.output.count("hard_timeout (signal SIGKILL); restarting") == 1, proc.output[-3000:]
    ((state, attempt, error),) = sql(broker_url, f"SELECT state, attempt, error FROM runner_jobs WHERE id = {stuck}")
    assert (state, attempt) == ("failed", 1), error
    info = json.loads(error)
    assert info["type"] == "TimeLimitExceeded" and "hard time limit of 1s exceeded" in info["message"], info
    assert states(broker_url) == {"succeeded": len(others) + 1, "failed": 1}
    assert sql(broker_url, "SELECT tag FROM ran") == [("errback ran",)]
    assert sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE parent_id = {stuck}") == [(1,)]


def test_hard_time_limit_kills_and_replaces_the_worker(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    (stuck,) = enqueue(broker_url, [basic.blocks_forever.call("x")])
    others = enqueue(broker_url, [basic.add.call(i, i) for i in range(20)])
    proc = serve(*serve_args(broker_url, "-w", "1", "-c", "4", "--burst"))
    assert proc.wait(90) == 0, proc.output[-3000:]
    assert "passed their hard time limit" in proc.output
    # Killed twice (retries=1), replaced each time.
    assert proc.output.count("hard_timeout (signal SIGKILL); restarting") == 2, proc.output[-3000:]
    ((state, attempt, error),) = sql(broker_url, f"SELECT state, attempt, error FROM runner_jobs WHERE id = {stuck}")
    assert (state, attempt) == ("failed", 2), error
    info = json.loads(error)
    assert info["type"] == "TimeLimitExceeded" and "hard time limit of 1s exceeded" in info["message"]
    assert states(broker_url) == {"succeeded": len(others), "failed": 1}
    assert sql(broker_url, "SELECT sum(CAST(result AS INTEGER)) FROM runner_jobs WHERE state = 'succeeded'") == [
        (sum(2 * i for i in range(20)),)
    ]


def test_a_job_blocking_the_event_loop_is_killed_and_failed_by_the_lost_job_policy(broker_url: str, serve: Any) -> None:
    """`time.sleep` in an async job stops the worker's heartbeats: the supervisor kills it and the
    slot's next worker gives the job back. The supervisor cannot tell which job blocked the loop,
    so the job counts as lost; at ``max_lost`` (here 2) it fails with ``WorkerUnresponsive``. One job per
    worker (-c 1) keeps bystanders out of the frozen worker: they run on the other one."""
    prepare(broker_url)
    (blocker,) = enqueue(broker_url, [basic.blocks_loop.call(60)])
    good = enqueue(broker_url, [basic.sleeper.call(0.02) for _ in range(scaled(60))])
    proc = serve(
        *serve_args(broker_url, "-w", "2", "-c", "1", "--heartbeat-timeout", "2", "--lease-ttl", "300", "--burst"),
        env={"RUNNER_MAX_LOST": "2"},
    )
    assert proc.wait(90) == 0, proc.output[-3000:]
    assert proc.output.count("(event loop blocked?); killing it") == 2, proc.output[-3000:]
    assert proc.output.count("unresponsive (signal SIGKILL); restarting") == 2, proc.output[-3000:]
    ((state, lost, error),) = sql(broker_url, f"SELECT state, lost, error FROM runner_jobs WHERE id = {blocker}")
    assert (state, lost) == ("failed", 2), error
    assert json.loads(error)["type"] == "WorkerUnresponsive" and "stopped answering" in json.loads(error)["message"]
    good_list = ",".join(map(str, good))
    assert sql(broker_url, f"SELECT state, lost, count(*) FROM runner_jobs WHERE id IN ({good_list}) GROUP BY state, lost") == [
        ("succeeded", 0, len(good))
    ]
