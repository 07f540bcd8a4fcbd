"""SQLite's control plane under a real `runner serve`: while one job holds the queue's write lock
in a long transaction, cancel takes effect within a second, progress is readable within a
second, leases keep renewing and `runner status` answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.apps import basic

from .conftest import REPO, sql, wait_until
from .serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    return time.monotonic() - started, done


def test_control_writes_never_wait_behind_a_long_job_transaction(sqlite_url: str, serve: Any) -> None:
    prepare(sqlite_url)
    (reporter,) = enqueue(sqlite_url, [basic.progress_then_wait.call(8)])
    proc = serve(*serve_args(sqlite_url, "-w", "2", "-c", "2", "--lease-ttl", "3"))
    wait_until(lambda: states(sqlite_url).get("running") == 1, 30, "the reporter running")
    (holder,) = enqueue(sqlite_url, [basic.writes_then_waits.call("held", 30)])
    wait_until(
        lambda: sql(sqlite_url, f"SELECT state FROM runner_jobs WHERE id = {holder}") == [("running",)],
        30,
        "the lock holder running",
    )
    time.sleep(0.5)  # it has written and flushed: the write lock is held from here on
    took, shown = cli("jobs", "show", str(reporter), "--json", "--broker", sqlite_url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["progress"] == {"step": 1}, shown.stderr
    took_status, status = cli("status", "--broker", sqlite_url)
    assert status.returncode == 0 and "running" in status.stdout
    assert took < 5 and took_status < 5, f"reads waited: show {took:.1f}s, status {took_status:.1f}s"
    time.sleep(4)  # more than a lease TTL: renewals must land while the lock is held
    asked = time.monotonic()
    took_cancel, cancelled = cli("jobs", "cancel", str(holder), "--broker", sqlite_url)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    wait_until(
        lambda: sql(sqlite_url, f"SELECT state FROM runner_jobs WHERE id = {holder}") == [("cancelled",)], 10, "the cancel"
    )
    assert time.monotonic() - asked < 2.5, f"cancel took {time.monotonic() - asked:.1f}s (the CLI itself {took_cancel:.1f}s)"
    assert sql(sqlite_url, "SELECT count(*) FROM ran WHERE tag = 'held'") == [(0,)], "the held write was rolled back"
    wait_until(lambda: states(sqlite_url).get("succeeded") == 1, 30, "the reporter to finish")
    assert sql(sqlite_url, f"SELECT lost FROM runner_jobs WHERE id = {reporter}") == [(0,)], "its lease never lapsed"
    out = proc.output
    for problem in ("lease renewal failed", "database is locked", "re-queued"):
        assert problem not in out, out[-4000:]
