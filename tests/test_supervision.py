"""The supervisor never gives up silently: a worker that fails to start is restarted with backoff
and a log line that says why; a slot that never gets ready stops the host with a non-zero exit
naming the cause; a worker that crashes is replaced; `--burst` waits for every running job; a
new `runner serve` on a node whose predecessor provably died takes its jobs back at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.apps import basic

from .conftest import sql, wait_until
from .serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow


def test_a_slot_that_never_gets_ready_stops_the_host_non_zero_naming_the_cause(
    sqlite_url: str, serve: Any, tmp_path: Path
) -> None:
    env = {"STARTUP_FAILS": "1000", "STARTUP_COUNTER": str(tmp_path / "starts")}
    proc = serve("-A", "tests.apps.startup", "--broker", sqlite_url, "-w", "2", env=env)
    assert proc.wait(90) == 3, proc.output[-3000:]
    out = proc.output
    assert "RuntimeError: lifespan hook refused to start (slot 1)" in out
    # Slot 1's own streak: tries 1-4 restarted, the 5th gives up. (Slot 0 is not under test; under
    # a loaded CI machine it once failed a start of its own and was restarted, as it should be.)
    supervisor = "\n".join(line for line in out.splitlines() if "runner.supervisor" in line)
    assert out.count("worker slot=1 failed to start") == 4, supervisor
    assert "worker slot 1 could not start 5 times in a row; last: RuntimeError: lifespan hook refused to start" in out


def test_a_slot_that_fails_to_start_then_recovers_serves_at_full_capacity(sqlite_url: str, serve: Any, tmp_path: Path) -> None:
    env = {"STARTUP_FAILS": "2", "STARTUP_COUNTER": str(tmp_path / "starts")}
    proc = serve("-A", "tests.apps.startup", "--broker", sqlite_url, "-w", "2", env=env)
    wait_until(lambda: proc.output.count(" ready: pid=") >= 2, 60, "both slots ready")
    assert proc.output.count("failed to start") == 2, proc.output[-4000:]
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.output[-3000:]


def test_an_unreachable_database_at_start_stops_the_host_non_zero(serve: Any) -> None:
    proc = serve("-A", "tests.apps.basic", "--broker", "postgresql://postgres@127.0.0.1:9/nowhere", "-w", "1")
    assert proc.wait(90) == 3, proc.output[-3000:]
    assert "could not start 5 times in a row" in proc.output and "9" in proc.output


def test_a_crashed_worker_is_replaced_and_its_jobs_run(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    ids = enqueue(broker_url, [basic.sleeper.call(0.05) for _ in range(40)])
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "2", "--burst"))
    wait_until(lambda: len(proc.worker_pids()) == 2 and states(broker_url).get("succeeded", 0) >= 4, 60, "both workers busy")
    os.kill(proc.worker_pids()[0], signal.SIGSEGV)  # a crash, not a drain
    assert proc.wait(90) == 0, proc.output[-3000:]
    assert "died (signal SIGSEGV); restarting" in proc.output
    assert states(broker_url) == {"succeeded": len(ids)}


def test_burst_waits_for_a_lost_hosts_jobs_instead_of_exiting(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    now = time.time()
    (job_id,) = enqueue(pg_url, [basic.sleeper.call(0.01)])
    # A host that died holding the job: running, leased to it for 4 more seconds.
    sql(
        pg_url,
        f"UPDATE runner_jobs SET state = 'running', attempt = 1, lease_token = 1, lease_owner = 'gone:1:0', lease_expires_at = {now + 4}, started_at = {now} WHERE id = {job_id}",
    )
    started = time.monotonic()
    proc = serve(*serve_args(pg_url, "-w", "1", "--burst", "--lease-ttl", "4"))
    assert proc.wait(60) == 0, proc.output[-3000:]
    assert time.monotonic() - started >= 3, "burst exited before the dead host's lease ran out"
    assert states(pg_url) == {"succeeded": 1}


def test_a_new_serve_takes_back_a_dead_predecessors_jobs_at_once(broker_url: str, serve: Any) -> None:
    """The predecessor on the same node was kill -9'd with a 120 s lease on two jobs: its pids
    are provably gone, so the new serve gives them back before it claims anything."""
    prepare(broker_url)
    ids = enqueue(broker_url, [basic.sleeper.call(3) for _ in range(2)])
    common = serve_args(broker_url, "-w", "1", "-c", "2", "--node", "same-node", "--lease-ttl", "120")
    first = serve(*common)
    wait_until(lambda: len(sql(broker_url, "SELECT id FROM runner_jobs WHERE state = 'running'")) == 2, 30, "two jobs running")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    started = time.monotonic()
    second = serve(*common, "--burst")
    assert second.wait(60) == 0, second.output[-3000:]
    took = time.monotonic() - started
    assert took < 20, f"took {took:.1f}s: the 120 s lease was waited out"
    assert "settled 2 jobs that dead workers held" in second.output, second.output[-3000:]
    assert sql(broker_url, f"SELECT state, lost FROM runner_jobs WHERE id IN ({ids[0]}, {ids[1]})") == [
        ("succeeded", 1),
        ("succeeded", 1),
    ]
