"""Counters written with the outcomes (runner_stats), on both backends: an attempt is counted iff
its outcome was written, in the same statement or transaction; folding keeps every sum."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from runner.decide import GaveBack, Raised, Returned, WorkerLost, decide
from runner.drivers import Driver
from runner.drivers.sql import tally_rows
from runner.policy import Policy
from runner.schema import BUCKETS, STATS_SUMS
from runner.wire import NO_CALLBACKS, Attempt, Cost, Envelope, ErrorInfo

from .conftest import sql

pytestmark = pytest.mark.anyio


async def claim(driver: Driver, n: int, owner: str = "host:1:0") -> list[Attempt]:
    items = await driver.claim(owner, ["default"], n, 30)
    assert all(isinstance(i, Attempt) for i in items)
    return items  # type: ignore[return-value]


ATTEMPT = Attempt(
    id=1, token=1, owner="host:1:0", name="a", args=[], kwargs={}, queue="default", priority=0, attempt=1,
    max_attempts=None, lost=0, run_at=0.0, expires_at=None, timeout=None, hard_timeout=None, key=None,
    parent_id=None, root_id=None, meta={}, callbacks=NO_CALLBACKS, created_at=0.0, started_at=0.0, with_results=None,
)  # fmt: skip


def totals(rows: list[Any]) -> dict[tuple[str, str], float]:
    return {(r.name, r.kind): r.values["n"] for r in rows}


async def test_counts_exactly_the_outcomes_that_were_written(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="a", run_at=time.time() - 2) for _ in range(3)] + [Envelope(name="b")])
    a1, a2, a3, b = sorted(await claim(driver, 4), key=lambda i: i.id)
    now = time.time()
    policy = Policy(max_attempts=2)
    error = ErrorInfo(type="ValueError", message="boom")
    outcomes = [
        decide(a1, policy, Returned(1), now=now),
        decide(a2, policy, Raised(error, ValueError), now=now),  # a retry
        decide(b, policy, WorkerLost("test"), now=now),
    ]
    stale = msgspec.structs.replace(decide(a3, policy, Returned(1), now=now), token=a3.token + 1)
    assert await driver.complete([*outcomes, stale]) == 3
    got = totals(await driver.stats_totals())
    assert got == {("a", "succeeded"): 1, ("a", "retried"): 1, ("b", "lost"): 1}, "the stale outcome is not counted"
    [row] = [r for r in await driver.stats_totals() if r.kind == "succeeded"]
    assert row.values["wait_s"] >= 2.0, "queue wait runs from run_at to the claim"
    assert row.values["run_b16"] == 1 and row.values["wait_b0"] == 0, "histogram buckets are cumulative"
    # Writing the same outcome again matches nothing and counts nothing.
    assert await driver.complete([outcomes[0]]) == 0
    assert totals(await driver.stats_totals())[("a", "succeeded")] == 1


async def test_counts_in_the_callers_transaction_roll_back_with_it(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="tx"), Envelope(name="tx")])
    first, second = await claim(driver, 2)
    cost = Cost(statements=3, db_ms=1.5, rows=2, tx_ms=4.0, pool_wait_ms=0.25)
    done = decide(first, Policy(), Returned(None), now=time.time())
    done = msgspec.structs.replace(done, lane=3, record=msgspec.structs.replace(done.record, cost=cost))
    async with driver.engine.connect() as conn:
        async with conn.begin() as txn:
            assert await driver.complete_in(conn, done)
            await txn.rollback()
    assert await driver.stats_totals() == [], "rolled back: neither the outcome nor its count"
    async with driver.engine.begin() as conn:
        assert await driver.complete_in(conn, done)
    [row] = await driver.stats_totals()
    assert (row.kind, row.values["n"], row.values["costed"], row.values["statements"], row.values["db_rows"]) == (
        "succeeded", 1, 1, 3, 2,
    )  # fmt: skip
    assert row.values["db_s"] == pytest.approx(0.0015) and row.values["pool_wait_s"] == pytest.approx(0.00025)
    await driver.complete([decide(second, Policy(), GaveBack(), now=time.time())])
    assert totals(await driver.stats_totals())[("tx", "given_back")] == 1


async def test_folding_old_minutes_keeps_every_sum(driver: Driver, broker_url: str) -> None:
    await driver.enqueue([Envelope(name="old") for _ in range(4)])
    items = await claim(driver, 4)
    three_hours_ago = time.time() - 3 * 3600
    old = [decide(i, Policy(), Returned(None), now=three_hours_ago) for i in items[:3]]
    assert await driver.complete(old) == 3
    assert await driver.complete([decide(items[3], Policy(), Returned(None), now=time.time())]) == 1
    before = await driver.stats_totals()
    assert await driver.fold_stats(time.time()) >= 1
    assert await driver.stats_totals() == before, "folding moves counts, never changes them"
    rows = sorted(sql(broker_url, "SELECT minute, source FROM runner_stats"))
    assert rows[0][0] == 0 and rows[1][0] > 0 and len(rows) == 2, rows
    assert rows[0][1] == "*" and rows[1][1] != "*", "the current minute stays with its writer"
    assert [r.values["n"] for r in await driver.stats_since(int(time.time() // 60) - 60)] == [1]
    await driver.fold_stats(time.time())  # again: nothing left to fold, nothing changes
    assert await driver.stats_totals() == before


async def test_ended_minutes_of_every_writer_fold_into_one_row(driver: Driver, broker_url: str) -> None:
    await driver.enqueue([Envelope(name="lanes") for _ in range(3)])
    items = await claim(driver, 3)
    ten_minutes_ago = time.time() - 600
    for lane, item in enumerate(items):
        outcome = msgspec.structs.replace(decide(item, Policy(), Returned(None), now=ten_minutes_ago), lane=lane)
        async with driver.engine.begin() as conn:
            assert await driver.complete_in(conn, outcome)
    assert await driver.fold_stats(time.time()) >= 1
    assert sql(broker_url, "SELECT source, n FROM runner_stats") == [("*", 3)]
    [row] = await driver.stats_since(int(ten_minutes_ago // 60))
    assert row.values["n"] == 3 and row.name == "*"
    [by_name] = await driver.stats_since(int(ten_minutes_ago // 60), per="name")
    assert (by_name.name, by_name.minute, by_name.values["n"]) == ("lanes", 0, 3)
    with pytest.raises(ValueError, match="accepted: minute, name, queue"):
        await driver.stats_since(0, per="hour")


async def test_each_job_slot_has_its_own_counter_row_on_postgres(pg_url: str) -> None:
    """Concurrent job transactions of one worker never wait on each other's counter row."""
    from runner.drivers import open_driver

    driver = open_driver(pg_url, pool_size=2)
    try:
        await driver.migrate()
        await driver.enqueue([Envelope(name="lane"), Envelope(name="lane")])
        items = await claim(driver, 2)
        for lane, item in enumerate(items):
            outcome = msgspec.structs.replace(decide(item, Policy(), Returned(None), now=time.time()), lane=lane)
            async with driver.engine.begin() as conn:
                assert await driver.complete_in(conn, outcome)
        sources = sorted(s for (s,) in sql(pg_url, "SELECT source FROM runner_stats"))
        assert sources == ["host:1:0/0", "host:1:0/1"]
    finally:
        await driver.dispose()


async def test_each_session_attempt_records_what_it_cost_the_database(configured: str) -> None:
    from runner.testing import run_burst
    from tests.apps import basic

    ok = await basic.record.defer_async("costed")
    bad = await basic.record_then_fail.defer_async("costed-fail")
    plain = await basic.add.defer_async(1, 2)
    await run_burst(basic.app, configured)
    [good] = (await ok.info_async()).attempts
    assert good.cost is not None and good.cost.statements >= 2, good  # INSERT, UPDATE (and BEGIN on SQLite)
    assert good.cost.rows >= 1 and good.cost.db_ms > 0 and good.cost.tx_ms >= good.cost.db_ms
    assert good.cost.pool_wait_ms >= 0
    [failed] = (await bad.info_async()).attempts
    assert failed.cost is not None and failed.cost.statements >= 1, "a failed attempt's cost is recorded too"
    assert (await plain.info_async()).attempts[0].cost is None, "no session, no cost"
    [row] = [r for r in await _totals(configured) if r.name == "tests.apps.basic.record"]
    assert row.values["costed"] == 1 and row.values["statements"] == good.cost.statements


async def test_no_db_cost_turns_the_measurement_off(configured: str) -> None:
    from runner.testing import run_burst
    from tests.apps import basic

    h = await basic.record.defer_async("uncosted")
    await run_burst(basic.app, configured, db_cost=False)
    assert (await h.info_async()).attempts[0].cost is None


async def _totals(url: str) -> list[Any]:
    from runner.drivers import open_driver

    driver = open_driver(url, pool_size=1)
    try:
        return await driver.stats_totals()
    finally:
        await driver.dispose()


def test_each_histogram_bucket_counts_the_attempts_at_or_below_its_bound() -> None:
    """``tally_rows`` counts each outcome once, in its smallest bucket, and sums the histogram
    per row: every bucket must still hold exactly the attempts that ran (or waited) at most its
    bound, bounds themselves included, and nothing past the last."""
    started = 0.0  # run times exactly as given
    runs = [0.0, BUCKETS[0], BUCKETS[0] + 1e-9, 0.003, BUCKETS[5], 7.0, BUCKETS[-1], BUCKETS[-1] * 2]
    outcomes = []
    for n, run in enumerate(runs):
        attempt = msgspec.structs.replace(ATTEMPT, id=n, started_at=started, run_at=started - runs[-1 - n])
        outcomes.append(decide(attempt, Policy(), Returned(None), now=started + run))
    rows = tally_rows(outcomes, lanes=False)  # one per minute the attempts ended in
    row = {c: sum(r[c] for r in rows) for c in STATS_SUMS}
    for i, bound in enumerate(BUCKETS):
        assert row[f"run_b{i}"] == sum(o.record.finished_at - o.record.started_at <= bound for o in outcomes), bound
        assert row[f"wait_b{i}"] == sum(o.waited <= bound for o in outcomes), bound
    assert row["n"] == len(runs) and row["run_b0"] == 2 and row[f"run_b{len(BUCKETS) - 1}"] == len(runs) - 1
