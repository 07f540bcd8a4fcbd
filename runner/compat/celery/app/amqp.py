"""One task as Celery would publish it, written as a runner call (Celery's ``celery.app.amqp``).

Celery turns a task call into a message: protocol-2 ``headers`` (``id``, ``task``, ``root_id``,
``parent_id``, ``group``, ``eta``, ``timelimit``, ...), a ``body`` of ``(args, kwargs, embed)``
and a routing key, sends ``before_task_publish`` with them (receivers may add headers), publishes,
and sends ``after_task_publish``. The shim builds the same headers and body, sends the same
signals, and writes the message as a runner ``Call``: the Celery id is the job's idempotency key
and, with the rest of what the worker needs to rebuild ``self.request`` (root and parent ids,
group and index, custom headers, limits), lives in the job's meta under ``"celery"``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ....wire import ChildSpec
from ...kombu import Queue
from ..exceptions import ImproperlyConfigured
from ..signals import after_task_publish, before_task_publish
from ..utils import uuid
from .config import check_serializer

__all__ = ["STANDARD_HEADERS", "Message", "Sending", "errback_spec", "publish", "published", "queue_name"]

# Protocol-2 headers Celery sets itself; anything else in a message's headers is a custom header
# (``apply_async(headers=...)`` or added by a ``before_task_publish`` receiver).
STANDARD_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
        "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting", "stamped_headers",
        "stamps",
    }
)  # fmt: skip
RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2}
REPR_MAX = 1024  # Celery's argsrepr_maxsize / kwargsrepr_maxsize
# Options Celery's apply_async accepts that mean nothing without a broker connection.
_TRANSPORT_OPTIONS = frozenset(
    {
        "producer", "connection", "router", "publisher", "retry", "retry_policy", "mandatory", "immediate",
        "delivery_mode", "reply_to", "add_to_parent", "route_name", "exchange_type", "declare", "serializer",
        "compression", "group_id", "group_index", "root_id", "parent_id", "chord", "chain", "stamped_headers", "stamps",
    }
)  # fmt: skip


@dataclass
class Sending:
    """One task of a send, with everything its message needs."""

    task: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    id: str
    root_id: str
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    chord_body: bool = False  # a chord's body: gets the header's results; fails with ChordError
    callback: bool = False  # a link= callback: cancelled (never sent, in Celery) if its parent fails
    immutable: bool = False
    callbacks: list[Any] = field(default_factory=list)  # link= signatures (for the body's embed)
    errbacks: list[Any] = field(default_factory=list)  # link_error= signatures
    chain: list[Any] | None = None  # the steps after it, last first (Celery's embed)
    chord: Any = None  # the chord body it is a header member of
    on_success: Any = None  # the native step(s) its link= callbacks are
    parent_job: int | None = None  # the runner job that sent it (a task sending tasks)
    parent_root_job: int | None = None


@dataclass
class Message:
    """A task as Celery publishes it, and the runner call that is its row."""

    name: str
    call: Any
    headers: dict[str, Any]
    body: tuple[Any, ...]
    routing_key: str
    declare: list[Any]


def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def queue_name(app: Any, value: Any) -> str | None:
    """A queue given as a name or as a ``Queue`` (kombu's or ``runner.compat.kombu``'s)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    if isinstance(name, str) and name:
        return name
    raise ImproperlyConfigured(f"queue={value!r}: accepted: a queue name, or Queue('name', ...)")


def _route_queue(app: Any, route: dict[str, Any]) -> str | None:
    """The queue a route names: ``queue`` (a name or Queue), or a queue of ``task_queues``
    bound with its ``routing_key`` (and ``exchange``); with a direct exchange the routing key
    is the queue's name."""
    queue = queue_name(app, route.get("queue"))
    if queue is not None:
        return queue
    key = route.get("routing_key")
    if not key:
        return None
    exchange = route.get("exchange")
    exchange = exchange if isinstance(exchange, str) or exchange is None else getattr(exchange, "name", None)
    for declared in app.declared_queues():
        keys = declared.routing_keys() if hasattr(declared, "routing_keys") else [getattr(declared, "routing_key", "")]
        exchanges = declared.exchange_names() if hasattr(declared, "exchange_names") else []
        if key in keys and (not exchange or exchange in exchanges or not exchanges):
            return str(declared.name)
    return str(key)


def route_for(app: Any, task: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> str:
    """Where a task call goes: ``queue=`` of the call, its routing options, ``task_routes``, the
    task's own queue, ``task_default_queue`` -- Celery's order."""
    queue = queue_name(app, options.get("queue"))
    if queue is None and (options.get("routing_key") or options.get("exchange")):
        queue = _route_queue(app, {"routing_key": options.get("routing_key"), "exchange": options.get("exchange")})
    if queue is None:
        queue = _route_queue(app, app.route(task.name or "", args, kwargs, options, task))
    return queue or app.queue_for(task)


def _timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    return str(value)


def publish(app: Any, s: Sending) -> Message:
    """Build the message for ``s``, send ``before_task_publish`` (its receivers may add
    headers) and return the runner call that will be its row."""
    task, options = s.task, {k: v for k, v in s.options.items() if k not in _TRANSPORT_OPTIONS}
    for key in ("serializer", "compression"):
        if key == "serializer" and s.options.get(key):
            check_serializer("serializer", s.options[key])
    job = app.job_for(task)
    queue = route_for(app, task, s.args, s.kwargs, s.options)
    run: dict[str, Any] = {"queue": queue, "key": s.id, "immutable": s.immutable}
    meta: dict[str, Any] = {"id": s.id, "root_id": s.root_id}
    now = time.time()
    eta = options.get("eta")
    if options.get("countdown") is not None:
        run["countdown"] = float(options["countdown"])
        eta = datetime.fromtimestamp(now + float(options["countdown"]), UTC)
    elif eta is not None:
        eta = _aware(eta) if isinstance(eta, datetime) else eta
        run["eta"] = eta
    expires = options.get("expires", task.expires)
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        expires = datetime.fromtimestamp(now + float(expires), UTC)
    elif isinstance(expires, timedelta):
        expires = datetime.fromtimestamp(now + expires.total_seconds(), UTC)
    if expires is not None:
        run["expires"] = _aware(expires) if isinstance(expires, datetime) else expires
    if options.get("priority") is not None:
        run["priority"] = int(options["priority"])
    if options.get("time_limit") is not None:  # per call: the supervisor enforces it
        run["hard_timeout"] = _seconds(options["time_limit"])
    for key, value in (("parent_id", s.parent_id), ("group", s.group_id), ("group_index", s.group_index),
                       ("eta", _timestamp(eta)), ("expires", _timestamp(expires))):  # fmt: skip
        if value is not None:
            meta[key] = value
    for key in ("soft_time_limit", "time_limit", "ignore_result", "shadow"):
        if options.get(key) is not None:
            meta[key] = options[key]
    if s.chord_body:
        meta["chord"] = True
    if s.callback:
        meta["callback"] = True
    if s.parent_job is not None:  # sent by a running task (and first in its workflow)
        run["parent_id"] = s.parent_job
        run["root_id"] = s.parent_root_job or s.parent_job
    headers: dict[str, Any] = {
        "lang": "py", "task": task.name, "id": s.id, "shadow": options.get("shadow"), "eta": meta.get("eta"),
        "expires": meta.get("expires"), "group": s.group_id, "group_index": s.group_index, "retries": 0,
        "timelimit": [options.get("time_limit"), options.get("soft_time_limit")], "root_id": s.root_id,
        "parent_id": s.parent_id, "argsrepr": _repr(tuple(s.args)), "kwargsrepr": _repr(s.kwargs), "origin": _origin(),
        "ignore_result": bool(options.get("ignore_result", False)), "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }  # fmt: skip
    headers.update(options.get("headers") or {})
    body = (
        list(s.args),
        dict(s.kwargs),
        {
            "callbacks": [dict(c) for c in s.callbacks] or None,
            "errbacks": [dict(e) for e in s.errbacks] or None,
            "chain": s.chain,
            "chord": dict(s.chord) if s.chord is not None else None,
        },
    )
    declare = [q for q in app.declared_queues() if getattr(q, "name", None) == queue] or [Queue(queue)]
    before_task_publish.send(
        sender=task.name, body=body, exchange="", routing_key=queue, headers=headers,
        properties={"correlation_id": s.id, "reply_to": ""}, declare=declare, retry_policy=dict(RETRY_POLICY),
    )  # fmt: skip
    custom = {k: v for k, v in headers.items() if k not in STANDARD_HEADERS}
    if custom:
        meta["headers"] = custom
    if s.errbacks:
        run["on_failure"] = [errback_spec(app, e, parent_id=s.id, root_id=s.root_id) for e in s.errbacks]
    if s.on_success is not None:
        run["on_success"] = s.on_success
    run["meta"] = {"celery": meta}
    call = job.options(**run).call(*s.args, **s.kwargs)
    return Message(task.name, call, headers, body, queue, declare)


def published(messages: Sequence[Message]) -> None:
    """``after_task_publish`` for each message, once its row is written."""
    for m in messages:
        after_task_publish.send(sender=m.name, body=m.body, exchange="", routing_key=m.routing_key, headers=m.headers)


def errback_spec(app: Any, sig: Any, *, parent_id: str, root_id: str) -> ChildSpec:
    """A ``link_error`` signature as the errback runner enqueues when its task fails for good:
    runner prepends the failed job's id, and the worker turns it into Celery's
    ``(request, exc, traceback)`` (or the old ``(task_id)``) arguments."""
    task = sig.type
    job = app.job_for(task)
    options = sig.options
    task_id = options.get("task_id") or uuid()
    meta: dict[str, Any] = {"id": task_id, "root_id": root_id, "parent_id": parent_id, "errback": True}
    if sig.immutable:
        meta["errback_immutable"] = True
    queue = route_for(app, task, sig.args, sig.kwargs, options)
    priority = options.get("priority")
    return ChildSpec(
        name=task.name, args=list(sig.args), kwargs=dict(sig.kwargs), queue=queue, key=task_id,
        priority=int(job.priority if priority is None else priority), meta={"celery": meta},
    )  # fmt: skip
