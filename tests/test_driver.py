"""The one driver suite, run against SQLite and PostgreSQL alike (fixture ``broker_url``).

Outcomes are built by ``decide`` from real events, as the worker builds them, so the suite covers
the path a row takes: enqueue -> claim (decoded once) -> decide -> one guarded write.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from runner.decide import GaveBack, NotRunnable, Raised, Returned, WorkerLost, decide
from runner.drivers import CancelResult, Driver, JobFilter, WorkerRow, open_driver
from runner.drivers.sql import INSERT_COLUMNS
from runner.errors import PayloadTooLarge, SerializationError
from runner.policy import Policy
from runner.wire import MAX_DEPTH, Attempt, BadRow, Callbacks, ChildSpec, Envelope, ErrorInfo, PlainEnvelope, State

from .conftest import sql

pytestmark = pytest.mark.anyio

POLICY = Policy(max_attempts=3)


def done(item: Attempt | BadRow, value: Any = None) -> Any:
    return decide(item, POLICY, Returned(value), now=time.time())


def failed(item: Attempt | BadRow, message: str = "boom") -> Any:
    return decide(
        item, Policy(max_attempts=1), Raised(ErrorInfo(type="ValueError", message=message), ValueError), now=time.time()
    )


async def claim_one(driver: Driver, owner: str = "w", queues: tuple[str, ...] = ("default",)) -> Attempt:
    (item,) = await driver.claim(owner, list(queues), 1, 30)
    assert isinstance(item, Attempt), item
    return item


async def test_migrate_is_idempotent(driver: Driver) -> None:
    assert await driver.migrate() == (3, 3)


async def test_a_migrator_that_waited_for_another_does_not_redo_its_work(broker_url: str) -> None:
    # The race CI once lost: a host read version 0, waited for the host creating the schema, then
    # ran the DDL again (DROP TRIGGER) beside claiming workers and deadlocked. A migrator must
    # read the version only once it is the one migrating.
    from runner.drivers import open_driver

    first, second = open_driver(broker_url, pool_size=2), open_driver(broker_url, pool_size=1, max_overflow=0)
    try:
        results: list[tuple[int, int]] = []
        # The second migrator's one connection has looked before (and found no schema): what it
        # learned then must not outlive the wait (PostgreSQL caches catalog lookups per backend).
        async with second._auto.connect() as conn:
            assert await second._schema_version(conn) == 0
        async with anyio.create_task_group() as tg:
            async with first.engine.begin() as conn:
                assert await first._migrate(conn) == (0, 3)

                async def late() -> None:
                    results.append(await second.migrate())

                tg.start_soon(late)
                await anyio.sleep(0.3)  # the second migrator is now waiting for this transaction
                assert results == []
        assert results == [(3, 3)]
    finally:
        await first.dispose()
        await second.dispose()


async def test_a_postgresql_migrator_sees_the_schema_another_committed_while_it_waited(pg_url: str) -> None:
    # What CI hit twice: a backend that had looked for runner_meta (not there yet) began its
    # migration, waited for another host's migration lock, and still believed the table missing
    # once it had the lock (to_regclass answers from the backend's catalog cache, which that wait
    # does not refresh). It redid the DDL beside claiming workers and deadlocked on DROP TRIGGER.
    import asyncpg

    creator = await asyncpg.connect(pg_url)
    late = open_driver(pg_url, pool_size=1, max_overflow=0)  # one backend: it keeps what it learned
    try:
        async with late._auto.connect() as conn:
            assert await late._schema_version(conn) == 0
        await creator.execute("BEGIN")
        await creator.execute("SELECT pg_advisory_xact_lock(7320431)")  # the migrators' lock
        await creator.execute("CREATE TABLE runner_meta (name TEXT, value TEXT)")
        await creator.execute("INSERT INTO runner_meta VALUES ('schema_version', '3')")
        seen: list[int] = []

        async def migrate_later() -> None:
            async with late.engine.begin() as conn:
                await late._serialise_migrations(conn)
                seen.append(await late._schema_version(conn))

        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate_later)
            await anyio.sleep(0.3)  # waiting for the lock, in its transaction
            await creator.execute("COMMIT")
        assert seen == [3]
    finally:
        await creator.close()
        await late.dispose()


async def test_enqueue_returns_ids_in_order_and_rows_are_readable(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="a", args=[i], kwargs={"k": "v"}) for i in range(5)])
    assert len(ids) == 5 and ids == sorted(ids)
    row = await driver.get(ids[2])
    assert row is not None
    assert (row.name, row.args, row.kwargs, row.state, row.attempt, row.attempts) == (
        "a",
        "[2]",
        '{"k":"v"}',
        State.QUEUED,
        0,
        "[]",
    )


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("kind", [Envelope, PlainEnvelope])  # PlainEnvelope: the bulk path's own rows
async def test_bulk_enqueue_of_many_rows(driver: Driver, kind: type[Envelope]) -> None:
    ids = await driver.enqueue([kind(name="bulk", args=[i]) for i in range(3000)])
    assert len(set(ids)) == 3000
    rows = await driver.get_many(ids)
    assert {r.id: r.args for r in rows} == {job_id: f"[{i}]" for i, job_id in enumerate(ids)}, "ids map to their own rows"
    too_big = [kind(name="bulk", args=[i]) for i in range(700)] + [kind(name="huge", args=["x" * 20_000])]
    with pytest.raises(PayloadTooLarge, match="arguments of huge are"):
        await driver.enqueue(too_big)
    too_deep = [kind(name="bulk", args=[i]) for i in range(700)] + [kind(name="deep", kwargs={"x": nested(MAX_DEPTH + 1)})]
    with pytest.raises(SerializationError, match="deep"):
        await driver.enqueue(too_deep)
    foreign = [kind(name="bulk", args=[i]) for i in range(700)] + [kind(name="foreign", args=[object()])]
    with pytest.raises(SerializationError, match="foreign"):
        await driver.enqueue(foreign)
    async with driver.engine.connect() as conn:  # a bulk insert in the caller's transaction
        async with conn.begin() as txn:
            await driver.enqueue([kind(name="rolled-back") for _ in range(800)], conn)
            await txn.rollback()
    assert len(await driver.get_many(list(range(1, 10_000)))) == 3000, "a rejected or rolled-back bulk insert leaves nothing"


async def test_a_bulk_insert_of_plain_rows_with_one_that_is_not_writes_each_as_asked(driver: Driver) -> None:
    envelopes: list[Envelope] = [PlainEnvelope(name="plain", args=[i], queue="q", priority=2) for i in range(700)]
    envelopes.append(Envelope(name="odd", max_attempts=3, run_at=123.0))
    ids = await driver.enqueue(envelopes)
    rows = {r.id: r for r in await driver.get_many(ids)}
    assert [(rows[i].name, rows[i].args, rows[i].queue, rows[i].priority) for i in ids[:2]] == [
        ("plain", "[0]", "q", 2),
        ("plain", "[1]", "q", 2),
    ]
    assert (rows[ids[-1]].max_attempts, rows[ids[-1]].run_at) == (3, 123.0)


@pytest.mark.parametrize("n", [50, 600])  # 600: PostgreSQL's COPY path
async def test_a_bulk_insert_writes_every_column_as_single_inserts_do(driver: Driver, broker_url: str, n: int) -> None:
    # A bulk insert sends only the columns some row of the batch sets; a column one row sets
    # and the others leave alone must still come out as a single insert writes it.
    odd: list[dict[str, Any]] = [
        {"max_attempts": 7}, {"expires_at": time.time() + 99}, {"timeout": 2.5}, {"hard_timeout": 9.0},
        {"concurrency_key": "k", "concurrency_limit": 3}, {"rate_key": "r", "rate_limit": 5, "rate_period": 1.0},
        {"parent_id": 11}, {"root_id": 12}, {"meta": {"m": 1}}, {"group_id": "g"}, {"queue": "other", "priority": -4},
    ]  # fmt: skip
    envelopes = [Envelope(name="bulk", args=[i], **(odd[i % 40] if i % 40 < len(odd) else {})) for i in range(n)]
    many = await driver.enqueue(envelopes)
    one = [(await driver.enqueue([e]))[0] for e in envelopes]
    columns = [c for c in INSERT_COLUMNS if c not in ("run_at", "created_at", "key")] + ["attempt", "lease_token", "attempts"]
    read = {r[0]: r[1:] for r in sql(broker_url, f"SELECT id, {', '.join(columns)} FROM runner_jobs")}
    assert [read[i] for i in many] == [read[i] for i in one]
    assert read[many[0]][columns.index("max_attempts")] == 7 and read[many[1]][columns.index("max_attempts")] is None


async def test_payload_limit_counts_bytes_of_every_json_column(driver: Driver) -> None:
    emoji = "\U0001f600" * 3000  # 3,000 characters, 12,000 bytes
    with pytest.raises(PayloadTooLarge, match="12,0"):
        await driver.enqueue([Envelope(name="a", args=[emoji])])
    with pytest.raises(PayloadTooLarge, match="limit is 10,000"):
        await driver.enqueue([Envelope(name="a", meta={"big": "x" * 11_000})])


async def test_concurrent_single_enqueues_share_statements_and_each_gets_its_own_row(
    driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    insert_rows = driver._insert_rows

    async def counting(rows: list[dict[str, Any]], now: float) -> list[int]:
        writes.append(len(rows))
        return await insert_rows(rows, now)

    monkeypatch.setattr(driver, "_insert_rows", counting)
    ids: dict[int, int] = {}
    ticks: list[float] = []

    async def one(i: int) -> None:
        (ids[i],) = await driver.enqueue([Envelope(name="single", args=[i], priority=i % 3)])

    async def ticker() -> None:
        while len(ids) < 200:
            ticks.append(time.monotonic())
            await anyio.sleep(0.01)

    other = None
    if driver.backend == "sqlite":
        # A lone row is written on the loop when SQLite's writer is free, and then nobody waits:
        # there is nothing to share. Held by another writer, every caller must wait off the
        # loop (the loop keeps running) and the waiting callers share the next write.
        import sqlite3

        other = sqlite3.connect(driver.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        for i in range(200):
            tg.start_soon(one, i)
        if other is not None:
            await anyio.sleep(0.5)
            assert not ids, "nothing is written while another connection holds the writer"
            other.execute("COMMIT")
            other.close()
    if other is not None:
        # ~50 ticks while the writer is held; a loop blocked by a waiting write would see none.
        assert sum(1 for a, b in itertools.pairwise(ticks) if b - a < 0.1) >= 10, f"the loop stalled while waiting: {ticks}"
    assert len(set(ids.values())) == 200
    assert sum(writes) == 200 and len(writes) < 20, f"200 concurrent callers took {len(writes)} writes: {writes}"
    rows = {r.id: r for r in await driver.get_many(list(ids.values()))}
    assert all(rows[ids[i]].args == f"[{i}]" and rows[ids[i]].priority == i % 3 for i in range(200)), (
        "each caller's id is its own row"
    )


async def test_a_bad_row_fails_only_its_own_caller_in_a_shared_write(driver: Driver) -> None:
    """PostgreSQL refuses a NUL in text when the batch is written; SQLite stores it. Either way
    the neighbours in the same write get their rows."""
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        name = "bad\x00name" if i == 7 else "fine"
        try:
            (results[i],) = await driver.enqueue([Envelope(name=name, args=[i])])
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)
    good = [v for i, v in results.items() if i != 7]
    assert all(isinstance(v, int) for v in good), results
    assert len(await driver.get_many(good)) == 29  # type: ignore[arg-type]


async def test_claim_takes_only_what_is_asked_and_leases_it(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="a", meta={"mine": 1}) for _ in range(5)])
    claimed = await driver.claim("w1", ["default"], 3, lease_ttl=30)
    assert len(claimed) == 3 and all(isinstance(c, Attempt) for c in claimed)
    first = claimed[0]
    assert isinstance(first, Attempt)
    assert (first.attempt, first.token, first.owner, first.meta, first.callbacks) == (1, 1, "w1", {"mine": 1}, Callbacks())
    row = await driver.get(first.id)
    assert row is not None and row.state == State.RUNNING and row.lease_owner == "w1"
    assert len(await driver.claim("w2", ["default"], 10, lease_ttl=30)) == 2
    assert await driver.claim("w3", ["default"], 10, lease_ttl=30) == []


async def test_claim_orders_by_priority_then_fifo_and_respects_eta(driver: Driver) -> None:
    now = time.time()
    low, high, _later, second_low = await driver.enqueue(
        [
            Envelope(name="low", priority=0),
            Envelope(name="high", priority=5),
            Envelope(name="later", priority=9, run_at=now + 60),
            Envelope(name="low2"),
        ]
    )
    claimed = [(await claim_one(driver)).id for _ in range(3)]
    assert claimed == [high, low, second_low]
    assert await driver.claim("w", ["default"], 5, 30) == []  # `later` is not due
    assert abs((await driver.next_run_at(["default"]) or 0) - (now + 60)) < 1


async def test_queues_are_served_in_the_order_given_in_one_claim(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="b", queue="b"), Envelope(name="a", queue="a"), Envelope(name="c", queue="c")])
    claimed = await driver.claim("w", ["a", "b"], 5, 30)
    assert sorted(c.queue for c in claimed) == ["a", "b"]
    (only,) = await driver.claim("w", ["c", "a"], 1, 30)
    assert only.queue == "c"


async def test_concurrent_claimers_never_share_a_job(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="a") for _ in range(200)])
    seen: list[int] = []

    async def claimer(name: str) -> None:
        while batch := await driver.claim(name, ["default"], 7, 30):
            seen.extend(c.id for c in batch)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(claimer, f"w{i}")
    assert len(seen) == 200 and len(set(seen)) == 200


async def test_complete_is_guarded_by_the_fencing_token(driver: Driver) -> None:
    (job_id,) = await driver.enqueue([Envelope(name="a")])
    first = await claim_one(driver, "w1")
    # w1 is presumed dead; its job is given back and another worker claims it.
    assert await driver.complete([decide(first, POLICY, WorkerLost("presumed dead"), now=time.time())]) == 1
    second = await claim_one(driver, "w2")
    assert second.token == first.token + 1
    assert await driver.complete([done(first, "stale")]) == 0
    assert await driver.complete([done(second, "fresh")]) == 1
    row = await driver.get(job_id)
    assert row is not None and row.result == '"fresh"' and row.state == State.SUCCEEDED
    assert row.lost == 1 and row.attempt == 1, "the lost attempt was given back"
    history = json.loads(row.attempts)
    assert [(h["attempt"], h["worker"], h["outcome"]) for h in history] == [(1, "w1", "queued"), (1, "w2", "succeeded")]


@pytest.mark.parametrize("n", [1, 3, 600])  # alone, a multi-row INSERT, PostgreSQL's COPY
async def test_escapes_in_json_columns_survive_every_batched_write(driver: Driver, n: int) -> None:
    # A NUL, a quote and non-ASCII inside JSON strings: valid JSON, kept as written. PostgreSQL
    # decodes the escapes of JSON nested in a JSON parameter, and refused whole batches over one
    # "\u0000"; batches now carry such columns as strings.
    odd = 'a\x00b "q" \u00e9 \\'
    ids = await driver.enqueue([Envelope(name="odd", args=[odd, i], meta={"m": odd}) for i in range(n)])
    rows = await driver.get_many(ids)
    assert {json.loads(r.args)[0] for r in rows} == {odd} and {json.loads(r.meta or "{}")["m"] for r in rows} == {odd}
    claimed = await driver.claim("w", ["default"], n, 30)
    half = len(claimed) // 2
    assert await driver.complete([done(c, {"r": odd}) for c in claimed[:half]]) == half
    result = await driver.claim_and_complete("w", ["default"], 1, 30, [done(c, {"r": odd}) for c in claimed[half:]])
    assert result.written == len(claimed) - half
    finished = await driver.get_many(ids)
    assert {json.loads(r.result or "null")["r"] for r in finished} == {odd}
    assert {r.state for r in finished} == {State.SUCCEEDED}


async def test_batched_complete_mixes_outcomes_and_keeps_every_error(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="a") for _ in range(3)])
    claimed = {c.id: c for c in await driver.claim("w", ["default"], 3, 30)}
    retry = decide(claimed[ids[2]], POLICY, Raised(ErrorInfo(type="E", message="again"), ValueError), now=time.time(), rand=0.0)
    outcomes = [done(claimed[ids[0]], 1), failed(claimed[ids[1]]), retry]
    assert await driver.complete(outcomes) == 3
    states = {r.id: r.state for r in await driver.get_many(ids)}
    assert states == {ids[0]: State.SUCCEEDED, ids[1]: State.FAILED, ids[2]: State.QUEUED}
    assert await driver.claim("w", ["default"], 3, 30) == []  # the retry waits for its backoff
    await driver.make_due([ids[2]])
    again = await claim_one(driver)
    assert await driver.complete([failed(again, "second error")]) == 1
    row = await driver.get(ids[2])
    assert row is not None
    errors = [h["error"]["message"] for h in json.loads(row.attempts)]
    assert errors == ["again", "second error"], "a retry no longer overwrites the previous error"


async def test_history_is_bounded(driver: Driver) -> None:
    from runner.wire import MAX_HISTORY

    (job_id,) = await driver.enqueue([Envelope(name="a")])
    for _ in range(MAX_HISTORY + 3):
        item = await claim_one(driver)
        await driver.complete([decide(item, POLICY, GaveBack(), now=time.time())])
    row = await driver.get(job_id)
    assert row is not None and len(json.loads(row.attempts)) == MAX_HISTORY


async def test_errbacks_are_inserted_only_when_the_guard_matches(driver: Driver) -> None:
    errback = ChildSpec(name="cleanup", args=[1], queue="mail")
    (job_id,) = await driver.enqueue([Envelope(name="parent", callbacks=Callbacks(on_failure=(errback,)))])
    item = await claim_one(driver)
    failed = decide(item, POLICY, NotRunnable(ErrorInfo(type="UnknownJob", message="no such job")), now=time.time())
    assert failed.state == State.FAILED and len(failed.children) == 1
    stale = msgspec_replace(failed, token=failed.token + 1)
    assert await driver.complete([stale]) == 0
    assert await driver.claim("w", ["mail"], 5, 30) == [], "a stale outcome inserts no errback"
    assert await driver.complete([failed]) == 1
    spawned = await claim_one(driver, queues=("mail",))
    assert (spawned.name, spawned.args, spawned.parent_id, spawned.root_id) == ("cleanup", [job_id, 1], job_id, job_id)


def msgspec_replace(item: Attempt, **changes: Any) -> Attempt:
    import msgspec

    return msgspec.structs.replace(item, **changes)


async def test_renewal_covers_exactly_the_ids_held_and_expiry_finds_the_rest(driver: Driver) -> None:
    await driver.enqueue([Envelope(name="a"), Envelope(name="b"), Envelope(name="c")])
    a = await claim_one(driver, "alive")
    forgotten = await claim_one(driver, "alive")
    dead = await claim_one(driver, "dead")
    for item in (a, forgotten, dead):  # every claim-time lease is about to run out
        async with driver.engine.begin() as conn:
            await conn.execute(
                text("UPDATE runner_jobs SET lease_expires_at = :t WHERE id = :id"), {"t": time.time() - 1, "id": item.id}
            )
    assert await driver.renew({a.id: a.token, dead.id: dead.token + 5}, lease_ttl=30) == {a.id}, "a stale token is not renewed"
    expired = {i.id for i in await driver.expired()}
    assert expired == {forgotten.id, dead.id}, "only what is renewed stays leased: a row the worker lost track of expires"
    assert {i.id for i in await driver.held_by("alive")} == {a.id, forgotten.id}


async def test_idempotency_key_returns_the_live_job(driver: Driver) -> None:
    (first,) = await driver.enqueue([Envelope(name="a", key="user-7")])
    (again,) = await driver.enqueue([Envelope(name="a", key="user-7")])
    assert again == first
    item = await claim_one(driver)
    assert (await driver.enqueue([Envelope(name="a", key="user-7")])) == [first]  # running is live too
    await driver.complete([done(item)])
    (new,) = await driver.enqueue([Envelope(name="a", key="user-7")])
    assert new != first
    mixed = await driver.enqueue([Envelope(name="a", key="user-7"), Envelope(name="b"), Envelope(name="a", key="user-8")])
    assert mixed[0] == new and len(set(mixed)) == 3


async def test_cancel_queued_at_once_and_running_cooperatively(driver: Driver) -> None:
    queued, running = await driver.enqueue([Envelope(name="a", priority=0), Envelope(name="b", priority=1)])
    item = await claim_one(driver)
    assert item.id == running
    assert await driver.cancel(queued) == CancelResult.CANCELLED
    assert await driver.cancel(running) == CancelResult.REQUESTED
    assert await driver.cancel_requests([running, queued]) == [running]
    assert await driver.cancel(queued) == CancelResult.FINISHED
    assert await driver.cancel(10**9) == CancelResult.NOT_FOUND


async def test_quotes_and_semicolons_round_trip_as_data(driver: Driver) -> None:
    name = "job'; DROP TABLE runner_jobs; --"
    (job_id,) = await driver.enqueue([Envelope(name=name, queue="q'\";--", args=["'); DELETE FROM runner_jobs; --"])])
    item = await claim_one(driver, queues=("q'\";--",))
    assert item.id == job_id and item.name == name


async def test_admin_queries(driver: Driver) -> None:
    ids = await driver.enqueue([Envelope(name="alpha.one") for _ in range(3)] + [Envelope(name="beta")])
    claimed = await driver.claim("w", ["default"], 3, 30)
    now = time.time()
    await driver.complete([msgspec_replace_outcome(failed(c), finished_at=now - 100) for c in claimed])
    assert ("default", State.FAILED, 3) in await driver.stats()
    assert await driver.retry_one(ids[0])
    assert not await driver.retry_one(ids[3]), "a queued job is not retried"
    assert await driver.purge_batch(State.FAILED, before=now, batch=1) == 1
    assert await driver.retry_batch(State.FAILED) == 1
    listed = await driver.list_jobs(JobFilter(state=State.QUEUED, name="alpha"), limit=10)
    assert len(listed) == 2 and all(r.name == "alpha.one" for r in listed)
    assert [r.id for r in await driver.list_jobs(JobFilter(name="*ta"), limit=10)] == [ids[3]]
    page = await driver.list_jobs(JobFilter(), limit=1)
    assert [r.id for r in await driver.list_jobs(JobFilter(before_id=page[0].id), limit=10)] == sorted(
        (r.id for r in listed if r.id < page[0].id), reverse=True
    )


def msgspec_replace_outcome(outcome: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(outcome, **changes)


async def test_workers_table(driver: Driver) -> None:
    now = time.time()
    row = WorkerRow(owner="n:1:0", node="n", pid=5, pid_started=7, boot_id="b", queues="default", concurrency=4,
                    started_at=now, seen_at=now, done=3, rss_kb=100, running="[[1, 2.0]]")  # fmt: skip
    await driver.worker_seen(row)
    assert await driver.workers(since=now - 1) == [row]
    await driver.worker_gone("n:1:0")
    assert await driver.workers(since=0) == []


# --- hostile rows, written straight into the table -------------------------------------------------


def insert(url: str, columns: str, values: str) -> int:
    """A raw INSERT as another program would write it; returns the new id."""
    return int(sql(url, f"INSERT INTO runner_jobs ({columns}) VALUES ({values}) RETURNING id")[0][0])


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("run_at", "'soon'", "run_at_is_epoch_seconds"),
        ("expires_at", "'never'", "expires_at_is_epoch_seconds_or_null"),
        ("attempt", "-2", "counters_are_integers_from_0"),
        ("lost", "-1", "counters_are_integers_from_0"),
        ("max_attempts", "0", "max_attempts_is_positive_or_null"),
        ("timeout", "-5", "timeouts_are_positive_seconds_or_null"),
        ("state", "'sleeping'", "state_is_known"),
    ],
)
async def test_values_no_worker_could_run_are_refused_at_the_insert(
    driver: Driver, broker_url: str, column: str, value: str, constraint: str
) -> None:
    if driver.backend == "postgresql" and value.startswith("'") and column not in ("state",):
        value = "'NaN'" if column in ("run_at", "expires_at") else value
    with pytest.raises(Exception, match=constraint):
        insert(broker_url, f"name, {column}", f"'a', {value}")
    assert await driver.stats() == []


async def test_hostile_counters_never_stop_the_claim_for_other_rows(driver: Driver, broker_url: str) -> None:
    top = insert(broker_url, "name, attempt, max_attempts", "'top', 2147483647, 1")
    token = insert(broker_url, "name, lease_token", "'token', 9223372036854775807")
    good = insert(broker_url, "name, queue", "'good', 'second'")
    claimed = {c.id: c for c in await driver.claim("w", ["default", "second"], 10, 30)}
    assert set(claimed) == {top, token, good}, "every row is claimed in one statement, hostile or not"
    assert claimed[top].attempt == 2147483647 and claimed[token].token == 1
    from runner.decide import before_run

    early = before_run(claimed[top], POLICY, time.time())  # type: ignore[arg-type]
    assert early is not None and "attempt counter 2147483647 is past max_attempts 1" in early.error.message  # type: ignore[union-attr]


async def test_a_lost_counter_at_its_maximum_cannot_stop_the_sweep(driver: Driver, broker_url: str) -> None:
    now = time.time()
    poison = insert(
        broker_url,
        "name, state, lost, lease_token, lease_owner, lease_expires_at, attempt, started_at",
        f"'p', 'running', 2147483647, 3, 'gone', {now - 5}, 1, {now - 9}",
    )
    other = insert(
        broker_url,
        "name, state, lease_token, lease_owner, lease_expires_at, attempt, started_at",
        f"'o', 'running', 3, 'gone', {now - 5}, 1, {now - 9}",
    )
    swept = await driver.expired()
    assert {i.id for i in swept} == {poison, other}
    outcomes = [decide(i, POLICY, WorkerLost("lease expired"), now=now) for i in swept]
    assert await driver.complete(outcomes) == 2
    states = {r.id: (r.state, r.lost) for r in await driver.get_many([poison, other])}
    assert states == {poison: (State.FAILED, 2147483647), other: (State.QUEUED, 1)}


@pytest.mark.parametrize(
    ("columns", "values", "message"),
    [
        ("v", "99", "envelope version 99"),
        ("args", "'" + "[" * 2000 + "]" * 2000 + "'", "args column nests deeper than 64 levels"),
        ("meta", '\'{"hard_timeout": ' + "[" * 900 + "]" * 900 + "}'", "meta column nests deeper than 64 levels"),
        ("args", "'[1, 2'", "args column is not valid JSON"),
        ("kwargs", "'[1]'", "kwargs column must be a JSON object, got array"),
        ("meta", "'\"x\"'", "meta column must be a JSON object or NULL, got string"),
        ("callbacks", '\'{"on_success": [{"name": 5}]}\'', "callbacks column is not valid"),
        ("meta", '\'{"x": "' + "y" * 11_000 + "\"}'", "the limit is 10,000"),
    ],
)
async def test_rows_that_do_not_decode_are_bad_rows_naming_the_column(
    driver: Driver, broker_url: str, columns: str, values: str, message: str
) -> None:
    bad = insert(broker_url, f"name, {columns}", f"'x', {values}")
    good = insert(broker_url, "name", "'fine'")
    claimed = {c.id: c for c in await driver.claim("w", ["default"], 10, 30)}
    assert isinstance(claimed[good], Attempt), "a bad row never takes its neighbours down"
    item = claimed[bad]
    assert isinstance(item, BadRow) and message in item.error.message, item
    await driver.complete([failed(item)])
    row = await driver.get(bad)
    assert row is not None and row.state == State.FAILED and message in json.loads(row.error or "{}")["message"]


async def test_invalid_utf8_fails_only_its_own_row(driver: Driver, broker_url: str) -> None:
    if driver.backend == "postgresql":  # the server itself refuses it, at the insert
        with pytest.raises(Exception, match="invalid byte sequence"):
            insert(broker_url, "name, args", "'x', convert_from('\\x5b22ff225d'::bytea, 'UTF8')")
        return
    bad = insert(broker_url, "name, args", "'x', CAST(X'5B22FF225D' AS TEXT)")
    good = insert(broker_url, "name", "'fine'")
    claimed = {c.id: c for c in await driver.claim("w", ["default"], 10, 30)}
    assert isinstance(claimed[good], Attempt)
    item = claimed[bad]
    assert isinstance(item, BadRow) and "args column is not valid UTF-8" in item.error.message
    assert (await driver.get(bad)) is not None, "reads of such a row work too"


async def test_control_plane_answers_while_a_job_holds_its_transaction(driver: Driver) -> None:
    """SQLite: a job's open write transaction holds the queue's one write lock; progress, cancel
    requests, lease renewal and the workers table must not wait for it."""
    await driver.enqueue([Envelope(name="long"), Envelope(name="other")])
    long, other = await driver.claim("w", ["default"], 2, 30)
    async with driver.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS business (x INTEGER)"))
    async with driver.engine.begin() as conn:  # the "job's" transaction: on SQLite, the write lock
        await conn.execute(text("INSERT INTO business (x) VALUES (1)"))
        with anyio.fail_after(1.0):
            assert await driver.set_progress(other.id, other.token, '{"step": 2}')
            assert await driver.cancel(long.id) == CancelResult.REQUESTED
            assert await driver.cancel_requests([long.id]) == [long.id]
            assert await driver.renew({long.id: long.token, other.id: other.token}, 30) == {long.id, other.id}
            now = time.time()
            await driver.worker_seen(WorkerRow("n:1:0", "n", 1, 1, "b", "default", 1, now, now, 0, 0, "[]"))
            row = await driver.get(other.id)
            assert row is not None and json.loads(row.progress or "null") == {"step": 2}
            assert await driver.stats()
