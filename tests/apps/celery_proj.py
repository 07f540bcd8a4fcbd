"""A Celery project as people write them, with only the import prefix changed
(``celery`` -> ``runner.compat.celery``). Served by ``runner serve -A tests.apps.celery_proj``.

Hooks and signals append one JSON line per event to the file named by ``CELERY_PROJ_LOG``, so
the tests can see what happened inside the worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

from runner.compat.celery import Celery, Task, shared_task, signals
from runner.compat.celery.exceptions import SoftTimeLimitExceeded
from runner.compat.celery.schedules import crontab
from runner.compat.celery.utils.log import get_task_logger

logger = get_task_logger(__name__)

app = Celery("celery_proj")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    worker_concurrency=4,
    beat_schedule={
        "tick-every-second": {"task": "tests.apps.celery_proj.tick", "schedule": 1.0, "args": ("beat",)},
        "nightly-report": {"task": "tests.apps.celery_proj.add", "schedule": crontab(minute=30, hour=3), "args": (1, 2)},
    },
    timezone="UTC",
)


def record(event: str, **fields: object) -> None:
    path = os.environ.get("CELERY_PROJ_LOG")
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str) + "\n"
    with open(path, "a") as f:
        f.write(line)


# -- signals ---------------------------------------------------------------------------------


@signals.worker_process_init.connect
def init_worker(**kwargs: object) -> None:
    record("worker_process_init")


@signals.worker_ready.connect
async def ready(**kwargs: object) -> None:
    await asyncio.sleep(0)
    record("worker_ready")


@signals.worker_shutting_down.connect
def shutting_down(**kwargs: object) -> None:
    record("worker_shutting_down")


@signals.worker_process_shutdown.connect
def process_shutdown(**kwargs: object) -> None:
    record("worker_process_shutdown")


@signals.task_prerun.connect
def prerun(sender=None, task_id=None, task=None, **kwargs):  # type: ignore[no-untyped-def]
    record("task_prerun", task=sender.name, task_id=task_id)


@signals.task_postrun.connect
def postrun(sender=None, task_id=None, state=None, **kwargs):  # type: ignore[no-untyped-def]
    record("task_postrun", task=sender.name, task_id=task_id, state=state)


@signals.task_success.connect
def success(sender=None, result=None, **kwargs):  # type: ignore[no-untyped-def]
    record("task_success", task=sender.name, result=result)


@signals.task_failure.connect
def failure(sender=None, task_id=None, exception=None, einfo=None, **kwargs):  # type: ignore[no-untyped-def]
    record("task_failure", task=sender.name, exception=repr(exception), has_traceback="Traceback" in str(einfo))


@signals.task_retry.connect
def retried(sender=None, request=None, reason=None, **kwargs):  # type: ignore[no-untyped-def]
    record("task_retry", task=sender.name, retries=request.retries)


# -- plain tasks -----------------------------------------------------------------------------


@app.task
def add(x, y):  # type: ignore[no-untyped-def]
    return x + y


@app.task()
async def mul(x, y):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.001)
    return x * y


@shared_task
def tsum(numbers):  # type: ignore[no-untyped-def]
    return sum(numbers)


@shared_task(name="custom.name.echo")
def echo(value):  # type: ignore[no-untyped-def]
    return value


@app.task
def tick(tag):  # type: ignore[no-untyped-def]
    record("tick", tag=tag)
    return tag


@app.task(bind=True)
def whoami(self):  # type: ignore[no-untyped-def]
    r = self.request
    return {
        "id": r.id,
        "retries": r.retries,
        "is_eager": r.is_eager,
        "called_directly": r.called_directly,
        "hostname": r.hostname,
        "headers": r.headers,
        "parent_id": r.parent_id,
        "root_id": r.root_id,
        "routing_key": (r.delivery_info or {}).get("routing_key"),
        "args": list(r.args),
    }


# -- retries ---------------------------------------------------------------------------------


@app.task(bind=True, max_retries=3, default_retry_delay=0.05)
def flaky(self, succeed_on_retry):  # type: ignore[no-untyped-def]
    try:
        if self.request.retries < succeed_on_retry:
            raise ConnectionError(f"not yet ({self.request.retries})")
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=0.05)
    return {"id": self.request.id, "retries": self.request.retries}


@app.task(bind=True, max_retries=2)
def always_fails(self):  # type: ignore[no-untyped-def]
    try:
        raise ValueError("boom")
    except ValueError as exc:
        raise self.retry(exc=exc, countdown=0.01)


@app.task(bind=True, max_retries=1)
def exhausts_without_exc(self):  # type: ignore[no-untyped-def]
    raise self.retry(countdown=0.01)


@app.task(bind=True, max_retries=3)
def retry_with_new_args(self, n):  # type: ignore[no-untyped-def]
    if n < 3:
        raise self.retry(args=(n + 1,), countdown=0.01)
    return {"n": n, "retries": self.request.retries}


@app.task(
    bind=True,
    autoretry_for=(KeyError,),
    retry_kwargs={"max_retries": 4},
    retry_backoff=True,
    retry_backoff_max=0.2,
    retry_jitter=False,
)
def autoretried(self, succeed_on_retry):  # type: ignore[no-untyped-def]
    if self.request.retries < succeed_on_retry:
        raise KeyError("missing")
    return self.request.retries


class PermanentError(KeyError):
    pass


@app.task(
    bind=True, autoretry_for=(KeyError,), dont_autoretry_for=(PermanentError,), retry_kwargs={"max_retries": 4, "countdown": 0.01}
)
def permanent(self):  # type: ignore[no-untyped-def]
    raise PermanentError("do not retry me")


# -- base classes and hooks --------------------------------------------------------------------


class DatabaseTask(Task):
    """The classic Celery pattern: a session created lazily, once per worker process, closed
    after every task in after_return."""

    _db: sqlite3.Connection | None = None
    opened = 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(os.environ["CELERY_PROJ_DB"], timeout=30)
            type(self).opened += 1
        return self._db

    def after_return(self, status, retval, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        if self._db is not None:
            self._db.close()
            self._db = None
        record("after_return", task=self.name, status=status, instance=id(self))


@app.task(base=DatabaseTask, bind=True)
def save_note(self, text):  # type: ignore[no-untyped-def]
    with self.db:
        self.db.execute("INSERT INTO notes (text, pid) VALUES (?, ?)", (text, os.getpid()))
    return text


class HookTask(Task):
    def before_start(self, task_id, args, kwargs):  # type: ignore[no-untyped-def]
        record("before_start", task=self.name, task_id=task_id)

    async def on_success(self, retval, task_id, args, kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        record("on_success", task=self.name, retval=retval)

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        record("on_failure", task=self.name, exc=repr(einfo.exception), traceback_has_boom="hooked boom" in einfo.traceback)

    def on_retry(self, exc, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        record("on_retry", task=self.name, exc=repr(exc))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):  # type: ignore[no-untyped-def]
        record("hook_after_return", task=self.name, status=status, has_einfo=einfo is not None)


@app.task(base=HookTask, bind=True, max_retries=1)
def hooked(self, fail):  # type: ignore[no-untyped-def]
    if fail and self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first try"), countdown=0.01)
    if fail:
        raise RuntimeError("hooked boom")
    return "hooked ok"


# -- time limits -----------------------------------------------------------------------------


@app.task(soft_time_limit=0.3)
def soft_sync():  # type: ignore[no-untyped-def]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "not interrupted"
    except SoftTimeLimitExceeded:
        return "sync cleaned up"


@app.task(soft_time_limit=0.3)
async def soft_async():  # type: ignore[no-untyped-def]
    try:
        await asyncio.sleep(10)
        return "not interrupted"
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.01)  # cleanup may still await
        return "async cleaned up"


@app.task(soft_time_limit=0.3)
def soft_bridged():  # type: ignore[no-untyped-def]
    async def inner() -> str:
        try:
            await asyncio.sleep(10)
            return "not interrupted"
        except SoftTimeLimitExceeded:
            return "bridged cleaned up"

    return asyncio.run(inner())


@app.task
def soft_uncaught():  # type: ignore[no-untyped-def]
    time.sleep(5)


@app.task
async def sleeps(seconds):  # type: ignore[no-untyped-def]
    await asyncio.sleep(seconds)
    return seconds


# -- state, errbacks, rate limits ----------------------------------------------------------------


@app.task(bind=True)
async def reports_progress(self):  # type: ignore[no-untyped-def]
    self.update_state(state="PROGRESS", meta={"step": 1})
    await asyncio.sleep(1.5)
    return "done"


@app.task
def on_error(request, exc, traceback):  # type: ignore[no-untyped-def]
    record("errback", failed_task=request.task, failed_id=request.id, exc=repr(exc), has_traceback="Traceback" in traceback)


@app.task
def explode(x):  # type: ignore[no-untyped-def]
    raise ZeroDivisionError(f"explode {x}")


@app.task(rate_limit="10/s")
def limited(i):  # type: ignore[no-untyped-def]
    return time.time()
