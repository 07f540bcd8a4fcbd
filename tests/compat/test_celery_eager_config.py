"""In-process behaviour of the Celery shim: eager mode, direct calls, configuration, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from runner.compat.celery import Celery, Task, chain, chord, group, shared_task
from runner.compat.celery.exceptions import (
    ImproperlyConfigured,
    MaxRetriesExceededError,
)
from runner.compat.celery.execution import backoff_countdown
from runner.compat.celery.result import EagerResult
from runner.compat.celery.schedules import crontab

from ..conftest import REPO, sql


@pytest.fixture
def eager_app(tmp_path: Any) -> Any:
    app = Celery("eager", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)
    app.conf.task_always_eager = True
    calls: list[Any] = []

    @app.task
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    @app.task(bind=True, max_retries=3)
    def flaky(self, until):  # type: ignore[no-untyped-def]
        calls.append((self.request.retries, self.request.is_eager, self.request.called_directly))
        if self.request.retries < until:
            raise self.retry(exc=OSError("again"), countdown=30)
        return self.request.retries

    @app.task
    async def amul(x, y):  # type: ignore[no-untyped-def]
        return x * y

    @app.task
    def tsum(values):  # type: ignore[no-untyped-def]
        return sum(values)

    app.t = {"add": add, "flaky": flaky, "amul": amul, "tsum": tsum}  # type: ignore[attr-defined]
    app.calls = calls  # type: ignore[attr-defined]
    return app


def test_eager_mode_runs_inline_with_retries_and_canvas(eager_app: Any) -> None:
    t = eager_app.t
    result = t["add"].delay(2, 3)
    assert isinstance(result, EagerResult) and result.get() == 5 and result.state == "SUCCESS"
    assert t["amul"].delay(3, 4).get() == 12
    assert t["flaky"].delay(2).get() == 2  # retries run at once, countdown ignored
    assert eager_app.calls == [(0, True, False), (1, True, False), (2, True, False)]
    eager_app.calls.clear()
    exhausted = t["flaky"].delay(10)
    assert exhausted.state == "FAILURE" and isinstance(exhausted.result, OSError)
    assert len(eager_app.calls) == 4  # first run + max_retries
    assert (t["add"].s(1, 2) | t["add"].s(3) | t["amul"].s(10))().get() == 60
    assert group(t["add"].s(i, i) for i in range(4))().get() == [0, 2, 4, 6]
    assert chord([t["add"].s(1, 1), t["add"].s(2, 2)], t["tsum"].s())().get() == 6
    assert chain(t["add"].s(1, 1), group(t["add"].s(1), t["add"].s(2)), t["tsum"].s()).apply_async().get() == 7


def test_eager_propagates_and_apply(eager_app: Any) -> None:
    t = eager_app.t
    eager_app.conf.task_eager_propagates = True
    with pytest.raises(OSError, match="again"):
        t["flaky"].delay(10)
    applied = t["add"].apply((5, 5))
    assert applied.get() == 10 and applied.successful()


def test_direct_call_is_inline_and_called_directly(eager_app: Any) -> None:
    seen: list[Any] = []

    @eager_app.task(bind=True)
    def who(self):  # type: ignore[no-untyped-def]
        seen.append((self.request.called_directly, self.request.id))
        return "inline"

    assert who() == "inline" and seen == [(True, None)]
    with pytest.raises(OSError):
        eager_app.t["flaky"](5)  # retry() when called directly re-raises exc


def test_max_retries_exceeded_without_exc(eager_app: Any) -> None:
    @eager_app.task(bind=True, max_retries=0)
    def gives_up(self):  # type: ignore[no-untyped-def]
        raise self.retry()

    assert isinstance(gives_up.delay().result, MaxRetriesExceededError)


def test_backoff_formula_is_celerys() -> None:
    assert [backoff_countdown(1, r, 600, False) for r in range(5)] == [1, 2, 4, 8, 16]
    assert backoff_countdown(3, 10, 600, False) == 600
    draws = {backoff_countdown(1, 3, 600, True) for _ in range(300)}
    assert draws <= set(range(9)) and len(draws) > 4  # full jitter: uniform in [0, 8]


def test_non_database_brokers_are_refused_with_a_fix(tmp_path: Any) -> None:
    app = Celery("r", broker="redis://localhost:6379/0", set_as_current=False)

    @app.task
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    with pytest.raises(ImproperlyConfigured, match="SQLite or PostgreSQL") as info:
        add.delay(1, 2)
    assert "sqlite:///" in str(info.value) and "postgresql://" in str(info.value)
    app.conf.broker_url = "amqp://guest@localhost//"
    with pytest.raises(ImproperlyConfigured, match="not in amqp"):
        _ = app.runner_app


def test_runner_serve_refuses_a_redis_app(serve: Any) -> None:
    proc = serve("-A", "tests.apps.celery_redis_proj", "--burst")
    assert proc.wait(30) == 2
    assert "SQLite or PostgreSQL" in proc.output and "redis" in proc.output


def test_pickle_is_refused(tmp_path: Any) -> None:
    app = Celery("p", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="JSON only"):
        app.conf.update(task_serializer="pickle")
    with pytest.raises(ImproperlyConfigured, match="pickle"):
        app.conf.accept_content = ["json", "pickle"]

    class Config:
        CELERY_RESULT_SERIALIZER = "pickle"

    with pytest.raises(ImproperlyConfigured):
        app.config_from_object(Config, namespace="CELERY")

    @app.task
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    with pytest.raises(ImproperlyConfigured):
        add.apply_async((1, 2), serializer="pickle")


def test_config_from_object_namespace_and_broker_precedence(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings:
        CELERY_BROKER_URL = f"sqla+sqlite:///{tmp_path / 'a.db'}"
        CELERY_TASK_ALWAYS_EAGER = True
        CELERY_WORKER_CONCURRENCY = 3
        CELERY_WORKER_MAX_MEMORY_PER_CHILD = 200_000  # KiB
        CELERY_TASK_DEFAULT_QUEUE = "jobs"
        CELERY_TASK_ROUTES = {"cfg.reports.*": {"queue": "reports"}}
        UNRELATED = 1

    app = Celery("cfg", set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")
    assert app.conf.task_always_eager is True and "unrelated" not in app.conf
    assert app.broker_url() == Settings.CELERY_BROKER_URL

    @app.task(name="cfg.reports.nightly")
    def nightly():  # type: ignore[no-untyped-def]
        return 1

    @app.task(name="cfg.plain")
    def plain():  # type: ignore[no-untyped-def]
        return 2

    runner_app = app.runner_app
    assert runner_app.jobs["cfg.reports.nightly"].queue == "reports"
    assert runner_app.jobs["cfg.plain"].queue == "jobs"
    assert runner_app.serve_defaults["concurrency"] == 3 and runner_app.serve_defaults["max_memory_per_worker"] == 196
    monkeypatch.setenv("CELERY_BROKER_URL", "postgresql://u@db.example/x")
    assert app.broker_url() == "postgresql://u@db.example/x"


def test_beat_schedule_becomes_runner_periodic_entries(tmp_path: Any) -> None:
    app = Celery("beat", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)
    app.conf.timezone = "Europe/Paris"
    app.conf.beat_schedule = {
        "cleanup": {
            "task": "beat.cleanup",
            "schedule": crontab(minute=0, hour="*/3", day_of_week="mon-fri"),
            "kwargs": {"days": 7},
        },
        "poll": {"task": "beat.cleanup", "schedule": 30.0, "options": {"queue": "poll"}},
    }

    @app.task(name="beat.cleanup")
    def cleanup(days=1):  # type: ignore[no-untyped-def]
        return days

    entries = app.beat_entries()
    assert entries[0][:2] == ("cleanup", "beat.cleanup") and entries[0][4] == {"days": 7}
    schedules = {p.name: p for p in app.runner_app.schedules}
    assert schedules["cleanup"].schedule.expr == "0 */3 * * mon-fri" and schedules["cleanup"].schedule.tz == "Europe/Paris"
    assert schedules["poll"].schedule.seconds == 30.0 and schedules["poll"].options == {"queue": "poll"}


def test_shared_task_and_class_based_tasks(tmp_path: Any) -> None:
    @shared_task(bind=True)
    def shared(self, x):  # type: ignore[no-untyped-def]
        return (self.name, x)

    app = Celery("shared", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)
    app.conf.task_always_eager = True
    assert shared.name in app.tasks

    class Double(Task):
        name = "shared.double"

        def run(self, x):  # type: ignore[no-untyped-def]
            return 2 * x

    double = app.register_task(Double)
    assert double.delay(21).get() == 42
    assert app.tasks["shared.double"] is double
    assert (REPO / "runner" / "compat" / "celery" / "bridge.py").exists()


def test_a_per_call_time_limit_becomes_the_rows_hard_limit(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    app = Celery("limits", broker=url, set_as_current=False)

    @app.task(time_limit=10)
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    try:
        per_call = add.apply_async((1, 2), time_limit=2.5, soft_time_limit=1)
        default = add.delay(1, 2)
        limits = dict(sql(url, "SELECT key, hard_timeout FROM runner_jobs"))
    finally:
        app.close()
    assert limits[per_call.id] == 2.5, "a per-call limit has its own column"
    assert limits[default.id] is None
    assert app.runner_app.get(add.name).hard_timeout == 10  # the task's own limit stays the default
