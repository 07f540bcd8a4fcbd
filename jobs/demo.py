"""``python -m jobs.demo [N]``: seed N users and enqueue a job per user, then run ``runner serve``."""

from __future__ import annotations

import sys

import anyio

from runner import create_engine, session_scope

from . import app
from .models import Base
from .repositories import UserRepository
from .users import activate_user, send_welcome_email, status_report


async def main(count: int) -> None:
    url = app.client.url
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with session_scope(engine) as session:
        repo = UserRepository(session)
        start = len(await repo.paginate(limit=1_000_000))
        users = [await repo.add(f"user{start + i}@example.com", f"User {start + i}") for i in range(count)]
        # Transactional enqueue: the jobs exist only if these users commit.
        await app.defer_many_async([activate_user.call(u.id) for u in users], session=session)
    await app.defer_many_async([send_welcome_email.call(u.email) for u in users])
    await status_report.defer_async()
    await engine.dispose()
    print(f"seeded {count} users and enqueued {2 * count + 1} jobs into {url}; now run: runner serve")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
