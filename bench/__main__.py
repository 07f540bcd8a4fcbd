"""``python -m bench``: every system, every workload, N runs, one table.

Rows: runner on PostgreSQL and on SQLite (workers = cores), pgqueuer on the same PostgreSQL,
Celery 5 on Redis with prefork -c 2 and -c 8 (W2 against the same PostgreSQL, NullPool +
asyncio.run, the way the field does it), and the W2 body run by a bare asyncio script. Runs are
interleaved (run 1 of every system, then run 2, …) so drift in a noisy machine spreads evenly.
Each figure is the median of the runs with min–max; the report also goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from . import idle, limit_pg, limit_sqlite, ref_bare, ref_celery, ref_pgqueuer, seed, workloads_runner
from .procs import stop_all
from .profile_summary import summarise
from .settings import WORK
from .table import BARE, PGQ, RUNNER_PG, RUNNER_PG_ALO, RUNNER_PG_NOCOST, RUNNER_SQLITE, Results, checks, ratios, render, targets
from .versus import LIMIT_PG, LIMIT_SQLITE, costs_table, limit_targets, versus

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("runner-pg", "limit-pg", "runner-sqlite", "limit-sqlite", "pgqueuer", "celery", "bare")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test of the harness")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median, min–max); default 3")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}; 'runner' / 'limit' mean both rows")  # fmt: skip
    parser.add_argument("--n-w1", type=int, default=20_000, help="W1 no-op jobs drained (and bulk-enqueued); default 20000")
    parser.add_argument(
        "--n-single", type=int, default=2_000, help="jobs timed for each single-call enqueue figure; default 2000"
    )
    parser.add_argument("--n-w2", type=int, default=5_000, help="W2 jobs, one per distinct user; default 5000")
    parser.add_argument("--users", type=int, default=10_000, help="users (with profiles) seeded for W2; default 10000")
    parser.add_argument("--n-w3", type=int, default=500, help="W3 jobs, enqueued one at a time; default 500")
    parser.add_argument("--w3-rate", type=float, default=100.0, help="W3 enqueue rate per second; default 100")
    parser.add_argument(
        "-w", "--workers", type=int, default=os.cpu_count() or 2, help="runner/pgqueuer worker processes; default: cores"
    )
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="jobs at once per worker; default 32")
    parser.add_argument("--celery-concurrency", default="2,8", help="Celery prefork pool sizes, one row each; default 2,8")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle runner serve sampled this long; default 20")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy runner's workers during the first PostgreSQL W1 drain and W2 (bench/results/*.pyspy.txt)")  # fmt: skip
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.runs, ns.n_w1, ns.n_single, ns.n_w2, ns.users, ns.n_w3, ns.idle_seconds = 1, 2_000, 500, 500, 1_000, 100, 5.0
    only = set(ns.only.split(","))
    for both in ("runner", "limit"):
        if both in only:
            only |= {f"{both}-pg", f"{both}-sqlite"}
    unknown = only - set(SYSTEMS) - {"runner", "limit"}
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    ns.only = only
    return ns


class Bench:
    """Runs steps, keeps their figures, survives a failed step (retried once: other suites on a
    shared machine restart PostgreSQL) and writes the report."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.results: Results = {}
        self.failures: list[str] = []
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

    def step(self, row: str, name: str, fn: Callable[[], dict[str, float]]) -> None:
        for attempt in (1, 2):
            t = time.perf_counter()
            print(f"bench: {row}: {name}{' (retry)' if attempt == 2 else ''}...", file=sys.stderr, flush=True)
            try:
                figures = fn()
            except Exception:
                print(f"bench: {row}: {name} FAILED\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                stop_all()
                if attempt == 2:
                    self.failures.append(f"{row} {name}: {traceback.format_exc().strip().splitlines()[-1]}")
                    return
                asyncio.run(seed.wait_for_postgres())
                continue
            for key, value in figures.items():
                self.results.setdefault(row, {}).setdefault(key, []).append(value)
            shown = ", ".join(f"{k}={v:,.1f}" for k, v in figures.items())
            print(f"bench: {row}: {name} done in {time.perf_counter() - t:.0f}s: {shown}", file=sys.stderr, flush=True)
            return

    def run_once(self, run: int) -> None:
        ns, w, c = self.ns, self.ns.workers, self.ns.concurrency

        def pg(name: str) -> str:
            return asyncio.run(seed.fresh_postgres(name))

        def lite(name: str) -> str:
            return seed.fresh_sqlite(name)

        if "runner-pg" in ns.only:
            profile = self.profile_path() if ns.profile and run == 1 else None
            self.step(RUNNER_PG, "W1", lambda: workloads_runner.run_w1(pg("runner"), ns.n_w1, ns.n_single, w, c, profile))
            w2_profile = self.profile_path("w2") if ns.profile and run == 1 else None
            self.step(RUNNER_PG, "W2", lambda: workloads_runner.run_w2(pg("runner"), ns.n_w2, ns.users, w, c, profile=w2_profile))
            self.step(RUNNER_PG, "W3", lambda: workloads_runner.run_w3(pg("runner"), ns.n_w3, ns.w3_rate, w, c))
            self.step(
                RUNNER_PG_ALO, "W2", lambda: workloads_runner.run_w2(pg("runner"), ns.n_w2, ns.users, w, c, at_least_once=True)
            )
            # The same W2 with --no-db-cost: what measuring each attempt's database cost costs.
            self.step(
                RUNNER_PG_NOCOST, "W2", lambda: workloads_runner.run_w2(pg("runner"), ns.n_w2, ns.users, w, c, db_cost=False)
            )
            self.step(RUNNER_PG, "idle", lambda: idle.run_idle(pg("runner"), w, c, ns.idle_seconds))
        if "limit-pg" in ns.only:
            self.step(LIMIT_PG, "W1", lambda: limit_pg.run_w1(pg("limit"), ns.n_w1, ns.n_single, w, c))
            self.step(LIMIT_PG, "W2", lambda: limit_pg.run_w2(pg("limit"), ns.n_w2, ns.users, w, c))
            self.step(LIMIT_PG, "W3", lambda: limit_pg.run_w3(pg("limit"), ns.n_w3, ns.w3_rate, w, c))
        if "runner-sqlite" in ns.only:
            self.step(RUNNER_SQLITE, "W1", lambda: workloads_runner.run_w1(lite("runner"), ns.n_w1, ns.n_single, w, c))
            self.step(RUNNER_SQLITE, "W2", lambda: workloads_runner.run_w2(lite("runner"), ns.n_w2, ns.users, w, c))
            self.step(RUNNER_SQLITE, "W3", lambda: workloads_runner.run_w3(lite("runner"), ns.n_w3, ns.w3_rate, w, c))
            self.step(RUNNER_SQLITE, "idle", lambda: idle.run_idle(lite("runner"), w, c, ns.idle_seconds))
        if "limit-sqlite" in ns.only:
            self.step(LIMIT_SQLITE, "W1", lambda: limit_sqlite.run_w1(lite("limit"), ns.n_w1, ns.n_single, w, c))
            self.step(LIMIT_SQLITE, "W2", lambda: limit_sqlite.run_w2(lite("limit"), ns.n_w2, ns.users, w, c))
        if "pgqueuer" in ns.only:
            self.step(PGQ, "W1", lambda: ref_pgqueuer.run_w1(pg("pgq"), ns.n_w1, ns.n_single, w, c))
            self.step(PGQ, "W2", lambda: ref_pgqueuer.run_w2(pg("pgq"), ns.n_w2, ns.users, w, c))
            self.step(PGQ, "W3", lambda: ref_pgqueuer.run_w3(pg("pgq"), ns.n_w3, ns.w3_rate, w, c))
        if "celery" in ns.only:
            for cc in (int(x) for x in ns.celery_concurrency.split(",")):
                row = f"Celery Redis prefork -c {cc}"
                self.step(row, "W1", lambda cc=cc: ref_celery.run_w1(ns.n_w1, ns.n_single, cc))
                self.step(row, "W2", lambda cc=cc: ref_celery.run_w2(pg("celery"), ns.n_w2, ns.users, cc))
                self.step(row, "W3", lambda cc=cc: ref_celery.run_w3(ns.n_w3, ns.w3_rate, cc))
        if "bare" in ns.only:
            self.step(BARE, "W2", lambda: ref_bare.run_w2(pg("bare"), ns.n_w2, ns.users, w * c))

    def profile_path(self, workload: str = "w1-drain") -> Path:
        return RESULTS / f"{self.stamp}-{workload}-pg.pyspy.txt"

    def report(self, runs_done: int) -> str:
        ns = self.ns
        header = (
            f"runner, pgqueuer and the limits: {ns.workers} worker processes × {ns.concurrency} concurrent jobs; Celery: "
            f"one prefork worker per row. W1 N={ns.n_w1:,} (single-call enqueue timed over {ns.n_single:,} calls: sync "
            f"from one thread, async one awaited call at a time, and async from {workloads_runner.PRODUCERS} concurrent "
            f"producers), W2 N={ns.n_w2:,} of {ns.users:,} users, W3 {ns.n_w3} jobs at {ns.w3_rate:g}/s, idle host "
            f"sampled {ns.idle_seconds:g} s. Median of {runs_done} run(s) (min–max). "
            f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}."
        )
        parts = [header, render(self.results), "runner ÷ its limit and ÷ the best peer:", versus(self.results), costs_table(self.results),
                 limit_targets(self.results), ratios(self.results), checks(self.results),
                 targets(self.results, ns.workers, ns.concurrency)]  # fmt: skip
        for workload, title in (("w1-drain", "W1 drain"), ("w2", "W2")):
            profile = self.profile_path(workload)
            if profile.exists():
                parts.append(f"Profile of runner serve during the PostgreSQL {title} (py-spy):\n" + summarise(profile))
        if self.failures:
            parts.append("Failed steps (missing from the medians):\n" + "\n".join(f"- {f}" for f in self.failures))
        return "\n\n".join(p for p in parts if p)

    def save(self, runs_done: int) -> str:
        report = self.report(runs_done)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{self.stamp}.md").write_text(report + "\n")
        args = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(self.ns).items()}
        payload: dict[str, Any] = {"args": args, "runs_done": runs_done, "results": self.results, "failures": self.failures}
        (RESULTS / f"{self.stamp}.json").write_text(json.dumps(payload, indent=1))
        return report


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: children are stopped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["growth"]:
        from .growth import main as growth_main

        return growth_main(argv[1:])
    ns = _args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(ns)
    print(f"bench: logs of child processes in {WORK / 'logs'}", file=sys.stderr)
    try:
        for run in range(1, ns.runs + 1):
            print(f"bench: run {run}/{ns.runs}", file=sys.stderr, flush=True)
            bench.run_once(run)
            bench.save(run)  # a partial report survives an interrupted benchmark
        print(bench.save(ns.runs))
        print(f"\nbench: written to {RESULTS / bench.stamp}.md and .json", file=sys.stderr)
    finally:
        stop_all()
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
