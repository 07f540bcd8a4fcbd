"""The one store suite, run against SQLite and PostgreSQL alike (fixture ``broker_url``)."""

from __future__ import annotations

import time

import anyio
import pytest

from runner.errors import PayloadTooLarge
from runner.store import AdminQueries, Outcome, Store
from runner.wire import Envelope, State

pytestmark = pytest.mark.anyio


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.migrate() == (1, 1)


async def test_enqueue_returns_ids_in_order_and_rows_are_readable(store: Store) -> None:
    ids = await store.enqueue([Envelope(name="a", args=[i], kwargs={"k": "v"}) for i in range(5)])
    assert len(ids) == 5 and ids == sorted(ids)
    row = await store.get(ids[2])
    assert row is not None
    assert (row.name, row.args, row.kwargs, row.state, row.attempt) == ("a", "[2]", '{"k":"v"}', State.QUEUED, 0)


async def test_bulk_enqueue_of_many_rows(store: Store) -> None:
    ids = await store.enqueue([Envelope(name="bulk", args=[i]) for i in range(3000)])
    assert len(set(ids)) == 3000
    rows = await store.get_many(ids)
    assert {r.id: r.args for r in rows} == {job_id: f"[{i}]" for i, job_id in enumerate(ids)}, "ids map to their own rows"
    too_big = [Envelope(name="bulk", args=[i]) for i in range(700)] + [Envelope(name="huge", args=["x" * 20_000])]
    with pytest.raises(PayloadTooLarge, match="arguments of huge are"):
        await store.enqueue(too_big)
    async with store.engine.connect() as conn:  # a bulk insert in the caller's transaction
        async with conn.begin() as txn:
            await store.enqueue([Envelope(name="rolled-back") for _ in range(800)], conn)
            await txn.rollback()
    rows = await store.get_many(list(range(1, 10_000)))
    assert len(rows) == 3000, "a rejected or rolled-back bulk insert must leave nothing behind"


async def test_concurrent_single_enqueues_share_statements_and_each_gets_its_own_row(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    insert_rows = store._insert_rows

    async def counting(rows: list[dict], now: float) -> list[int]:
        writes.append(len(rows))
        return await insert_rows(rows, now)

    monkeypatch.setattr(store, "_insert_rows", counting)
    ids: dict[int, int] = {}

    async def one(i: int) -> None:
        (ids[i],) = await store.enqueue([Envelope(name="single", args=[i], priority=i % 3)])

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    assert len(set(ids.values())) == 200
    assert sum(writes) == 200 and len(writes) < 20, f"200 concurrent callers took {len(writes)} writes: {writes}"
    rows = {r.id: r for r in await store.get_many(list(ids.values()))}
    assert all(rows[ids[i]].args == f"[{i}]" and rows[ids[i]].priority == i % 3 for i in range(200)), "each caller's id is its own row"


async def test_a_bad_row_fails_only_its_own_caller_in_a_shared_write(store: Store) -> None:
    """PostgreSQL refuses a NUL in text when the batch is written; SQLite stores it. Either way
    the neighbours in the same write get their rows."""
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        name = "bad\x00name" if i == 7 else "fine"
        try:
            (results[i],) = await store.enqueue([Envelope(name=name, args=[i])])
        except Exception as exc:  # noqa: BLE001 - the culprit's own error is the point
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)
    good = [v for i, v in results.items() if i != 7]
    assert all(isinstance(v, int) for v in good), results
    assert len(await store.get_many(good)) == 29
    if store.backend == "postgresql":
        assert isinstance(results[7], Exception) and "0x00" in str(results[7])


async def test_claim_takes_only_what_is_asked_and_leases_it(store: Store) -> None:
    await store.enqueue([Envelope(name="a") for _ in range(5)])
    claimed = await store.claim("w1", ["default"], 3, lease_ttl=30)
    assert len(claimed) == 3
    assert {c.attempt for c in claimed} == {1} and {c.lease_token for c in claimed} == {1}
    row = await store.get(claimed[0].id)
    assert row is not None and row.state == State.RUNNING and row.lease_owner == "w1"
    assert len(await store.claim("w2", ["default"], 10, lease_ttl=30)) == 2
    assert await store.claim("w3", ["default"], 10, lease_ttl=30) == []


async def test_claim_orders_by_priority_then_fifo_and_respects_eta(store: Store) -> None:
    now = time.time()
    low, high, later, second_low = await store.enqueue(
        [
            Envelope(name="low", priority=0),
            Envelope(name="high", priority=5),
            Envelope(name="later", priority=9, run_at=now + 60),
            Envelope(name="low2", priority=0),
        ]
    )
    claimed = [c.id for c in await store.claim("w", ["default"], 1, 30)]
    claimed += [c.id for c in await store.claim("w", ["default"], 1, 30)]
    claimed += [c.id for c in await store.claim("w", ["default"], 1, 30)]
    assert claimed == [high, low, second_low]
    assert await store.claim("w", ["default"], 5, 30) == []  # `later` is not due


async def test_queues_are_served_in_the_order_given(store: Store) -> None:
    await store.enqueue([Envelope(name="b", queue="b"), Envelope(name="a", queue="a"), Envelope(name="c", queue="c")])
    claimed = await store.claim("w", ["a", "b"], 5, 30)
    assert [c.queue for c in claimed] == ["a", "b"]


async def test_concurrent_claimers_never_share_a_job(store: Store) -> None:
    await store.enqueue([Envelope(name="a") for _ in range(200)])
    seen: list[int] = []

    async def claimer(name: str) -> None:
        while batch := await store.claim(name, ["default"], 7, 30):
            seen.extend(c.id for c in batch)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(claimer, f"w{i}")
    assert len(seen) == 200 and len(set(seen)) == 200


async def test_finish_is_guarded_by_the_fencing_token(store: Store) -> None:
    (job_id,) = await store.enqueue([Envelope(name="a")])
    (first,) = await store.claim("w1", ["default"], 1, lease_ttl=30)
    # w1 is presumed dead; its lease is rescued and another worker claims the job.
    assert await store.rescue_owner("w1", max_lost=5) == [(job_id, State.QUEUED)]
    (second,) = await store.claim("w2", ["default"], 1, lease_ttl=30)
    assert second.lease_token == first.lease_token + 1
    stale = Outcome(job_id, first.lease_token, State.SUCCEEDED, result='"stale"', finished_at=time.time())
    assert await store.finish([stale]) == 0
    fresh = Outcome(job_id, second.lease_token, State.SUCCEEDED, result='"fresh"', finished_at=time.time())
    assert await store.finish([fresh]) == 1
    row = await store.get(job_id)
    assert row is not None and row.result == '"fresh"' and row.state == State.SUCCEEDED
    assert row.lost == 1 and row.attempt == 1  # the lost attempt was given back


async def test_batched_finish_mixes_outcomes(store: Store) -> None:
    ids = await store.enqueue([Envelope(name="a") for _ in range(3)])
    claimed = {c.id: c for c in await store.claim("w", ["default"], 3, 30)}
    now = time.time()
    outcomes = [
        Outcome(ids[0], claimed[ids[0]].lease_token, State.SUCCEEDED, result="1", finished_at=now),
        Outcome(ids[1], claimed[ids[1]].lease_token, State.FAILED, error='{"type":"E","message":"m"}', finished_at=now),
        Outcome(ids[2], claimed[ids[2]].lease_token, State.QUEUED, error='{"type":"E","message":"again"}', run_at=now + 100),
    ]
    assert await store.finish(outcomes) == 3
    states = {r.id: r.state for r in await store.get_many(ids)}
    assert states == {ids[0]: State.SUCCEEDED, ids[1]: State.FAILED, ids[2]: State.QUEUED}
    assert await store.claim("w", ["default"], 3, 30) == []  # the retry waits for its run_at


async def test_chained_children_are_inserted_only_when_the_guard_matches(store: Store) -> None:
    (job_id,) = await store.enqueue([Envelope(name="parent")])
    (claimed,) = await store.claim("w", ["default"], 1, 30)
    child = Envelope(name="child", args=[1], parent_id=job_id, root_id=job_id)
    stale = Outcome(job_id, claimed.lease_token + 1, State.SUCCEEDED, finished_at=time.time(), children=(child,))
    assert await store.finish([stale]) == 0
    assert await store.claim("w", ["default"], 5, 30) == []
    good = Outcome(job_id, claimed.lease_token, State.SUCCEEDED, finished_at=time.time(), children=(child,))
    assert await store.finish([good]) == 1
    (spawned,) = await store.claim("w", ["default"], 5, 30)
    assert (spawned.name, spawned.parent_id, spawned.root_id) == ("child", job_id, job_id)


async def test_renewal_keeps_leases_and_expiry_rescues_them(store: Store) -> None:
    await store.enqueue([Envelope(name="a"), Envelope(name="b")])
    await store.claim("alive", ["default"], 1, lease_ttl=0.2)
    await store.claim("dead", ["default"], 1, lease_ttl=0.2)
    await anyio.sleep(0.1)
    assert await store.renew("alive", lease_ttl=30) == 1
    await anyio.sleep(0.2)
    rescued = await store.rescue_expired(max_lost=5)
    assert len(rescued) == 1 and rescued[0][1] == State.QUEUED
    assert [c.name for c in await store.claim("w", ["default"], 5, 30)] == ["b"]


async def test_a_job_that_keeps_killing_workers_ends_failed(store: Store) -> None:
    (job_id,) = await store.enqueue([Envelope(name="poison")])
    for round_ in range(3):
        await store.claim(f"w{round_}", ["default"], 1, 30)
        outcome = await store.rescue_owner(f"w{round_}", max_lost=3)
    assert outcome == [(job_id, State.FAILED)]
    row = await store.get(job_id)
    assert row is not None and row.state == State.FAILED and "WorkerLost" in (row.error or "")


async def test_graceful_requeue_gives_the_attempt_back(store: Store) -> None:
    (job_id,) = await store.enqueue([Envelope(name="a")])
    await store.claim("w", ["default"], 1, 30)
    assert await store.requeue_owner("w") == 1
    row = await store.get(job_id)
    assert row is not None and (row.state, row.attempt, row.lost) == (State.QUEUED, 0, 0)


async def test_idempotency_key_returns_the_live_job(store: Store) -> None:
    (first,) = await store.enqueue([Envelope(name="a", key="user-7")])
    (again,) = await store.enqueue([Envelope(name="a", key="user-7")])
    assert again == first
    (claimed,) = await store.claim("w", ["default"], 1, 30)
    assert (await store.enqueue([Envelope(name="a", key="user-7")])) == [first]  # running is live too
    await store.finish([Outcome(first, claimed.lease_token, State.SUCCEEDED, finished_at=time.time())])
    (new,) = await store.enqueue([Envelope(name="a", key="user-7")])
    assert new != first
    mixed = await store.enqueue([Envelope(name="a", key="user-7"), Envelope(name="b"), Envelope(name="a", key="user-8")])
    assert mixed[0] == new and len(set(mixed)) == 3


async def test_cancel_queued_at_once_and_running_cooperatively(store: Store) -> None:
    queued, running = await store.enqueue([Envelope(name="a", priority=0), Envelope(name="b", priority=1)])
    (claimed,) = await store.claim("w", ["default"], 1, 30)
    assert claimed.id == running
    assert await store.cancel(queued) == State.CANCELLED
    assert await store.cancel(running) == "cancelling"
    assert await store.cancel_requests("w") == [(running, claimed.lease_token)]
    assert await store.cancel(queued) is None


async def test_payload_limit_is_checked_at_enqueue(store: Store) -> None:
    with pytest.raises(PayloadTooLarge, match="limit is 10,000"):
        await store.enqueue([Envelope(name="a", args=["x" * 20_000])])


async def test_quotes_and_semicolons_round_trip_as_data(store: Store) -> None:
    name = "job'; DROP TABLE runner_jobs; --"
    (job_id,) = await store.enqueue([Envelope(name=name, queue="q'\";--", args=["'); DELETE FROM runner_jobs; --"])])
    (claimed,) = await store.claim("w", ["q'\";--"], 1, 30)
    assert claimed.id == job_id and claimed.name == name


async def test_admin_queries(store: Store) -> None:
    ids = await store.enqueue([Envelope(name="a") for _ in range(3)])
    claimed = await store.claim("w", ["default"], 3, 30)
    now = time.time()
    await store.finish([Outcome(c.id, c.lease_token, State.FAILED, error="{}", finished_at=now - 100) for c in claimed])
    admin = AdminQueries(store)
    assert ("default", State.FAILED, 3) in await admin.stats()
    assert await admin.retry_one(ids[0])
    assert await admin.purge_batch(State.FAILED, before=now, batch=1) == 1
    assert await admin.retry_batch(State.FAILED) == 1
    listed = await admin.list_jobs(state=State.QUEUED, queue=None, name="a", limit=10)
    assert sorted(r.id for r in listed) == sorted(ids[:1] + [r.id for r in listed if r.id != ids[0]])
    assert len(listed) == 2
