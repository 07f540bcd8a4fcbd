"""Who pays when a statement fails: the database's absence gives the attempt back (not counted),
anything else is the job's. Statements sent on the raw asyncpg connection (the hot paths, and
an exactly-once job's completion) raise the driver's own errors, not SQLAlchemy's."""

from __future__ import annotations

import asyncpg

from runner.db_unavailable import database_unavailable


def test_a_drivers_own_connection_errors_mean_the_database_is_away() -> None:
    assert database_unavailable(
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    )
    assert database_unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"))


def test_other_errors_are_the_jobs() -> None:
    assert not database_unavailable(ValueError("bad input"))
    assert not database_unavailable(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    # A bare socket error raised by the job's own code (an HTTP call), not while connecting.
    assert not database_unavailable(ConnectionResetError(104, "Connection reset by peer"))
