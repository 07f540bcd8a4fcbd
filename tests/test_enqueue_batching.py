"""Single enqueues: a lone caller writes at once, in one statement; callers who arrive while a
write is in flight go together in the next one; each gets its own id or its own error, and a
cancelled caller never blocks the others. First the coalescing rules on a recording insert, then
the same on both real databases (SQLite's rows go through one thread call, ``sqlite_batch.py``;
PostgreSQL's lone row through one prepared statement)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from sqlalchemy.exc import DBAPIError

from runner.enqueue_batching import EnqueueBatcher
from tests.apps import basic

from .conftest import pg_execute, sql

pytestmark = pytest.mark.anyio


class Recorder:
    """An insert that records each call's rows, takes ``delay`` seconds, and refuses rows marked bad."""

    def __init__(self, delay: float = 0.01) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.next_id = 100

    async def __call__(self, rows: list[dict[str, Any]], now: float) -> list[int]:
        self.calls.append([row["n"] for row in rows])
        await asyncio.sleep(self.delay)
        if any(row.get("bad") for row in rows):
            raise ValueError(f"row {next(r['n'] for r in rows if r.get('bad'))} refused")
        ids = list(range(self.next_id, self.next_id + len(rows)))
        self.next_id += len(rows)
        return ids


def _never_unavailable(exc: BaseException) -> bool:
    return False


async def test_a_lone_caller_writes_its_row_alone_and_at_once() -> None:
    insert = Recorder()
    batcher = EnqueueBatcher(insert, _never_unavailable)
    assert await batcher.enqueue({"n": 1}, 0.0) == 100
    assert await batcher.enqueue({"n": 2}, 0.0) == 101
    assert insert.calls == [[1], [2]]


async def test_callers_who_arrive_during_a_write_share_the_next_one() -> None:
    insert = Recorder(delay=0.05)
    batcher = EnqueueBatcher(insert, _never_unavailable)
    got: dict[int, int] = {}

    async def one(n: int) -> None:
        got[n] = await batcher.enqueue({"n": n}, 0.0)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, n)
    assert insert.calls[0] == [0], insert.calls  # the first went alone, at once
    assert sorted(n for call in insert.calls for n in call) == list(range(20))  # each row once
    assert len(insert.calls) == 2, insert.calls  # the other 19 in one statement
    assert len(set(got.values())) == 20
    # each caller's id is its own row's: the order of the statement that wrote it
    for call in insert.calls:
        assert [got[n] for n in call] == sorted(got[n] for n in call)


async def test_producers_that_keep_enqueueing_keep_sharing_statements() -> None:
    # Eight producers, each awaiting one enqueue after another: once they overlap, each write
    # carries the rows of everyone who waited, not one row per lock turn.
    insert = Recorder(delay=0.01)
    batcher = EnqueueBatcher(insert, _never_unavailable)

    async def producer(p: int) -> None:
        for k in range(10):
            await batcher.enqueue({"n": p * 100 + k}, 0.0)

    async with anyio.create_task_group() as tg:
        for p in range(8):
            tg.start_soon(producer, p)
    assert sum(len(call) for call in insert.calls) == 80
    assert len(insert.calls) <= 25, f"{len(insert.calls)} statements for 80 rows: {insert.calls}"


async def test_a_bad_row_fails_its_caller_alone_and_its_batch_neighbours_get_ids() -> None:
    insert = Recorder(delay=0.05)
    batcher = EnqueueBatcher(insert, _never_unavailable)
    results: dict[int, Any] = {}

    async def one(n: int) -> None:
        try:
            results[n] = await batcher.enqueue({"n": n, "bad": n == 3}, 0.0)
        except ValueError as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(one, n)
    assert isinstance(results[3], ValueError) and "row 3 refused" in str(results[3])
    assert all(isinstance(results[n], int) for n in (0, 1, 2, 4, 5)), results
    assert len({results[n] for n in (0, 1, 2, 4, 5)}) == 5


async def test_a_cancelled_lone_writer_does_not_hold_the_next_callers_back() -> None:
    insert = Recorder(delay=0.2)
    batcher = EnqueueBatcher(insert, _never_unavailable)
    with anyio.move_on_after(0.05):
        await batcher.enqueue({"n": 1}, 0.0)
    insert.delay = 0.0
    with anyio.fail_after(2):
        assert await batcher.enqueue({"n": 2}, 0.0) > 0
    assert [2] in insert.calls


async def test_a_waiting_caller_cancelled_before_its_turn_writes_nothing() -> None:
    insert = Recorder(delay=0.1)
    batcher = EnqueueBatcher(insert, _never_unavailable)
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.enqueue, {"n": 1}, 0.0)
        await anyio.sleep(0.02)  # 1 is in flight
        with anyio.move_on_after(0.02):
            await batcher.enqueue({"n": 2}, 0.0)  # waits behind 1, then gives up
    assert insert.calls == [[1]]


async def test_concurrent_defers_on_a_real_queue_each_get_their_own_row(configured: str) -> None:
    handles: dict[int, Any] = {}

    async def one(i: int) -> None:
        handles[i] = await basic.add.defer_async(i, 1000)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    rows = dict(sql(configured, f"SELECT id, args FROM runner_jobs WHERE name = '{basic.add.name}'"))
    assert len(rows) == 40
    for i, handle in handles.items():
        assert rows[handle.id].replace(" ", "") == f"[{i},1000]"
    # and one at a time, after them
    lone = await basic.add.defer_async(-1, -1)
    assert dict(sql(configured, f"SELECT id, args FROM runner_jobs WHERE id = {lone.id}"))[lone.id].replace(" ", "") == "[-1,-1]"


def _refuse_in_database(url: str) -> None:
    if url.startswith("sqlite"):
        sql(
            url,
            "CREATE TRIGGER refuse BEFORE INSERT ON runner_jobs WHEN NEW.args LIKE '[13,%' BEGIN SELECT RAISE(ABORT, 'thirteen refused'); END",
        )
    else:
        pg_execute(
            url,
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.args LIKE '[13,%' THEN RAISE EXCEPTION 'thirteen refused'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON runner_jobs FOR EACH ROW EXECUTE FUNCTION refuse()",
        )


async def test_a_row_the_database_refuses_fails_its_caller_alone(configured: str) -> None:
    await basic.add.defer_async(0, 0)  # the schema exists
    _refuse_in_database(configured)
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        try:
            results[i] = (await basic.add.defer_async(i, 1)).id
        except DBAPIError as exc:  # the database's own error, the same kind on both backends
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(10, 20):
            tg.start_soon(one, i)
    assert isinstance(results[13], DBAPIError) and "thirteen refused" in str(results[13]), results[13]
    ok = [results[i] for i in range(10, 20) if i != 13]
    assert all(isinstance(r, int) for r in ok) and len(set(ok)) == 9, results
    with pytest.raises(DBAPIError, match="thirteen refused"):  # alone, too
        await basic.add.defer_async(13, 2)
    assert sql(configured, "SELECT count(*) FROM runner_jobs WHERE args LIKE '[13,%'") == [(0,)]
