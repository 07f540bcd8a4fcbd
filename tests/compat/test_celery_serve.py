"""Celery task modules under a real `runner serve`: results, retries, hooks, signals, limits,
canvas. The tasks live in tests/apps/celery_proj.py, written as Celery code."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runner.compat.celery import chain, chord, group
from runner.compat.celery.exceptions import (
    ChordError,
    MaxRetriesExceededError,
    TaskRevokedError,
)
from tests.apps import celery_proj as proj

from ..conftest import sql, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def project(broker_url: str, tmp_path: Path) -> Any:
    log = tmp_path / "events.jsonl"
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT, pid INTEGER)")
    proj.app.conf.broker_url = broker_url
    proj.app._applied_broker = None
    env = {"CELERY_PROJ_LOG": str(log), "CELERY_PROJ_DB": str(db)}
    yield broker_url, log, db, env
    proj.app.close()


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def named(log: Path, event: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in events(log) if e["event"] == event and all(e.get(k) == v for k, v in match.items())]


def test_celery_project_under_runner_serve(project: Any, serve: Any) -> None:
    url, log, db, env = project
    p = proj
    before_publish: list[dict[str, Any]] = []

    @p.signals.before_task_publish.connect
    def stamp(sender=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        headers["stamped_by"] = "producer"
        before_publish.append({"sender": sender, "routing_key": kwargs.get("routing_key")})

    try:
        added = p.add.delay(2, 3)
        multiplied = p.mul.apply_async((4, 5), countdown=0.2, priority=5)
        me = p.whoami.apply_async(headers={"trace": "abc"}, queue="celery")
        named_id = p.echo.apply_async(("hi",), task_id="my-task-id")
        flaky = p.flaky.delay(2)
        failing = p.always_fails.delay()
        no_exc = p.exhausts_without_exc.delay()
        new_args = p.retry_with_new_args.delay(1)
        auto = p.autoretried.delay(2)
        permanent = p.permanent.delay()
        notes = [p.save_note.delay(f"note {i}") for i in range(6)]
        hooked_ok = p.hooked.delay(False)
        hooked_bad = p.hooked.delay(True)
        soft_sync, soft_async, soft_bridged = p.soft_sync.delay(), p.soft_async.delay(), p.soft_bridged.delay()
        soft_uncaught = p.soft_uncaught.apply_async(soft_time_limit=0.2)
        flow = (p.add.s(1, 2) | p.add.s(3) | p.mul.s(10)).apply_async()
        fan = group(p.add.s(i, i) for i in range(5))()
        joined = chord((p.add.s(i, i) for i in range(5)), p.tsum.s())()
        middle = chain(p.add.s(1, 1), group(p.add.s(1), p.add.s(2)), p.tsum.s()).apply_async()
        broken_chord = chord([p.add.s(1, 1), p.explode.s(2)], p.tsum.s())()
        errback = p.explode.apply_async((7,), link_error=p.on_error.s())
        linked = p.add.apply_async((1, 1), link=p.mul.s(100))
        progress = p.reports_progress.delay()
        victim = p.sleeps.delay(30)
        limited = [p.limited.delay(i) for i in range(5)]
    finally:
        p.signals.before_task_publish.disconnect(stamp)

    proc = serve("-A", "tests.apps.celery_proj:app", "--broker", url, "-w", "2", "-c", "4", "--burst", env=env)
    wait_until(lambda: progress.state == "PROGRESS", 30, "the custom PROGRESS state")
    assert progress.info == {"step": 1}
    wait_until(lambda: victim.state == "STARTED", 30, "the victim to start")
    victim.revoke(terminate=True)
    assert proc.wait(120) == 0, proc.output[-4000:]

    assert added.get(timeout=5) == 5 and added.state == "SUCCESS" and added.successful()
    assert multiplied.get(timeout=5) == 20
    who = me.get(timeout=5)
    assert who["id"] == me.id and who["headers"]["trace"] == "abc" and who["headers"]["stamped_by"] == "producer"
    assert who["called_directly"] is False and who["is_eager"] is False and who["routing_key"] == "celery"
    assert who["hostname"].startswith("celery@")
    assert {"sender": "tests.apps.celery_proj.add", "routing_key": "celery"} in before_publish
    assert named_id.id == "my-task-id" and proj.app.AsyncResult("my-task-id").get(timeout=5) == "hi"

    # retries: same id, request.retries counts, Celery's limits
    assert flaky.get(timeout=5) == {"id": flaky.id, "retries": 2}
    assert sql(url, f"SELECT attempt FROM runner_jobs WHERE key = '{flaky.id}'") == [(3,)]
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=5)
    assert failing.state == "FAILURE" and "ValueError: boom" in failing.traceback
    assert sql(url, f"SELECT attempt FROM runner_jobs WHERE key = '{failing.id}'") == [(3,)]  # 1 + max_retries
    with pytest.raises(MaxRetriesExceededError):
        no_exc.get(timeout=5)
    assert new_args.get(timeout=5) == {"n": 3, "retries": 2}
    assert auto.get(timeout=5) == 2
    with pytest.raises(KeyError):
        permanent.get(timeout=5)
    assert sql(url, f"SELECT attempt FROM runner_jobs WHERE key = '{permanent.id}'") == [(1,)]
    retry_signals = named(log, "task_retry", task="tests.apps.celery_proj.flaky")
    assert sorted(e["retries"] for e in retry_signals) == [0, 1]

    # DatabaseTask: one instance per worker process, session closed after every task
    assert [n.get(timeout=5) for n in notes] == [f"note {i}" for i in range(6)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (6,)
    closes = named(log, "after_return", task="tests.apps.celery_proj.save_note")
    assert len(closes) == 6 and {c["status"] for c in closes} == {"SUCCESS"}
    per_pid: dict[int, set[int]] = {}
    for c in closes:
        per_pid.setdefault(c["pid"], set()).add(c["instance"])
    assert all(len(instances) == 1 for instances in per_pid.values()), per_pid

    # hooks and task signals
    assert hooked_ok.get(timeout=5) == "hooked ok"
    with pytest.raises(RuntimeError, match="hooked boom"):
        hooked_bad.get(timeout=5)
    assert named(log, "before_start", task_id=hooked_ok.id)
    assert named(log, "on_success", retval="hooked ok")
    assert named(log, "on_retry", task="tests.apps.celery_proj.hooked")
    (fail_hook,) = named(log, "on_failure")
    assert fail_hook["traceback_has_boom"] and "hooked boom" in fail_hook["exc"]
    statuses = sorted(e["status"] for e in named(log, "hook_after_return"))
    assert statuses == ["FAILURE", "SUCCESS"]  # not called for RETRY, as in Celery
    assert named(log, "task_failure", task="tests.apps.celery_proj.hooked")[0]["has_traceback"]
    assert named(log, "task_success", task="tests.apps.celery_proj.add", result=5)
    assert named(log, "task_prerun", task_id=added.id) and named(log, "task_postrun", task_id=added.id, state="SUCCESS")
    for event in ("worker_process_init", "worker_ready", "worker_shutting_down", "worker_process_shutdown"):
        assert len({e["pid"] for e in named(log, event)}) == 2, event

    # soft time limits raise inside the body, sync, async and bridged
    assert soft_sync.get(timeout=5) == "sync cleaned up"
    assert soft_async.get(timeout=5) == "async cleaned up"
    assert soft_bridged.get(timeout=5) == "bridged cleaned up"
    with pytest.raises(Exception) as uncaught:
        soft_uncaught.get(timeout=5)
    assert type(uncaught.value).__name__ == "SoftTimeLimitExceeded"

    # canvas
    assert flow.get(timeout=5) == 60
    assert flow.parent is not None and flow.parent.get(timeout=5) == 6 and flow.parent.parent.get(timeout=5) == 3
    assert fan.get(timeout=5) == [0, 2, 4, 6, 8] and fan.completed_count() == 5
    assert joined.get(timeout=5) == 20
    assert middle.get(timeout=5) == 7
    with pytest.raises(ZeroDivisionError, match="explode 2"):  # Celery raises the header task's error
        broken_chord.get(timeout=5)
    assert isinstance(broken_chord.result, ChordError) and "explode 2" in str(broken_chord.result)
    with pytest.raises(ZeroDivisionError):
        errback.get(timeout=5)
    (called,) = named(log, "errback")
    assert called["failed_id"] == errback.id and "explode 7" in called["exc"] and called["has_traceback"]
    assert linked.get(timeout=5) == 2
    (child,) = sql(
        url, f"SELECT result FROM runner_jobs WHERE parent_id = (SELECT id FROM runner_jobs WHERE key = '{linked.id}')"
    )
    assert child == ("200",)

    # update_state, revoke, rate limit
    assert progress.get(timeout=5) == "done" and progress.state == "SUCCESS"
    assert victim.state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        victim.get(timeout=5)
    starts = sorted(r.get(timeout=5) for r in limited)
    by_pid = sql(url, "SELECT lease_owner, count(*) FROM runner_jobs WHERE name LIKE '%limited' GROUP BY lease_owner")
    assert sum(n for _o, n in by_pid) == 5
    if len(by_pid) == 1:  # one worker ran them all: 10/s spaces them out, one start per 0.1 s
        # window (aligned to the epoch), so 5 starts span at least 3 whole windows
        assert starts[-1] - starts[0] >= 0.29, starts


def test_beat_schedule_fires_under_serve(sqlite_url: str, serve: Any, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    proc = serve("-A", "tests.apps.celery_proj", "--broker", sqlite_url, "-w", "1", env={"CELERY_PROJ_LOG": str(log)})
    wait_until(lambda: len(named(log, "tick", tag="beat")) >= 2, 20, "two beat ticks")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.output[-3000:]
    assert sql(sqlite_url, "SELECT count(*) >= 2 FROM runner_schedule WHERE name = 'tick-every-second'") == [(1,)]
