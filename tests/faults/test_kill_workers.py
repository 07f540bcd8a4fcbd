"""Scenario 1, workers killed mid-job. Exactly-once effects under `kill -9`: business writes and the completion commit together.

Each job inserts a row tagged with its own id-like tag and bumps one shared counter, in the job's
scoped session. Workers are SIGKILLed at random all through the run. If a completion could be
lost after the commit, or written without it, the counter and the rows would disagree with the
number of jobs; they must match exactly.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest

from tests.apps import basic

from ..conftest import sql
from ..serving import enqueue, prepare, serve_args, states
from . import scaled

pytestmark = pytest.mark.slow

JOBS = scaled(1500)


def test_kill_9_during_the_run_applies_every_job_exactly_once(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    enqueue(broker_url, [basic.record.call(f"job-{i}", 0.01) for i in range(JOBS)])
    # A kill every half second can hit the same head-of-queue job several times in a row; the
    # poison-job guard (fail after N lost attempts, default 5) is tested in the store suite.
    proc = serve(*serve_args(broker_url, "-w", "2", "-c", "8", "--burst"), env={"RUNNER_MAX_LOST": "50"})
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 150
    while proc.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        done = states(broker_url).get("succeeded", 0)
        if done >= JOBS - 50:
            break  # let the tail finish cleanly so burst mode can exit
        pids = proc.worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:  # it left on its own (burst end) between listing and kill
                continue
            kills += 1
    assert proc.wait(150) == 0, proc.output[-3000:]
    assert kills >= 3, f"only {kills} kills happened; the run was too short to prove anything"
    replaced = proc.output.count("died (signal SIGKILL); restarting in")
    assert replaced == kills, f"{kills} workers killed, {replaced} replaced"
    assert states(broker_url) == {"succeeded": JOBS}
    assert sql(broker_url, "SELECT value FROM counters") == [(JOBS,)]
    assert sql(broker_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(JOBS, JOBS)]
    lost = sql(broker_url, "SELECT sum(lost) FROM runner_jobs")[0][0]
    print(f"\nexactly-once: {JOBS} jobs, {kills} worker kills, {lost} attempts lost and re-run, counter={JOBS}")
