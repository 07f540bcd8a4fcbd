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
from .client import CancelResult, GroupHandle, JobHandle, JobInfo
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
    TimeLimitExceeded,
    UnknownJob,
)
from .limits import ConcurrencyLimit, RateLimit
from .session import create_engine, session_scope
from .settings import Settings
from .wire import AttemptRecord, ChildSpec, Envelope, ErrorInfo, State
from .workflows import chain, chord, group

__all__ = [
    "App",
    "ArgumentsError",
    "AttemptRecord",
    "Call",
    "CancelResult",
    "ChildSpec",
    "ConcurrencyLimit",
    "ConfigError",
    "Context",
    "EnqueueError",
    "Envelope",
    "ErrorInfo",
    "GroupHandle",
    "JobCancelled",
    "JobDef",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "RateLimit",
    "ResultTimeout",
    "Retry",
    "RunnerError",
    "SchemaError",
    "SerializationError",
    "Settings",
    "State",
    "TimeLimitExceeded",
    "UnknownJob",
    "WorkerInfo",
    "chain",
    "chord",
    "create_engine",
    "group",
    "session_scope",
]

__version__ = "0.1.0"
