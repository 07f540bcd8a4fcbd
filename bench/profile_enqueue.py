"""Where a producer's time goes on single-call and bulk enqueue, for py-spy to watch:

    py-spy record --rate 500 --format raw -o enq.txt -- python -m bench.profile_enqueue URL MODE N

MODE: ``sync`` (``noop.defer()`` from this thread), ``async1`` (``await noop.defer_async()`` one at
a time) or ``bulk`` (``defer_many_async`` of N in calls of 1,000). Summarise with
``python -m bench.profile_summary --producer enq.txt``. The rate is printed, and is lower than the
benchmark's while py-spy samples.
"""

from __future__ import annotations

import asyncio
import sys
import time

from runner.drivers import open_driver

from .workloads_runner import enqueue_bulk_rate, enqueue_one_at_a_time, enqueue_sync_rate


async def _migrate(url: str) -> None:
    driver = open_driver(url, pool_size=1)
    await driver.migrate()
    await driver.dispose()


def main(url: str, mode: str, n: int) -> None:
    asyncio.run(_migrate(url))
    t = time.perf_counter()
    if mode == "sync":
        rate = enqueue_sync_rate(url, n)
    elif mode == "async1":
        rate = asyncio.run(enqueue_one_at_a_time(url, n))
    elif mode == "bulk":
        rate = asyncio.run(enqueue_bulk_rate(url, n, 1_000))
    else:
        raise SystemExit(f"unknown mode {mode!r}: sync, async1 or bulk")
    print(f"{mode}: {rate:,.0f}/s ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
