"""The ``runner`` command: argparse -> Settings -> one call. Nothing else happens here.

``serve`` runs the supervisor; ``migrate`` creates or upgrades the queue schema; ``enqueue`` puts
one job on the queue from the shell; ``status`` and ``jobs`` are the admin views (admin.py).
Flags mirror ``RUNNER_*`` environment variables; a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from .errors import ConfigError, RunnerError
from .settings import Settings

__all__ = ["main"]

_DEFAULTS = Settings.__dataclass_fields__


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-A", "--app", help="MODULE[:ATTR] holding the App (default: jobs, the example app)")
    parser.add_argument("--broker", help="queue database URL (default: sqlite:///runner.db)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["text", "json"])
    parser.add_argument("--sql-echo", action="store_const", const="1", help="log every SQL statement (debug level never does)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="Durable async job runner: forked workers, one loop and one engine each."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the supervisor and its workers")
    _common(serve)
    serve.add_argument("--database", help="the jobs' database URL when it is not the broker (exactly-once needs them equal)")
    serve.add_argument("-w", "--workers", help="worker processes (default: CPU count)")
    serve.add_argument("-c", "--concurrency", help="jobs at once per worker (default: 8)")
    serve.add_argument("-Q", "--queues", help="comma-separated queues, served in this order (default: every queue the app names)")
    serve.add_argument("--burst", action="store_const", const="1", help="exit 0 once nothing is runnable")
    serve.add_argument("--grace", help="seconds in-flight jobs get on SIGTERM before they are re-queued (default: 30)")
    serve.add_argument("--lease-ttl", help="seconds a claim lasts without renewal (default: 30)")
    serve.add_argument("--heartbeat-timeout", help="seconds of worker silence before it is killed (default: 30)")
    serve.add_argument(
        "--poll-interval",
        help="seconds between idle polls, a safety net: NOTIFY or a file-change check wake workers first (default: 1)",
    )
    serve.add_argument("--max-jobs-per-worker", help="recycle a worker after this many jobs")
    serve.add_argument("--max-memory-per-worker", help="recycle a worker above this RSS, in MiB")
    serve.add_argument("--max-payload", help="largest accepted arguments, in bytes of JSON (default: 1 MiB)")
    serve.add_argument("--max-result", help="largest accepted result, in bytes of JSON (default: 1 MiB)")
    serve.add_argument("--uvloop", action="store_const", const="1", help="run workers on uvloop (pip install runner[uvloop])")
    serve.add_argument("--node", help="this host's name in lease owners (default: hostname)")
    serve.add_argument(
        "--no-scheduler", dest="scheduler", action="store_const", const="0", help="do not fire periodic jobs from this host"
    )
    serve.add_argument("--result-ttl", help="seconds finished jobs are kept before workers purge them (default: 7 days)")
    serve.add_argument("--metrics-port", help="serve Prometheus /metrics on this port (a scrape target per host)")
    serve.add_argument("--metrics-host", help="address for --metrics-port (default: 127.0.0.1)")
    serve.add_argument(
        "--no-db-cost", dest="db_cost", action="store_const", const="0",
        help="do not measure what each job's session costs the database",
    )  # fmt: skip

    dashboard = sub.add_parser("dashboard", help="serve the web dashboard and /metrics")
    _common(dashboard)
    dashboard.add_argument("--host", dest="dashboard_host", help="address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", dest="dashboard_port", help="port to listen on (default: 8080)")
    dashboard.add_argument("--read-only", action="store_const", const="1", help="show everything, change nothing")
    dashboard.add_argument("--basic-auth", help="USER:PASS required of every request (or RUNNER_BASIC_AUTH)")

    migrate = sub.add_parser("migrate", help="create or upgrade the queue schema")
    _common(migrate)

    enqueue = sub.add_parser("enqueue", help="enqueue one job")
    _common(enqueue)
    enqueue.add_argument("name", help="registered job name (see `runner jobs names`)")
    enqueue.add_argument("--args", default="[]", help="JSON array of positional arguments")
    enqueue.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    enqueue.add_argument("--queue")
    enqueue.add_argument("--priority", type=int)
    enqueue.add_argument("--countdown", type=float, help="seconds from now before it may run")
    enqueue.add_argument("--key", help="idempotency key")
    enqueue.add_argument("--wait", type=float, help="wait up to this many seconds and print the result")

    from .admin import add_admin_commands

    add_admin_commands(sub, _common)
    return parser


def _settings(ns: argparse.Namespace, app: Any = None) -> Settings:
    """Flags over ``RUNNER_*`` over what the app suggests (its broker and database; the Celery
    shim maps ``worker_concurrency`` and friends there) over defaults."""
    names = set(_DEFAULTS) - {"_CASTS"}
    overrides = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    suggested: dict[str, Any] = dict(getattr(app, "serve_defaults", None) or {})
    if app is not None:
        suggested["broker"] = getattr(app, "configured_broker", None) or getattr(app, "broker", None)
        suggested["database"] = getattr(app, "database", None)
    return Settings.load(overrides, suggested=suggested)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # argparse would blame the top-level command; the subcommand's usage helps more
        _chosen(parser, ns).error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.command not in ("serve", "dashboard"):
        # Before the command runs, not when its error is caught: aiosqlite's late answer can
        # reach its thread's excepthook while the command is still unwinding.
        threading.excepthook = _quiet_failed_open
    try:
        return _dispatch(ns)
    except ConfigError as exc:
        print(f"runner: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, DBAPIError) as exc:
        if isinstance(exc, OSError) and ns.command in ("serve", "dashboard"):
            raise  # a port in use, a file of the app's: not the queue database
        print(f"runner: {_unreachable(ns, exc)}", file=sys.stderr)
        return 2
    except RunnerError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _chosen(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand's parser that ``ns`` came from (``runner jobs list``'s, say)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(ns, actions[0].dest, None) if actions else None
        if not actions or name not in actions[0].choices:
            return parser
        parser = actions[0].choices[name]


def _quiet_failed_open(args: threading.ExceptHookArgs) -> None:
    """aiosqlite answers a connection that failed to open from its own thread, and when our loop
    has already ended (we are exiting with the one-line error) that answer raises "Event loop is
    closed" there. Nothing was lost; the traceback would only bury the line that says why."""
    thread = getattr(args.thread, "name", "")
    if args.exc_type is RuntimeError and "Event loop is closed" in str(args.exc_value) and "_connection_worker_thread" in thread:
        return
    threading.__excepthook__(args)


def _unreachable(ns: argparse.Namespace, exc: BaseException) -> str:
    """One line for a database that cannot be reached or opened: which URL (password hidden) and
    what the database or the operating system said, instead of the driver's traceback."""
    url = getattr(ns, "broker", None) or os.environ.get("RUNNER_BROKER") or os.environ.get("RUNNER_BROKER_URL")
    shown = "the default sqlite:///runner.db"
    if url:
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except Exception:
            shown = "the configured URL"
    reason = getattr(exc, "orig", None) or exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    kind = type(reason).__name__
    return f"cannot use the queue database {shown}: " + (text if kind == "Error" else f"{kind}: {text}")


def _dispatch(ns: argparse.Namespace) -> int:
    from .logs import configure_logging

    settings = _settings(ns)
    configure_logging(settings.log_level, settings.log_format, sql_echo=settings.sql_echo)
    if ns.command == "serve":
        from .loader import load_app
        from .serve import serve

        app = load_app(settings.app)
        return serve(app, _settings(ns, app))
    if ns.command == "migrate":
        return _migrate(settings)
    if ns.command == "dashboard":
        from .web.serve import serve_dashboard

        return serve_dashboard(settings)
    if ns.command == "enqueue":
        return _enqueue(ns, settings)
    from .admin import run_admin

    return run_admin(ns, settings)


def _migrate(settings: Settings) -> int:
    import anyio

    from .drivers import open_driver

    async def run() -> tuple[int, int]:
        driver = open_driver(settings.broker, pool_size=1)
        try:
            return await driver.migrate()
        finally:
            await driver.dispose()

    before, after = anyio.run(run)
    print(f"queue schema at version {after}" + (f" (was {before})" if before != after else " (already current)"))
    return 0


def _warn_if_unserved(app: Any, queue: str) -> None:
    """Say so when no live worker serves the queue a job was just put on: it would sit there."""
    import time

    async def serving() -> set[str] | None:
        try:
            workers = await (await app.client.driver()).workers(time.time() - 60)
        except Exception:
            return None  # the warning is a courtesy; the job is enqueued either way
        return {q for w in workers for q in w.queues.split(",")}

    served = app.client.run_sync(serving)
    if served is not None and queue not in served:
        listed = ", ".join(sorted(served)) if served else "none: no worker is running"
        print(
            f"runner: warning: no live worker serves queue {queue!r} (served now: {listed}); the job waits there", file=sys.stderr
        )


def _enqueue(ns: argparse.Namespace, settings: Settings) -> int:
    from .loader import load_app

    try:
        args, kwargs = json.loads(ns.args), json.loads(ns.kwargs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args/--kwargs must be JSON ({exc}); e.g. --args '[1, \"x\"]' --kwargs '{{\"id\": 3}}'") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ConfigError("--args must be a JSON array and --kwargs a JSON object")
    app = load_app(settings.app)
    settings = _settings(ns, app)
    app.configure(broker=settings.broker, max_payload=settings.max_payload)
    job = app.get(ns.name)
    options = {k: getattr(ns, k) for k in ("queue", "priority", "countdown", "key") if getattr(ns, k) is not None}
    handle = job.options(**options).defer(*args, **kwargs)
    print(handle.id)
    _warn_if_unserved(app, ns.queue or job.queue)
    if ns.wait is not None:
        print(json.dumps(handle.wait(ns.wait)))
    app.client.close()
    return 0
