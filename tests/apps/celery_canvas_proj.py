"""A Celery project of the kind the shim was tried against (a document pipeline, webhooks, a
workflow engine built on canvas), written for Celery with only the imports naming
``runner.compat``: task ids chosen up front and keyed into a tracking table, publish-time
tracking through ``before_task_publish``, chains of groups, chords, chunks and map, a
``kombu.Queue`` route, periodic tasks added from ``on_after_configure``, ``Task.__name__`` in
signal receivers, and the helpers those projects import.

``tests/compat/test_celery_parity.py`` runs it under ``runner serve`` and, with the imports
changed back to ``celery``/``kombu``, under a real Celery worker with Redis, and compares. Its
tracking table is a SQLite file named by ``CANVAS_PROJ_DB``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3

from runner.compat.celery import Celery, Task, signals
from runner.compat.celery.utils.log import get_task_logger
from runner.compat.celery.utils.time import get_exponential_backoff_interval
from runner.compat.kombu import Exchange, Queue

logger = get_task_logger(__name__)

app = Celery("celery_canvas_proj", broker=os.environ.get("CELERY_BROKER_URL"), backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    task_default_queue="default",
    task_queues=(
        Queue("default", Exchange("default"), routing_key="default"),
        Queue("webhooks", Exchange("webhooks", type="direct"), routing_key="webhooks", queue_arguments={"x-max-priority": 10}),
    ),
    task_routes={"celery_canvas_proj.deliver_webhook": {"queue": "webhooks", "routing_key": "webhooks"}},
    worker_hijack_root_logger=False,
)
BACKOFF_TABLE = [get_exponential_backoff_interval(factor=2, retries=r, maximum=10) for r in range(5)]

SCHEMA = """
CREATE TABLE IF NOT EXISTS task_records (
    id TEXT PRIMARY KEY, name TEXT, status TEXT, published INTEGER DEFAULT 0, root_id TEXT, parent_id TEXT,
    grp TEXT, grp_index INTEGER, args TEXT, kwargs TEXT, embed TEXT, routing_key TEXT, fn TEXT, result TEXT,
    tenant TEXT, ran_as TEXT, header_keys TEXT, properties TEXT, exchange TEXT
);
CREATE TABLE IF NOT EXISTS events (kind TEXT, data TEXT, pid INTEGER);
"""


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(os.environ["CANVAS_PROJ_DB"], timeout=60, isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


def event(kind: str, **data: object) -> None:
    with db() as conn:
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", (kind, json.dumps(data, sort_keys=True, default=repr), os.getpid()))


# -- publish-time tracking: a row per task id, written before the message leaves -----------------


@signals.before_task_publish.connect
def track_published(sender=None, body=None, headers=None, routing_key=None, exchange=None, properties=None, **kwargs):  # type: ignore[no-untyped-def]
    header_keys = json.dumps(sorted(headers))
    headers["tenant"] = "acme"  # a custom header, read back as request.tenant / request.headers
    args, kwargs_, embed = body
    with db() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO task_records (id, name, status, root_id, parent_id, grp, grp_index, args, kwargs, embed,"
            " routing_key, header_keys, properties, exchange) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (headers["id"], headers["task"], headers["root_id"], headers["parent_id"], headers["group"], headers["group_index"],
             json.dumps(list(args)), json.dumps(kwargs_, sort_keys=True), json.dumps(sorted(embed)), routing_key, header_keys,
             json.dumps(sorted(properties)), exchange),
        )  # fmt: skip


@signals.after_task_publish.connect
def mark_sent(sender=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
    with db() as conn:
        conn.execute("UPDATE task_records SET published = 1 WHERE id = ?", (headers["id"],))


@signals.task_prerun.connect
def mark_started(sender=None, task_id=None, task=None, **kwargs):  # type: ignore[no-untyped-def]
    with db() as conn:  # sender.__name__: Celery's Task.__name__, what hooks log with
        conn.execute("UPDATE task_records SET status = 'STARTED', fn = ? WHERE id = ?", (sender.__name__, task_id))


@signals.task_postrun.connect
def mark_done(sender=None, task_id=None, retval=None, state=None, **kwargs):  # type: ignore[no-untyped-def]
    result = json.dumps(retval) if state == "SUCCESS" else repr(retval)
    with db() as conn:
        conn.execute("UPDATE task_records SET status = ?, result = ? WHERE id = ?", (state, result, task_id))


@signals.task_retry.connect
def retried(sender=None, request=None, reason=None, **kwargs):  # type: ignore[no-untyped-def]
    event("retry", task=sender.__name__, retries=request.retries, when=reason.when)


@signals.after_setup_logger.connect
def on_logger(logger=None, **kwargs):  # type: ignore[no-untyped-def]
    event("after_setup_logger", logger=logger.name if logger.name != "root" else "root")


@signals.after_setup_task_logger.connect
def on_task_logger(logger=None, **kwargs):  # type: ignore[no-untyped-def]
    event("after_setup_task_logger", logger=logger.name)


# -- periodic tasks, the way Celery's docs add them ---------------------------------------------


@app.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):  # type: ignore[no-untyped-def]
    sender.add_periodic_task(1.0, heartbeat.s("beat"), name="heartbeat every second")


@app.on_after_finalize.connect
def finalized(sender, **kwargs):  # type: ignore[no-untyped-def]
    logging.getLogger(__name__).debug("app %s finalized with %d tasks", sender.main, len(sender.tasks))


@app.task
def heartbeat(tag):  # type: ignore[no-untyped-def]
    event("heartbeat", tag=tag)
    return tag


# -- tasks ---------------------------------------------------------------------------------------


class TrackedTask(Task):
    """A base that writes where it ran into its own tracking row, by its request id."""

    def before_start(self, task_id, args, kwargs):  # type: ignore[no-untyped-def]
        with db() as conn:
            conn.execute(
                "UPDATE task_records SET tenant = ?, ran_as = ? WHERE id = ?",
                (getattr(self.request, "tenant", None), self.__name__, task_id),
            )


@app.task(base=TrackedTask)
def add(x, y):  # type: ignore[no-untyped-def]
    return x + y


@app.task(base=TrackedTask)
def tsum(numbers):  # type: ignore[no-untyped-def]
    return sum(numbers)


@app.task(base=TrackedTask)
def ident(x):  # type: ignore[no-untyped-def]
    return x


@app.task(base=TrackedTask)
def boom(x):  # type: ignore[no-untyped-def]
    raise ValueError(f"boom {x}")


@app.task(bind=True, base=TrackedTask)
def ingest(self, doc):  # type: ignore[no-untyped-def]
    return {
        "doc": doc,
        "steps": ["ingest"],
        "ingest_id": self.request.id,
        "headers_tenant": (self.request.headers or {}).get("tenant"),
    }


@app.task(bind=True, base=TrackedTask)
def ocr(self, state):  # type: ignore[no-untyped-def]
    return {**state, "steps": [*state["steps"], "ocr"], "ocr_group": self.request.group}


@app.task(bind=True, base=TrackedTask)
def index(self, state):  # type: ignore[no-untyped-def]
    return {**state, "steps": [*state["steps"], "index"], "index_parent": self.request.parent_id}


@app.task(bind=True, base=TrackedTask)
def deliver_webhook(self, name):  # type: ignore[no-untyped-def]
    return {"event": name, "routing_key": (self.request.delivery_info or {}).get("routing_key")}


@app.task(base=TrackedTask)
def on_error(request, exc, traceback):  # type: ignore[no-untyped-def]
    event("errback", failed=request.id, task=request.task, exc=repr(exc))


@app.task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=0.5, retry_jitter=False, max_retries=3)
def flaky(self):  # type: ignore[no-untyped-def]
    if self.request.retries < 1:
        raise ConnectionError("not yet")
    return self.request.retries
