"""A Celery canvas as one native runner workflow (``runner.workflows``), enqueued in one transaction.

Every task of the canvas gets its Celery id now (the one given with ``task_id=``, or a new UUID)
and becomes one row; what waits for what is runner's: a chain step waits for the step before it
(and gets its result), a chord body waits for every header task (and gets their results, in
order), a ``link=`` callback waits for its task. Nothing polls and nothing is sent later, so a
whole canvas exists, or none of it does.

How Celery's shapes map (Celery's own rules, checked against Celery in ``tests/compat``):

* ``chain(a, b, c)``: b and c wait, each for the one before. A group followed by more steps is
  a chord whose body is the rest of the chain (``chain(g1, g2, t)`` = ``chord(g1, chord(g2, t))``,
  ``g1 | g2`` = ``chord(g1, g2)``: each task of ``g2`` gets the list of ``g1``'s results).
* ``group(...)``: the group id is ``task_id=`` or a new UUID; groups inside groups and inside a
  chord's header are flattened into it, as Celery does. A chain in a group is a member through
  its last task.
* ``chord(header, body)``: the body waits with ``on_parent_failure="run"``; when it starts and a
  header task did not succeed, the worker fails it with ``ChordError`` (``"Dependency <id> raised
  <exc>"``) before it runs, and its errbacks run, as in Celery.
* A chain step after a failed one never runs: runner ends it as ``ParentFailed``, and its result
  reports the failed step's error, as Celery marks the rest of a chain failed with it.
* ``link=`` is a chain step of its task (it gets the result), ``link_error=`` an errback
  (``on_failure``); a chain's ``link_error`` applies to every task of the chain, a group's to
  every member, a chord's to its body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import runner.compat.celery._state as _state

from ...wire import amend
from ...workflows import Chain, Chord, Group, plan
from .app.amqp import Message, Sending, publish, published
from .canvas import Signature, chain, chord, chunks, group, maybe_signature
from .exceptions import TaskIdInUse
from .producer import store_for
from .result import AsyncResult, GroupResult
from .utils import uuid

__all__ = ["Planned", "plan_canvas", "send", "send_async"]


@dataclass
class _Ctx:
    """What a canvas node inherits from where it sits."""

    parents: list[str] = field(default_factory=list)  # Celery ids of the tasks it waits for
    root: str | None = None
    task_id: str | None = None  # an id given from outside (a chain's task_id for its last step)
    group: tuple[str, int | None] | None = None  # (group id, index) when it is a group's member
    chord_body: bool = False
    callback: bool = False
    errbacks: list[Any] = field(default_factory=list)
    links: list[Any] = field(default_factory=list)
    inherit: dict[str, Any] = field(default_factory=dict)  # options given to the whole canvas
    parent_result: Any = None
    chain_rest: list[Any] | None = None
    chord_of: Any = None


@dataclass
class _Out:
    step: Any  # the native step: a Call, Group, Chain or Chord
    result: Any
    tails: list[str]  # Celery ids of its last tasks (what comes next waits for)
    root: str


@dataclass
class Planned:
    """A canvas ready to enqueue: the native workflow, its messages and its result."""

    step: Any
    messages: list[Message]
    result: Any
    results: dict[str, AsyncResult]  # by Celery id, to learn their job ids
    chosen: list[tuple[str, bool]]


_OWN = ("task_id", "link", "link_error")  # options of a canvas node that are not its tasks'


class _Builder:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.messages: list[Message] = []
        self.results: dict[str, AsyncResult] = {}
        self.chosen: list[tuple[str, bool]] = []  # (caller-chosen task id, does it wait for another task)
        request = _state.current_request()
        self.parent_job = getattr(request, "job_id", None) if request is not None and not request.is_eager else None
        self.parent_root_job = None
        if self.parent_job is not None and request.runner_ctx is not None:
            self.parent_root_job = request.runner_ctx.root_id
        self.sender = request if request is not None else None

    def add(self, sig: Any, ctx: _Ctx) -> _Out:
        sig = maybe_signature(sig, app=self.app)
        if isinstance(sig, chunks):
            sig = sig.group()
        if isinstance(sig, chain):
            return self._chain(sig, ctx)
        if isinstance(sig, chord):
            return self._chord(sig, ctx)
        if isinstance(sig, group):
            return self._group(sig, ctx)
        if isinstance(sig, Signature):
            return self._task(sig, ctx)
        raise TypeError(f"a canvas step must be a signature, chain, group or chord; got {sig!r}")

    # -- one task -------------------------------------------------------------------------------

    def _task(self, sig: Signature, ctx: _Ctx) -> _Out:
        options = {**ctx.inherit, **sig.options}
        chosen = ctx.task_id or options.get("task_id")
        task_id = chosen or uuid()
        if task_id in self.results:
            raise ValueError(f"task id {task_id!r} is given to two tasks of one canvas; a task id names one task")
        links = [*_listed(options.pop("link", None)), *ctx.links]
        errbacks = [*ctx.errbacks, *_listed(options.pop("link_error", None))]
        options.pop("task_id", None)
        parent_id = ctx.parents[0] if ctx.parents else self._sender_id()
        root = ctx.root or self._sender_root() or task_id
        successors = [self.add(link, _Ctx(parents=[task_id], root=root, callback=True)) for link in links]
        result = AsyncResult(task_id, app=self.app, task_name=sig.task, parent=ctx.parent_result)
        self.results[task_id] = result
        sending = Sending(
            task=sig.type, args=sig.args, kwargs=dict(sig.kwargs), options=options, id=task_id, root_id=root,
            parent_id=parent_id, group_id=ctx.group[0] if ctx.group else None, group_index=ctx.group[1] if ctx.group else None,
            chord_body=ctx.chord_body, callback=ctx.callback, immutable=sig.immutable,
            callbacks=[maybe_signature(link, app=self.app) for link in links], errbacks=[maybe_signature(e, app=self.app) for e in errbacks],
            chain=ctx.chain_rest, chord=ctx.chord_of,
            on_success=[s.step for s in successors] or None,
            parent_job=self.parent_job if not ctx.parents else None,
            parent_root_job=self.parent_root_job if not ctx.parents else None,
        )  # fmt: skip
        if chosen:
            self.chosen.append((task_id, bool(ctx.parents)))
        message = publish(self.app, sending)
        self.messages.append(message)
        return _Out(message.call, result, [task_id], root)

    def _sender_id(self) -> str | None:
        return self.sender.id if self.sender is not None and not self.sender.is_eager else None

    def _sender_root(self) -> str | None:
        return self.sender.root_id if self.sender is not None and not self.sender.is_eager else None

    # -- chains -----------------------------------------------------------------------------------

    def _chain(self, sig: chain, ctx: _Ctx) -> _Out:
        own, rest = _split(sig.options)
        steps = _flatten_chain(sig)
        if not steps:
            raise ValueError("chain(): give it at least one task")
        for i, step in enumerate(steps):  # a group followed by more steps is a chord (Celery's upgrade)
            if isinstance(step, group) and not isinstance(step, chord) and i < len(steps) - 1:
                tail = steps[i + 1 :]
                body = tail[0] if len(tail) == 1 else chain(*tail, app=self.app)
                steps = [*steps[:i], chord(step, body, app=self.app)]
                break
        errbacks = [*ctx.errbacks, *_listed(own.get("link_error"))]
        parents, parent_result, root = list(ctx.parents), ctx.parent_result, ctx.root
        natives: list[Any] = []
        out: _Out | None = None
        for i, step in enumerate(steps):
            first, last = i == 0, i == len(steps) - 1
            out = self.add(
                step,
                _Ctx(
                    parents=parents, root=root, task_id=(own.get("task_id") or ctx.task_id) if last else None,
                    group=ctx.group if last else None, chord_body=ctx.chord_body and first, callback=ctx.callback and first,
                    errbacks=errbacks, links=[*_listed(own.get("link")), *ctx.links] if last else [],
                    inherit={**ctx.inherit, **rest} if first else {}, parent_result=parent_result,
                    chain_rest=[dict(s) for s in reversed(steps[i + 1 :])] or None, chord_of=ctx.chord_of if first else None,
                ),
            )  # fmt: skip
            natives.append(out.step)
            parents, parent_result, root = out.tails, out.result, root or out.root
        assert out is not None
        assert root is not None
        return _Out(Chain(tuple(natives)), out.result, out.tails, root)

    # -- groups -----------------------------------------------------------------------------------

    def _group(self, sig: group, ctx: _Ctx) -> _Out:
        own, rest = _split(sig.options)
        if own.get("link") is not None:
            raise TypeError("Cannot add link to group: use a chord")
        gid = ctx.task_id or own.get("task_id") or uuid()
        members = _flatten_group(sig)
        if not members:
            raise ValueError("group(): give it at least one task")
        errbacks = [*ctx.errbacks, *_listed(own.get("link_error"))]
        outs = [
            self.add(
                member,
                _Ctx(
                    parents=list(ctx.parents),
                    root=ctx.root,
                    group=(gid, index),
                    chord_body=ctx.chord_body,
                    errbacks=errbacks,
                    inherit={**ctx.inherit, **rest},
                    parent_result=ctx.parent_result,
                    callback=ctx.callback,
                    chord_of=ctx.chord_of,
                ),
            )  # fmt: skip
            for index, member in enumerate(members)
        ]
        result = GroupResult(gid, [o.result for o in outs], parent=ctx.parent_result, app=self.app)
        result._native = True
        return _Out(Group(tuple(o.step for o in outs), group_id=gid), result, [t for o in outs for t in o.tails], outs[0].root)

    # -- chords -----------------------------------------------------------------------------------

    def _chord(self, sig: chord, ctx: _Ctx) -> _Out:
        own, rest = _split(sig.options)
        body = maybe_signature(sig.body, app=self.app)
        if body is None:
            raise ValueError("a chord needs a body: chord(header, body) or chord(header)(body)")
        header = sig.header
        gid = header.options.get("task_id") or own.get("task_id") or ctx.task_id or uuid()
        header_sig = group(*header.tasks, app=self.app, **{**header.options, "task_id": gid})
        head = self._group(
            header_sig,
            _Ctx(parents=list(ctx.parents), root=ctx.root, chord_body=ctx.chord_body, inherit={**ctx.inherit, **rest},
                 parent_result=ctx.parent_result, callback=ctx.callback, chord_of=body),
        )  # fmt: skip
        tail = self.add(
            body,
            _Ctx(  # Celery's body carries the header's group id (no index), unless it is a group member itself
                parents=head.tails, root=head.root, task_id=own.get("task_id") or ctx.task_id, group=ctx.group or (gid, None),
                chord_body=True, errbacks=[*ctx.errbacks, *_listed(own.get("link_error"))],
                links=[*_listed(own.get("link")), *ctx.links], parent_result=head.result,
            ),
        )  # fmt: skip
        return _Out(Chord(head.step, tail.step, on_member_failure="run"), tail.result, tail.tails, head.root)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A canvas node's own options (its id, links) and the rest (given to its tasks)."""
    return {k: v for k, v in options.items() if k in _OWN}, {k: v for k, v in options.items() if k not in _OWN}


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


def _flatten_chain(sig: chain) -> list[Any]:
    steps: list[Any] = []
    for step in sig.tasks:
        step = maybe_signature(step, app=sig._app)
        if isinstance(step, chain) and not set(step.options) & set(_OWN):
            steps.extend(_flatten_chain(step))
        else:
            steps.append(step)
    return steps


def _flatten_group(sig: group) -> list[Any]:
    """Groups directly inside a group (or a chord header) are members of it, as in Celery."""
    members: list[Any] = []
    for member in sig.tasks:
        member = maybe_signature(member, app=sig._app)
        if isinstance(member, chunks):
            member = member.group()
        if isinstance(member, group) and not isinstance(member, chord) and not member.options.get("link_error"):
            members.extend(_flatten_group(member))
        else:
            members.append(member)
    return members


# -- sending -----------------------------------------------------------------------------------


def plan_canvas(app: Any, sig: Any, options: dict[str, Any]) -> Planned:
    """The native workflow for ``sig`` sent with ``apply_async`` ``options``; sends
    ``before_task_publish`` for every task of it."""
    sig = maybe_signature(sig, app=app)
    options = dict(options)
    top = _Ctx(
        task_id=options.pop("task_id", None), errbacks=_listed(options.pop("link_error", None)),
        links=_listed(options.pop("link", None)), inherit=options,
    )  # fmt: skip
    builder = _Builder(app)
    out = builder.add(sig, top)
    return Planned(out.step, builder.messages, out.result, builder.results, builder.chosen)


def _envelopes(planned: Planned, now: float) -> tuple[list[Any], list[str]]:
    """The rows of a planned canvas, and the Celery id of each. A step after another in a chain
    ends ``failed`` (``ParentFailed``) when the step before it does not succeed, so its result
    can report that step's error; a ``link=`` callback is cancelled instead (Celery never sends it)."""
    built, _tails = plan(planned.step, now)
    envelopes, ids = [], []
    for env, call in zip(built.envelopes, built.calls):
        celery = (call.options.meta or {}).get("celery") or {}
        if env.on_parent_failure == "cancel" and not celery.get("callback"):
            env = amend(env, on_parent_failure="fail")
        envelopes.append(env)
        ids.append(str(celery.get("id")))
    return envelopes, ids


async def _unfinished_with_chosen_ids(app: Any, planned: Planned) -> int | None:
    """A chosen task id is the job's idempotency key, and only queued or running jobs hold a key
    (the database's unique index): a step that waits would take its key only when released,
    after a second job had been given the same id. So a waiting step may not reuse the id of
    an unfinished task, and one task sent with the id of a waiting step is that step (its job
    id is returned), as a queued or running one is. UUIDs the shim makes up never collide."""
    if not planned.chosen:
        return None
    store = await store_for(app.runner)
    single = len(planned.results) == 1
    for task_id, waits in planned.chosen:
        row = await store.get_by_key(task_id)
        if row is None or row.state not in ("waiting", "queued", "running"):
            continue
        if single and not waits and row.state == "waiting":
            return int(row.id)
        if waits or row.state == "waiting":
            raise TaskIdInUse(
                f"task id {task_id!r} is already the id of job {row.id} ({row.name}, {row.state}): a task id names one "
                "unfinished task; send this canvas once, or give its tasks new ids"
            )
    return None


async def send_async(app: Any, sig: Any, options: dict[str, Any]) -> Any:
    """Enqueue ``sig`` (a task signature or any canvas) in one transaction; its result."""
    planned = plan_canvas(app, sig, options)
    existing = await _unfinished_with_chosen_ids(app, planned)
    if existing is not None:  # the one task is already there, waiting: it is this send
        planned.result._job_id = existing
        return planned.result
    envelopes, ids = _envelopes(planned, time.time())
    job_ids = await app.enqueue_async(envelopes)
    for task_id, job_id in zip(ids, job_ids):
        result = planned.results.get(task_id)
        if result is not None:
            result._job_id = job_id
    published(planned.messages)
    return planned.result


def send(app: Any, sig: Any, options: dict[str, Any]) -> Any:
    """``send_async`` from sync code, wherever it runs (see producer.py)."""
    return app.call_sync(send_async, app, sig, options)
