"""Scenario 3: PostgreSQL restarts in the middle of a run. Workers must reconnect on their own
(the pool drops dead connections, queue operations retry, a job whose connection died is given
back without spending an attempt) and the run must complete with nothing lost or doubled."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import App
from runner.testing import run_burst
from tests.apps import basic

from ..conftest import pg_execute, sql, wait_until
from ..serving import enqueue, prepare, serve_args, states
from . import scaled

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

JOBS = scaled(1500)


def restart_postgres() -> float:
    """Restart the local cluster (fast mode: open sessions are cut, as in a crash or failover) and
    wait until it answers again; returns the seconds it was away. Skips locally, fails in CI,
    when this machine can't do it. The server is shared: whatever happens, it is up on return."""
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        reason = "restarting PostgreSQL needs root and pg_ctlcluster (a local Debian cluster)"
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI must run the database-restart test", pytrace=False)
        pytest.skip(reason)
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]
    started = time.monotonic()
    try:
        subprocess.run([*cluster, "restart", "-m", "fast"], check=True, capture_output=True, timeout=120)
    finally:
        if not _wait_ready(60):  # a failed restart must not leave the shared server down
            subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
            if not _wait_ready(60):
                raise RuntimeError("PostgreSQL did not come back after the restart")
    return time.monotonic() - started


def _wait_ready(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
            return True
        time.sleep(0.25)
    return False


def test_workers_ride_out_a_postgres_restart(pg_url: str, serve: Any) -> None:
    prepare(pg_url)
    enqueue(pg_url, [basic.record.call(f"r{i}", 0.01) for i in range(JOBS)])
    proc = serve(*serve_args(pg_url, "-w", "2", "-c", "8", "--burst"))
    wait_until(lambda: states(pg_url).get("succeeded", 0) >= 200, 60, "the run to get going")
    away = restart_postgres()
    restarted_at = time.monotonic()
    assert proc.wait(180) == 0, proc.output[-4000:]
    if "claim failed" in proc.output:  # a worker saw the outage: it says when the database is back
        assert "claims work again (the database is back)" in proc.output, proc.output[-4000:]
    recovered = time.monotonic() - restarted_at
    assert states(pg_url) == {"succeeded": JOBS}, proc.output[-3000:]
    assert sql(pg_url, "SELECT value FROM counters") == [(JOBS,)]
    assert sql(pg_url, "SELECT count(*), count(DISTINCT tag) FROM ran") == [(JOBS, JOBS)]
    print(f"\ndatabase restart: {JOBS} jobs, postgres away {away:.1f}s, run finished {recovered:.1f}s after it came back")


@pytest.mark.anyio
async def test_a_job_that_cannot_reach_its_database_gets_its_attempt_back(sqlite_url: str) -> None:
    """The database being away is not the job's fault: the attempt is given back, not failed,
    however the absence shows (here: connection refused while the pool connects)."""
    app = App("unreachable", broker=sqlite_url)

    @app.job
    async def touches_db(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    handle = await touches_db.defer_async()
    await app.client.aclose()
    with anyio.move_on_after(2.5):  # it would retry forever, once a second: the database never comes
        await run_burst(app, sqlite_url, database="postgresql://postgres@127.0.0.1:9/nowhere")
    ((state, attempt, error),) = sql(sqlite_url, f"SELECT state, attempt, error FROM runner_jobs WHERE id = {handle.id}")
    assert (state, attempt) == ("queued", 0), error
    assert '"type":"DatabaseUnavailable"' in error


@pytest.mark.anyio
async def test_a_connection_cut_as_an_exactly_once_job_completes_gives_the_attempt_back(pg_url: str) -> None:
    """The completion is written in the job's own transaction (straight on its asyncpg
    connection). Cut that connection as the job returns: nothing commits, the attempt is given
    back as the database's fault (not counted, not failed), and the next attempt completes it."""
    app = App("cut", broker=pg_url)
    cut: list[int] = []

    @app.job
    async def cut_once(session: AsyncSession) -> str:
        await session.execute(text("CREATE TABLE IF NOT EXISTS cut_ran (n int)"))
        await session.execute(text("INSERT INTO cut_ran VALUES (1)"))
        if not cut:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            cut.append(pid)
            await anyio.to_thread.run_sync(pg_execute, pg_url, f"SELECT pg_terminate_backend({pid})")
        return "done"

    handle = await cut_once.defer_async()
    await app.client.aclose()
    await run_burst(app, pg_url)
    assert cut, "the job ran"
    ((state, attempt, result, history),) = sql(
        pg_url, f"SELECT state, attempt, result, attempts::text FROM runner_jobs WHERE id = {handle.id}"
    )
    assert (state, attempt, result) == ("succeeded", 1, '"done"'), history
    assert '"DatabaseUnavailable"' in history, "the cut attempt was given back, saying why"
    assert sql(pg_url, "SELECT count(*) FROM cut_ran") == [(1,)], "the cut attempt's writes did not commit"
