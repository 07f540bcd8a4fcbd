"""Wake idle workers when jobs arrive: PostgreSQL LISTEN/NOTIFY, with polling as the fallback.

The listener holds one dedicated connection (outside the pool, so jobs never wait for it). If it
drops -- the server restarted -- the worker keeps polling and the listener reconnects with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy.engine import make_url

__all__ = ["CHANNEL", "listen_forever", "plain_dsn"]

log = logging.getLogger(__name__)

CHANNEL = "runner_jobs"


def plain_dsn(url: str) -> str:
    """A libpq-style DSN asyncpg accepts, from any of the URL forms runner accepts."""
    parsed = make_url(url.replace("sqla+", "", 1))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_forever(url: str, on_notify: Callable[[], None]) -> None:
    """Call ``on_notify`` for every NOTIFY on the jobs channel, until cancelled."""
    import asyncpg

    delay = 0.2
    while True:
        conn: Any = None
        try:
            conn = await asyncpg.connect(plain_dsn(url))
            lost = anyio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, lambda *_args: on_notify())
            delay = 0.2
            on_notify()  # anything that arrived while we were not listening
            await lost.wait()
            log.warning("LISTEN connection closed; falling back to polling until it reconnects")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.info("LISTEN connection failed (%s); polling meanwhile, retry in %.1fs", exc, delay)
        finally:
            if conn is not None and not conn.is_closed():
                with anyio.CancelScope(shield=True):
                    conn.terminate()
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)
