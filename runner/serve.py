"""``runner serve``: wire Settings and the App into a Supervisor whose children run Workers."""

from __future__ import annotations

import logging
import os
import socket

from .app import App
from .settings import Settings
from .supervisor import Supervisor
from .worker import Fault, owner_name, run_worker

__all__ = ["serve"]

log = logging.getLogger("runner.serve")


def serve(app: App, settings: Settings) -> int:
    """Run until drained (SIGTERM/SIGINT) or, with ``burst``, until nothing is runnable."""
    supervisor_pid = os.getpid()

    def entry(slot: int, sock: socket.socket, fault: Fault | None) -> int:
        return run_worker(app, settings, slot, owner_name(settings, supervisor_pid, slot), sock, fault)

    log.info(
        "serving app=%s broker=%s workers=%d concurrency=%d%s",
        settings.app, _redact(settings.broker), settings.workers, settings.concurrency, " burst" if settings.burst else "",
    )  # fmt: skip
    if settings.queues:
        routed = set(app.queues())
        for queue in settings.queues:
            if queue not in routed:
                log.warning(
                    "serving queue %r, but no job of app %s is routed to it (its jobs' queues: %s); a typo?",
                    queue, settings.app, ", ".join(sorted(routed)) or "none",
                )  # fmt: skip
    supervisor = Supervisor(
        settings.workers,
        entry,
        grace=settings.grace,
        heartbeat_timeout=settings.heartbeat_timeout,
        fault_factory=lambda reason, jobs, limit: Fault(reason, jobs, limit),
    )
    exporter = None
    if settings.metrics_port:
        # /metrics reads the database, which the supervisor never touches: its own process.
        from .web.serve import start_exporter

        exporter = start_exporter(settings)
    try:
        return supervisor.run()
    finally:
        if exporter is not None:
            exporter.terminate()
            try:
                exporter.wait(5)
            except Exception:
                exporter.kill()


def _redact(url: str) -> str:
    """Never print a password into logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
