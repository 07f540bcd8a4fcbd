"""``Celery``: the application object, backed by an internal runner ``App``.

Every Celery task becomes one runner job (``JobDef``) of the same name on ``app.runner``; the
``runner_app`` attribute (what ``runner serve -A proj`` looks for) finalizes the app first:
imports ``include``/``imports``/autodiscovered modules, registers shared tasks, applies
``beat_schedule`` as runner periodic entries, and turns worker settings into ``runner serve``
defaults. The runner job for a task is an ``async def`` wrapper (``execution.make_entry``) that
runs the Celery body -- async on the worker's loop, sync in its thread pool -- with Celery's
request, hooks, signals, retries and limits around it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ....app import App, WorkerInfo
from ....wire import Envelope
from .. import signals
from ..exceptions import ImproperlyConfigured, NotRegistered
from .config import Settings, broker_url
from .task import Task

__all__ = ["Celery", "current_app", "get_current_app", "shared_task"]

log = logging.getLogger("runner.compat.celery")

# Celery's default max_retries is 3 and None means "forever": the shim, not runner, decides
# when retries are exhausted, so the runner job itself may run (almost) without limit.
UNLIMITED_ATTEMPTS = 1_000_000_000

_current: list[Celery] = []
_shared: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_all_apps: list[Celery] = []
_lock = threading.RLock()


def get_current_app() -> Celery:
    """The app most recently created (or a default one, as Celery's ``current_app``)."""
    with _lock:
        if not _current:
            Celery("default")
        return _current[-1]


class _CurrentApp:
    """``current_app``: a proxy to the app most recently created, as in Celery."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_app(), name)

    def __call__(self) -> Celery:
        return get_current_app()

    def __repr__(self) -> str:
        return f"<current_app proxy to {get_current_app()!r}>"


current_app: Any = _CurrentApp()


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task`` (bare or with options): a task usable by any app, registered on every
    app (existing and future). Calling it uses the current app."""

    def create(fun: Callable[..., Any]) -> Task:
        with _lock:
            _shared.append((fun, options))
            task = None
            for app in _all_apps:
                task = app._task_from_fun(fun, **options)
            if task is None:
                task = get_current_app()._task_from_fun(fun, **options)
        return task

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def celery_rate(spec: Any) -> Any:
    """Celery's ``rate_limit`` ("10/s", "100/m", "5/h", or a number per second) as runner's
    RateLimit for the task, enforced across every worker and host (Celery's is per worker).
    Celery spaces starts evenly (a token bucket), so "10/s" becomes one start per 0.1 s window."""
    if spec in (None, "", 0):
        return None
    from ....limits import RateLimit, parse_rate

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
        self.runner = App(main or "celery")
        self.runner.celery = self  # type: ignore[attr-defined]
        self.runner.lifespan(self._worker_lifespan)
        self._finalized = False
        self._autodiscover: list[tuple[Any, str]] = []
        self._applied_broker: str | None = None
        self.worker_info: WorkerInfo | None = None
        base = task_cls if isinstance(task_cls, type) else Task
        self.Task: type[Task] = type("Task", (base,), {"app": self, "__module__": base.__module__, "abstract": True})
        from ..canvas import register_internal_jobs

        register_internal_jobs(self)
        with _lock:
            _all_apps.append(self)
            if set_as_current:
                _current.append(self)
            for fun, options in _shared:
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
            from .config import _check_serializer

            _check_serializer("serializer", options["serializer"])
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

    def _route(self, name: str, args: Any = (), kwargs: Any = None, options: Any = None, task: Any = None) -> dict[str, Any]:
        routes = self.conf.get("task_routes")
        if not routes:
            return {}
        for router in routes if isinstance(routes, (list, tuple)) else [routes]:
            if callable(router):
                found = router(name, args, kwargs or {}, options or {}, task=task)
                if found:
                    return {"queue": found} if isinstance(found, str) else dict(found)
                continue
            for pattern, route in dict(router).items():
                matched = pattern.match(name) if isinstance(pattern, re.Pattern) else fnmatch.fnmatchcase(name, pattern)
                if matched:
                    return {"queue": route} if isinstance(route, str) else dict(route)
        return {}

    def queue_for(self, task: Task) -> str:
        return task.queue or self._route(task.name or "", task=task).get("queue") or self.conf.task_default_queue

    def _register_job(self, task: Task) -> None:
        from ..execution import make_entry

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
        task._job = job

    def job_for(self, task: Task) -> Any:
        self.finalize()
        job = getattr(task, "_job", None)
        if job is None or task.name not in self.runner.jobs:
            self._register_job(task)
            job = task._job
        return job

    def finalize(self, auto: bool = False) -> None:
        with _lock:
            if self._finalized:
                return
            self._finalized = True
            for module in [*self.include, *self.conf.get("include", ()), *self.conf.get("imports", ())]:
                importlib.import_module(module)
            for packages, related in self._autodiscover:
                self._discover(packages, related)
            for task in list(self.tasks.values()):
                self._register_job(task)
            self.runner.default_queue = self.conf.task_default_queue
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
        from ..schedules import to_runner

        tz = self.conf.get("timezone") or "UTC"
        for name, task_name, schedule, args, kwargs, options in self.beat_entries():
            if any(p.name == name for p in self.runner.schedules):
                continue
            task = self.tasks.get(task_name)
            if task is None:
                raise NotRegistered(f"beat_schedule entry {name!r} names task {task_name!r}, which is not registered")
            task.check_arguments(args, kwargs)
            job_options = {k: v for k, v in options.items() if k in ("queue", "priority", "expires")}
            self.runner.periodic(name=name, args=args, kwargs=kwargs, tz=str(tz), **to_runner(schedule), **job_options)(task._job)

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

    def _prepare(
        self, task: Task, args: Any, kwargs: Any, *, task_id: str | None, link: Any, link_error: Any, options: dict[str, Any]
    ) -> Envelope:
        from ..canvas import callback_specs, child_specs
        from ..execution import current_request

        job = self.job_for(task)
        options = dict(options)
        for key in ("serializer", "compression"):
            value = options.pop(key, None)
            if key == "serializer" and value:
                from .config import _check_serializer

                _check_serializer("serializer", value)
        celery_meta: dict[str, Any] = dict(options.pop("_celery_meta", None) or {})
        headers = dict(options.pop("headers", None) or {})
        queue = options.pop("queue", None) or self._route(task.name or "", args, kwargs, options, task).get("queue") or job.queue
        run_options: dict[str, Any] = {"queue": queue}
        if options.get("priority") is not None:
            run_options["priority"] = int(options["priority"])
        if options.get("countdown") is not None:
            run_options["countdown"] = float(options["countdown"])
        eta = options.get("eta")
        if eta is not None:
            eta = _aware(eta) if isinstance(eta, datetime) else eta
            run_options["eta"] = eta
            celery_meta["eta"] = eta.isoformat() if isinstance(eta, datetime) else eta
        expires = options.get("expires", task.expires)
        if expires is not None:
            run_options["expires"] = _aware(expires) if isinstance(expires, datetime) else expires
        if task_id:
            run_options["key"] = str(task_id)
            celery_meta["id"] = str(task_id)
        for key in ("soft_time_limit", "time_limit", "ignore_result"):
            if options.get(key) is not None:
                celery_meta[key] = options[key]
        if options.get("time_limit") is not None:  # per call: the supervisor enforces it
            run_options["hard_timeout"] = _seconds(options["time_limit"])
        parent = current_request()
        if parent is not None and parent.job_id is not None:
            run_options["parent_id"] = parent.job_id
            run_options["root_id"] = (parent.runner_ctx.root_id if parent.runner_ctx is not None else None) or parent.job_id
        meta: dict[str, Any] = {"celery": celery_meta}
        if headers:
            celery_meta["headers"] = headers
        success = callback_specs(self, link, errback=False)
        failure = callback_specs(self, link_error, errback=True)
        if success:
            run_options["on_success"] = child_specs(success)
        if failure:
            run_options["on_failure"] = child_specs(failure)
        run_options["meta"] = meta
        envelope = job.options(**run_options).call(*(args or ()), **(kwargs or {})).envelope(time.time())
        signals.before_task_publish.send(
            sender=task.name, body=(list(args or ()), dict(kwargs or {}), {}), exchange="", routing_key=queue,
            headers=celery_meta.setdefault("headers", headers), properties={}, declare=[], retry_policy=None,
        )  # fmt: skip
        if not celery_meta["headers"]:
            del celery_meta["headers"]
        return envelope

    def _result(self, task: Task, job_id: int, task_id: str | None) -> Any:
        from ..result import AsyncResult

        return AsyncResult(task_id or str(job_id), app=self, task_name=task.name, job_id=job_id)

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
        from ..producer import call_sync

        envelope = self._prepare(task, args, kwargs, task_id=task_id, link=link, link_error=link_error, options=options or {})
        (job_id,) = call_sync(self.runner_app, self.enqueue_async, [envelope])
        signals.after_task_publish.send(
            sender=task.name,
            body=(envelope.args, envelope.kwargs, {}),
            exchange="",
            routing_key=envelope.queue,
            headers={"id": task_id or str(job_id), "task": task.name},
        )
        return self._result(task, job_id, task_id)

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
        envelope = self._prepare(task, args, kwargs, task_id=task_id, link=link, link_error=link_error, options=options or {})
        self._apply_broker()
        (job_id,) = await self.enqueue_async([envelope])
        signals.after_task_publish.send(
            sender=task.name,
            body=(envelope.args, envelope.kwargs, {}),
            exchange="",
            routing_key=envelope.queue,
            headers={"id": task_id or str(job_id), "task": task.name},
        )
        return self._result(task, job_id, task_id)

    async def enqueue_async(self, envelopes: list[Envelope]) -> list[int]:
        from ..producer import store_for

        store = await store_for(self.runner)
        return await store.enqueue(envelopes)

    # -- worker process hooks ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _worker_lifespan(self, info: WorkerInfo) -> AsyncIterator[None]:
        from ..execution import send_async

        self.worker_info = info
        await send_async(
            signals.setup_logging, sender=None, loglevel=logging.getLogger().level, logfile=None, format=None, colorize=False
        )
        await send_async(signals.worker_init, sender=None)
        await send_async(signals.worker_process_init, sender=None)
        await send_async(signals.worker_ready, sender=None)
        try:
            yield
        finally:
            await send_async(signals.worker_shutting_down, sender=info.owner, sig="SIGTERM", how="Warm", exitcode=0)
            await send_async(signals.worker_process_shutdown, sender=None, pid=os.getpid(), exitcode=0)

    # -- misc API --------------------------------------------------------------------------------

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:
        from ..result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, id: str | None = None, results: Any = None, **kwargs: Any) -> Any:
        from ..result import GroupResult

        return GroupResult(id, results, app=self)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from ..canvas import signature

        kwargs.setdefault("app", self)
        return signature(*args, **kwargs)

    def set_current(self) -> None:
        with _lock:
            _current.append(self)

    def set_default(self) -> None:
        self.set_current()

    def close(self) -> None:
        self.runner.client.close()

    def __enter__(self) -> Celery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
