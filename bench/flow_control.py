"""``python -m bench.flow_control``: the cost of flow control, in one run.

W1 drain (no-op jobs, ``runner serve --burst``) three ways on each backend: unlimited; with a
concurrency limit on every job (1,000 distinct keys, limit 5); and with a rate limit far above
the drain rate (every claim still checks and counts its starts). The target: both limited
drains at least 80 % of the unlimited one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

from . import seed
from .bench_app import app, noop, noop_limited, noop_rated
from .workloads_runner import _async_producer, _migrate, _span, serve


def drain(url: str, calls: list, workers: int, concurrency: int) -> float:
    asyncio.run(_migrate(url))

    async def enqueue() -> None:
        async with _async_producer(url):
            await app.defer_many_async(calls)

    asyncio.run(enqueue())
    child = serve("flow", url, workers, concurrency, "--burst")
    try:
        child.wait(600)
    finally:
        child.stop()
    done, first, last = _span(url)
    if done != len(calls):
        raise AssertionError(f"{done} of {len(calls)} jobs succeeded")
    return done / (last - first)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flow_control", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("-w", "--workers", type=int, default=2)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    ns = parser.parse_args(argv)
    kinds = {
        "unlimited": lambda: [noop.call() for _ in range(ns.n)],
        "concurrency (1,000 keys, limit 5)": lambda: [noop_limited.call(i % 1000) for i in range(ns.n)],
        "rate (far above the drain rate)": lambda: [noop_rated.call() for _ in range(ns.n)],
    }
    results: dict[tuple[str, str], list[float]] = {}
    for run in range(ns.runs):
        for backend in ("postgresql", "sqlite"):
            for kind, calls in kinds.items():
                url = asyncio.run(seed.fresh_postgres("flow")) if backend == "postgresql" else seed.fresh_sqlite("flow")
                rate = drain(url, calls(), ns.workers, ns.concurrency)
                results.setdefault((backend, kind), []).append(rate)
                print(f"bench.flow_control: run {run + 1} {backend} {kind}: {rate:,.0f}/s", file=sys.stderr, flush=True)
    print(f"\nW1 drain, {ns.n:,} no-op jobs, {ns.workers} workers × {ns.concurrency}; median of {ns.runs} run(s)\n")
    print("| backend | drain | jobs/s | ÷ unlimited | target ≥ 0.80 |")
    print("|---|---|---|---|---|")
    for backend in ("postgresql", "sqlite"):
        base = statistics.median(results[(backend, "unlimited")])
        for kind in kinds:
            rate = statistics.median(results[(backend, kind)])
            ratio = rate / base
            met = "—" if kind == "unlimited" else ("met" if ratio >= 0.8 else "MISSED")
            print(f"| {backend} | {kind} | {rate:,.0f} | {ratio:.2f}× | {met} |")


if __name__ == "__main__":
    main()
