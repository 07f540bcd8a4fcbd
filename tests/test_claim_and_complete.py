"""A busy worker writes its finished batch with its next claim: one write, one commit
(``Driver.claim_and_complete``, ``Batched.claim_with``). Every guarantee of the separate writes
holds: the fencing guard, counters for exactly the outcomes written, dependants released in the
transaction that finishes their parent, keyed jobs never past their limit, and nothing lost when
the combined write fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from runner.client import history_of
from runner.complete import HAND_OVER_WAIT, Batched
from runner.decide import Raised, Returned, WorkerLost, decide
from runner.drivers import Claimed, Driver
from runner.drivers.sql import plain_success, tally_rows
from runner.policy import Policy
from runner.schema import STATS_SUMS
from runner.wire import Attempt, Envelope, ErrorInfo, State
from tests.apps import flows

from .conftest import sql

pytestmark = pytest.mark.anyio

POLICY = Policy(max_attempts=3)


def done(item: Any, value: Any = None) -> Any:
    return decide(item, POLICY, Returned(value), now=time.time())


async def claim(driver: Driver, n: int, queues: tuple[str, ...] = ("default",)) -> list[Attempt]:
    items = await driver.claim("w", list(queues), n, 30)
    assert all(isinstance(i, Attempt) for i in items)
    return items  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def busy(driver: Driver) -> AsyncIterator[Batched]:
    """A completer whose claim loop is claiming back to back, its writer running."""
    completer = Batched(driver)
    completer.claiming(True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.run)
        yield completer
        tg.cancel_scope.cancel()


async def all_written(completer: Batched, within: float) -> None:
    with anyio.fail_after(within):
        while completer.pending:
            await anyio.sleep(0.005)


def counted(url: str) -> int:
    return int(sql(url, "SELECT COALESCE(sum(n), 0) FROM runner_stats WHERE kind = 'succeeded'")[0][0])


async def test_outcomes_are_written_and_the_next_batch_claimed_in_one_call(driver: Driver, broker_url: str) -> None:
    ids = await driver.enqueue([Envelope(name="a") for _ in range(6)])
    first = await claim(driver, 3)
    result = await driver.claim_and_complete("w", ["default"], 3, 30, [done(i, i.id) for i in first])
    assert isinstance(result, Claimed) and result.written == 3 and list(result.left) == []
    assert sorted(r.id for r in result.rows) == ids[3:]
    rows = {r.id: r for r in await driver.get_many(ids)}
    assert [rows[i].state for i in ids] == [State.SUCCEEDED] * 3 + [State.RUNNING] * 3
    assert rows[ids[0]].result == str(ids[0])
    assert counted(broker_url) == 3, "counters ride in the same write, for exactly the outcomes written"
    # Nothing left to claim: the outcomes are still written.
    again = await driver.claim_and_complete("w", ["default"], 3, 30, [done(i) for i in result.rows])  # type: ignore[arg-type]
    assert (again.rows, again.written) == ([], 3)
    assert counted(broker_url) == 6


async def test_a_stale_outcome_is_not_written_with_the_claim(driver: Driver, broker_url: str) -> None:
    (job_id,) = await driver.enqueue([Envelope(name="a")])
    [old] = await claim(driver, 1)
    assert await driver.complete([decide(old, POLICY, WorkerLost("presumed dead"), now=time.time())]) == 1
    [new] = await claim(driver, 1)
    result = await driver.claim_and_complete("w", ["default"], 1, 30, [done(old, "stale")])
    assert result.written == 0
    # Whatever the driver left for ``complete`` matches nothing either.
    assert await driver.complete(result.left) == 0
    row = await driver.get(job_id)
    assert (
        row is not None
        and row.state == State.RUNNING
        and row.result is None
        and row.lease_owner == "w"
        and new.token == old.token + 1
    )
    assert counted(broker_url) == 0


async def test_a_parents_outcome_releases_its_dependants(driver: Driver, broker_url: str) -> None:
    flows.app.configure(broker=broker_url)
    try:
        parent = await flows.add.defer_async(1, 2)
        child = await flows.add.options(depends_on=[parent]).defer_async(2, 2)
    finally:
        await flows.app.client.aclose()
    [item] = await claim(driver, 1)
    assert item.id == parent.id
    result = await driver.claim_and_complete("w", ["default"], 5, 30, [done(item, 3)])
    # PostgreSQL leaves it to ``complete`` (a release needs a transaction); SQLite writes it in
    # its own, where the released child may even be claimed at once.
    await driver.complete(result.left)
    assert result.written + len(result.left) == 1
    rows = {r.id: r for r in await driver.get_many([parent.id, child.id])}
    assert rows[parent.id].state == State.SUCCEEDED
    assert rows[child.id].state in (State.QUEUED, State.RUNNING), "the dependant was released"


async def test_keyed_jobs_are_never_claimed_past_their_limit(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="plain") for _ in range(2)])
    first = await claim(driver, 2)
    await driver.enqueue([Envelope(name="k", concurrency_key="one", concurrency_limit=1) for _ in range(3)])
    result = await driver.claim_and_complete("w", ["default"], 5, 30, [done(i) for i in first])
    assert result.written + len(result.left) == 2
    await driver.complete(result.left)
    assert {r.state for r in await driver.get_many(ids)} == {State.SUCCEEDED}
    assert [r.name for r in result.rows] == ["k"], "one slot for the key: one claimed"
    more = await driver.claim_and_complete("w", ["default"], 5, 30, [])
    assert more.rows == []


async def test_the_completer_hands_outcomes_to_the_busy_claim_loop(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="a") for _ in range(4)])
    first = await claim(driver, 2)
    calls: list[int] = []

    async def claim_next(outcomes: Any) -> Claimed:
        calls.append(len(outcomes))
        return await driver.claim_and_complete("w", ["default"], 2, 30, outcomes)

    async with busy(driver) as completer:
        for item in first:
            await completer.complete(done(item))
        await anyio.sleep(HAND_OVER_WAIT / 5)
        assert completer.pending == 2, "the writer waits for the claim loop"
        assert set(completer.in_flight()) == {i.id for i in first}, "their leases are still renewed"
        second = await completer.claim_with(claim_next)
        assert calls == [2] and completer.pending == 0
        assert sorted(i.id for i in second) == ids[2:]
        # The claim loop goes idle: what ends now is written by the completer, at once.
        completer.claiming(False)
        for item in second:
            await completer.complete(done(item))
        await all_written(completer, within=HAND_OVER_WAIT * 20)
    assert {r.state for r in await driver.get_many(ids)} == {State.SUCCEEDED}


async def test_outcomes_are_written_alone_when_the_claim_loop_does_not_come(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="a")])
    [item] = await claim(driver, 1)
    async with busy(driver) as completer:  # but it never claims again (a long job holds every slot)
        await completer.complete(done(item))
        await all_written(completer, within=HAND_OVER_WAIT * 40)
    assert (await driver.get_many(ids))[0].state == State.SUCCEEDED


async def test_a_failed_combined_write_loses_nothing(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="a") for _ in range(2)])
    first = await claim(driver, 2)

    async def broken(outcomes: Any) -> Claimed:
        raise RuntimeError("the combined statement failed")

    async with busy(driver) as completer:
        for item in first:
            await completer.complete(done(item))
        with pytest.raises(RuntimeError, match="combined statement failed"):
            await completer.claim_with(broken)
        # Written by the completer on its own, without waiting for the claim loop.
        await all_written(completer, within=HAND_OVER_WAIT * 10)
    assert {r.state for r in await driver.get_many(ids)} == {State.SUCCEEDED}


async def test_outcomes_the_claim_did_not_write_are_written_by_the_completer(driver: Driver) -> None:
    """An outcome with errbacks to insert: PostgreSQL's combined statement leaves it; the
    completer writes it (with its errback) in a transaction of its own."""
    from runner.decide import NotRunnable
    from runner.wire import Callbacks, ChildSpec, ErrorInfo

    errback = ChildSpec(name="cleanup", queue="mail")
    (job_id,) = await driver.enqueue([Envelope(name="parent", callbacks=Callbacks(on_failure=(errback,)))])
    [item] = await claim(driver, 1)
    failed = decide(item, POLICY, NotRunnable(ErrorInfo(type="UnknownJob", message="no such job")), now=time.time())
    assert failed.children
    async with busy(driver) as completer:
        await completer.complete(failed)
        await completer.claim_with(lambda outcomes: driver.claim_and_complete("w", ["default"], 1, 30, outcomes))
        await all_written(completer, within=HAND_OVER_WAIT * 10)
    row = await driver.get(job_id)
    assert row is not None and row.state == State.FAILED
    [spawned] = await claim(driver, 1, ("mail",))
    assert (spawned.name, spawned.parent_id) == ("cleanup", job_id)


async def test_a_burst_ends_when_its_last_outcomes_are_written_not_at_the_next_poll(broker_url: str) -> None:
    """The last outcomes of a burst are written after the claim loop found the queue empty; the
    worker must notice they are done (and a released job must wake it) without waiting out its
    poll interval (30 s here)."""
    from runner.testing import run_burst
    from runner.workflows import group

    flows.app.configure(broker=broker_url)
    try:
        for size in (1, 3, 10):
            handle = await group(flows.add.call(i, i) for i in range(size)).defer_async()
            parent = await flows.add.defer_async(1, 2)
            child = await flows.add.options(depends_on=[parent]).defer_async(3, 4)
            started = time.monotonic()
            await run_burst(flows.app, broker_url, concurrency=4, poll_interval=30.0)
            elapsed = time.monotonic() - started
            assert await handle.wait_async(5) == [2 * i for i in range(size)] and await child.wait_async(5) == 7
            assert elapsed < 10, f"a burst of {size} took {elapsed:.1f}s: a wake-up was lost and it waited for the poll"
    finally:
        await flows.app.client.aclose()


async def test_plain_successes_leave_the_row_and_counters_any_outcome_would(driver: Driver, broker_url: str) -> None:
    """PostgreSQL writes a batch of plain successes (``plain_success``) with a narrower statement
    that builds the attempt record and the counter deltas from the row itself. What it leaves must
    be what the general write leaves: checked against the record and ``tally_rows`` the Python
    side computes, for both ways a batch is written (with the next claim, and alone), and for a
    mixed batch, which takes the general write."""
    past = time.time() - 3.7
    ids = await driver.enqueue([Envelope(name="a", run_at=past if n % 2 else None) for n in range(8)])
    first = await claim(driver, 3)
    with_claim = [done(i, {"id": i.id}) for i in first]
    assert all(plain_success(o, "w") for o in with_claim)
    result = await driver.claim_and_complete("w", ["default"], 3, 30, with_claim)
    assert result.written == 3
    alone = [done(i) for i in result.rows]
    assert await driver.complete(alone) == 3
    last = await claim(driver, 2)
    error = ErrorInfo(type="RuntimeError", message="again", attempt=last[1].attempt)
    mixed = [done(last[0], "ok"), decide(last[1], POLICY, Raised(error, RuntimeError), now=time.time())]
    assert not plain_success(mixed[1], "w")
    assert (await driver.claim_and_complete("w", ["default"], 1, 30, mixed)).written == 2

    outcomes = [*with_claim, *alone, *mixed]
    rows = {r.id: r for r in await driver.get_many(ids)}
    for o in outcomes:
        assert history_of(rows[o.job_id]) == [o.record], "the attempt record, built from the row"
        row = rows[o.job_id]
        assert (row.state, row.attempt, row.lost, row.finished_at) == (o.state, o.attempt, o.lost, o.finished_at)
        assert row.result == (None if o.result is None else o.result.decode())
        assert (row.error is None) == (o.error is None)
        assert row.lease_owner == ("w" if o.state == State.SUCCEEDED else None)
    assert rows[with_claim[0].job_id].result == f'{{"id":{with_claim[0].job_id}}}'
    expected = {(t["source"], t["minute"], t["name"], t["queue"], t["kind"]): t for t in tally_rows(outcomes, lanes=True)}
    got = sql(broker_url, f"SELECT source, minute, name, queue, kind, {', '.join(STATS_SUMS)} FROM runner_stats")
    assert {tuple(r[:5]) for r in got} == set(expected)
    for row in got:
        want = expected[tuple(row[:5])]
        assert list(row[5:]) == pytest.approx([want[c] for c in STATS_SUMS]), row[:5]
