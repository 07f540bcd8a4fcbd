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
    ├── JobTimeout               raised inside a job past its soft time limit (also a TimeoutError)
    ├── TimeLimitExceeded        the type recorded for a job killed past its hard limit (a TimeoutError)
    └── Retry                    raised *by a job* to ask for another attempt after ``delay`` seconds

The ``type`` of a row's ``error`` (and of each entry of its attempt history) is the exception's
qualified name for errors a job raised, or one of runner's own:

==================== ==========================================================================
UnknownJob           no job of that name is registered in the worker's app
ArgumentsError       the row's arguments do not bind to the job's signature or types
SerializationError   a column is not what is accepted (the message names the column), or the
                     result cannot be encoded as JSON
PayloadTooLarge      the row's JSON columns, or a chained job's arguments, exceed --max-payload
ResultTooLarge       the result exceeds --max-result
JobTimeout           the soft time limit passed (``timeout``)
TimeLimitExceeded    the hard time limit passed; the supervisor killed the worker
WorkerLost           the worker holding the job died (or its lease expired) --max-lost times
WorkerUnresponsive   the worker's event loop stopped answering --max-lost times while holding it
Cancelled            cancelled by a producer or a person
Expired              expires_at passed before any worker started it
DatabaseUnavailable  the database went away mid-attempt (the attempt was given back, not counted)
==================== ==========================================================================
"""

from __future__ import annotations

from typing import Any

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
    "TimeLimitExceeded",
    "UnknownJob",
    "describe_exception",
    "type_name",
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


class JobTimeout(RunnerError, TimeoutError):
    """The job ran past its soft time limit; raised inside it so it can clean up. A
    ``TimeoutError``, so ``retry_on=(TimeoutError,)`` retries soft and hard timeouts alike."""


class TimeLimitExceeded(RunnerError, TimeoutError):
    """Recorded for a job whose worker was killed past the job's hard time limit."""


class Retry(RunnerError):
    """Raise inside a job to run it again after ``delay`` seconds (None: the job's backoff). It
    counts as an attempt; with none left the job fails, saying so. ``new_args`` /
    ``new_kwargs`` replace the job's arguments for the next attempt."""

    def __init__(
        self,
        delay: float | None = None,
        reason: str = "",
        *,
        new_args: list[Any] | None = None,
        new_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay
        self.reason = reason
        self.new_args = None if new_args is None else list(new_args)
        self.new_kwargs = None if new_kwargs is None else dict(new_kwargs)


def type_name(exc: BaseException | type[BaseException]) -> str:
    """The name recorded for an exception: bare for builtins, qualified otherwise."""
    cls = exc if isinstance(exc, type) else type(exc)
    if cls.__module__ in ("builtins", "__main__") or cls.__module__.startswith("runner.errors"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, even when ``__str__`` itself raises (the message says so)."""
    try:
        return str(exc)
    except Exception as inner:  # a broken __str__ must not break the worker
        return f"<unprintable {type(exc).__name__}: str() raised {type(inner).__name__}>"
