"""Hosts: 1, 2, 4 ``runner serve`` processes (each a "host" of ``-w host_workers``) draining one
PostgreSQL queue at once. This machine has 2 cores, so more hosts cannot mean more throughput;
what matters is what each job costs the database -- the number a capacity estimate is built from
(``deploy/CAPACITY.md``).

Per job, over the busy span (first start → last finish): CPU of the database's backends (psutil
on the backends of this database, since ``pg_stat_statements`` is not preloaded on this server;
see ``cpu.py``), CPU of the runner hosts,
transactions committed (each autocommit statement is one: the round trips that commit), tuples
updated, and WAL bytes (server-wide, so an upper bound while others use the server).
"""

from __future__ import annotations

import asyncio

from .cpu import BackendCPU, TreeCPU
from .pgstats import database_counters
from .workloads_runner import _async_producer, _migrate, _span, serve


def run_hosts(url: str, hosts: int, host_workers: int, concurrency: int, n: int) -> dict[str, float]:
    from .bench_app import app, noop

    asyncio.run(_migrate(url))

    async def enqueue() -> None:
        async with _async_producer(url):
            for i in range(0, n, 10_000):
                await app.defer_many_async([noop.call() for _ in range(min(10_000, n - i))])

    asyncio.run(enqueue())
    xacts0, upd0, _, hit0, read0, lsn0 = asyncio.run(database_counters(url))
    db = BackendCPU(url.rsplit("/", 1)[1]).start()
    children = [serve(f"host{i}", url, host_workers, concurrency, "--burst", "--node", f"host{i}") for i in range(hosts)]
    trees = [TreeCPU(c.proc.pid).start() for c in children]
    try:
        for child in children:
            child.wait(600)
    finally:
        for child in children:
            child.stop()
    for sampler in (*trees, db):
        sampler.stop()
    xacts1, upd1, _, hit1, read1, lsn1 = asyncio.run(database_counters(url))
    wal = lsn1 - lsn0
    done, first, last = _span(url)
    if done != n:
        raise AssertionError(f"hosts={hosts}: {done} of {n} jobs succeeded")
    host_cpu = sum(t.between(first, last)[0] for t in trees)  # busy span only: no imports, no exit
    db_cpu = db.between(first, last)[0]
    return {
        "hosts": hosts, "workers": hosts * host_workers, "claims_per_s": n / (last - first),
        "db_cpu_ms_per_job": db_cpu / n * 1000, "host_cpu_ms_per_job": host_cpu / n * 1000,
        "xacts_per_job": (xacts1 - xacts0) / n, "tup_upd_per_job": (upd1 - upd0) / n,
        "buffers_per_job": (hit1 - hit0 + read1 - read0) / n, "wal_bytes_per_job": wal / n,
    }  # fmt: skip
