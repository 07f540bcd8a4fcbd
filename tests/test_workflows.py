"""Native workflows on both backends: chains, groups, chords and DAGs are rows that wait for rows,
released in the transaction that finishes each parent."""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from runner import JobFailed, create_engine
from runner.testing import run_burst
from runner.workflows import chain, chord, group
from tests.apps import flows
from tests.apps.flows import add, collect, double, fail, member, node, tsum

from .conftest import sql

pytestmark = pytest.mark.anyio


@pytest.fixture
async def url(broker_url: str) -> Any:
    engine = create_engine(broker_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS ran_nodes (name TEXT, at DOUBLE PRECISION, pid INTEGER)"))
    await engine.dispose()
    flows.app.configure(broker=broker_url)
    yield broker_url
    await flows.app.client.aclose()


async def drain(url: str, **settings: Any) -> Any:
    return await run_burst(flows.app, url, **settings)


async def test_a_large_workflow_of_plain_calls_keeps_every_link(url: str) -> None:
    # 600 plain calls take the bulk path (COPY on PostgreSQL), which writes only a plain row's
    # columns: the group id and the chord callback's wait must survive it.
    callback = await chord([add.call(i, 0) for i in range(600)], tsum.call()).defer_async()
    members = sql(url, "SELECT count(*), count(DISTINCT group_id) FROM runner_jobs WHERE id <> " + str(callback.id))
    assert members == [(600, 1)], members
    assert await callback.state_async() == "waiting"
    await drain(url)
    assert await callback.wait_async(10) == sum(range(600))


async def test_a_chain_passes_each_result_to_the_next(url: str) -> None:
    last = await chain(add.call(1, 2), double.call(), add.options(immutable=True).call(10, 10), double.call()).defer_async()
    assert await last.state_async() == "waiting"
    await drain(url)
    assert await last.wait_async(5) == 40
    rows = sql(url, "SELECT id, parent_id, root_id, state FROM runner_jobs ORDER BY id")
    first = rows[0][0]
    assert [(p, r) for _, p, r, _ in rows] == [(None, None), (first, first), (first + 1, first), (first + 2, first)], rows


async def test_a_group_returns_every_result_in_order(url: str) -> None:
    handle = await group(add.call(i, i) for i in range(10)).defer_async()
    assert len(handle) == 10 and handle.group_id
    await drain(url)
    assert await handle.wait_async(5) == [2 * i for i in range(10)]
    assert sql(url, f"SELECT count(*) FROM runner_jobs WHERE group_id = '{handle.group_id}'") == [(10,)]
    failing = await group(add.call(1, 1), fail.call("two")).defer_async()
    await drain(url)
    with pytest.raises(JobFailed, match="two"):
        await failing.wait_async(5)
    first, second = await failing.wait_async(5, return_exceptions=True)
    assert first == 2 and isinstance(second, JobFailed)


async def test_a_chord_callback_gets_the_list_of_results_once(url: str) -> None:
    callback = await chord([add.call(i, 1) for i in range(20)], tsum.call(extra=100)).defer_async()
    await drain(url)
    assert await callback.wait_async(5) == sum(range(1, 21)) + 100
    assert sql(url, f"SELECT count(*) FROM runner_jobs WHERE parent_id IS NOT NULL AND id = {callback.id}") == [(1,)]


async def test_a_chain_of_groups_is_a_chord_of_chords(url: str) -> None:
    out = await chain(group(add.call(1, 1), add.call(2, 2)), group(tsum.call(), tsum.call(extra=1)), tsum.call()).defer_async()
    await drain(url)
    assert await out.wait_async(5) == (2 + 4) + (2 + 4 + 1)


async def test_a_dag_runs_in_topological_order(url: str) -> None:
    rng = random.Random(5)
    handles: list[Any] = []
    edges: dict[int, list[int]] = {}
    for i in range(50):
        parents = rng.sample(range(i), k=min(i, rng.randint(0, 3)))
        edges[i] = parents
        options = {"depends_on": [handles[p] for p in parents]} if parents else {}
        handles.append(await node.options(**options).defer_async(f"n{i}", rng.uniform(0, 0.01)))
    await drain(url, concurrency=8)
    ran = dict(sql(url, "SELECT name, at FROM ran_nodes"))
    assert len(ran) == 50
    for child, parents in edges.items():
        for parent in parents:
            assert ran[f"n{parent}"] < ran[f"n{child}"], f"n{child} ran before its parent n{parent}"


async def test_depends_on_with_results_and_on_jobs_that_already_finished(url: str) -> None:
    a, b = await add.defer_async(1, 2), await add.defer_async(3, 4)
    await drain(url)
    late = await tsum.options(depends_on=[a, b], with_results=True).defer_async()
    assert await late.state_async() == "queued", "its parents had already succeeded"
    await drain(url)
    assert await late.wait_async(5) == 10


async def test_a_failed_parent_ends_its_dependants_by_their_policy(url: str) -> None:
    bad = await fail.defer_async("no")
    failed = await add.options(depends_on=[bad]).defer_async(1, 1)
    cancelled = await add.options(depends_on=[bad], on_parent_failure="cancel").defer_async(1, 1)
    runs = await tsum.options(depends_on=[bad], on_parent_failure="run", with_results=True).defer_async(extra=5)
    grandchild = await add.options(depends_on=[failed]).defer_async(2, 2)
    await drain(url)
    assert (await failed.state_async(), await cancelled.state_async(), await grandchild.state_async()) == (
        "failed",
        "cancelled",
        "failed",
    )
    assert await runs.wait_async(5) == 5, "a dependant that runs anyway gets None for the failed parent"
    error = json.loads(sql(url, f"SELECT error FROM runner_jobs WHERE id = {failed.id}")[0][0])
    assert error["type"] == "ParentFailed" and str(bad.id) in error["message"]
    later = await add.options(depends_on=[bad], on_parent_failure="cancel").defer_async(0, 0)
    assert await later.state_async() == "cancelled", "a parent that had already failed counts at once"


async def test_cancelling_a_workflow_by_its_root_cancels_what_has_not_finished(url: str) -> None:
    last = await chain(add.call(1, 1), double.call(), double.call()).defer_async()
    root = int(sql(url, f"SELECT root_id FROM runner_jobs WHERE id = {last.id}")[0][0])
    assert root != last.id
    assert await last.cancel_workflow_async() == (3, 0), "any job of a workflow names the whole of it"
    assert sql(url, "SELECT DISTINCT state FROM runner_jobs") == [("cancelled",)]
    assert await last.cancel_workflow_async() == (0, 0)


async def test_the_cli_shows_a_steps_links_and_cancels_its_workflow(url: str) -> None:
    callback = await chord([add.call(i, i) for i in range(3)], tsum.call()).defer_async()

    async def cli(*args: str) -> str:
        done = await anyio.run_process([sys.executable, "-m", "runner", "jobs", *args, "--broker", url], check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    shown = await cli("show", str(callback.id))
    waits = next(line for line in shown.splitlines() if "waits_for:" in line)
    assert waits.count("tests.apps.flows.add (queued)") == 3, shown
    as_json = json.loads(await cli("show", str(callback.id), "--json"))
    assert [link["state"] for link in as_json["waits_for"]] == ["queued"] * 3
    assert "4 jobs cancelled" in await cli("cancel", str(callback.id), "--workflow")
    assert await callback.state_async() == "cancelled"
    assert sql(url, "SELECT DISTINCT state FROM runner_jobs") == [("cancelled",)]


async def test_a_workflow_is_one_transaction(url: str) -> None:
    with pytest.raises(Exception, match="does not exist"):
        await chain(add.call(1, 1), add.options(depends_on=[10**9]).call(1, 1)).defer_async()
    assert sql(url, "SELECT count(*) FROM runner_jobs") == [(0,)], "nothing of a refused workflow was written"
    engine = create_engine(url)
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(engine) as session:
        async with session.begin():
            await chord([add.call(1, 1)], tsum.call()).defer_async(session=session)
            await session.rollback()
    await engine.dispose()
    assert sql(url, "SELECT count(*) FROM runner_jobs") == [(0,)]


async def test_a_big_chord_releases_its_callback_exactly_once(url: str) -> None:
    callback = await chord([member.call(i) for i in range(200)], collect.call()).defer_async()
    await drain(url, concurrency=16)
    assert await callback.wait_async(5) == sum(range(200))
    assert sql(url, "SELECT count(*) FROM ran_nodes WHERE name LIKE 'callback:%'") == [(1,)]
    assert sql(url, "SELECT name FROM ran_nodes WHERE name LIKE 'callback:%'") == [(f"callback:200:{sum(range(200))}",)]


async def test_a_step_whose_key_is_held_is_the_job_that_holds_it(url: str) -> None:
    """A waiting step holds its key like a queued job: a second workflow with the same keys gets
    the first one's jobs, and finishing them never meets a twin (it used to fail the parent's
    completion with a unique violation)."""
    first = await chain(add.options(key="a").call(1, 2), double.options(key="b").call()).defer_async()
    again = await chain(add.options(key="a").call(1, 2), double.options(key="b").call()).defer_async()
    assert again.id == first.id
    held = await double.options(key="k").defer_async(5)
    after = await chain(add.call(1, 1), double.options(key="k").call()).defer_async()
    assert after.id == held.id, "the job holding the key stands in for the step"
    await drain(url)
    assert await first.wait_async(5) == 6
    assert await held.wait_async(5) == 10
    assert sql(url, "SELECT state, count(*) FROM runner_jobs GROUP BY state") == [("succeeded", 4)]
    assert sql(url, f"SELECT count(*) FROM runner_deps WHERE job_id = {held.id}") == [(0,)]
