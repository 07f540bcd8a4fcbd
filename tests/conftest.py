"""Shared fixtures: real SQLite files, a real PostgreSQL database, and `runner serve` subprocesses.

PostgreSQL tests use one fresh database per test session (``runner_test_<pid>``), emptied before
each test. Where PostgreSQL is unreachable they skip locally, but fail in CI (``CI`` set): a CI
run must never go green by skipping the half of the suite that matters most for multi-host use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _pg_available() -> str | None:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    problem = _pg_available()
    if problem is not None:
        message = f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({problem})"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(message)
    name = f"runner_test_{os.getpid()}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_admin(*statements: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_execute(url: str, *statements: str) -> list[Any]:
    """Run statements on the test database with asyncpg; returns the last one's rows."""
    import asyncio

    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = await conn.fetch(statement)
            return rows
        finally:
            await conn.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    # Called from an async test: run on a private loop in a thread, not on the test's loop.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, with every table dropped so each test starts clean."""
    pg_execute(
        pg_database,
        """DO $$ DECLARE r record; BEGIN
             FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
               EXECUTE 'DROP TABLE IF EXISTS ' || quote_ident(r.tablename) || ' CASCADE';
             END LOOP; END $$""",
    )
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once per backend: the one store suite for both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def driver(broker_url: str) -> AsyncIterator[Any]:
    """A migrated queue driver on each backend (payload limit 10 kB, to test the limit cheaply)."""
    from runner.drivers import open_driver

    queue = open_driver(broker_url, pool_size=4, max_payload=10_000)
    await queue.migrate()
    yield queue
    await queue.dispose()


@pytest.fixture
async def configured(broker_url: str) -> AsyncIterator[str]:
    """The test app (tests/apps/basic.py) pointed at ``broker_url`` for producers in this test."""
    from tests.apps.basic import app

    app.configure(broker=broker_url)
    yield broker_url
    await app.client.aclose()
    app.configure(broker="sqlite:///runner.db")


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    """Read the database behind ``url`` from the test process, synchronously."""
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            return [tuple(r) for r in conn.execute(statement).fetchall()]
    return [tuple(r) for r in pg_execute(url, statement)]


class Serve:
    """A `runner serve` subprocess, its output kept for assertions and failure messages."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"runner-serve-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+b")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        full_env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", *args],
            cwd=REPO,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"runner serve did not exit within {timeout}s; output:\n{self.output[-6000:]}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def wait_for(self, text_: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text_ in self.output:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text_!r} not seen in runner serve output within {timeout}s:\n{self.output[-6000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self.log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Serve] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Serve:
        proc = Serve(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
