"""runner: durable async jobs on SQLite or PostgreSQL, run by forked workers that each own one
event loop and one engine, with a session scoped to every attempt.

::

    from runner import App
    app = App("shop")

    @app.job(retries=3)
    async def activate_user(session: AsyncSession, user_id: int) -> dict: ...

    activate_user.defer(42)                 # from sync code
    await activate_user.defer_async(42)     # from async code
"""

from __future__ import annotations

from .app import App, Call, Context, JobDef, WorkerInfo
from .client import JobHandle
from .errors import (
    ArgumentsError,
    ConfigError,
    EnqueueError,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    ResultTimeout,
    Retry,
    RunnerError,
    SchemaError,
    SerializationError,
    UnknownJob,
)
from .session import create_engine, session_scope
from .settings import Settings
from .wire import Envelope, State

__all__ = [
    "App",
    "ArgumentsError",
    "Call",
    "ConfigError",
    "Context",
    "EnqueueError",
    "Envelope",
    "JobCancelled",
    "JobDef",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobHandle",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "RunnerError",
    "SchemaError",
    "SerializationError",
    "Settings",
    "State",
    "UnknownJob",
    "WorkerInfo",
    "create_engine",
    "session_scope",
]

__version__ = "0.1.0"
