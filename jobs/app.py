"""The example App and its per-process lifespan: create the tables once per worker."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import DBAPIError

from runner import App, WorkerInfo, session_scope

from .models import Base

app = App("jobs")
log = logging.getLogger("jobs")


@app.lifespan
@contextlib.asynccontextmanager
async def create_tables(worker: WorkerInfo) -> AsyncIterator[None]:
    """Runs inside each worker's own loop: the place to build clients that belong to that loop."""
    try:
        async with session_scope() as session:
            conn = await session.connection()
            await conn.run_sync(Base.metadata.create_all)
    except DBAPIError:  # several workers start at once; one of them created the tables first
        log.info("tables were created concurrently by another worker")
    yield
