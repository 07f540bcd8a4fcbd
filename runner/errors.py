"""The exception tree: every error runner raises on purpose, so callers can catch by family.

::

    RunnerError
    ├── ConfigError              bad URL, flag, env var or app path (raised before anything starts)
    ├── SchemaError              the queue table is missing or from a newer runner
    ├── EnqueueError             a job could not be enqueued
    │   ├── UnknownJob           no job registered under that name
    │   ├── ArgumentsError       arguments do not bind to the job's signature or types
    │   ├── PayloadTooLarge      encoded arguments over the size limit
    │   └── SerializationError   arguments or a result are not JSON-encodable
    ├── JobError                 raised to a producer waiting on a handle
    │   ├── JobFailed            the job ended ``failed``; carries type, message, traceback
    │   ├── JobCancelled         the job ended ``cancelled``
    │   ├── JobExpired           the job ended ``expired`` before it started
    │   └── ResultTimeout        the job did not finish within the wait's timeout
    ├── LeaseLost                this worker no longer owns the attempt; its writes were discarded
    ├── JobTimeout               raised inside a job past its soft time limit (sync jobs too)
    └── Retry                    raised *by a job* to ask for another attempt after ``delay`` seconds

``UnknownJob``, ``ArgumentsError`` and ``PayloadTooLarge`` are also the messages a worker stores on a
row that it cannot run, so the same words reach the person reading ``runner jobs show``.
"""

from __future__ import annotations

__all__ = [
    "ArgumentsError",
    "ConfigError",
    "EnqueueError",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "RunnerError",
    "SchemaError",
    "SerializationError",
    "UnknownJob",
    "describe_exception",
]


class RunnerError(Exception):
    """Base of every error runner raises on purpose."""


class ConfigError(RunnerError):
    """A setting is missing or malformed; the message names it and what is accepted."""


class SchemaError(RunnerError):
    """The queue schema is absent or newer than this runner understands."""


class EnqueueError(RunnerError):
    """A job could not be put on the queue."""


class UnknownJob(EnqueueError):
    """No job is registered under the requested name."""


class ArgumentsError(EnqueueError):
    """Arguments do not fit the job's signature."""


class PayloadTooLarge(EnqueueError):
    """Encoded arguments exceed the configured limit."""


class SerializationError(EnqueueError):
    """A value cannot be encoded as JSON (arguments) or decoded from a row."""


class JobError(RunnerError):
    """A waited-for job did not succeed."""

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """The job ended ``failed``; ``type``, ``message`` and ``traceback`` come from the worker."""

    def __init__(
        self,
        job_id: int,
        type: str,
        message: str,
        traceback: str = "",
    ) -> None:
        super().__init__(f"job {job_id} failed: {type}: {message}", job_id=job_id)
        self.type = type
        self.message = message
        self.traceback = traceback


class JobCancelled(JobError):
    """The job was cancelled before it could finish."""


class JobExpired(JobError):
    """The job's expiry passed before any worker started it."""


class ResultTimeout(JobError, TimeoutError):
    """The job was still unfinished when the wait timed out."""


class LeaseLost(RunnerError):
    """The row's fencing token moved on: another attempt owns the job now."""


class JobTimeout(RunnerError):
    """The job ran past its soft time limit; raised inside it so it can clean up."""


class Retry(RunnerError):
    """Raise inside a job to run it again after ``delay`` seconds (counts as an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay
        self.reason = reason


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, even when ``__str__`` itself raises (the message says so)."""
    try:
        return str(exc)
    except Exception as inner:  # a broken __str__ must not break the worker
        return f"<unprintable {type(exc).__name__}: str() raised {type(inner).__name__}>"
