"""Small statistics the workloads share: percentiles of latencies."""

from __future__ import annotations

from collections.abc import Iterable


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
