"""Is this error the database's absence (a restart, a failover, a dropped connection) rather than
the fault of the statement or job that met it?

The answer decides who pays: a job whose database went away gets its attempt back instead of
counting a failure, a batch of enqueues is not split row by row hunting for a bad row, and the
outcome writer keeps its outcomes and tries again. Kept apart from running jobs because the store,
the outcome writer and the job runner all ask it.
"""

from __future__ import annotations

import traceback as tb

from sqlalchemy.exc import DBAPIError

__all__ = ["database_unavailable"]

# Errors that mean "the database is not answering", whoever's statement met them. Connecting
# while the server restarts fails with one of these before any connection exists to invalidate.
_UNAVAILABLE_NAMES = frozenset({
    "CannotConnectNowError", "ConnectionDoesNotExistError", "ConnectionFailureError", "AdminShutdownError",
    "CrashShutdownError", "TooManyConnectionsError", "ConnectionRejectionError",
})  # fmt: skip


def database_unavailable(exc: BaseException) -> bool:
    """True when a job's database error is the database's absence, not the job's fault. A bare
    OSError counts only when it was raised inside SQLAlchemy's pool or engine, i.e. while
    connecting to the database, not by the job's own sockets (an HTTP call it makes)."""
    if not isinstance(exc, DBAPIError):
        # A driver's own connection error (a statement sent on the raw asyncpg connection) names
        # the database whoever met it; a bare OSError may be the job's own socket.
        return type(exc).__name__ in _UNAVAILABLE_NAMES or (isinstance(exc, OSError) and _raised_while_connecting(exc))
    if exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain: SQLAlchemy -> adapter -> driver -> socket
        if seen is None:
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)) or type(seen).__name__ in _UNAVAILABLE_NAMES:
            return True
        if isinstance(seen, OSError) and seen.errno is not None:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _raised_while_connecting(exc: BaseException) -> bool:
    frames = tb.extract_tb(exc.__traceback__)
    return any("/sqlalchemy/pool/" in f.filename or "/sqlalchemy/engine/base.py" in f.filename for f in frames)
