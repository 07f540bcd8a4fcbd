"""``get_task_logger``/``get_logger`` as task modules use them: standard ``logging`` loggers."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "get_task_logger"]

task_logger = logging.getLogger("celery.task")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger under ``celery.task`` (Celery's parent for task loggers), named ``name``."""
    logger = logging.getLogger(name)
    if logger.parent is logging.getLogger() and name != "celery.task":
        logger.parent = task_logger
    return logger
