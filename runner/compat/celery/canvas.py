"""Celery's canvas: ``signature``/``s``/``si``, ``chain`` (``|``), ``group``, ``chord``, ``chunks``,
``xmap``/``xstarmap`` (``task.map``/``task.starmap``), as Celery builds them.

These are data, as in Celery: a signature is a dict (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``) that survives JSON, so a canvas can be passed to a task and
rebuilt there with ``signature(d)``. Sending one (``apply_async``, ``delay``, calling a chain or
a group) hands the whole canvas to its app, which enqueues it as one native runner workflow in
one transaction (``workflow.py``); ``apply()`` and ``task_always_eager`` run it here, now.

``task_id=`` is honoured everywhere: on a signature (``.set(task_id=...)``, ``signature(...,
task_id=...)``, ``freeze()``) it is the task's id; on a group it is the group's id; on a chain it
is the id of its last task; on a chord, of its body.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from . import _state
from .exceptions import NotRegistered
from .result import AsyncResult, GroupResult
from .utils import uuid

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]


def _repr_call(name: str, args: Any, kwargs: Any) -> str:
    parts = [*(repr(a) for a in args or ()), *(f"{k}={v!r}" for k, v in (kwargs or {}).items())]
    return f"{name}({', '.join(parts)})"


class Signature(dict):
    """A task with (partial) arguments and options: ``add.s(2)``, ``signature("proj.add", (2,))``."""

    TYPES: dict[str, type[Signature]] = {}

    @classmethod
    def register_type(cls, name: str | None = None) -> Any:
        def register(subclass: type[Signature]) -> type[Signature]:
            cls.TYPES[name or subclass.__name__] = subclass
            return subclass

        return register

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        kind = d.get("subtask_type")
        if kind:
            target = cls.TYPES.get(kind)
            if target is None:
                raise ValueError(f"signature of unknown subtask_type {kind!r}; known: {', '.join(sorted(cls.TYPES))}")
            return target.from_dict(d, app=app)
        return Signature(d, app=app)

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
            ex = {**(task.get("options") or {}), **ex}
            args, kwargs = task.get("args"), task.get("kwargs")
            immutable, subtask_type = task.get("immutable", False), task.get("subtask_type")
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
        self._type = type if type is not None else (None if isinstance(task, str) or task is None else task)
        self._app = app or getattr(task, "app", None)

    # -- fields -----------------------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self["task"]

    @property
    def name(self) -> str:
        return self["task"]

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @args.setter
    def args(self, value: Any) -> None:
        self["args"] = tuple(value or ())

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]

    @kwargs.setter
    def kwargs(self, value: Any) -> None:
        self["kwargs"] = dict(value or {})

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]

    @options.setter
    def options(self, value: Any) -> None:
        self["options"] = dict(value or {})

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def subtask_type(self) -> str | None:
        return self["subtask_type"]

    @property
    def id(self) -> str | None:
        """The task id given (``task_id=``) or assigned (``freeze()``); None until then."""
        return self.options.get("task_id")

    @id.setter
    def id(self, value: str | None) -> None:
        self.options["task_id"] = value

    @property
    def app(self) -> Any:
        return self._app or _state.get_current_app()

    @property
    def type(self) -> Any:
        if self._type is None:
            app = self.app
            task = app.tasks.get(self.task)
            if task is None:
                app.finalize()
                task = app.tasks.get(self.task)
            if task is None:
                raise NotRegistered(self.task)
            self._type = task
        return self._type

    # -- building -----------------------------------------------------------------------------

    def _merge(
        self, args: Any = None, kwargs: Any = None, options: Any = None
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        options = {**self.options, **(options or {})}
        if self.immutable:
            return self.args, dict(self.kwargs), options
        return tuple(args or ()) + self.args, {**self.kwargs, **(kwargs or {})}, options

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> Signature:
        args, kwargs, options = self._merge(args, kwargs, opts)
        made = type(self).__new__(type(self))
        dict.__init__(made, self)
        made.__dict__.update(self.__dict__)
        made["args"], made["kwargs"], made["options"] = args, kwargs, copy.deepcopy(options)
        return made

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Any) -> Any:
        """Run ``callback`` with this task's result when it succeeds; returns ``callback``."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        """Run ``errback`` when this task fails for good; returns ``errback``."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Any) -> Signature:
        """``link_error`` that returns this signature, for chaining."""
        self.link_error(errback)
        return self

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None) -> Any:  # fmt: skip
        """Give this signature its task id now (``_id``, the one it has, or a new one) and return
        the result it will have."""
        task_id = _id or self.options.get("task_id") or uuid()
        self.options["task_id"] = task_id
        if group_id:
            self.options["group_id"] = group_id
        if group_index is not None:
            self.options["group_index"] = group_index
        return AsyncResult(task_id, app=self._app, task_name=self.task)

    # -- sending --------------------------------------------------------------------------------

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
        return _repr_call(self.task, self.args, self.kwargs)

    def __deepcopy__(self, memo: Any) -> Signature:
        return self.clone()

    def __reduce__(self) -> Any:
        return signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)


class chain(Signature):
    """``chain(a.s(), b.s(), c.s())`` or ``a.s() | b.s() | c.s()``: each result feeds the next.
    A group followed by another step is a chord (as Celery upgrades it)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        tasks = [maybe_signature(t, app=app) for t in (d.get("kwargs") or {}).get("tasks") or ()]
        return chain(*tasks, app=app, **(d.get("options") or {}))

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        flat: list[Any] = []
        for task in _unpack(tasks):
            task = maybe_signature(task, app=app)
            flat.extend(task.tasks if isinstance(task, chain) and not task.options else [task])
        super().__init__("celery.chain", (), {"tasks": flat}, options, subtask_type="chain", app=app)

    @property
    def tasks(self) -> list[Any]:
        return self["kwargs"]["tasks"]

    @property
    def app(self) -> Any:
        return self._app or (self.tasks[0].app if self.tasks else _state.get_current_app())

    def __or__(self, other: Any) -> Any:
        if isinstance(other, chain) and not other.options:
            return chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        return NotImplemented

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> chain:
        tasks = [t.clone() for t in self.tasks]
        if tasks and (args or kwargs):
            tasks[0] = tasks[0].clone(args, kwargs)
        return chain(*tasks, app=self._app, **copy.deepcopy({**self.options, **opts}))

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None) -> Any:  # fmt: skip
        """Give every task its id now; returns the last one's result (``.parent`` the one before)."""
        result: Any = None
        for index, task in enumerate(self.tasks):
            last = index == len(self.tasks) - 1
            frozen = task.freeze(_id or self.options.get("task_id")) if last else task.freeze()
            if result is not None and frozen is not None:
                _set_parent(frozen, result)
            result = frozen
        return result

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return app.send_canvas(self.clone(args, kwargs), options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        result: Any = None
        for index, step in enumerate(self.tasks):
            if index == 0:
                result = step.apply(args, kwargs, **options)
            else:
                result = step.apply((result.get(),))
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) if self.tasks else "chain()"


Signature.register_type("chain")(chain)


class group(Signature):
    """``group(a.s(1), a.s(2))`` or ``group(a.s(i) for i in ...)``: run in parallel. A group
    inside a group is flattened into it, as Celery does."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        tasks = [maybe_signature(t, app=app) for t in (d.get("kwargs") or {}).get("tasks") or ()]
        return group(*tasks, app=app, **(d.get("options") or {}))

    def __init__(self, *tasks: Any, app: Any = None, **options: Any) -> None:
        members = [maybe_signature(t, app=app) for t in _unpack(tasks)]
        super().__init__("celery.group", (), {"tasks": members}, options, subtask_type="group", app=app)

    @property
    def tasks(self) -> list[Any]:
        return self["kwargs"]["tasks"]

    @property
    def app(self) -> Any:
        return self._app or (self.tasks[0].app if self.tasks else _state.get_current_app())

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Signature):  # group | task and group | group: a chord
            return chord(self, body=other, app=self._app)
        return NotImplemented

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> group:
        return group(*[t.clone(args, kwargs) for t in self.tasks], app=self._app, **copy.deepcopy({**self.options, **opts}))

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None) -> Any:  # fmt: skip
        gid = _id or group_id or self.options.get("task_id") or uuid()
        self.options["task_id"] = gid
        results = [t.freeze(group_id=gid, group_index=i) for i, t in enumerate(self.tasks)]
        return GroupResult(gid, results, app=self._app)

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        if options.get("link") is not None:
            raise TypeError("Cannot add link to group: use a chord")
        return app.send_canvas(self.clone(args, kwargs), options)

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        return self.apply_async(partial_args, **options)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        gid = options.pop("task_id", None) or self.options.get("task_id") or uuid()
        results: list[Any] = []
        for member in self.tasks:
            made = member.clone(args, kwargs).apply(**options)
            results.extend(made.results if isinstance(member, group) else [made])
        return GroupResult(gid, results, app=self.app)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Any]:  # Celery iterates a group's tasks
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"


Signature.register_type("group")(group)


class chord(Signature):
    """``chord(header, body)`` / ``chord(header)(body)``: ``body(list of header results)``. If a
    header task fails, the body does not run: it fails with ``ChordError`` and its errbacks run."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        kwargs = d.get("kwargs") or {}
        header = maybe_signature(kwargs.get("header"), app=app)
        body = maybe_signature(kwargs.get("body"), app=app)
        return chord(header, body, app=app, **(d.get("options") or {}))

    def __init__(
        self, header: Any, body: Any = None, task_id: str | None = None, args: Any = None, kwargs: Any = None,
        app: Any = None, **options: Any,
    ) -> None:  # fmt: skip
        if task_id is not None:
            options["task_id"] = task_id
        header = maybe_signature(header, app=app)
        if not isinstance(header, group):
            header = group(*(_unpack((header,)) if not isinstance(header, Signature) else [header]), app=app)
        super().__init__("celery.chord", args, {"header": header, "body": maybe_signature(body, app=app)}, options,
                         subtask_type="chord", app=app)  # fmt: skip

    @property
    def header(self) -> group:
        return self["kwargs"]["header"]

    @property
    def body(self) -> Any:
        return self["kwargs"]["body"]

    @body.setter
    def body(self, value: Any) -> None:
        self["kwargs"]["body"] = maybe_signature(value, app=self._app)

    @property
    def tasks(self) -> list[Any]:
        return self.header.tasks

    @property
    def app(self) -> Any:
        return self._app or self.header.app

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> chord:
        body = self.body.clone() if self.body is not None else None
        return chord(self.header.clone(args, kwargs), body, app=self._app, **copy.deepcopy({**self.options, **opts}))

    def link(self, callback: Any) -> Any:
        return self.body.link(callback)

    def link_error(self, errback: Any) -> Any:
        return self.body.link_error(errback)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None) -> Any:  # fmt: skip
        header = self.header.freeze(self.header.options.get("task_id") or self.options.get("task_id"))
        result = self.body.freeze(_id or self.options.get("task_id"))
        _set_parent(result, header)
        return result

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async(body=body, **options)

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, body: Any = None, **options: Any) -> Any:
        made = self.clone(args, kwargs)
        if body is not None:
            made.body = body
        if made.body is None:
            raise ValueError("a chord needs a body: chord(header, body) or chord(header)(body)")
        app = self.app
        if app.conf.task_always_eager:
            return made.apply(**options)
        return app.send_canvas(made, options)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        header = self.header.apply(args, kwargs, **options)
        return self.body.clone((header.get(),)).apply()

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


Signature.register_type("chord")(chord)


class _basemap(Signature):
    """``task.map(it)`` / ``task.starmap(it)``: one task that calls ``task`` for each item, in the
    worker, and returns the list of results (Celery's ``celery.map`` / ``celery.starmap``)."""

    _task_name = "celery.map"

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        kwargs = d.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or [], app=app, **(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], app: Any = None, **options: Any) -> None:
        task = maybe_signature(task, app=app)
        super().__init__(self._task_name, (), {"task": task, "it": list(it)}, options, immutable=True,
                         subtask_type=self._subtask_type, app=app or getattr(task, "_app", None))  # fmt: skip

    _subtask_type = "xmap"

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        task, it = self.kwargs["task"], self.kwargs["it"]
        return self.type.apply_async((), {"task": dict(task), "it": list(it)}, **{**self.options, **options})

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        task, it = self.kwargs["task"], self.kwargs["it"]
        return self.type.apply((), {"task": dict(task), "it": list(it)}, **{**self.options, **options})

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].task}(x) for x in {repr(self.kwargs['it'])[:100]}]"


@Signature.register_type("xmap")
class xmap(_basemap):
    _task_name = "celery.map"
    _subtask_type = "xmap"


@Signature.register_type("xstarmap")
class xstarmap(_basemap):
    _task_name = "celery.starmap"
    _subtask_type = "xstarmap"

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].task}(*x) for x in {repr(self.kwargs['it'])[:100]}]"


@Signature.register_type("chunks")
class chunks(Signature):
    """``task.chunks(it, n)``: the items of ``it`` in chunks of ``n``, one ``starmap`` task per
    chunk, run as a group (its result: one list of results per chunk)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], app: Any = None) -> Signature:
        kwargs = d.get("kwargs") or {}
        return chunks(kwargs["task"], kwargs.get("it") or [], kwargs["n"], app=app, **(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Any = None, **options: Any) -> None:
        task = maybe_signature(task, app=app)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks(n={n!r}): accepted: an int of at least 1")
        super().__init__("celery.chunks", (), {"task": task, "it": list(it), "n": n}, options, immutable=True,
                         subtask_type="chunks", app=app or getattr(task, "_app", None))  # fmt: skip

    def group(self) -> group:
        task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [list(p) for p in _split(it, n)]
        return group((xstarmap(task, part, app=self._app) for part in parts), app=self._app, **self.options)

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        return self.group().apply_async((), **options)

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return self.group().apply(**options)

    def __repr__(self) -> str:
        return f"{self.kwargs['task'].task}.chunks({len(self.kwargs['it'])}, {self.kwargs['n']})"


def _split(it: list[Any], n: int) -> Iterator[list[Any]]:
    items = iter(it)
    while part := list(itertools.islice(items, n)):
        yield part


def _unpack(tasks: tuple[Any, ...]) -> list[Any]:
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
        return list(tasks[0])
    return list(tasks)


def _set_parent(result: Any, parent: Any) -> None:
    """The root of ``result``'s parent chain gets ``parent`` as its parent."""
    node = result
    while getattr(node, "parent", None) is not None:
        node = node.parent
    node.parent = parent


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A signature from a task, a task name, or a dict (a serialized signature of any kind)."""
    app = kwargs.get("app")
    if isinstance(varies, Signature):
        if not args and not kwargs.get("args") and set(kwargs) <= {"app"}:
            return varies.clone()
        return Signature(varies.task, *args, **kwargs)
    if isinstance(varies, dict):
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None, clone: bool = False) -> Any:
    if d is None:
        return None
    if isinstance(d, Signature):
        if app is not None and d._app is None:
            d._app = app
        return d.clone() if clone else d
    if isinstance(d, dict):
        return Signature.from_dict(d, app=app)
    return d


def as_signatures(app: Any, value: Any) -> list[Signature]:
    """A ``link``/``link_error`` value (one signature, a dict, or a list of them) as a list."""
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else list(value)
    return [maybe_signature(i, app=app) for i in items]
