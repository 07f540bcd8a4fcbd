"""The soak run, for a person: many jobs, faults injected all through, a table of figures at the end.

    python -m tests.faults.soak --jobs 20000 --backend postgresql
    python -m tests.faults.soak --jobs 5000 --backend sqlite --minutes 10

Every job inserts a row tagged with its own name and bumps one counter, in its scoped session
(exactly-once). Faults, on a schedule with some randomness: ``kill -9`` of a random worker every
``--kill-every`` seconds; SIGTERM of a whole host and a restart; ``kill -9`` of a whole host (the
supervisor and its workers) and a restart; and, on PostgreSQL, restarts of the server itself.
(Two hosts on PostgreSQL; one on SQLite, where whole-host faults are SIGTERM/SIGKILL of the only one.)

At the end: jobs, faults by kind, jobs lost, jobs run twice, final state counts, attempts lost and
re-run, and how long the queue took to make progress again after each kind of fault.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

from tests.apps import basic
from tests.conftest import PG_ADMIN_URL, Serve, _pg_admin, sql
from tests.faults.test_database_restart import restart_postgres
from tests.serving import enqueue, prepare, serve_args, states


def _database(backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='runner-soak-')}/soak.db"
    _pg_admin('DROP DATABASE IF EXISTS "runner_soak" WITH (FORCE)', 'CREATE DATABASE "runner_soak"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/runner_soak"


class Soak:
    def __init__(self, url: str, hosts: int, workers: int, concurrency: int, seed: int) -> None:
        self.url = url
        self.args = ("-w", str(workers), "-c", str(concurrency), "--lease-ttl", "5", "--log-level", "warning")
        self.hosts: list[Serve | None] = [None] * hosts
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.recovery: defaultdict[str, list[float]] = defaultdict(list)
        self.pending: list[tuple[str, float, int]] = []  # (kind, when, succeeded at that moment)

    def start(self, i: int) -> None:
        env = {"RUNNER_MAX_LOST": "1000"}  # faults are the point here, not poison-job protection
        self.hosts[i] = Serve(*serve_args(self.url, *self.args, "--node", f"soak-{i}"), env=env)

    def succeeded(self) -> int:
        """The monitor's own read; while PostgreSQL restarts it may fail, so it retries."""
        for _ in range(60):
            try:
                return states(self.url).get("succeeded", 0)
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("the database did not answer the soak monitor for 30 s")

    def fault(self, kind: str, done: int) -> None:
        self.faults[kind] += 1
        self.pending.append((kind, time.monotonic(), done))

    def settle_recoveries(self, done: int) -> None:
        """A fault is recovered from when the count of succeeded jobs moves past where it was."""
        now, still = time.monotonic(), []
        for kind, when, before in self.pending:
            if done > before:
                self.recovery[kind].append(now - when)
            else:
                still.append((kind, when, before))
        self.pending = still

    def inject(self, kind: str, done: int) -> None:
        live = [i for i, h in enumerate(self.hosts) if h is not None and h.proc.poll() is None]
        if kind == "worker kill -9":
            pids = [p for i in live for p in self.hosts[i].worker_pids()]  # type: ignore[union-attr]
            if pids:
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.fault(kind, done)
                except ProcessLookupError:
                    pass
        elif kind in ("host SIGTERM + restart", "host kill -9 + restart") and live:
            i = self.rng.choice(live)
            host = self.hosts[i]
            assert host is not None
            if kind.startswith("host SIGTERM"):
                host.signal(signal.SIGTERM)
                host.wait(90)
            else:
                os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait(30)
            self.fault(kind, done)
            self.start(i)
        elif kind == "postgres restart":
            restart_postgres()
            self.fault(kind, done)

    def stop(self) -> None:
        for host in self.hosts:
            if host is not None and host.proc.poll() is None:
                host.signal(signal.SIGTERM)
                host.wait(90)
            if host is not None:
                host.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=0.5, help="seconds between worker kills")
    parser.add_argument("--host-every", type=float, default=15.0, help="seconds between whole-host faults")
    parser.add_argument("--db-restart-every", type=float, default=40.0, help="PostgreSQL restarts (0: none)")
    parser.add_argument("--minutes", type=float, default=30.0, help="give up after this long")
    parser.add_argument("--seed", type=int, default=7)
    ns = parser.parse_args(argv)

    url = _database(ns.backend)
    prepare(url)
    print(f"soak: enqueueing {ns.jobs:,} jobs into {url}", file=sys.stderr)
    for start in range(0, ns.jobs, 5000):
        enqueue(url, [basic.record.call(f"soak-{i}", 0.002) for i in range(start, min(ns.jobs, start + 5000))])
    hosts = 2 if ns.backend == "postgresql" else 1
    soak = Soak(url, hosts, ns.workers, ns.concurrency, ns.seed)
    began = time.monotonic()
    for i in range(hosts):
        soak.start(i)
    next_host = began + ns.host_every
    next_db = began + ns.db_restart_every if ns.backend == "postgresql" and ns.db_restart_every else float("inf")
    host_kinds = ["host SIGTERM + restart", "host kill -9 + restart"]
    done, last_report = 0, began
    try:
        while time.monotonic() - began < ns.minutes * 60:
            time.sleep(ns.kill_every)
            done = soak.succeeded()
            soak.settle_recoveries(done)
            if done >= ns.jobs:
                break
            now = time.monotonic()
            if now >= next_db:
                soak.inject("postgres restart", done)
                next_db = now + ns.db_restart_every
            elif now >= next_host:
                soak.inject(host_kinds[soak.faults["host SIGTERM + restart"] > soak.faults["host kill -9 + restart"]], done)
                next_host = now + ns.host_every
            else:
                soak.inject("worker kill -9", done)
            if now - last_report > 10:
                last_report = now
                print(
                    f"soak: {done:,}/{ns.jobs:,} succeeded after {now - began:.0f}s, faults {sum(soak.faults.values())}",
                    file=sys.stderr,
                )
    finally:
        soak.stop()
    elapsed = time.monotonic() - began
    print(table(url, ns, soak, elapsed))
    final = states(url)
    return 0 if final == {"succeeded": ns.jobs} and sql(url, "SELECT value FROM counters") == [(ns.jobs,)] else 1


def table(url: str, ns: Any, soak: Soak, elapsed: float) -> str:
    final = states(url)
    ran, distinct = sql(url, "SELECT count(*), count(DISTINCT tag) FROM ran")[0]
    counter = sql(url, "SELECT value FROM counters")[0][0]
    lost_attempts = sql(url, "SELECT COALESCE(sum(lost), 0) FROM runner_jobs")[0][0]
    rows = [
        ("backend", ns.backend),
        ("jobs", f"{ns.jobs:,}"),
        ("hosts x workers x concurrency", f"{2 if ns.backend == 'postgresql' else 1} x {ns.workers} x {ns.concurrency}"),
        ("wall time", f"{elapsed:.0f} s"),
        *((f"faults: {kind}", str(n)) for kind, n in sorted(soak.faults.items())),
        ("faults: total", str(sum(soak.faults.values()))),
        ("jobs lost (not succeeded)", str(ns.jobs - final.get("succeeded", 0))),
        ("jobs run twice (rows - distinct tags)", str(ran - distinct)),
        ("counter", f"{counter:,} (expected {ns.jobs:,})"),
        ("final states", ", ".join(f"{k}={v:,}" for k, v in sorted(final.items()))),
        ("attempts lost to faults and re-run", f"{lost_attempts:,}"),
    ]
    for kind, times in sorted(soak.recovery.items()):
        rows.append((f"recovery after {kind} (median / max)", f"{statistics.median(times):.2f} s / {max(times):.2f} s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
