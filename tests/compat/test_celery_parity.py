"""The same Celery project under real Celery (Redis broker, a ``celery worker`` subprocess) and
under ``runner serve`` (SQLite and PostgreSQL), compared: results, ids, signal arguments, the
project's tracking rows, chord/chain/group results, ``GroupResult.save/restore``,
chunks/map/starmap, errbacks, retries, periodic tasks, routes.

The project is ``tests/apps/celery_canvas_proj.py`` with its client ``celery_canvas_client.py``;
for Celery their imports are changed back (``runner.compat.celery`` -> ``celery``,
``runner.compat.kombu`` -> ``kombu``), which is the whole port in the other direction. Needs
``celery[redis]`` (the ``test`` extra) and Redis at ``TEST_REDIS_URL`` (database 12 by default,
flushed before and after): skipped locally without them, a failure in CI.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
MODULES = ("celery_canvas_proj", "celery_canvas_client")
# Tasks whose arguments Celery publishes only once their parent has run (with its result
# prepended); the shim publishes every task of a canvas when the canvas is sent.
PUBLISHED_BEFORE_PARENT_RAN = {"doc-8-ocr", "doc-8-index", "join-body"}
CHORD_BODIES = {"join-body": {"join-a", "join-b"}}


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " -- CI must run the comparison with Celery", pytrace=False)
    pytest.skip(message)


def port(dest: Path, *, to_celery: bool) -> Path:
    """Copy the project into ``dest``; for Celery, with its imports changed back."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        source = (REPO / "tests" / "apps" / f"{name}.py").read_text()
        if to_celery:
            source = re.sub(r"^(from|import) runner\.compat\.celery", r"\1 celery", source, flags=re.M)
            source = re.sub(r"^from runner\.compat\.kombu", "from kombu", source, flags=re.M)
            assert "runner" not in "".join(line for line in source.splitlines() if line.startswith(("from ", "import ")))
        (dest / f"{name}.py").write_text(source)
    return dest


def _flush_redis() -> None:
    import redis  # installed with celery[redis]

    redis.Redis.from_url(REDIS_URL).flushdb()  # database 12 only


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _client(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    out = workdir / "out.json"
    run = subprocess.run(
        [sys.executable, str(workdir / "celery_canvas_client.py"), str(out)],
        cwd=workdir,
        env=env,
        capture_output=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def celery_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project under real Celery, once for the module."""
    try:
        import celery  # noqa: F401
        import redis
    except ImportError:
        _unavailable("celery[redis] is not installed (pip install -e '.[test]')")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_URL} is not reachable ({exc})")
    workdir = port(tmp_path_factory.mktemp("celery_side"), to_celery=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "CELERY_"))}
    env.update(
        CELERY_BROKER_URL=REDIS_URL, CELERY_RESULT_BACKEND=REDIS_URL, CANVAS_PROJ_DB=str(workdir / "tracking.db"),
        PYTHONPATH=str(workdir), PYTHONUNBUFFERED="1",
    )  # fmt: skip
    _flush_redis()
    log = open(workdir / "worker.log", "w+b")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_canvas_proj", "worker", "-B", "-c", "2", "--loglevel=info"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in (workdir / "worker.log").read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, (workdir / "worker.log").read_text()[-4000:]
            time.sleep(0.2)
        return _client(workdir, env)
    finally:
        _stop(worker)
        log.close()
        _flush_redis()


def runner_run(broker_url: str, workdir: Path, serve: Any) -> dict[str, Any]:
    port(workdir, to_celery=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "CELERY_"))}
    env.update(
        CELERY_BROKER_URL=broker_url, CANVAS_PROJ_DB=str(workdir / "tracking.db"), PYTHONPATH=f"{workdir}:{REPO}",
        PYTHONUNBUFFERED="1",
    )  # fmt: skip
    proc = serve("-A", "celery_canvas_proj", "--broker", broker_url, "-w", "2", "-c", "4", env=env)
    try:
        return _client(workdir, env)
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.output[-4000:]


def test_the_project_behaves_under_runner_as_under_celery(
    celery_run: dict[str, Any], broker_url: str, tmp_path: Path, serve: Any
) -> None:
    celery, ours = celery_run, runner_run(broker_url, tmp_path, serve)

    # Results, ids and the shapes of results: everything the client read, identical.
    plain = sorted(set(celery) - {"records", "events", "known_ids"})
    assert sorted(set(ours) - {"records", "events", "known_ids"}) == plain
    different = {k: (ours[k], celery[k]) for k in plain if ours[k] != celery[k]}
    assert different == {}, json.dumps(different, indent=1)

    # The tracking rows the project keys by the ids it chose: written by before_task_publish,
    # after_task_publish, task_prerun (with sender.__name__), task_postrun and the tasks.
    theirs_rows, our_rows = celery["records"], ours["records"]
    chosen = {i for i in theirs_rows if not _is_uuid(i)}
    assert len(chosen) >= 12, sorted(chosen)
    assert chosen <= set(our_rows), sorted(chosen - set(our_rows))
    for task_id in sorted(chosen):
        a, b = dict(theirs_rows[task_id]), dict(our_rows[task_id])
        if task_id in PUBLISHED_BEFORE_PARENT_RAN:
            del a["args"], b["args"]
        if task_id in CHORD_BODIES:  # Celery's parent (and root) is whichever header task ended last
            for row in (a, b):
                assert {row.pop("root_id"), row.pop("parent_id")} <= CHORD_BODIES[task_id], (task_id, row)
        if _is_uuid(a["grp"] or ""):  # a group id Celery made up: ours is another one
            assert _is_uuid(b["grp"] or ""), (task_id, b)
            del a["grp"], b["grp"]
        assert b == a, task_id

    # Every task Celery ran has a row here too; the shim also has rows for the tasks that never
    # ran (a chain step after a failed one, a chord body whose header failed): it publishes a
    # whole canvas when it is sent. Celery's beat publishes its fires; runner's scheduler does not.
    known = ours["known_ids"]
    never_ran = {known["chain_failure"][0], known["chord_failure_body"]}
    assert {our_rows[i]["status"] for i in never_ran} == {"PENDING"}
    assert _by_name(our_rows, skip=never_ran) == _by_name(theirs_rows, skip={"celery_canvas_proj.heartbeat"})

    # Events seen inside the workers.
    def events(run: dict[str, Any], kind: str) -> list[Any]:
        return [e for k, e in run["events"] if k == kind]

    assert events(ours, "retry") == events(celery, "retry") != []
    errbacks = {(e["task"], e["exc"].replace(celery["known_ids"]["chord_failure_body"], "")) for e in events(celery, "errback")}
    assert {(e["task"], e["exc"].replace(known["chord_failure_body"], "")) for e in events(ours, "errback")} == errbacks
    failed = {e["failed"] for e in events(ours, "errback")}
    assert failed == {"boom-7", known["chain_failure"][1], known["chord_failure_body"]}
    for kind in ("after_setup_logger", "after_setup_task_logger"):  # Celery: once; runner: once per worker process
        assert {e["logger"] for e in events(ours, kind)} == {e["logger"] for e in events(celery, kind)} != set(), kind
    assert events(ours, "heartbeat") and events(celery, "heartbeat"), "add_periodic_task from on_after_configure fires"


def _is_uuid(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value))


def _by_name(rows: dict[str, Any], *, skip: set[str]) -> dict[tuple[str, str], int]:
    return dict(collections.Counter((r["name"], r["status"]) for i, r in rows.items() if i not in skip and r["name"] not in skip))
