"""Structured, quiet-by-default logging: one line per event, ``key=value`` or JSON.

Configured once by the CLI before forking, so workers inherit it. Each line carries the pid, so
interleaved output from several workers stays attributable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["configure_logging"]


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname.lower():<7} pid={record.process} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Runner's own chatter stays at WARNING unless ``level`` is debug; the app's loggers and
    runner's lifecycle lines (supervisor, worker start/stop) follow ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = "DEBUG" if level == "debug" else "WARNING"
    for name in ("runner.run_job", "runner.outcomes", "runner.notify", "runner.store", "sqlalchemy", "asyncio", "aiosqlite"):
        logging.getLogger(name).setLevel(quiet)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
