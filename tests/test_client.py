"""The producer: one driver per loop, the sync API on the right loop, settings from Settings,
handles that decode what they read and say what happened."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import ArgumentsError, CancelResult, JobFailed, RunnerError, SerializationError
from runner.testing import run_burst
from tests.apps import basic

from .conftest import REPO, sql

pytestmark = pytest.mark.anyio


async def test_fifty_concurrent_first_enqueues_open_one_driver(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import client as client_module

    opened: list[object] = []
    real = client_module.open_driver

    def counting(*args: Any, **kwargs: Any) -> Any:
        driver = real(*args, **kwargs)
        opened.append(driver)
        return driver

    monkeypatch.setattr(client_module, "open_driver", counting)
    await basic.app.client.aclose()
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(basic.add.defer_async, i, i)
    assert len(opened) == 1, f"{len(opened)} drivers (engines) for one loop"
    assert sql(configured, "SELECT count(*) FROM runner_jobs") == [(50,)]


async def test_a_callees_runtime_error_runs_it_once(configured: str) -> None:
    basic.CALLS["runtime_error"] = 0
    handle = await basic.sync_calls_the_loop.defer_async()
    await run_burst(basic.app, configured)
    assert await handle.wait_async(5) == "the callee's own RuntimeError after 1 call(s)"


async def test_retry_on_timeout_error_retries_a_soft_timeout(configured: str) -> None:
    handle = await basic.times_out_once.defer_async()
    await run_burst(basic.app, configured)
    assert await handle.wait_async(5) == 2
    info = await handle.info_async()
    assert [a.error.type if a.error else None for a in info.attempts] == ["JobTimeout", None]
    assert info.attempts[0].error is not None and info.attempts[0].error.message == "soft time limit of 0.2s exceeded"


async def test_a_row_naming_an_injected_parameter_fails_clearly(configured: str) -> None:
    handle = await basic.takes_kwargs.defer_async(colour="red")
    with pytest.raises(ArgumentsError, match="'session' names a parameter runner injects"):
        await basic.takes_kwargs.defer_async(session="mine")
    sql(
        configured,
        "INSERT INTO runner_jobs (name, kwargs) VALUES ('tests.apps.basic.takes_kwargs', '{\"session\": 1}')"
        + (" RETURNING id" if "postgres" in configured else ""),
    )
    await run_burst(basic.app, configured)
    assert await handle.wait_async(5) == ["colour"]
    ((error,),) = sql(configured, "SELECT error FROM runner_jobs WHERE state = 'failed'")
    assert "ArgumentsError" in error and "names a parameter runner injects" in error


async def test_nesting_deeper_than_the_limit_is_refused_at_enqueue(configured: str) -> None:
    deep: Any = []
    for _ in range(980):
        deep = [deep]
    with pytest.raises(SerializationError, match="nests deeper than 64 levels"):
        await basic.identity_of_args.defer_async(deep)
    shallow: Any = []
    for _ in range(60):
        shallow = [shallow]
    assert isinstance((await basic.identity_of_args.defer_async(shallow)).id, int)


async def test_handles_decode_what_they_read(configured: str) -> None:
    handle = await basic.reports_progress.defer_async()
    await run_burst(basic.app, configured)
    info = await handle.info_async()
    assert (info.state, info.result, info.progress, info.args) == ("succeeded", "ok", {"step": 1}, [])
    assert info.created_at.tzinfo is not None and info.finished_at is not None and info.finished_at >= info.created_at
    assert [a.outcome for a in info.attempts] == ["succeeded"]
    assert await handle.cancel_async() == CancelResult.FINISHED
    with pytest.raises(JobFailed):
        failing = await basic.boom.defer_async("x")
        await run_burst(basic.app, configured)
        await failing.wait_async(5)


async def test_a_rolled_back_transactional_enqueue_says_so(configured: str) -> None:
    from runner import create_engine

    engine = create_engine(configured)
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(engine) as session:
        async with session.begin():
            handle = await basic.add.options(session=session).defer_async(1, 2)
            await session.rollback()
    with pytest.raises(RunnerError, match="inside a transaction that rolled back"):
        await handle.info_async()
    with pytest.raises(RunnerError, match="never enqueued in this queue, or purged"):
        await basic.app.handle(10**9).info_async()
    await engine.dispose()


def test_the_sync_api_refuses_a_session() -> None:
    with pytest.raises(ArgumentsError, match="session= needs the async API"):
        basic.app.defer_many([basic.add.call(1, 2)], session=object())  # type: ignore[arg-type]


def test_the_producer_reads_runner_broker_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    script = textwrap.dedent(
        """
        from tests.apps.basic import add
        print(add.defer(1, 2).id)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "RUNNER_BROKER_URL": url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sql(url, "SELECT name FROM runner_jobs") == [("tests.apps.basic.add",)]


def test_mixing_the_sync_and_async_api_exits_silently(broker_url: str) -> None:
    """The very error runner exists to remove ("Future attached to a different loop", "Event
    loop is closed") must not appear when one script uses both APIs."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from tests.apps.basic import add, app
        app.configure(broker={broker_url!r})
        print(add.defer(1, 2).id)
        async def main():
            for i in range(5):
                await add.defer_async(i, i)
            print((await add.defer_async(3, 4)).id)
        asyncio.run(main())
        print(add.defer(5, 6).id)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert len(done.stdout.split()) == 3


def test_sync_defers_from_threads_and_processes_at_once_each_get_their_own_row(sqlite_url: str) -> None:
    """On SQLite a sync defer() writes on the caller's thread: threads and processes writing at
    once must still each get their own id and row, and a caller that meets another writer's
    transaction waits for it (the sync contract) instead of failing."""
    import sqlite3
    import threading

    path = sqlite_url.split("///", 1)[1]
    script = textwrap.dedent(
        f"""
        from tests.apps.basic import add, app
        app.configure(broker={sqlite_url!r})
        print(" ".join(str(add.defer(-1, i).id) for i in range(300)))
        """
    )
    basic.app.configure(broker=sqlite_url)
    try:
        ids: dict[tuple[int, int], int] = {(0, 0): basic.add.defer(0, 0).id}  # the schema exists from here on
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
        other = subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

        def producer(t: int) -> None:
            for i in range(100):
                ids[(t + 1, i)] = basic.add.defer(t + 1, i).id

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # every writer meets a held lock at the start
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        holder.execute("COMMIT")
        holder.close()
        for thread in threads:
            thread.join(60)
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0, err
    finally:
        basic.app.client.close()
        basic.app.configure(broker="sqlite:///runner.db")
    theirs = [int(x) for x in out.split()]
    assert len(ids) == 801 and len(theirs) == 300
    assert len(set(ids.values()) | set(theirs)) == 1101, "every caller got an id of its own"
    rows = {
        i: (x, y)
        for i, x, y in sql(sqlite_url, "SELECT id, json_extract(args, '$[0]'), json_extract(args, '$[1]') FROM runner_jobs")
    }
    assert all(rows[job_id] == key for key, job_id in ids.items()), "each id is the caller's own row"
    assert sorted(rows[i] for i in theirs) == [(-1, i) for i in range(300)]


def test_a_sync_caller_runs_the_loop_itself_and_others_ride_along_meanwhile() -> None:
    # Each sync call runs the shared loop on its caller's thread (no hand-off); a call from
    # another thread while one runs is carried by that run, and runs on its own thread after.
    import asyncio
    import threading

    from runner.client import _SharedLoop

    shared = _SharedLoop()
    release = threading.Event()
    ran_on: dict[str, str] = {}

    async def long_call() -> str:
        ran_on["long"] = threading.current_thread().name
        while not release.is_set():
            await asyncio.sleep(0.005)
        return "long done"

    async def short_call(tag: str) -> str:
        ran_on[tag] = threading.current_thread().name
        return tag

    results: dict[str, str] = {}
    owner = threading.Thread(target=lambda: results.update(long=shared.call(long_call)), name="owner")
    owner.start()
    deadline = time.monotonic() + 10
    while "long" not in ran_on and time.monotonic() < deadline:
        time.sleep(0.005)
    rider = threading.Thread(target=lambda: results.update(ride=shared.call(short_call, "ride")), name="rider")
    rider.start()
    rider.join(10)
    assert results.get("ride") == "ride" and ran_on["ride"] == "owner", "a call made meanwhile rides on the running loop"
    assert owner.is_alive(), "the owner is still in its own call"
    release.set()
    owner.join(10)
    assert results["long"] == "long done"
    assert shared.call(short_call, "alone") == "alone" and ran_on["alone"] == threading.current_thread().name
    later = threading.Thread(target=lambda: results.update(after=shared.call(short_call, "after")), name="after")
    later.start()
    later.join(10)
    assert ran_on["after"] == "after", "once no one runs it, the next caller runs the loop on its own thread"
    shared.stop()


async def test_single_enqueues_keep_one_connection_out_and_give_it_back_when_they_stop(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.drivers import open_driver, postgres
    from runner.wire import Envelope

    monkeypatch.setattr(postgres, "HOLD_FOR", 0.3)
    driver = open_driver(pg_url, pool_size=4)
    await driver.migrate()
    try:
        pool: Any = driver.engine.pool
        for i in range(20):
            await driver.enqueue([Envelope(name="one", args=[i])])
            assert pool.checkedout() == 1, "the single-enqueue connection stays out between enqueues"
        assert pool.checkedin() + pool.checkedout() <= 2, "one connection served them all (plus the migration's)"
        with pytest.raises(Exception, match="runner_jobs"):  # a failing INSERT (a NUL byte PostgreSQL refuses)
            await driver.enqueue([Envelope(name="bad\x00name")])
        assert pool.checkedout() == 0, "a failed statement gives its connection straight back"
        await driver.enqueue([Envelope(name="one", args=[99])])
        await anyio.sleep(0.8)
        assert pool.checkedout() == 0, "a quiet producer holds no connection"
        assert sql(pg_url, "SELECT count(*) FROM runner_jobs") == [(21,)]
    finally:
        await driver.dispose()
