"""In-process checks of the shim's canvas and helpers: what is written when a canvas is sent
(one row per task, ids as keys, in one transaction), publish signals, settings, routes,
periodic tasks, and the helpers Celery projects import. What runs is checked under
``runner serve`` (test_celery_serve.py) and against real Celery (test_celery_parity.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from runner.compat.celery import Celery, chain, chord, group, signals, signature
from runner.compat.celery.canvas import Signature
from runner.compat.celery.exceptions import TaskIdInUse
from runner.compat.celery.execution import backoff_countdown
from runner.compat.celery.result import AsyncResult, GroupResult
from runner.compat.celery.schedules import crontab
from runner.compat.celery.utils import uuid
from runner.compat.celery.utils.time import get_exponential_backoff_interval
from runner.compat.kombu import Exchange, Queue

from ..conftest import REPO, sql

# The protocol-2 headers Celery 5 publishes (checked against Celery in test_celery_parity.py).
CELERY_HEADERS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
    "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
}  # fmt: skip


@pytest.fixture
def app(tmp_path: Any) -> Any:
    made = Celery("canvas", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)

    @made.task(name="canvas.add")
    def add(x, y):  # type: ignore[no-untyped-def]
        return x + y

    @made.task(name="canvas.tsum")
    def tsum(values):  # type: ignore[no-untyped-def]
        return sum(values)

    made.t = {"add": add, "tsum": tsum}  # type: ignore[attr-defined]
    made.url = f"sqlite:///{tmp_path / 'q.db'}"  # type: ignore[attr-defined]
    yield made
    made.close()


def rows(app: Any) -> list[dict[str, Any]]:
    found = sql(app.url, "SELECT id, key, state, parent_id, group_id, meta, args FROM runner_jobs ORDER BY id")
    keys = ("id", "key", "state", "parent_id", "group_id", "meta", "args")
    return [dict(zip(keys, r), celery=json.loads(r[5])["celery"]) for r in found]


def test_a_chain_of_groups_is_one_workflow_with_the_ids_given(app: Any) -> None:
    add, tsum = app.t["add"], app.t["tsum"]
    result = chain(
        group(add.s(1, 1).set(task_id="a"), add.s(2, 2).set(task_id="b"), task_id="first"),
        group(tsum.s().set(task_id="c"), tsum.s().set(task_id="d"), task_id="second"),
        tsum.s(),
        task_id="last",
    ).apply_async()
    assert result.id == "last" and isinstance(result.parent, GroupResult) and result.parent.id == "second"
    assert [r.id for r in result.parent.results] == ["c", "d"] and result.parent.parent.id == "first"
    written = {r["key"]: r for r in rows(app)}
    assert sorted(written) == ["a", "b", "c", "d", "last"], "one row per task, the Celery id as its key"
    assert {k: r["state"] for k, r in written.items()} == {
        "a": "queued",
        "b": "queued",
        "c": "waiting",
        "d": "waiting",
        "last": "waiting",
    }
    assert written["c"]["celery"] == {
        "id": "c",
        "root_id": "a",
        "parent_id": "a",
        "group": "second",
        "group_index": 0,
        "chord": True,
    }
    assert written["last"]["celery"]["chord"] is True and written["last"]["celery"]["parent_id"] == "c"
    assert AsyncResult("c", app=app).state == "PENDING"


def test_before_task_publish_gets_celerys_headers_and_body(app: Any) -> None:
    seen: list[dict[str, Any]] = []

    @signals.before_task_publish.connect
    def receiver(sender=None, body=None, headers=None, routing_key=None, properties=None, declare=None, **kwargs):  # type: ignore[no-untyped-def]
        headers["tracked"] = True
        seen.append({"sender": sender, "body": body, "headers": dict(headers), "rk": routing_key, "props": properties,
                     "declare": [q.name for q in declare]})  # fmt: skip

    try:
        add = app.t["add"]
        single = add.apply_async((1, 2), countdown=5, link_error=add.s(0))
        chord([add.s(1, 1), add.s(2, 2)], app.t["tsum"].s(), task_id="body")()
    finally:
        signals.before_task_publish.disconnect(receiver)
    first = seen[0]
    assert first["sender"] == "canvas.add" and first["rk"] == "celery" and first["declare"] == ["celery"]
    assert set(first["headers"]) == CELERY_HEADERS | {"tracked"}
    assert first["headers"]["id"] == single.id == first["props"]["correlation_id"] and first["headers"]["root_id"] == single.id
    assert first["headers"]["eta"] and first["headers"]["argsrepr"] == "(1, 2)"
    args, kwargs, embed = first["body"]
    assert (args, kwargs, sorted(embed)) == ([1, 2], {}, ["callbacks", "chain", "chord", "errbacks"])
    assert embed["errbacks"][0]["task"] == "canvas.add"
    header_a, header_b, body = seen[1:]
    assert header_a["headers"]["group"] == header_b["headers"]["group"] == body["headers"]["group"]
    assert [header_a["headers"]["group_index"], header_b["headers"]["group_index"], body["headers"]["group_index"]] == [
        0,
        1,
        None,
    ]
    assert body["headers"]["id"] == "body" and body["headers"]["parent_id"] == header_a["headers"]["id"]
    assert header_a["body"][2]["chord"]["task"] == "canvas.tsum"
    stored = {r["key"]: r["celery"] for r in rows(app)}
    assert stored[single.id]["headers"] == {"tracked": True}, "headers a receiver adds reach the worker"


def test_a_waiting_task_id_is_not_reused(app: Any) -> None:
    add = app.t["add"]
    chain(add.s(1, 1).set(task_id="x"), add.s(1).set(task_id="y")).apply_async()
    with pytest.raises(TaskIdInUse, match="'y' is already the id of job"):
        chain(add.s(1, 1).set(task_id="x"), add.s(1).set(task_id="y")).apply_async()
    again = add.apply_async((5, 5), task_id="y")
    assert again.id == "y" and len(rows(app)) == 2, "one task sent with a waiting step's id is that step"
    with pytest.raises(ValueError, match="two tasks of one canvas"):
        group(add.s(1, 1).set(task_id="z"), add.s(2, 2).set(task_id="z")).apply_async()
    assert len(rows(app)) == 2, "nothing of a refused canvas is written"


def test_signatures_survive_json(app: Any) -> None:
    add, tsum = app.t["add"], app.t["tsum"]
    canvas = chain(add.s(1, 2), group(add.s(1), add.s(2)), tsum.s().set(task_id="t"))
    back = signature(json.loads(json.dumps(canvas)), app=app)
    assert type(back).__name__ == "chain" and type(back.tasks[1]).__name__ == "group" and back.tasks[2].id == "t"
    chunked = signature(json.loads(json.dumps(add.chunks([(1, 2), (3, 4), (5, 6)], 2))), app=app)
    assert chunked.apply().get() == [[3, 7], [11]]
    assert signature(json.loads(json.dumps(add.starmap([(1, 2)]))), app=app).apply().get() == [3]
    assert isinstance(back.tasks[0], Signature) and repr(back.tasks[0]) == "canvas.add(1, 2)"


def test_settings_routes_and_queues(app: Any) -> None:
    app.conf.CELERY_ALWAYS_EAGER = False
    app.conf["CELERYD_CONCURRENCY"] = 3
    assert app.conf.CELERY_ALWAYS_EAGER is False and app.conf.task_always_eager is False
    assert app.conf.CELERYD_CONCURRENCY == 3 and app.conf["worker_concurrency"] == 3 and "CELERYD_CONCURRENCY" in app.conf
    assert app.conf.get("CELERY_DEFAULT_QUEUE") == "celery"
    app.conf.task_queues = (
        Queue("default", Exchange("default"), routing_key="default"),
        Queue("hooks", Exchange("hooks", type="direct"), routing_key="hooks.key"),
    )
    app.conf.task_routes = {"canvas.hook": {"exchange": "hooks", "routing_key": "hooks.key"}, "canvas.q": Queue("qq")}

    @app.task(name="canvas.hook")
    def hook():  # type: ignore[no-untyped-def]
        return 1

    @app.task(name="canvas.q")
    def q():  # type: ignore[no-untyped-def]
        return 1

    hook.delay()
    q.delay()
    app.t["add"].apply_async((1, 1), queue=Queue("other"))
    assert [r[0] for r in sql(app.url, "SELECT queue FROM runner_jobs ORDER BY id")] == ["hooks", "qq", "other"]
    assert {"default", "hooks"} <= set(app.runner_app.queues()), "runner serve serves every queue of task_queues"


def test_periodic_tasks_from_on_after_configure(tmp_path: Any) -> None:
    app = Celery("periodic", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)
    calls: list[str] = []

    @app.on_after_configure.connect
    def setup(sender, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("configure")
        sender.add_periodic_task(10.0, tick.s("hello"), name="add every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1), tick.s("Happy Mondays!"), expires=10)

    @app.on_after_finalize.connect
    def finalized(sender, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("finalize")
        sender.add_periodic_task(30, tick.s("later"))

    @app.task(name="periodic.tick")
    def tick(arg):  # type: ignore[no-untyped-def]
        return arg

    schedules = {p.name: p for p in app.runner_app.schedules}
    assert calls == ["configure", "finalize"]
    assert schedules["add every 10"].schedule.seconds == 10.0 and schedules["add every 10"].args == ("hello",)
    monday = schedules["periodic.tick('Happy Mondays!')"]  # Celery's default name: the signature's repr
    assert monday.schedule.expr == "30 7 * * 1" and monday.options == {"expires": 10}
    assert schedules["periodic.tick('later')"].schedule.seconds == 30.0
    app.close()


def test_helpers_projects_import(app: Any) -> None:
    add = app.t["add"]
    assert add.__name__ == "add" and type(add).__name__ == "add"
    assert AsyncResult("abc", app=app).task_id == "abc"
    ids = {uuid() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 36 and i.count("-") == 4 for i in ids)
    assert [get_exponential_backoff_interval(2, r, 10) for r in range(5)] == [2, 4, 8, 10, 10]
    # retry_backoff below 1 is a factor of 1 (Celery: int(max(1.0, x))); 2.5 is 2; True is 1
    assert [backoff_countdown(0.5, r, 600, False) for r in range(3)] == [1, 2, 4]
    assert backoff_countdown(2.5, 1, 600, False) == 4 and backoff_countdown(True, 3, 600, False) == 8
    assert backoff_countdown(1, 10, 600.9, False) == 600, "retry_backoff_max is an int, as Celery reads it"


def test_the_shim_imports_neither_celery_nor_kombu() -> None:
    code = "import runner.compat.celery, runner.compat.kombu, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
