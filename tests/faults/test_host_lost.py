"""Scenario 2: a whole host lost. Two `runner serve` share one PostgreSQL queue; one of them (the
supervisor and all its workers) is SIGKILLed mid-run. Nobody renews its leases any more, so once
they expire the survivor's sweep re-queues its jobs and runs them: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.apps import basic

from ..conftest import sql, wait_until
from ..serving import enqueue, prepare, serve_args, states
from . import scaled

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_TTL = 3.0


def test_whole_host_lost_mid_run_the_survivor_finishes_everything(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    jobs = scaled(800)
    enqueue(pg_url, [basic.record.call(f"h{i}", 0.05) for i in range(jobs)])
    common = ("-w", "2", "-c", "4", "--lease-ttl", str(LEASE_TTL))
    doomed = serve(*serve_args(pg_url, *common, "--node", "doomed"))
    survivor = serve(*serve_args(pg_url, *common, "--node", "survivor", "--burst"))

    def held_by_doomed() -> list[int]:
        return [i for (i,) in sql(pg_url, "SELECT id FROM runner_jobs WHERE state = 'running' AND lease_owner LIKE 'doomed:%'")]

    wait_until(
        lambda: len(held_by_doomed()) >= 4 and states(pg_url).get("succeeded", 0) >= 50,
        60,
        "both hosts busy",
    )
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # the supervisor and its workers, at once
    doomed.proc.wait(10)
    killed_at = time.monotonic()
    orphans = held_by_doomed()  # frozen now: nobody will ever renew or finish these leases
    assert orphans, "the dead host held nothing"
    wait_until(lambda: not held_by_doomed(), 30, "the survivor to take the dead host's jobs back")
    recovered = time.monotonic() - killed_at
    assert survivor.wait(120) == 0, survivor.output[-3000:]
    assert states(pg_url) == {"succeeded": jobs}
    assert sql(pg_url, "SELECT value FROM counters") == [(jobs,)]
    assert sql(pg_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(jobs, jobs)]
    listed = ",".join(map(str, orphans))
    rerun = sql(pg_url, f"SELECT state, lost >= 1, lease_owner LIKE 'survivor:%' FROM runner_jobs WHERE id IN ({listed})")
    assert set(rerun) == {("succeeded", True, True)}, rerun
    # The lease (3 s) plus the survivor's sweep (every TTL/2) plus slack for a loaded machine.
    assert recovered < LEASE_TTL * 1.5 + 6, f"took {recovered:.1f}s to re-queue the dead host's jobs"
    print(
        f"\nwhole host lost: {len(orphans)} jobs held by the dead host re-queued {recovered:.1f}s after the kill (lease TTL {LEASE_TTL:g}s); {jobs} jobs, all once"
    )
