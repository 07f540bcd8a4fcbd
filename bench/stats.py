"""Small statistics the workloads share: percentiles of latencies, and the rate of calls made
one at a time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

# A call that waits for a commit (a WAL flush) follows the disk, which other work on the machine
# shares: every one-call-at-a-time figure (runner, the limit, each peer) is the best of SEGMENTS
# runs of n / SEGMENTS calls, so a stall hurts none of them more than another.
SEGMENTS = 4


def best_rate(call: Callable[[], object], n: int) -> float:
    """Calls per second of ``call()``, one at a time: the best of SEGMENTS segments."""
    best, k = 0.0, max(1, n // SEGMENTS)
    for _ in range(SEGMENTS):
        t = time.perf_counter()
        for _ in range(k):
            call()
        best = max(best, k / (time.perf_counter() - t))
    return best


async def best_rate_async(call: Callable[[], Awaitable[object]], n: int) -> float:
    """The same for ``await call()``."""
    best, k = 0.0, max(1, n // SEGMENTS)
    for _ in range(SEGMENTS):
        t = time.perf_counter()
        for _ in range(k):
            await call()
        best = max(best, k / (time.perf_counter() - t))
    return best


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_figures(ms: list[float]) -> dict[str, float]:
    """The W3 columns from per-job enqueue→start latencies in milliseconds."""
    return {"w3_p50": percentile(ms, 50), "w3_p95": percentile(ms, 95), "w3_p99": percentile(ms, 99)}
