"""`runner serve` as a real process: drain, two hosts, recycling. (Faults: tests/faults/.)

Every test checks the database afterwards: the only witness that matters.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.apps import basic

from .conftest import sql
from .serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow


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
