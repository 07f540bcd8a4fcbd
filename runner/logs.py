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
from typing import Any

__all__ = ["configure_logging"]


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname.lower():<7} pid={record.process} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    """The text line as ``msg``, and every field a call passed in ``extra`` as its own key
    (``job_id``, ``job``, ``outcome``, ``ms``, ...), so machines need not parse the message."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in data:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Libraries whose debug output is a firehose (SQLAlchemy logs every statement and row, aiosqlite
# every call): never raised by --log-level debug. --sql-echo turns on the statements alone.
_LIBRARIES = ("sqlalchemy", "aiosqlite", "asyncio", "asyncpg", "uvicorn.access", "httpx", "httpcore")


def configure_logging(level: str = "info", fmt: str = "text", *, sql_echo: bool = False) -> None:
    """Root at ``level``: runner's lifecycle lines and one line per ended job at info, runner's
    per-job detail at debug. Libraries stay at warning whatever ``level`` says; ``sql_echo``
    logs each SQL statement (``sqlalchemy.engine`` at info) and nothing else of theirs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel("WARNING")
    logging.getLogger("sqlalchemy.engine").setLevel("INFO" if sql_echo else "WARNING")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
