"""What every part of the store stands on: the engine, its autocommit twin, the schema.

Single statements need no BEGIN/COMMIT around them: autocommit saves two round trips per claim,
batch and renewal (on SQLite our begin hook then skips ``BEGIN IMMEDIATE``). Statements that must
commit together (chained children, periodic fires, transactional enqueue) use ``engine.begin()``
or the caller's own connection.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..schema import SCHEMA_VERSION, migrate, schema_version
from ..wire import ErrorInfo, encode_json


def error_json(type_: str, message: str, traceback: str = "", attempt: int = 0) -> str:
    return encode_json(ErrorInfo(type=type_, message=message, traceback=traceback, attempt=attempt))


class StoreBase:
    """The queue, reached through one engine; stateless beyond it, so safe to share."""

    def __init__(self, engine: AsyncEngine, *, max_payload: int = 1 << 20) -> None:
        self.engine = engine
        self.max_payload = max_payload
        self.backend = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
        if self.backend == "postgresql":
            self._auto_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            self._auto_engine = engine.execution_options(runner_autocommit=True)

    async def migrate(self) -> tuple[int, int]:
        async with self.engine.begin() as conn:
            return await migrate(conn)

    async def ensure_schema(self) -> None:
        """Create the schema on first use; cheap (one read) when it is already there."""
        async with self._read() as conn:
            version = await schema_version(conn)
        if version < SCHEMA_VERSION:
            await self.migrate()

    def _read(self) -> Any:
        """A connection in autocommit: for reads (on SQLite they never take the write lock) and
        for writes that are one statement, hence atomic on their own."""
        return self._auto_engine.connect()
