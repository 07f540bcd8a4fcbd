"""The asyncio.run bridge against PostgreSQL: a module-level pooled AsyncEngine used by hundreds
of sync tasks through asyncio.run(), with no NullPool and no more connections than its pool."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.apps import celery_bridge_proj as proj

from ..conftest import pg_execute, sql

pytestmark = pytest.mark.slow

WORKERS = 2
TASKS = 300


def test_asyncio_run_bridge_keeps_one_loop_and_the_pool(pg_url: str, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pg_execute(pg_url, "CREATE TABLE visits (i INTEGER, pid INTEGER)")
    proj.app.conf.broker_url = pg_url
    proj.app._applied_broker = None
    try:
        results = [proj.legacy_visit.delay(i) for i in range(TASKS)]
        seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                rows = pg_execute(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'celery-bridge'")
                seen.append(int(rows[0][0]))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        bridge_url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
        proc = serve(
            "-A",
            "tests.apps.celery_bridge_proj",
            "--broker",
            pg_url,
            "-w",
            str(WORKERS),
            "-c",
            "8",
            "--burst",
            env={"BRIDGE_DB_URL": bridge_url},
        )
        try:
            assert proc.wait(120) == 0, proc.output[-4000:]
        finally:
            stop.set()
            watcher.join()
        assert "attached to a different loop" not in proc.output
        values = [r.get(timeout=10) for r in results]
        assert sorted(v["i"] for v in values) == list(range(TASKS))
        by_pid: dict[int, list[dict[str, int]]] = {}
        for v in values:
            by_pid.setdefault(v["pid"], []).append(v)
        assert len(by_pid) == WORKERS
        for pid, runs in by_pid.items():
            assert len({r["loop"] for r in runs}) == 1, f"worker {pid} ran coroutines on several loops"
            assert len({r["backend"] for r in runs}) <= proj.POOL_SIZE, f"worker {pid} opened more connections than its pool"
        assert max(seen) <= WORKERS * proj.POOL_SIZE, seen
        assert max(seen) >= 1, "the watcher never saw the engine's connections"
        assert sql(pg_url, "SELECT count(*) FROM visits") == [(TASKS,)]
        assert sql(pg_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state") == [("succeeded", TASKS)]

        # the idiomatic async form, on the worker's own engine
        counted = proj.native_count.delay(100)
        again = serve(
            "-A", "tests.apps.celery_bridge_proj", "--broker", pg_url, "-w", "1", "--burst", env={"BRIDGE_DB_URL": bridge_url}
        )
        assert again.wait(60) == 0, again.output[-3000:]
        assert counted.get(timeout=10) == TASKS - 100
    finally:
        proj.app.close()


def test_without_the_bridge_the_pooled_engine_breaks(pg_url: str, serve: Any) -> None:
    """The control: with runner_bridge_asyncio_run off, asyncio.run makes a loop per task and the
    module-level pool fails as it does under Celery -- so the test above can fail."""
    pg_execute(pg_url, "CREATE TABLE visits (i INTEGER, pid INTEGER)")
    proj.app.conf.broker_url = pg_url
    proj.app._applied_broker = None
    try:
        results = [proj.legacy_visit.delay(i) for i in range(4)]
        bridge_url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
        proc = serve(
            "-A",
            "tests.apps.celery_bridge_proj",
            "--broker",
            pg_url,
            "-w",
            "1",
            "-c",
            "1",
            "--burst",
            env={"BRIDGE_DB_URL": bridge_url, "BRIDGE_OFF": "1"},
        )
        assert proc.wait(60) == 0, proc.output[-3000:]
        outcomes = []
        for r in results:
            try:
                r.get(timeout=10)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        assert any(o != "ok" for o in outcomes), outcomes
    finally:
        proj.app.close()
