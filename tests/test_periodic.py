"""Periodic jobs: fire times, dedupe across schedulers and processes, the missed-run policy."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runner import App
from runner.drivers import Driver
from runner.errors import ConfigError
from runner.scheduler import MISFIRE_GRACE, Scheduler
from runner.schedules import Cron, Every
from tests.apps import periodic_app

from .conftest import sql, wait_until

pytestmark = pytest.mark.anyio


def _app(missed: str = "once") -> App:
    app = App("sched")

    @app.periodic(every=timedelta(minutes=5), missed=missed, args=(7,))
    @app.job
    async def report(n: int) -> int:
        return n

    return app


def test_cron_fire_times_follow_the_timezone_and_dst() -> None:
    cron = Cron("30 2 * * *", "Europe/Paris")
    paris = ZoneInfo("Europe/Paris")
    before_dst = datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp()
    first = datetime.fromtimestamp(cron.next_after(before_dst), paris)
    # 02:30 does not exist on 29 March in Paris: it still fires that day, once, when the clock
    # jumps (as cron does), not a day late and not twice.
    assert (first.day, first.hour, first.minute) == (29, 3, 0), first
    second = datetime.fromtimestamp(cron.next_after(first.timestamp()), paris)
    assert (second.day, second.hour, second.minute, second.utcoffset()) == (30, 2, 30, timedelta(hours=2))
    winter = datetime(2026, 1, 10, 12, 0, tzinfo=paris).timestamp()
    nxt = datetime.fromtimestamp(cron.next_after(winter), paris)
    assert (nxt.day, nxt.hour, nxt.minute, nxt.utcoffset()) == (11, 2, 30, timedelta(hours=1))
    assert cron.latest_at_or_before(cron.next_after(winter)) == cron.next_after(winter)


def test_intervals_are_aligned_so_every_host_computes_the_same_instants() -> None:
    every = Every(60)
    assert every.next_after(125.0) == 180.0
    assert every.next_after(180.0) == 240.0
    assert every.latest_at_or_before(180.0) == 180.0
    assert every.latest_at_or_before(179.9) == 120.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown timezone"),
        ({}, "exactly one of cron"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron"),
        ({"every": 0.1}, "at least 1 second"),
        ({"every": 5, "missed": "sometimes"}, "accepted: 'once' or 'skip'"),
        ({"every": 5, "args": (1, 2, 3)}, "arguments do not match"),
    ],
)
def test_bad_schedules_name_the_problem(kwargs: dict[str, Any], message: str) -> None:
    app = App("bad")

    @app.job
    async def job(x: int = 0) -> None: ...

    with pytest.raises(Exception, match=message) as info:
        app.periodic(**kwargs)(job)
    assert isinstance(info.value, ConfigError) or "arguments" in message


async def test_many_schedulers_fire_each_time_once(driver: Driver) -> None:
    app = _app()
    base = 300.0 * 3_334  # a whole five minutes
    schedulers = [Scheduler(driver, app.schedules) for _ in range(3)]
    for s in schedulers:
        await s.start(now=base - 10)
    for now in (base, base + 1, base + 305):
        for s in schedulers:
            await s.tick(now=now)
    assert sum(s.fired for s in schedulers) == 2
    rows = await driver.get_many(list(range(1, 10)))
    assert [(r.name, r.args) for r in rows] == [(app.schedules[0].job.name, "[7]")] * 2
    fired = sorted(t for (t,) in await _schedule_rows(driver))
    assert fired == [base, base + 300]


async def test_missed_once_runs_one_catch_up_and_skip_runs_none(driver: Driver) -> None:
    for missed, expected in (("once", 1), ("skip", 0)):
        app = _app(missed)
        entry = app.schedules[0]
        await driver.fire(entry.name + missed, 1_000_000.0 - 60, entry.job.call(7).envelope(0))
        renamed = type(entry)(entry.name + missed, entry.job, entry.schedule, entry.args, entry.kwargs, entry.missed)
        later = Scheduler(driver, [renamed])
        await later.start(now=1_000_000.0 + 3600)  # an hour of downtime: 60 fire times missed
        assert later.fired == expected, missed
    never = Scheduler(driver, [type(entry)("fresh", entry.job, entry.schedule, (7,), {}, "once")])
    await never.start(now=2_000_000.0)
    assert never.fired == 0, "a schedule with no history starts at its next fire time"


async def test_a_fire_time_within_the_grace_is_not_missed(driver: Driver) -> None:
    app = _app("skip")
    s = Scheduler(driver, app.schedules)
    base = 300.0 * 3_334
    await s.start(now=base - 10)
    await s.tick(now=base + MISFIRE_GRACE / 2)  # a slow tick, not downtime
    assert s.fired == 1


async def _schedule_rows(driver: Driver) -> list[tuple[float]]:
    from sqlalchemy import text

    async with driver.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text("SELECT fire_at FROM runner_schedule"))).all()]  # type: ignore[misc]


def _prepare_beats(url: str) -> None:
    from .conftest import pg_execute

    ddl = "CREATE TABLE IF NOT EXISTS beats (fire_at DOUBLE PRECISION NOT NULL, pid INTEGER NOT NULL)"
    if url.startswith("postgresql"):
        pg_execute(url, ddl)
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(ddl)


@pytest.mark.slow
def test_two_serve_processes_fire_each_time_once(broker_url: str, serve: Any) -> None:
    _prepare_beats(broker_url)
    args = ("-A", "tests.apps.periodic_app", "--broker", broker_url, "-w", "1", "-c", "2")
    one, two = serve(*args), serve(*args)
    started = time.time()
    wait_until(lambda: len(sql(broker_url, "SELECT fire_at FROM beats")) >= 4, 30, "four periodic runs")
    one.signal(2)
    two.signal(2)
    assert one.wait(30) == 0 and two.wait(30) == 0, one.output[-2000:] + two.output[-2000:]
    beats = sql(broker_url, "SELECT fire_at, count(*) FROM beats GROUP BY fire_at")
    assert all(n == 1 for _, n in beats), f"a fire time ran twice: {beats}"
    fired = [t for (t,) in sql(broker_url, "SELECT fire_at FROM runner_schedule WHERE name = 'heartbeat-every-second'")]
    assert all(t == int(t) and t >= int(started) for t in fired), "fire times must be whole seconds"
    jobs = sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE name = '{periodic_app.beat.name}'")[0][0]
    assert jobs == len(fired), "one job per fire time"
    pids = {p for (p,) in sql(broker_url, "SELECT DISTINCT pid FROM beats")}
    assert pids, "no job ran"
