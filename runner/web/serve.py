"""Serving the dashboard (``runner dashboard``) and the per-host scrape target of ``runner serve
--metrics-port`` (a small process of its own beside the supervisor, which owns no database).

Both listen on 127.0.0.1 unless told otherwise: the dashboard can retry and delete jobs.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from ..settings import Settings

__all__ = ["serve_dashboard", "start_exporter"]

log = logging.getLogger(__name__)


def serve_dashboard(settings: Settings) -> int:
    """Run the dashboard until interrupted. The app (``-A``) is loaded when it can be, for its
    queues, job names and schedules; without it the dashboard shows what the database holds."""
    import uvicorn

    from ..errors import ConfigError
    from ..loader import load_app
    from .app import dashboard

    try:
        app = load_app(settings.app)
    except ConfigError as exc:
        log.warning("dashboard without an app (%s): schedules and job names are not shown", exc)
        app = None
    board = dashboard(settings.broker, app=app, read_only=settings.read_only, basic_auth=settings.basic_auth)
    if settings.dashboard_host not in ("127.0.0.1", "localhost", "::1") and not settings.basic_auth:
        log.warning(
            "the dashboard listens on %s without --basic-auth: anyone who reaches it can retry and delete jobs%s",
            settings.dashboard_host, "" if not settings.read_only else " (read-only: they can read every job)",
        )  # fmt: skip
    log.info(
        "dashboard on http://%s:%d/ for %s%s", settings.dashboard_host, settings.dashboard_port, _redact(settings.broker),
        " (read-only)" if settings.read_only else "",
    )  # fmt: skip
    uvicorn.run(board, host=settings.dashboard_host, port=settings.dashboard_port, log_config=None, access_log=False)
    return 0


def start_exporter(settings: Settings) -> subprocess.Popen[bytes]:
    """Start the ``/metrics`` process for ``runner serve --metrics-port``; it exits with its parent."""
    env = {**os.environ, "RUNNER_BASIC_AUTH": settings.basic_auth or ""}
    args = [sys.executable, "-m", "runner.web.serve", "--broker", settings.broker, "--host", settings.metrics_host,
            "--port", str(settings.metrics_port), "--parent", str(os.getpid()), "--log-format", settings.log_format]  # fmt: skip
    return subprocess.Popen(args, env=env)


def _redact(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def _exit_with(parent: int) -> None:
    """The exporter leaves when ``runner serve`` does, however it ended (even SIGKILL)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from ..logs import configure_logging
    from .app import metrics_app

    parser = argparse.ArgumentParser(prog="python -m runner.web.serve", description="runner's /metrics for one host")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int)
    parser.add_argument("--log-format", default="text")
    ns = parser.parse_args(argv)
    configure_logging("info", ns.log_format)
    if ns.parent:
        threading.Thread(target=_exit_with, args=(ns.parent,), daemon=True).start()
    auth = os.environ.pop("RUNNER_BASIC_AUTH", "") or None
    log.info("metrics on http://%s:%d/metrics", ns.host, ns.port)
    uvicorn.run(metrics_app(ns.broker, basic_auth=auth), host=ns.host, port=ns.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
