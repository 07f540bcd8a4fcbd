"""Signatures and workflows: ``signature``/``s``/``si``, ``chain`` (``|``), ``group``, ``chord``.

Built on runner's chaining: a job's ``on_success`` callbacks are child jobs inserted in the
same transaction as the parent's completion, with the parent's result prepended to their
arguments (unless immutable); ``on_failure`` does the same for errbacks. So
``chain(a.s(1), b.s(), c.s())`` enqueues ``a`` carrying the specs of ``b`` and ``c``; the result
handed back names ``c`` by a path (``"<a's id>/<b's canvas id>/<c's canvas id>"``, see result.py).

A chord enqueues its header tasks and one internal ``celery.chord_unlock`` job (what Celery
does for backends without native chord support): it polls the header rows, and when all
succeeded returns their results in order, which chains the body with that list as its first
argument. If a header task fails, the body is not run: it is recorded as failed with
``ChordError`` (and its ``link_error`` errbacks run).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from ...app import Context as RunnerContext
from ...errors import Retry as RunnerRetry
from ...wire import ChildSpec, decode_json
from .exceptions import ChordError

__all__ = ["Signature", "callback_specs", "chain", "child_specs", "chord", "group", "maybe_signature", "signature"]

CHORD_UNLOCK = "celery.chord_unlock"


class _Spec(dict):
    """A child-job spec (not a Signature): name, args, kwargs, queue, priority, immutable, and a
    meta whose ``on_success``/``on_failure`` hold its own children; ``child_specs`` turns it into
    runner's typed ``ChildSpec``."""


def child_specs(specs: list[Any]) -> tuple[ChildSpec, ...]:
    """Shim specs as runner's typed chained jobs (their children nested the same way)."""
    out = []
    for spec in specs:
        meta = dict(spec.get("meta") or {})
        on_success, on_failure = meta.pop("on_success", None) or [], meta.pop("on_failure", None) or []
        out.append(
            ChildSpec(
                name=spec["name"],
                args=list(spec.get("args") or []),
                kwargs=dict(spec.get("kwargs") or {}),
                queue=spec.get("queue"),
                priority=int(spec.get("priority") or 0),
                immutable=bool(spec.get("immutable")),
                meta=meta or None,
                on_success=child_specs(on_success),
                on_failure=child_specs(on_failure),
            )  # fmt: skip
        )
    return tuple(out)


def _current_app() -> Any:
    from .app.base import get_current_app

    return get_current_app()


class Signature(dict):
    """A task with (partial) arguments and options: ``add.s(2)``, ``signature("proj.add", (2,))``."""

    def __init__(
        self,
        task: Any = None,
        args: Any = None,
        kwargs: Any = None,
        options: Any = None,
        type: Any = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Any = None,
        **ex: Any,
    ) -> None:
        if isinstance(task, dict) and not isinstance(task, Signature):  # from a dict, as Celery's
            ex = {**task.get("options", {}), **ex}
            args, kwargs, immutable = task.get("args"), task.get("kwargs"), task.get("immutable", False)
            task = task["task"]
        name = task if isinstance(task, str) or task is None else task.name
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **ex},
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self._type = None if isinstance(task, str) or task is None else task
        self._app = app or getattr(task, "app", None)

    @property
    def task(self) -> str:
        return self["task"]

    @property
    def args(self) -> tuple[Any, ...]:
        return self["args"]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def subtask_type(self) -> str | None:
        return self["subtask_type"]

    @property
    def app(self) -> Any:
        return self._app or _current_app()

    @property
    def type(self) -> Any:
        if self._type is None:
            app = self.app
            task = app.tasks.get(self.task)
            if task is None:
                app.finalize()
                task = app.tasks.get(self.task)
            if task is None:
                from .exceptions import NotRegistered

                raise NotRegistered(self.task)
            self._type = task
        return self._type

    def _merge(
        self, args: Any = None, kwargs: Any = None, options: Any = None
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        options = {**self.options, **(options or {})}
        if self.immutable:
            return self.args, dict(self.kwargs), options
        return tuple(args or ()) + self.args, {**self.kwargs, **(kwargs or {})}, options

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> Signature:
        args, kwargs, options = self._merge(args, kwargs, opts)
        return Signature(
            self._type or self.task,
            args,
            kwargs,
            options,
            subtask_type=self.subtask_type,
            immutable=self.immutable,
            app=self._app,
        )

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Any) -> Any:
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply_async(args, kwargs, **options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs, _ = self._merge(args, kwargs)
        return self.type(*args, **kwargs)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def __repr__(self) -> str:
        args = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: Any) -> Signature:
        return self.clone()


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    if isinstance(varies, Signature) and not args and not kwargs.get("args"):
        return varies.clone()
    if isinstance(varies, dict) and not isinstance(varies, Signature):
        return Signature(varies, app=kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None) -> Any:
    if d is None or isinstance(d, Signature):
        return d
    return signature(d, app=app)


def _tasks(tasks: tuple[Any, ...]) -> list[Any]:
    if len(tasks) == 1 and not isinstance(tasks[0], Signature) and isinstance(tasks[0], Iterable):
        return list(tasks[0])
    return list(tasks)


class chain(Signature):
    """``chain(a.s(), b.s(), c.s())`` or ``a.s() | b.s() | c.s()``: each result feeds the next."""

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        flat: list[Any] = []
        for task in _tasks(tasks):
            flat.extend(task.tasks if isinstance(task, chain) else [task])
        super().__init__("celery.chain", (), {}, options, subtask_type="chain", app=app)
        self.tasks: list[Any] = flat

    def __or__(self, other: Any) -> Any:
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app)
        return NotImplemented

    @property
    def app(self) -> Any:
        return self._app or (self.tasks[0].app if self.tasks else _current_app())

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> chain:
        tasks = list(self.tasks)
        if tasks and (args or kwargs):
            tasks[0] = tasks[0].clone(args, kwargs)
        return chain(*tasks, app=self._app, **{**self.options, **opts})

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return _submit(app, _normalize([self.clone(args, kwargs)]), {**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        result: Any = None
        for index, step in enumerate(_normalize([self])):
            if index == 0:
                result = step.apply(args, kwargs, **options)
            else:
                result = step.apply((result.get(),), **options)
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


class group(Signature):
    """``group(a.s(1), a.s(2))`` or ``group(a.s(i) for i in ...)``: run in parallel."""

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        super().__init__("celery.group", (), {}, options, subtask_type="group", app=app)
        self.tasks = [maybe_signature(t, app=app) for t in _tasks(tasks)]

    @property
    def app(self) -> Any:
        return self._app or (self.tasks[0].app if self.tasks else _current_app())

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Signature) and not isinstance(other, group):
            return chord(self, body=other, app=self._app)
        return chain(self, other, app=self._app)

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> group:
        return group(*[t.clone(args, kwargs) for t in self.tasks], app=self._app, **{**self.options, **opts})

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return _submit(app, [self.clone(args, kwargs)], {**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        from .result import GroupResult

        return GroupResult(str(uuid.uuid4()), [t.clone(args, kwargs).apply(**options) for t in self.tasks], app=self.app)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Any:
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"


class chord(Signature):
    """``chord(header, body)`` / ``chord(header)(body)``: ``body(list of header results)``."""

    def __init__(
        self, header: Any, body: Any = None, args: Any = None, kwargs: Any = None, app: Any = None, **options: Any
    ) -> None:
        super().__init__("celery.chord", args, kwargs, options, subtask_type="chord", app=app)
        self.header = (
            header
            if isinstance(header, group)
            else group(*_tasks((header,)) if not isinstance(header, Signature) else [header], app=app)
        )
        self.body = body

    @property
    def tasks(self) -> list[Any]:
        return self.header.tasks

    @property
    def app(self) -> Any:
        return self._app or self.header.app

    def __or__(self, other: Any) -> Any:
        return chain(self, other, app=self._app)

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> chord:
        return chord(self.header.clone(args, kwargs), self.body, app=self._app, **{**self.options, **opts})

    def __call__(self, body: Any = None, **options: Any) -> Any:
        if body is not None:
            self.body = body
        return self.apply_async(**options)

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, body: Any = None, **options: Any) -> Any:
        if body is not None:
            self.body = body
        if self.body is None:
            raise ValueError("a chord needs a body: chord(header, body) or chord(header)(body)")
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return _submit(app, [self.clone(args, kwargs)], {**self.options, **options})

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        values = self.header.apply(args, kwargs, **options).get()
        return self.body.clone((values,)).apply(**options)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


# -- turning workflows into jobs --------------------------------------------------------------------


def _normalize(steps: list[Any]) -> list[Any]:
    """Flatten chains; a group followed by another step becomes a chord (as in Celery)."""
    flat: list[Any] = []
    for step in steps:
        flat.extend(_normalize(step.tasks) if isinstance(step, chain) else [step])
    out: list[Any] = []
    index = 0
    while index < len(flat):
        step = flat[index]
        if isinstance(step, group) and index + 1 < len(flat):
            body = flat[index + 1]
            if isinstance(body, (group, chord)):
                raise NotImplementedError("a group followed by a group or chord in a chain is not supported by the runner shim")
            out.append(chord(step, body, app=step._app))
            index += 2
            continue
        out.append(step)
        index += 1
    return out


def _prefix(uid: str, template: Any) -> Any:
    if template[0] == "one":
        return ("one", [uid, *template[1]])
    return ("group", template[1], [_prefix(uid, t) for t in template[2]])


def _materialize(app: Any, template: Any, anchor: str, parent: Any = None) -> Any:
    from .result import AsyncResult, GroupResult

    if template[0] == "one":
        return AsyncResult("/".join([anchor, *template[1]]), app=app, parent=parent)
    return GroupResult(template[1], [_materialize(app, t, anchor, parent) for t in template[2]], app=app)


def _task_spec(app: Any, sig: Signature, uid: str, on_success: list[Any], errbacks: list[Any]) -> _Spec:
    task = sig.type
    job = app.job_for(task)
    options = sig.options
    celery_meta: dict[str, Any] = {"uid": uid}
    for key in ("soft_time_limit", "time_limit", "ignore_result", "headers"):
        if options.get(key) is not None:
            celery_meta[key] = options[key]
    meta: dict[str, Any] = {"celery": celery_meta}
    success = [*on_success, *callback_specs(app, options.get("link"), errback=False)]
    failure = [*errbacks, *callback_specs(app, options.get("link_error"), errback=True)]
    if success:
        meta["on_success"] = success
    if failure:
        meta["on_failure"] = failure
    queue = options.get("queue") or app._route(task.name, sig.args, sig.kwargs, options, task).get("queue") or job.queue
    priority = options.get("priority")
    return _Spec(
        name=task.name, args=list(sig.args), kwargs=dict(sig.kwargs), queue=queue,
        priority=int(job.priority if priority is None else priority), immutable=sig.immutable, meta=meta,
    )  # fmt: skip


def _specs(app: Any, steps: list[Any], errbacks: list[Any]) -> tuple[list[Any], Any]:
    """Child specs running ``steps`` after some parent job, and the template of the result."""
    first, rest = steps[0], steps[1:]
    if isinstance(first, group):
        specs, templates = [], []
        for member in first.tasks:
            member_specs, template = _specs(app, _normalize([member]), errbacks)
            specs += member_specs
            templates.append(template)
        return specs, ("group", str(uuid.uuid4()), templates)
    if isinstance(first, chord):
        header_specs, refs = [], []
        for member in first.header.tasks:
            member_specs, template = _specs(app, _normalize([member]), errbacks)
            if template[0] != "one":
                raise NotImplementedError("a group inside a chord's header is not supported by the runner shim")
            header_specs += member_specs
            refs.append(template[1])
        body_specs, body_template = _specs(app, _normalize([first.body, *rest]), errbacks)
        unlock_uid = str(uuid.uuid4())
        return [*header_specs, _unlock_spec(app, refs, body_specs, unlock_uid, immutable=True)], _prefix(
            unlock_uid, body_template
        )
    uid = str(uuid.uuid4())
    rest_specs, rest_template = _specs(app, rest, errbacks) if rest else ([], None)
    spec = _task_spec(app, first, uid, rest_specs, errbacks)
    return [spec], (_prefix(uid, rest_template) if rest else ("one", [uid]))


def _failure_variant(spec: dict[str, Any]) -> _Spec:
    """The body spec as an on_failure child of the unlock job: never run, fails with ChordError."""
    meta = dict(spec.get("meta") or {})
    meta.pop("on_success", None)
    meta["celery"] = {**meta.get("celery", {}), "chord_error": True}
    return _Spec({**spec, "immutable": True, "meta": meta})


def _unlock_spec(app: Any, refs: list[Any], body_specs: list[Any], uid: str, *, immutable: bool) -> _Spec:
    return _Spec(
        name=CHORD_UNLOCK, args=[refs], kwargs={}, queue=app.conf.task_default_queue, priority=0, immutable=immutable,
        meta={"celery": {"uid": uid}, "on_success": body_specs, "on_failure": [_failure_variant(s) for s in body_specs]},
    )  # fmt: skip


def callback_specs(app: Any, value: Any, *, errback: bool) -> list[Any]:
    """``link=``/``link_error=`` values (a signature, a list of them, or specs) as child specs."""
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else list(value)
    specs: list[Any] = []
    for item in items:
        if isinstance(item, _Spec):
            specs.append(item)
            continue
        sig = maybe_signature(item, app=app)
        if errback:
            spec = _task_spec(app, sig, str(uuid.uuid4()), [], [])
            spec["meta"]["celery"].update(errback=True, errback_immutable=sig.immutable)
            spec["immutable"] = False  # runner prepends the failed job's id; execution.py uses it
            specs.append(spec)
        else:
            specs += _specs(app, _normalize([sig]), [])[0]
    return specs


def as_signatures(app: Any, value: Any) -> list[Signature]:
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else list(value)
    return [maybe_signature(i, app=app) for i in items if not isinstance(i, _Spec)]


def _submit(app: Any, steps: list[Any], options: dict[str, Any]) -> Any:
    """Enqueue the first step now; the rest ride on it as child specs."""
    from .result import GroupResult

    options = {k: v for k, v in options.items() if k not in ("link", "link_error")}
    first, rest = steps[0], steps[1:]
    if isinstance(first, group):
        return GroupResult(str(uuid.uuid4()), [_submit(app, _normalize([m]), options) for m in first.tasks], app=app)
    if isinstance(first, chord):
        headers = [_submit(app, _normalize([m]), options) for m in first.header.tasks]
        if any(not hasattr(h, "id") or isinstance(h, GroupResult) for h in headers):
            raise NotImplementedError("a group inside a chord's header is not supported by the runner shim")
        body_specs, body_template = _specs(app, _normalize([first.body, *rest]), [])
        unlock = app.runner.jobs[CHORD_UNLOCK]
        import time

        from .producer import call_sync

        envelope = unlock.options(
            meta={"celery": {}}, queue=app.conf.task_default_queue, on_success=child_specs(body_specs),
            on_failure=child_specs([_failure_variant(s) for s in body_specs]),
        ).call([h.id for h in headers]).envelope(time.time())  # fmt: skip
        (unlock_id,) = call_sync(app.runner_app, app.enqueue_async, [envelope])
        return _materialize(app, body_template, str(unlock_id))
    return _submit_signature(app, first, rest, options)


# The template must be the one of the specs actually sent, so build both together.
def _submit_signature(app: Any, first: Signature, rest: list[Any], options: dict[str, Any]) -> Any:
    rest_specs, rest_template = _specs(app, rest, []) if rest else ([], None)
    link = [*rest_specs, *callback_specs(app, first.options.get("link"), errback=False)]
    first_options = {k: v for k, v in {**first.options, **options}.items() if k not in ("link",)}
    result = first.type.apply_async(first.args, first.kwargs, link=[_Spec(s) for s in link] or None, **first_options)
    if not rest:
        return result
    return _materialize(app, rest_template, result.id, parent=result)


# -- the chord unlock job -------------------------------------------------------------------------


def register_internal_jobs(app: Any) -> None:
    """Register ``celery.chord_unlock`` on the app's runner App."""

    async def chord_unlock(header: list[Any], interval: float = 0.25, *, runner_ctx: RunnerContext) -> list[Any]:
        from .producer import store_for
        from .result import AsyncResult

        store = await store_for(app.runner)
        ids: list[int] = []
        for ref in header:
            if isinstance(ref, list):  # relative to our parent: the job that spawned the header
                ref = "/".join([str(runner_ctx.parent_id), *ref])
            job_id = await AsyncResult(str(ref), app=app)._resolve(store)
            if job_id is None:
                raise RunnerRetry(delay=interval, reason="chord header not enqueued yet")
            ids.append(job_id)
        rows = {row.id: row for row in await store.get_many(ids)}
        for job_id in ids:
            row = rows.get(job_id)
            if row is not None and row.state in ("failed", "cancelled", "expired"):
                error = decode_json(row.error) if row.error else {}
                raise ChordError(f"Dependency {job_id} raised {error.get('type', row.state)}: {error.get('message', '')}")
        if not all(rows.get(i) is not None and rows[i].state == "succeeded" for i in ids):
            raise RunnerRetry(delay=min(1.0, interval * max(1, runner_ctx.attempt) ** 0.5), reason="chord header not finished")
        return [decode_json(rows[i].result) if rows[i].result is not None else None for i in ids]

    app.runner.job(chord_unlock, name=CHORD_UNLOCK, queue=app.conf.task_default_queue, retries=10**9 - 1, retry_on=())
