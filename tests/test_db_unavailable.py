"""Who pays when a statement fails: the database's absence gives the attempt back (not counted),
anything else is the job's. Statements sent on the raw asyncpg connection (the hot paths, and
an exactly-once job's completion) raise the driver's own errors, not SQLAlchemy's."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from runner.db_unavailable import database_unavailable
from runner.drivers import open_driver
from runner.wire import Envelope

from .conftest import pg_execute


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


@pytest.mark.anyio
async def test_a_statement_on_a_connection_the_server_closed_reads_as_the_database_away(pg_url: str) -> None:
    """The hot statements go straight to asyncpg, which raises a plain InterfaceError once it
    has seen the server close the connection (after a restart). That must read as the database
    being away -- outcomes kept and retried, not written as failures -- and the dead connection
    must leave the pool, so the next statement works."""
    queue = open_driver(pg_url, pool_size=1, max_overflow=0)
    await queue.migrate()
    try:
        await queue.enqueue([Envelope(name="a")])
        async with queue._raw() as pg:  # type: ignore[attr-defined]
            backend = await pg.fetchval("SELECT pg_backend_pid()")
        pg_execute(pg_url, f"SELECT pg_terminate_backend({backend})")
        await anyio.sleep(0.3)  # the loop reads the close: asyncpg marks the connection closed
        with pytest.raises(Exception) as raised:
            await queue.claim("w", ["default"], 1, 30)
        assert database_unavailable(raised.value), repr(raised.value)
        [item] = await queue.claim("w", ["default"], 1, 30)
        assert item.name == "a", "the pool gave a new connection"
    finally:
        await queue.dispose()
