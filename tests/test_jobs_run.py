"""Jobs run by a real in-process worker (burst mode) on both backends: sessions, retries, limits,
bad input. Every path must end in a visible state, and the worker must keep going."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runner import JobFailed, State
from runner.testing import run_burst
from tests.apps import basic
from tests.apps.basic import app

from .conftest import sql

pytestmark = pytest.mark.anyio


async def drain(url: str, **settings: Any) -> Any:
    return await run_burst(app, url, **settings)


def error_of(url: str, job_id: int) -> dict[str, Any]:
    ((text,),) = sql(url, f"SELECT error FROM runner_jobs WHERE id = {job_id}")
    return json.loads(text)


async def test_results_flow_back_to_handles(configured: str) -> None:
    a = await basic.add.defer_async(2, 3)
    b = await basic.sync_add.defer_async(x=4, y=5)
    await drain(configured)
    assert await a.wait_async(5) == 5
    assert await b.wait_async(5) == 9


async def test_one_loop_and_one_engine_for_every_job_of_a_worker(configured: str) -> None:
    handles = [await basic.identity.defer_async() for _ in range(30)]
    worker = await drain(configured, concurrency=5)
    results = {tuple(await h.wait_async(5)) for h in handles}
    assert len({r[1] for r in results}) == 1, "more than one event loop ran jobs"
    assert len({r[2] for r in results}) == 1, "more than one engine served jobs"
    assert worker.loop_identity is not None and worker.loop_identity[0] == next(iter(results))[1]


async def test_session_commits_on_return_and_rolls_back_on_error(configured: str) -> None:
    ok = await basic.record.defer_async("committed")
    bad = await basic.record_then_fail.defer_async("rolled-back")
    await drain(configured)
    assert isinstance(await ok.wait_async(5), int)
    with pytest.raises(JobFailed) as failed:
        await bad.wait_async(5)
    assert failed.value.type == "RuntimeError" and "after writing" in failed.value.message
    assert "Traceback" in failed.value.traceback
    assert sql(configured, "SELECT tag FROM ran ORDER BY id") == [("committed",)]


async def test_soft_time_limit_cancels_and_rolls_back(configured: str) -> None:
    handle = await basic.slow_with_session.defer_async("timed-out")
    sync_handle = await basic.slow_sync.defer_async(30)
    await drain(configured)
    with pytest.raises(JobFailed, match="JobTimeout"):
        await handle.wait_async(5)
    with pytest.raises(JobFailed, match="JobTimeout"):
        await sync_handle.wait_async(5)
    assert sql(configured, "SELECT count(*) FROM ran WHERE tag = 'timed-out'") == [(0,)]


async def test_retries_with_backoff_then_success_or_exhaustion(configured: str) -> None:
    succeeds = await basic.flaky.defer_async(succeed_on=3)
    exhausted = await basic.flaky.defer_async(succeed_on=9)
    await drain(configured)
    assert await succeeds.wait_async(5) == 3
    with pytest.raises(JobFailed, match="attempt 3 failed"):
        await exhausted.wait_async(5)
    assert sql(configured, f"SELECT attempt, state FROM runner_jobs WHERE id = {exhausted.id}") == [(3, State.FAILED)]


async def test_only_listed_exceptions_are_retried(configured: str) -> None:
    retried = await basic.only_keyerror_retries.defer_async("key")
    not_retried = await basic.only_keyerror_retries.defer_async("value")
    await drain(configured)
    rows = dict(sql(configured, f"SELECT id, attempt FROM runner_jobs WHERE id IN ({retried.id}, {not_retried.id})"))
    assert rows == {retried.id: 6, not_retried.id: 1}


async def test_explicit_retry_exception(configured: str) -> None:
    handle = await basic.asks_retry.defer_async()
    await drain(configured)
    assert await handle.wait_async(5) == 3


async def test_progress_is_readable(configured: str) -> None:
    handle = await basic.reports_progress.defer_async()
    await drain(configured)
    assert await handle.wait_async(5) == "ok"
    assert (await handle.info_async()).progress == {"step": 1}


async def test_chained_job_gets_the_parent_result(configured: str) -> None:
    parent = await basic.parent_of_chain.options(on_success=basic.child_of_chain.call(5)).defer_async(4)
    await drain(configured)
    assert await parent.wait_async(5) == 40
    ((_child_id, result, parent_id, root_id),) = sql(
        configured, "SELECT id, result, parent_id, root_id FROM runner_jobs WHERE name LIKE '%child_of_chain'"
    )
    assert (json.loads(result), parent_id, root_id) == (45, parent.id, parent.id)


async def test_expired_job_never_runs(configured: str) -> None:
    handle = await basic.record.options(expires=datetime.now(UTC) - timedelta(seconds=1)).defer_async("never")
    await drain(configured)
    assert (await handle.info_async()).state == State.EXPIRED
    assert sql(configured, "SELECT count(*) FROM ran") == [(0,)]
