"""Features beyond running once, in-process on both backends: cancel, unique keys with a
retention window, chaining through the public API, routing, retention purge, ignore_result,
and the test helpers users get from ``runner.testing``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from runner import App, CancelResult, JobFailed
from runner.drivers import Driver
from runner.errors import ArgumentsError
from runner.session import create_engine
from runner.testing import eager, rollback_session, run_burst
from runner.wire import State
from tests.apps import basic

from .conftest import sql

pytestmark = pytest.mark.anyio


async def test_a_running_job_is_cancelled_within_a_second_and_rolled_back(configured: str) -> None:
    # The job holds an open write transaction (on SQLite: the queue's only write lock); the
    # cancel request goes through SQLite's control plane, so it still lands at once.
    handle = await basic.writes_then_waits.defer_async("cancel-me", 30)
    after = await basic.add.defer_async(1, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_burst(basic.app, configured, concurrency=1))
        with anyio.fail_after(10):
            while await handle.state_async() != State.RUNNING:
                await anyio.sleep(0.02)
        asked = time.monotonic()
        assert await handle.cancel_async() == CancelResult.REQUESTED
        with anyio.fail_after(5):
            while await handle.state_async() != State.CANCELLED:
                await anyio.sleep(0.02)
        took = time.monotonic() - asked
    assert took < 1.5, f"cancellation took {took:.2f}s"
    assert sql(configured, "SELECT count(*) FROM ran WHERE tag = 'cancel-me'") == [(0,)], "the write was not rolled back"
    assert await after.wait_async(5) == 3, "the worker did not go on after the cancel"


async def test_key_dedupes_while_live_and_for_the_retention_window(configured: str) -> None:
    first = await basic.add.options(key="sum:1").defer_async(1, 1)
    again = await basic.add.options(key="sum:1").defer_async(1, 1)
    assert again.id == first.id, "a live key must return the live job"
    await run_burst(basic.app, configured)
    assert await first.wait_async(5) == 2
    remembered = await basic.add.options(key="sum:1", key_ttl=60).defer_async(1, 1)
    assert remembered.id == first.id, "within key_ttl a finished job's key still dedupes"
    fresh = await basic.add.options(key="sum:1").defer_async(1, 1)
    assert fresh.id != first.id, "without key_ttl a finished key is free again"


async def test_chain_through_options_passes_results_and_keeps_the_tree(configured: str) -> None:
    third = basic.child_of_chain.options(immutable=True).call(1, 2)
    second = basic.child_of_chain.options(on_success=third).call(5)
    on_fail = basic.record.options(immutable=True).call("parent failed")
    parent = await basic.parent_of_chain.options(on_success=second).defer_async(4)
    failing = await basic.boom.options(on_failure=on_fail).defer_async("no")
    await run_burst(basic.app, configured)
    assert await parent.wait_async(5) == 40
    rows = sql(configured, f"SELECT args, result, parent_id, root_id FROM runner_jobs WHERE root_id = {parent.id} ORDER BY id")
    # A step's row keeps the arguments it was given; the parent's result is prepended when it runs.
    assert [(json.loads(a), json.loads(r)) for a, r, _, _ in rows] == [([5], 45), ([1, 2], 3)]
    assert rows[1][2] != parent.id and rows[1][3] == parent.id, "grandchild keeps the root id"
    with pytest.raises(JobFailed):
        await failing.wait_async(5)
    assert sql(configured, "SELECT tag FROM ran") == [("parent failed",)]


async def test_routes_by_job_name_and_a_worker_serves_only_its_queues(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'routes.db'}"
    app = App("routing", broker=url, routes={"reports.*": "slow", "mail.*": "mail"})

    @app.job(name="reports.monthly")
    async def monthly() -> str:
        return "report"

    @app.job(name="mail.send")
    async def send() -> str:
        return "sent"

    @app.job(name="mail.urgent", queue="urgent")
    async def urgent() -> str:
        return "urgent"

    assert (monthly.queue, send.queue, urgent.queue) == ("slow", "mail", "urgent")
    handles = [await monthly.defer_async(), await send.defer_async(), await urgent.defer_async()]
    await run_burst(app, url, queues=("mail", "urgent"))
    states = [await h.state_async() for h in handles]
    assert states == [State.QUEUED, State.SUCCEEDED, State.SUCCEEDED]
    await app.client.aclose()


async def test_retention_purges_finished_jobs_in_batches(driver: Driver) -> None:
    [old, live] = await driver.enqueue([basic.add.call(1, 1).envelope(0), basic.add.call(2, 2).envelope(0)])
    async with driver.engine.begin() as conn:
        await conn.execute(text("UPDATE runner_jobs SET state = 'succeeded', finished_at = 100 WHERE id = :id"), {"id": old})
    assert await driver.purge_finished(before=50) == 0, "younger than the retention: kept"
    assert await driver.purge_finished(before=200) == 1
    assert [r.id for r in await driver.get_many([old, live])] == [live], "live jobs are never purged"


async def test_ignore_result_stores_none(configured: str) -> None:
    handle = await basic.result_ignored.defer_async()
    await run_burst(basic.app, configured)
    row = await handle.info_async()
    assert (row.state, row.result) == (State.SUCCEEDED, None)


async def test_per_call_soft_limit_overrides_the_jobs(configured: str) -> None:
    quick = await basic.sleeper.options(timeout=0.2, max_attempts=1).defer_async(30)
    unlimited = await basic.sleeper.defer_async(0.3)
    await run_burst(basic.app, configured)
    row = await quick.info_async()
    assert row.state == State.FAILED and row.error is not None and row.error.type == "JobTimeout", row.error
    assert row.error.message == "soft time limit of 0.2s exceeded"
    assert await unlimited.wait_async(5) == 0.3


def test_per_call_limits_are_checked_and_have_their_own_fields() -> None:
    envelope = basic.add.options(timeout=2, hard_timeout=5, meta={"mine": 1}).call(1, 2).envelope(0.0)
    assert (envelope.timeout, envelope.hard_timeout, envelope.meta) == (2.0, 5.0, {"mine": 1}), "meta is the user's alone"
    for bad in (0, -1, "3", True):
        with pytest.raises(ArgumentsError, match=r"option hard_timeout=.* is not valid; accepted: a "):
            basic.add.options(hard_timeout=bad).call(1, 2).envelope(0.0)


# -- runner.testing --------------------------------------------------------------------------


def test_eager_runs_jobs_inline_with_results_errors_and_retries() -> None:
    with eager(basic.app) as ran:
        assert basic.add.defer(2, 3).wait(1) == 5
        assert basic.flaky.defer(3).wait(1) == 3, "retries run at once in eager mode"
        with pytest.raises(JobFailed, match="ValueError: nope"):
            basic.boom.defer("nope").wait(1)
    assert len(ran) == 3


async def test_eager_sessions_use_the_given_engine_and_commit(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(basic.Base.metadata.create_all)
    async with eager(basic.app, engine=engine):
        handle = await basic.record.defer_async("eager-row")
        assert isinstance(await handle.wait_async(1), int)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT tag FROM ran"))).all() == [("eager-row",)]
    await engine.dispose()


async def test_runner_burst_fixture_drains_a_temporary_queue(runner_burst: Any, runner_broker: str) -> None:
    basic.app.configure(broker=runner_broker)
    try:
        handles = [await basic.add.defer_async(i, i) for i in range(20)]
        worker = await runner_burst(basic.app)
        assert worker.done == 20
        assert [await h.wait_async(1) for h in handles] == [2 * i for i in range(20)]
    finally:
        await basic.app.client.aclose()
        basic.app.configure(broker="sqlite:///runner.db")


async def test_rollback_session_leaves_the_database_untouched(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'repo.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(basic.Base.metadata.create_all)
    async with rollback_session(engine) as session:
        session.add(basic.Ran(tag="temporary", pid=1))
        await session.commit()  # a savepoint release, inside the outer transaction
        assert (await session.execute(text("SELECT count(*) FROM ran"))).scalar() == 1
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM ran"))).scalar() == 0
    await engine.dispose()
