"""Workflows in the database: groups, chains, chords and any DAG, on one mechanism.

A step that must wait is a row in state ``waiting`` with an edge (``runner_deps``) to each job it
waits for, and ``waiting_for`` = the number of those not finished yet. The transaction that
finishes a parent -- the job's own, for exactly-once jobs -- decrements its dependants, and the
one that brings a dependant to zero moves it to ``queued``: a chord's callback runs exactly once,
whichever hosts finish its members and however many workers are killed in between, because each
member finishes exactly once. A parent that fails (or is cancelled, or expires) ends its
dependants by their ``on_parent_failure``: ``"fail"`` (the default), ``"cancel"``, or ``"run"``
(treat it as finished: a chord whose callback wants every result, failed ones as None).

* ``chain(a, b, c)``: b waits for a and gets a's result prepended to its arguments; c waits for b.
* ``group(a, b, c)``: run in parallel; one handle for all (``wait`` returns results in order).
* ``chord(group(...), callback)``: the callback waits for every member and gets the list of
  their results, in order, prepended.
* ``job.options(depends_on=[h1, h2]).defer(...)``: any DAG; ``with_results=True`` prepends the
  list of the parents' results.

Steps nest (a chain of groups is a chord, a group of chains runs chains in parallel). A whole
workflow is enqueued in one transaction: every row exists, or none does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ArgumentsError
from .wire import amend

if TYPE_CHECKING:
    from .client import GroupHandle, JobHandle

__all__ = ["Chain", "Chord", "Group", "Step", "chain", "chord", "group", "plan"]

PARENT_FAILURE = ("fail", "cancel", "run")


class _Defers:
    """``workflow.defer()`` / ``await workflow.defer_async()``: enqueue every step, in one
    transaction; returns the handle of the workflow's output (see ``App.defer_workflow``)."""

    def _app(self) -> Any:
        for call in _calls(self):
            return call.job.app
        raise ArgumentsError("an empty workflow has no job to enqueue")

    def defer(self) -> JobHandle | GroupHandle:
        return self._app().defer_workflow(self)

    async def defer_async(self, *, session: Any = None) -> JobHandle | GroupHandle:
        return await self._app().defer_workflow_async(self, session=session)


def _calls(step: Any) -> Iterable[Any]:
    if isinstance(step, (Group, Chain)):
        for inner in step.steps:
            yield from _calls(inner)
    elif isinstance(step, Chord):
        yield from _calls(step.header)
        yield from _calls(step.body)
    else:
        yield step


@dataclass(frozen=True)
class Group(_Defers):
    """Steps that run in parallel."""

    steps: tuple[Any, ...]
    group_id: str | None = None  # None: a fresh one; Celery's shim passes its own

    def __post_init__(self) -> None:
        if not self.steps:
            raise ArgumentsError("group(): give it at least one step")


@dataclass(frozen=True)
class Chain(_Defers):
    """Steps that run one after the other, each getting the previous one's result."""

    steps: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ArgumentsError("chain(): give it at least one step")


@dataclass(frozen=True)
class Chord(_Defers):
    """A group, then a callback that gets the list of the group's results."""

    header: Group
    body: Any
    on_member_failure: str = "fail"

    def __post_init__(self) -> None:
        if self.on_member_failure not in PARENT_FAILURE:
            raise ArgumentsError(f"chord(on_member_failure={self.on_member_failure!r}): accepted: {', '.join(PARENT_FAILURE)}")


Step = Any  # a Call, a Group, a Chain or a Chord


def group(*steps: Step | Iterable[Step], group_id: str | None = None) -> Group:
    return Group(_flat(steps), group_id)


def chain(*steps: Step | Iterable[Step]) -> Chain:
    return Chain(_flat(steps))


def chord(header: Group | Iterable[Step], body: Step, *, on_member_failure: str = "fail") -> Chord:
    return Chord(header if isinstance(header, Group) else group(header), body, on_member_failure)


def _flat(steps: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(steps) == 1 and not _is_step(steps[0]) and isinstance(steps[0], Iterable):
        return tuple(steps[0])
    return steps


def _is_step(value: Any) -> bool:
    return isinstance(value, (Group, Chain, Chord)) or _is_call(value)


def _is_call(value: Any) -> bool:
    """A ``job.call(...)`` (duck-typed: this module sits below app.py and never imports it)."""
    return hasattr(value, "envelope") and hasattr(value, "job") and hasattr(value, "options")


# --- planning: steps -> envelopes with edges inside one enqueue ---------------------------------


@dataclass
class Plan:
    """The envelopes of one workflow, in an order where every parent comes before its dependants,
    and which of them are the workflow's outputs (its last steps)."""

    envelopes: list[Any] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)  # the Call behind each envelope
    group_members: dict[str, list[int]] = field(default_factory=dict)


def plan(step: Step, now: float) -> tuple[Plan, list[int]]:
    """Envelopes for ``step``; returns the plan and the positions of its outputs."""
    built = Plan()
    tails = _add(built, step, parents=[], mode=None, failure="fail", now=now)
    return built, tails


def _add(built: Plan, step: Step, *, parents: list[int], mode: str | None, failure: str, now: float) -> list[int]:
    """Add ``step`` after ``parents`` (positions); ``mode``: how it gets their results."""
    if _is_call(step):
        return [_add_call(built, step, parents, mode, failure, now)]
    if isinstance(step, Chain):
        tails = parents
        for i, inner in enumerate(step.steps):
            inner_mode = mode if i == 0 else ("one" if len(tails) == 1 else "list")
            # A later step whose predecessor failed never runs: it is cancelled, as Celery's
            # chain never sends it.
            tails = _add(built, inner, parents=tails, mode=inner_mode, failure=failure if i == 0 else "cancel", now=now)
        return tails
    if isinstance(step, Group):
        gid = step.group_id or uuid.uuid4().hex
        out: list[int] = []
        for inner in step.steps:
            start = len(built.envelopes)
            out += _add(built, inner, parents=parents, mode=mode, failure=failure, now=now)
            built.group_members.setdefault(gid, []).extend(range(start, len(built.envelopes)))
        for index in built.group_members[gid]:
            if built.envelopes[index].group_id is None:
                built.envelopes[index] = amend(built.envelopes[index], group_id=gid)
        return out
    if isinstance(step, Chord):
        members = _add(built, step.header, parents=parents, mode=mode, failure=failure, now=now)
        return _add(built, step.body, parents=members, mode="list", failure=step.on_member_failure, now=now)
    raise ArgumentsError(f"a workflow step must be job.call(...), group(...), chain(...) or chord(...); got {step!r}")


def _add_call(built: Plan, call: Any, parents: list[int], mode: str | None, failure: str, now: float) -> int:
    gets_results = bool(parents) and mode is not None and not call.options.immutable
    # Its arguments are checked when it runs, once the parents' results are prepended to them.
    env = call.envelope(now, check_arguments=not gets_results)
    if parents:
        env = amend(
            env, after_batch=tuple(parents), on_parent_failure=call.options.on_parent_failure or failure,
            with_results=mode if gets_results else None,
        )  # fmt: skip
    built.envelopes.append(env)
    built.calls.append(call)
    here = len(built.envelopes) - 1
    for child in _successors(call):  # options(on_success=...): a chain step after this call
        _add(built, child, parents=[here], mode="one", failure="cancel", now=now)
    return here


def _successors(call: Any) -> tuple[Any, ...]:
    value = call.options.on_success
    if value is None:
        return ()
    return (value,) if _is_step(value) else tuple(value)


def check_parent_failure(value: Any) -> str:
    if value not in PARENT_FAILURE:
        raise ArgumentsError(f"option on_parent_failure={value!r} is not valid; accepted: {', '.join(map(repr, PARENT_FAILURE))}")
    return str(value)


def ids_of(values: Sequence[Any]) -> tuple[int, ...]:
    """``depends_on=[handle, 42, ...]`` as job ids."""
    ids = []
    for value in values:
        job_id = getattr(value, "id", value)
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise ArgumentsError(f"option depends_on: {value!r} is not a job; accepted: JobHandles or job ids (ints)")
        ids.append(job_id)
    return tuple(ids)
