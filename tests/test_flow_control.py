"""Flow control across every host, with real `runner serve` processes on both backends:
concurrency limits per key (strict, crash-safe, no head-of-line blocking), rate limits, and
pausing a queue."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from runner import ArgumentsError, ConcurrencyLimit, ConfigError, RateLimit, create_engine
from runner.drivers import Driver
from runner.wire import Envelope
from tests.apps import limited

from .conftest import REPO, sql, wait_until

pytestmark = pytest.mark.slow


def prepare(url: str) -> None:
    async def run() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS ran_limited (id INTEGER PRIMARY KEY, tenant INTEGER)"
                    if url.startswith("sqlite")
                    else "CREATE TABLE IF NOT EXISTS ran_limited (id SERIAL PRIMARY KEY, tenant INTEGER)"
                )
            )
        await engine.dispose()

    anyio.run(run)


def enqueue(url: str, calls: list[Any]) -> list[int]:
    limited.app.configure(broker=url)
    try:
        return [h.id for h in limited.app.defer_many(calls)]
    finally:
        limited.app.client.close()


def args(url: str, *extra: str) -> tuple[str, ...]:
    return ("-A", "tests.apps.limited", "--broker", url, *extra)


class Sampler:
    """Reads the table every 20 ms from its own thread: the most jobs ever seen running per key."""

    def __init__(self, url: str) -> None:
        self.url, self.peak, self.samples = url, Counter[str](), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, n in sql(
                self.url,
                "SELECT concurrency_key, count(*) FROM runner_jobs WHERE state = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key",
            ):
                self.peak[key] = max(self.peak[key], n)
            self.samples += 1
            time.sleep(0.02)

    def stop(self) -> Counter[str]:
        self._stop.set()
        self._thread.join(10)
        return self.peak


def overlap(url: str, slack: float = 0.002) -> Counter[str]:
    """The most jobs of each key whose [started_at, finished_at] intervals overlap, from the table
    afterwards (a new claim of a key can only follow a committed finish, which comes after that
    job's finished_at). ``slack``: SQLite's clock, which stamps started_at, has millisecond
    resolution; a real overshoot overlaps for a whole job (5 ms or more)."""
    events: dict[str, list[tuple[float, int]]] = {}
    for key, start, end in sql(
        url,
        "SELECT concurrency_key, started_at, finished_at FROM runner_jobs WHERE concurrency_key IS NOT NULL AND state = 'succeeded'",
    ):
        events.setdefault(key, []).extend([(start + slack, 1), (end, -1)])
    peak: Counter[str] = Counter()
    for key, points in events.items():
        level = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):
            level += step
            peak[key] = max(peak[key], level)
    return peak


def hosts(broker_url: str) -> int:
    return 4 if broker_url.startswith("postgresql") else 2


def test_a_concurrency_limit_holds_across_hosts(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    jobs = 2000
    enqueue(broker_url, [limited.per_tenant.call(i % 20, random.Random(i).uniform(0.005, 0.03)) for i in range(jobs)])
    sampler = Sampler(broker_url)
    # 48 slots in all for 20 keys x 3: the limit binds for most keys, and 4 hosts stay well
    # inside the server's connection limit.
    per_host = str(48 // hosts(broker_url))
    procs = [
        serve(*args(broker_url, "-w", "1", "-c", per_host, "--burst", "--node", f"host-{h}")) for h in range(hosts(broker_url))
    ]
    for proc in procs:
        assert proc.wait(180) == 0, proc.output[-3000:]
    peak = sampler.stop()
    assert sampler.samples > 20
    assert max(peak.values()) <= 3, f"more than 3 running for a key: {peak}"
    exact = overlap(broker_url)
    assert max(exact.values()) <= 3, f"more than 3 overlapping for a key: {exact}"
    assert max(exact.values()) == 3, f"the limit was never reached, so the test proves nothing: {exact}"
    assert dict(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state")) == {"succeeded": jobs}
    assert sql(broker_url, "SELECT count(*) FROM ran_limited") == [(jobs,)]


def test_the_limit_holds_while_workers_are_killed_and_no_slot_leaks(broker_url: str, serve: Any) -> None:
    prepare(broker_url)
    jobs = 600
    enqueue(broker_url, [limited.per_tenant.call(i % 20, 0.05) for i in range(jobs)])
    sampler = Sampler(broker_url)
    procs = [
        serve(
            *args(broker_url, "-w", "2", "-c", "4", "--burst", "--node", f"host-{h}", "--lease-ttl", "5"),
            env={"RUNNER_MAX_LOST": "100"},
        )
        for h in range(2)
    ]
    rng, kills, deadline = random.Random(3), 0, time.monotonic() + 120
    while any(p.proc.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
        if dict(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state")).get("succeeded", 0) > jobs - 60:
            break
        pids = [pid for p in procs for pid in p.worker_pids()]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    for proc in procs:
        assert proc.wait(120) == 0, proc.output[-3000:]
    peak = sampler.stop()
    assert kills >= 3, kills
    assert max(peak.values()) <= 3, f"more than 3 running for a key: {peak}"
    assert max(overlap(broker_url).values()) <= 3
    assert dict(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state")) == {"succeeded": jobs}
    assert sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'running'") == [(0,)], "a slot leaked"
    assert sql(broker_url, "SELECT count(*) FROM ran_limited") == [(jobs,)], "exactly once under kill -9 and limits"


def test_a_rate_limit_is_shared_by_every_host(broker_url: str, serve: Any) -> None:
    jobs = 500  # at 50/s: ten seconds
    enqueue(broker_url, [limited.call_api.call(i) for i in range(jobs)])
    procs = [serve(*args(broker_url, "-w", "1", "-c", "8", "--burst", "--node", f"host-{h}")) for h in range(2)]
    for proc in procs:
        assert proc.wait(120) == 0, proc.output[-3000:]
    assert dict(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state")) == {"succeeded": jobs}
    per_second = Counter(int(t) for (t,) in sql(broker_url, "SELECT started_at FROM runner_jobs"))
    assert max(per_second.values()) <= 50, f"more than 50 starts in one second: {sorted(per_second.items())}"
    assert len(per_second) >= 9, "500 starts at 50/s take ten seconds"
    owners = {o.split(":")[0] for (o,) in sql(broker_url, "SELECT DISTINCT lease_owner FROM runner_jobs")}
    assert owners == {"host-0", "host-1"}, "both hosts started jobs"


def test_pausing_a_queue_stops_every_host_within_a_second(broker_url: str, serve: Any) -> None:
    enqueue(broker_url, [limited.build_report.call(0.05) for _ in range(400)])
    procs = [serve(*args(broker_url, "-w", "1", "-c", "2", "--node", f"host-{h}")) for h in range(2)]
    wait_until(
        lambda: sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'succeeded'")[0][0] >= 20, 60, "jobs running"
    )
    paused = subprocess.run(
        [sys.executable, "-m", "runner", "queues", "pause", "reports", "--broker", broker_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert paused.returncode == 0, paused.stderr
    at = time.time()
    time.sleep(2.0)
    status = subprocess.run(
        [sys.executable, "-m", "runner", "status", "--broker", broker_url], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert "reports (paused)" in status.stdout, status.stdout
    started_after = sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE started_at > {at + 1.0}")[0][0]
    assert started_after == 0, f"{started_after} jobs started more than a second after the pause"
    queued = sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'queued'")[0][0]
    assert queued > 0
    resumed = subprocess.run(
        [sys.executable, "-m", "runner", "queues", "resume", "reports", "--broker", broker_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0
    wait_until(
        lambda: sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE state = 'succeeded'")[0][0] == 400,
        90,
        "all jobs after the resume",
    )
    for proc in procs:
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0


@pytest.mark.anyio
async def test_concurrent_claimers_never_overshoot_and_a_full_key_blocks_nothing(driver: Driver) -> None:
    """Eight claimers at once, as eight hosts would: never more than the limit per key, and a
    key at its limit never stops the claim of other jobs queued behind it."""
    await driver.enqueue([Envelope(name="hog", concurrency_key="hog", concurrency_limit=2, priority=9) for _ in range(200)])
    await driver.enqueue([Envelope(name="free") for _ in range(50)])
    claimed: list[Any] = []

    async def claimer(i: int) -> None:
        for _ in range(20):
            claimed.extend(await driver.claim(f"w{i}", ["default"], 5, 30))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claimer, i)
    names = Counter(item.name for item in claimed)
    assert names["hog"] == 2, f"{names['hog']} hog jobs running at once; the limit is 2"
    assert names["free"] == 50, "the free jobs behind the full key were all claimed"


@pytest.mark.anyio
async def test_pause_and_resume_through_the_driver(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="a", queue="q1"), Envelope(name="b", queue="q2")])
    await driver.set_paused("q1", True)
    assert await driver.paused_queues() == ["q1"]
    assert [i.queue for i in await driver.claim("w", ["q1", "q2"], 5, 30)] == ["q2"]
    await driver.set_paused("q1", False)
    assert [i.queue for i in await driver.claim("w", ["q1", "q2"], 5, 30)] == ["q1"]


def test_bad_limits_are_refused_clearly() -> None:
    from runner import App

    app = App("bad-limits")
    for bad in (0, -1, True, "3"):
        with pytest.raises(ConfigError, match="ConcurrencyLimit"):
            ConcurrencyLimit(bad)  # type: ignore[arg-type]
    for rate in ("10 per minute", "0/s", "5/fortnight", "", (0, 1.0), (5, -1.0)):
        with pytest.raises(ConfigError, match="rate"):
            RateLimit(rate)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="key="):
        ConcurrencyLimit(2, key=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency="):
        app.job(concurrency=ConcurrencyLimit)(lambda: None)  # type: ignore[arg-type]

    @app.job(concurrency=ConcurrencyLimit(1, key=lambda n: 1 / n))
    async def divides(n: int) -> None: ...

    @app.job(concurrency=ConcurrencyLimit(1, key=lambda n: [n]))
    async def listy(n: int) -> None: ...

    with pytest.raises(ArgumentsError, match=r"the concurrency key of .*divides raised ZeroDivisionError"):
        divides.call(0).envelope(0.0)
    with pytest.raises(ArgumentsError, match=r"returned \[1\]; accepted: a str or an int"):
        listy.call(1).envelope(0.0)
    with pytest.raises(ArgumentsError, match="concurrency_key"):
        limited.call_api.options(concurrency_key="x").call(1).envelope(0.0)
    env = divides.options(concurrency_key="mine").call(0).envelope(0.0)
    assert (env.concurrency_key, env.concurrency_limit) == ("mine", 1), "a per-call key wins (and is not computed)"
    env = limited.per_tenant.call(7, 0.0).envelope(0.0)
    assert (env.concurrency_key, env.concurrency_limit) == ("tests.apps.limited.per_tenant:7", 3)
    env = limited.call_api.call(1).envelope(0.0)
    assert (env.rate_key, env.rate_limit, env.rate_period) == ("api", 50, 1.0)
