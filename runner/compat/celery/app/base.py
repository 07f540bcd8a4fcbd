"""``Celery``: the application object, backed by an internal runner ``App``.

Every Celery task becomes one runner job (``JobDef``) of the same name on ``app.runner``; the
``runner_app`` attribute (what ``runner serve -A proj`` looks for) finalizes the app first:
sends ``on_after_configure``, imports ``include``/``imports``/autodiscovered modules, registers
shared tasks, sends ``on_after_finalize``, applies ``beat_schedule`` and ``add_periodic_task``
entries as runner periodic entries, and turns worker settings into ``runner serve`` defaults.
The runner job for a task is an ``async def`` wrapper (``execution.make_entry``) that runs the
Celery body -- async on the worker's loop, sync in its thread pool -- with Celery's request,
hooks, signals, retries and limits around it. Sending (a task or any canvas) is
``workflow.py``: one native runner workflow, in one transaction.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import runner.compat.celery._state as _state
import runner.compat.celery.signals as signals

from ....app import App, WorkerInfo
from ....limits import RateLimit, parse_rate
from ....wire import Envelope, decode_json
from ..canvas import Signature, signature
from ..exceptions import ImproperlyConfigured, NotRegistered
from ..execution import apply_eager, make_entry, send_async
from ..producer import call_sync, store_for
from ..result import AsyncResult, GroupResult, result_from_tuple
from ..schedules import to_runner
from ..workflow import send as send_canvas
from ..workflow import send_async as send_canvas_async
from .amqp import queue_name
from .builtins import add_builtins
from .config import Settings, broker_url, check_serializer
from .task import Task

__all__ = ["Celery", "current_app", "get_current_app", "shared_task"]

log = logging.getLogger("runner.compat.celery")

# Celery's default max_retries is 3 and None means "forever": the shim, not runner, decides
# when retries are exhausted, so the runner job itself may run (almost) without limit.
UNLIMITED_ATTEMPTS = 1_000_000_000
SAVE_GROUP = "celery.save_group"  # the job that keeps a hand-built GroupResult for restore()

get_current_app = _state.get_current_app
current_app = _state.current_app


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task`` (bare or with options): a task usable by any app, registered on every
    app (existing and future). Calling it uses the current app."""

    def create(fun: Callable[..., Any]) -> Task:
        with _state.lock:
            _state.shared_tasks.append((fun, options))
            task = None
            for app in _state.all_apps:
                task = app._task_from_fun(fun, **options)
            if task is None:
                task = _state.get_current_app()._task_from_fun(fun, **options)
        return task

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create


def celery_rate(spec: Any) -> Any:
    """Celery's ``rate_limit`` ("10/s", "100/m", "5/h", or a number per second) as runner's
    RateLimit for the task, enforced across every worker and host (Celery's is per worker).
    Celery spaces starts evenly (a token bucket), so "10/s" becomes one start per 0.1 s window."""
    if spec in (None, "", 0):
        return None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        per_second = float(spec)
        return RateLimit((1, 1.0 / per_second)) if per_second > 0 else None
    number, _, unit = str(spec).partition("/")
    starts, period = parse_rate(f"{number.strip()}/{unit.strip() or 's'}")
    return RateLimit((1, period / starts))


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class _DeclaredQueue:
    """A ``task_queues`` entry given as a name or a dict (Celery's old ``CELERY_QUEUES`` form)."""

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.name = name
        self.routing_key = str(options.get("routing_key") or options.get("binding_key") or "")
        exchange = options.get("exchange")
        self.exchange_name = exchange if isinstance(exchange, str) else getattr(exchange, "name", "") or ""

    def routing_keys(self) -> list[str]:
        return [self.routing_key] if self.routing_key else []

    def exchange_names(self) -> list[str]:
        return [self.exchange_name] if self.exchange_name else []


class CeleryRunnerApp(App):
    """The runner App behind a Celery app: it also serves every queue of ``task_queues``, as a
    Celery worker consumes them all by default."""

    celery: Celery

    def queues(self) -> tuple[str, ...]:
        named = super().queues()
        declared = [q.name for q in self.celery.declared_queues() if q.name not in named]
        return (*named, *declared)


class Celery:
    """``Celery(main, broker=..., backend=..., include=[...])``."""

    def __init__(
        self,
        main: str | None = None,
        loader: Any = None,
        backend: str | None = None,
        amqp: Any = None,
        events: Any = None,
        log: Any = None,
        control: Any = None,
        set_as_current: bool = True,
        tasks: Any = None,
        broker: str | None = None,
        include: Any = None,
        changes: Any = None,
        config_source: Any = None,
        fixups: Any = None,
        task_cls: Any = None,
        autofinalize: bool = True,
        namespace: str | None = None,
        strict_typing: bool = True,
        **kwargs: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        self._constructor_broker = broker
        if backend:
            self.conf["result_backend"] = backend
        for key, value in kwargs.items():
            self.conf[key] = value
        if config_source is not None:
            self.conf.from_object(config_source, namespace=namespace)
        self.namespace = namespace
        self.include = list(include or [])
        self.tasks: dict[str, Task] = {}
        self.runner = CeleryRunnerApp(main or "celery")
        self.runner.celery = self
        self.runner.lifespan(self._worker_lifespan)
        self._finalized = False
        self._configured = False
        self._autodiscover: list[tuple[Any, str]] = []
        self._pending_periodic: list[tuple[str, dict[str, Any]]] = []
        self._applied_broker: str | None = None
        self.worker_info: WorkerInfo | None = None
        # The app's own signals, as Celery's: sent with sender=app.
        self.on_configure = signals.Signal("app.on_configure")
        self.on_after_configure = signals.Signal("app.on_after_configure")
        self.on_after_finalize = signals.Signal("app.on_after_finalize")
        self.on_after_fork = signals.Signal("app.on_after_fork")
        base = task_cls if isinstance(task_cls, type) else Task
        self.Task: type[Task] = type("Task", (base,), {"app": self, "__module__": base.__module__, "abstract": True})
        add_builtins(self)
        with _state.lock:
            _state.register_app(self, set_as_current=set_as_current)
            for fun, options in _state.shared_tasks:
                self._task_from_fun(fun, **options)

    def __repr__(self) -> str:
        return f"<Celery {self.main} tasks={len(self.tasks)}>"

    # -- configuration ----------------------------------------------------------------------

    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False, namespace: str | None = None) -> None:
        try:
            self.conf.from_object(obj, namespace=namespace)
        except ImportError:
            if not silent:
                raise
        self.namespace = namespace or self.namespace

    def config_from_envvar(self, variable_name: str, silent: bool = False, force: bool = False) -> None:
        module = os.environ.get(variable_name)
        if not module:
            if silent:
                return
            raise ImproperlyConfigured(f"the environment variable {variable_name!r} is not set")
        self.config_from_object(module, silent=silent)

    @property
    def configured(self) -> bool:
        return self._configured

    def _configure(self) -> None:
        """Celery sends ``on_configure``/``on_after_configure`` once its configuration is first
        read; the shim sends them when the app is finalized (the worker at start, a producer at
        its first send), after the module defining the app has been imported."""
        if self._configured:
            return
        self._configured = True
        self.on_configure.send(sender=self)
        self.on_after_configure.send(sender=self, source=self.conf)

    def autodiscover_tasks(self, packages: Any = None, related_name: str = "tasks", force: bool = False) -> None:
        """Import ``<package>.<related_name>`` for each package (a list, or a callable returning
        one, as Django's ``INSTALLED_APPS``), at finalization or now with ``force=True``."""
        self._autodiscover.append((packages, related_name))
        if force or self._finalized:
            self._discover(packages, related_name)

    def _discover(self, packages: Any, related_name: str) -> None:
        names = packages() if callable(packages) else (packages or [])
        for package in names:
            module = f"{package}.{related_name}" if related_name else package
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name not in (module, package):
                    raise

    def broker_url(self) -> str | None:
        return broker_url(self.conf, self._constructor_broker)

    def declared_queues(self) -> list[Any]:
        """``task_queues`` as queue objects with a ``name`` (``Queue``s, names or a dict)."""
        value = self.conf.get("task_queues")
        if not value:
            return []
        if isinstance(value, dict):
            return [_DeclaredQueue(str(name), dict(options or {})) for name, options in value.items()]
        out: list[Any] = []
        for item in [value] if isinstance(value, str) or hasattr(value, "name") else list(value):
            out.append(_DeclaredQueue(item) if isinstance(item, str) else item)
        return out

    # -- tasks ------------------------------------------------------------------------------

    def task(self, *args: Any, **opts: Any) -> Any:
        """``@app.task`` or ``@app.task(bind=True, max_retries=5, ...)``."""

        def create(fun: Callable[..., Any]) -> Task:
            return self._task_from_fun(fun, **opts)

        if len(args) == 1 and callable(args[0]) and not opts:
            return create(args[0])
        if args:
            raise TypeError("@app.task() takes keyword options only; use @app.task or @app.task(name=..., ...)")
        return create

    def gen_task_name(self, name: str, module: str) -> str:
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{name}"

    def _task_from_fun(
        self, fun: Callable[..., Any], name: str | None = None, base: type | None = None, bind: bool = False, **options: Any
    ) -> Task:
        name = name or self.gen_task_name(fun.__name__, fun.__module__)
        existing = self.tasks.get(name)
        if existing is not None and getattr(existing, "__wrapped__", None) is fun:
            return existing
        if options.get("serializer"):
            check_serializer("serializer", options["serializer"])
        for ignored in ("shared", "lazy"):
            options.pop(ignored, None)
        base = base or self.Task
        attrs = {
            "app": self,
            "name": name,
            "run": fun if bind else staticmethod(fun),
            "_decorated": True,
            "__doc__": fun.__doc__,
            "__module__": fun.__module__,
            "__qualname__": getattr(fun, "__qualname__", fun.__name__),
            "__wrapped__": fun,
            "abstract": False,
            **options,
        }
        if "autoretry_for" in attrs:
            attrs["autoretry_for"] = tuple(attrs["autoretry_for"] or ())
        task = type(fun.__name__, (base,), attrs)()
        return self.register_task(task)

    def register_task(self, task: Any, **options: Any) -> Task:
        """Register a class-based task (class or instance)."""
        if isinstance(task, type):
            task = task()
        if task.name is None:
            task.name = self.gen_task_name(type(task).__name__, type(task).__module__)
        if task.app is None or task.app is not self:
            task.app = self
        self.tasks[task.name] = task
        if self._finalized:
            self._register_job(task)
        return task

    def route(self, name: str, args: Any = (), kwargs: Any = None, options: Any = None, task: Any = None) -> dict[str, Any]:
        """``task_routes`` for one call: ``{"queue": ..., "routing_key": ..., ...}`` or empty."""
        routes = self.conf.get("task_routes")
        if not routes:
            return {}
        for router in routes if isinstance(routes, (list, tuple)) else [routes]:
            if callable(router):
                found = router(name, args, kwargs or {}, options or {}, task=task)
                if found:
                    return _route_dict(found)
                continue
            for pattern, route in dict(router).items():
                matched = pattern.match(name) if isinstance(pattern, re.Pattern) else fnmatch.fnmatchcase(name, pattern)
                if matched:
                    return _route_dict(route)
        return {}

    _route = route

    def queue_for(self, task: Task) -> str:
        return (
            queue_name(self, task.queue)
            or queue_name(self, self.route(task.name or "", task=task).get("queue"))
            or self.conf.task_default_queue
        )

    def _register_job(self, task: Task) -> None:
        if task.name in self.runner.jobs:
            return
        priority = task.priority if task.priority is not None else (self.conf.get("task_default_priority") or 0)
        job = self.runner.job(
            make_entry(task),
            name=task.name,
            queue=self.queue_for(task),
            priority=int(priority),
            retries=UNLIMITED_ATTEMPTS - 1,
            retry_on=(),
            hard_timeout=_seconds(task.time_limit if task.time_limit is not None else self.conf.task_time_limit),
            expires=task.expires if isinstance(task.expires, (int, float, timedelta)) else None,
            ignore_result=bool(task.ignore_result or self.conf.task_ignore_result),
            rate=celery_rate(task.rate_limit or self.conf.get("task_default_rate_limit")),
        )
        job.faithful_arguments = False  # Celery's own contract for argument values, not runner's check
        task._job = job

    def job_for(self, task: Task) -> Any:
        self.finalize()
        job = getattr(task, "_job", None)
        if job is None or task.name not in self.runner.jobs:
            self._register_job(task)
            job = task._job
        return job

    def finalize(self, auto: bool = False) -> None:
        with _state.lock:
            if self._finalized:
                return
            self._finalized = True
            self._configure()
            for module in [*self.include, *self.conf.get("include", ()), *self.conf.get("imports", ())]:
                importlib.import_module(module)
            for packages, related in self._autodiscover:
                self._discover(packages, related)
            for task in list(self.tasks.values()):
                self._register_job(task)
            self.runner.default_queue = self.conf.task_default_queue
            self.runner.job(_save_group, name=SAVE_GROUP, queue=self.conf.task_default_queue)
            self.on_after_finalize.send(sender=self)
            self._apply_beat()
            self.runner.serve_defaults = self.serve_defaults()  # type: ignore[attr-defined]

    @property
    def runner_app(self) -> App:
        """The runner App behind this Celery app (what ``runner serve -A`` and ``loader`` use)."""
        self.finalize()
        self._apply_broker()
        return self.runner

    def _apply_broker(self) -> None:
        url = self.broker_url()
        if url and url != self._applied_broker:
            self.runner.configure(broker=url)
            self._applied_broker = url

    def serve_defaults(self) -> dict[str, Any]:
        """Celery worker settings as ``runner serve`` defaults (flags and RUNNER_* still win)."""
        conf, out = self.conf, dict[str, Any]()
        if conf.get("worker_concurrency"):
            out["concurrency"] = int(conf.worker_concurrency)
        if conf.get("worker_max_tasks_per_child"):
            out["max_jobs_per_worker"] = int(conf.worker_max_tasks_per_child)
        if conf.get("worker_max_memory_per_child"):  # Celery: KiB; runner: MiB
            out["max_memory_per_worker"] = max(1, math.ceil(int(conf.worker_max_memory_per_child) / 1024))
        if conf.get("result_expires"):
            out["result_ttl"] = _seconds(conf.result_expires)
        return out

    # -- beat -----------------------------------------------------------------------------------

    def add_periodic_task(
        self, schedule: Any, sig: Any, args: Any = (), kwargs: Any = (), name: str | None = None, **opts: Any
    ) -> str:
        """Celery's ``add_periodic_task`` (as its docs use it from ``on_after_configure``): a
        ``beat_schedule`` entry named ``name`` (or the signature's repr)."""
        kwargs = dict(kwargs) if kwargs else {}
        if isinstance(sig, Signature):
            sig = sig.clone(args, kwargs)
        else:
            sig = signature(sig.name if hasattr(sig, "name") else str(sig), tuple(args or ()), kwargs, app=self)
        key = name or repr(sig)
        entry = {
            "schedule": schedule,
            "task": sig.task,
            "args": sig.args,
            "kwargs": sig.kwargs,
            "options": {**sig.options, **opts},
        }
        self.conf.beat_schedule[key] = entry
        if self._finalized:
            self._apply_beat()
        return key

    def beat_entries(self) -> list[tuple[str, str, Any, tuple[Any, ...], dict[str, Any], dict[str, Any]]]:
        """``beat_schedule`` as data: (name, task name, schedule, args, kwargs, options)."""
        entries = []
        for name, entry in (self.conf.get("beat_schedule") or {}).items():
            entries.append(
                (
                    name,
                    entry["task"],
                    entry["schedule"],
                    tuple(entry.get("args") or ()),
                    dict(entry.get("kwargs") or {}),
                    dict(entry.get("options") or {}),
                )
            )
        return entries

    def _apply_beat(self) -> None:
        tz = self.conf.get("timezone") or "UTC"
        for name, task_name, schedule, args, kwargs, options in self.beat_entries():
            if any(p.name == name for p in self.runner.schedules):
                continue
            task = self.tasks.get(task_name)
            if task is None:
                raise NotRegistered(f"beat_schedule entry {name!r} names task {task_name!r}, which is not registered")
            task.check_arguments(args, kwargs)
            job_options = {k: v for k, v in options.items() if k in ("queue", "priority", "expires")}
            if "queue" in job_options:
                job_options["queue"] = queue_name(self, job_options["queue"])
            self.runner.periodic(name=name, args=args, kwargs=kwargs, tz=str(tz), **to_runner(schedule), **job_options)(
                self.job_for(task)
            )

    # -- sending --------------------------------------------------------------------------------

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Enqueue by name (the task must be registered in this process)."""
        task = self.tasks.get(name)
        if task is None:
            self.finalize()
            task = self.tasks.get(name)
        if task is None:
            raise NotRegistered(name)
        return task.apply_async(args, kwargs, **options)

    def _signature_of(
        self, task: Task, args: Any, kwargs: Any, task_id: Any, link: Any, link_error: Any, options: Any
    ) -> tuple[Signature, dict[str, Any]]:
        call_options = dict(options or {})
        for key, value in (("task_id", task_id), ("link", link), ("link_error", link_error)):
            if value is not None:
                call_options[key] = value
        return Signature(task, tuple(args or ()), dict(kwargs or {}), app=self), call_options

    def send_task_object(
        self,
        task: Task,
        args: Any,
        kwargs: Any,
        *,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        options: dict[str, Any] | None = None,
    ) -> Any:
        """Enqueue one task call (``apply_async``); its ``AsyncResult``."""
        sig, call_options = self._signature_of(task, args, kwargs, task_id, link, link_error, options)
        return send_canvas(self, sig, call_options)

    async def send_task_object_async(
        self,
        task: Task,
        args: Any,
        kwargs: Any,
        *,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        options: dict[str, Any] | None = None,
    ) -> Any:
        sig, call_options = self._signature_of(task, args, kwargs, task_id, link, link_error, options)
        self._apply_broker()
        return await send_canvas_async(self, sig, call_options)

    def send_canvas(self, sig: Any, options: dict[str, Any]) -> Any:
        """Enqueue a chain, group, chord (any nesting) as one workflow; its result."""
        return send_canvas(self, sig, options)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return call_sync(self.runner_app, fn, *args)

    async def enqueue_async(self, envelopes: list[Envelope]) -> list[int]:
        store = await store_for(self.runner)
        return await store.enqueue(envelopes)

    def apply_eager(self, task: Task, args: Any, kwargs: Any, **options: Any) -> Any:
        return apply_eager(task, args, kwargs, **options)

    # -- groups kept for restore() ----------------------------------------------------------------

    def save_group(self, result: GroupResult) -> None:
        """Keep a hand-built ``GroupResult`` (its members' ids) in a small job of its own."""
        if not result.id:
            raise ValueError("GroupResult.save(): the group has no id")
        job = self.runner_app.jobs[SAVE_GROUP]
        call = job.options(key=f"celery-group:{result.id}", queue=self.conf.task_default_queue).call(
            [r.as_tuple() for r in result.results]
        )
        self.call_sync(self.enqueue_async, [call.envelope(0.0)])

    def restore_group(self, group_id: str) -> GroupResult | None:
        return self.call_sync(self._restore_group, str(group_id))

    async def _restore_group(self, group_id: str) -> GroupResult | None:
        store = await store_for(self.runner)
        members = []
        for row in await store.get_many(await store.group_members(group_id)):
            celery = ((decode_json(row.meta) if row.meta else None) or {}).get("celery") or {}
            if celery.get("group") == group_id and celery.get("group_index") is not None:
                members.append(
                    (int(celery["group_index"]), AsyncResult(celery["id"], app=self, task_name=row.name, job_id=row.id))
                )
        if members:
            restored = GroupResult(group_id, [r for _i, r in sorted(members, key=lambda m: m[0])], app=self)
            restored._native = True
            return restored
        saved = await store.get_by_key(f"celery-group:{group_id}")
        if saved is None:
            return None
        (tuples,) = decode_json(saved.args)
        return GroupResult(group_id, [result_from_tuple(t, app=self) for t in tuples], app=self)

    # -- worker process hooks ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _worker_lifespan(self, info: WorkerInfo) -> AsyncIterator[None]:
        self.worker_info = info
        level = logging.getLogger().level
        configured = await send_async(
            signals.setup_logging, sender=None, loglevel=level, logfile=None, format=None, colorize=False
        )
        if not configured:  # Celery sends these only when no setup_logging receiver took over
            await send_async(
                signals.after_setup_logger, sender=None, logger=logging.getLogger(), loglevel=level, logfile=None,
                format=None, colorize=False,
            )  # fmt: skip
            await send_async(
                signals.after_setup_task_logger, sender=None, logger=logging.getLogger("celery.task"), loglevel=level,
                logfile=None, format=None, colorize=False,
            )  # fmt: skip
        await send_async(signals.worker_init, sender=None)
        await send_async(signals.worker_process_init, sender=None)
        await send_async(self.on_after_fork, sender=self)
        await send_async(signals.worker_ready, sender=None)
        try:
            yield
        finally:
            await send_async(signals.worker_shutting_down, sender=info.owner, sig="SIGTERM", how="Warm", exitcode=0)
            await send_async(signals.worker_process_shutdown, sender=None, pid=os.getpid(), exitcode=0)

    # -- misc API --------------------------------------------------------------------------------

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:
        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, id: str | None = None, results: Any = None, **kwargs: Any) -> Any:
        return GroupResult(id, results, app=self)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("app", self)
        return signature(*args, **kwargs)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def set_current(self) -> None:
        _state.set_current(self)

    def set_default(self) -> None:
        self.set_current()

    def close(self) -> None:
        self.runner.client.close()

    def __enter__(self) -> Celery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _route_dict(route: Any) -> dict[str, Any]:
    """A route as Celery accepts one: a queue name, a ``Queue``, or a dict of options."""
    if isinstance(route, str) or (hasattr(route, "name") and not isinstance(route, dict)):
        return {"queue": route}
    return dict(route)


async def _save_group(members: list[Any]) -> list[Any]:
    """The row that keeps a saved ``GroupResult``: its argument is the list of members."""
    return members


def _default_app() -> Celery:
    return Celery("default")


_state.set_default_app_factory(_default_app)
