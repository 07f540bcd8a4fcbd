"""Turn per-run figures into the report: one table (median of the runs, min–max), runner's ratios
to each reference, and the targets of issue 6 marked met or missed (``versus.py`` holds the
ratios to the limit and the best peer, and this issue's targets)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Results = dict[str, dict[str, list[float]]]  # row -> figure -> one value per run

RUNNER_PG, RUNNER_SQLITE, BARE = "runner PostgreSQL", "runner SQLite", "bare asyncio PostgreSQL (W2 only)"
PGQ = "pgqueuer PostgreSQL"
CELERY_PREFIX = "Celery"
# The W2 job with its completion written after its commit (at-least-once, as pgqueuer and Celery):
# what runner's exactly-once statement costs, measured in the same run.
RUNNER_PG_ALO = "runner PostgreSQL, at-least-once (W2 only)"
# The W2 job without the per-attempt database cost measurement (--no-db-cost): its overhead.
RUNNER_PG_NOCOST = "runner PostgreSQL, --no-db-cost (W2 only)"

COLUMNS = [
    ("enqueue_sync", "W1 enq. single sync /s"),
    ("enqueue_async1", "W1 enq. single async, 1 at a time /s"),
    ("enqueue_async", "W1 enq. single async, 16 producers /s"),
    ("enqueue_bulk_1k", "W1 enq. bulk, calls of 1,000 /s"),
    ("enqueue_bulk", "W1 enq. bulk, 1 call of N /s"),
    ("drain", "W1 drain /s"),
    ("startup_s", "start-up s"),
    ("w2", "W2 jobs/s"),
    ("w2_failed", "W2 failed"),
    ("w2_connections", "W2 conns"),
    ("w3_p50", "W3 p50 ms"),
    ("w3_p95", "W3 p95 ms"),
    ("w3_p99", "W3 p99 ms"),
    ("rss_mb", "RSS/worker MB"),
    ("idle_cpu_pct", "idle host CPU %"),
    ("idle_db_cpu_pct", "idle DB backends CPU %"),
]
RATIO_KEYS = [("enqueue_async", "enq. async"), ("enqueue_bulk", "enq. bulk"), ("drain", "W1 drain"), ("w2", "W2")]


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def median(results: Results, row: str, key: str) -> float:
    values = _finite(results.get(row, {}).get(key, []))
    return statistics.median(values) if values else float("nan")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def _cell(values: list[float]) -> str:
    values = _finite(values)
    if not values:
        return "—"
    m = statistics.median(values)
    return _fmt(m) if len(values) == 1 or min(values) == max(values) else f"{_fmt(m)} ({_fmt(min(values))}–{_fmt(max(values))})"


def render(results: Results) -> str:
    lines = ["| system | " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row, figures in results.items():
        lines.append(f"| {row} | " + " | ".join(_cell(figures.get(key, [])) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def ratios(results: Results) -> str:
    """runner ÷ reference for each throughput figure both have (higher is better for runner)."""
    runners = [r for r in (RUNNER_PG, RUNNER_SQLITE) if r in results]
    refs = [r for r in results if r not in runners and not r.startswith("limit")]  # limits: versus.py
    if not runners or not refs:
        return ""
    head = "| runner ÷ reference | " + " | ".join(f"{r.split()[1]}: {label}" for r in runners for _, label in RATIO_KEYS) + " |"
    lines = [head, "|---" * (1 + len(runners) * len(RATIO_KEYS)) + "|"]
    for ref in refs:
        cells = []
        for runner in runners:
            for key, _ in RATIO_KEYS:
                value = median(results, runner, key) / median(results, ref, key)
                cells.append("—" if math.isnan(value) else f"{value:,.2f}×")
        lines.append(f"| {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    goal: float
    at_most: bool = False  # the value must be ≤ goal (latency, memory, connections)
    unit: str = ""

    def line(self) -> str:
        if math.isnan(self.value):
            return f"| {self.name} | — | not measured |"
        met = self.value <= self.goal if self.at_most else self.value >= self.goal
        return f"| {self.name} | {_fmt(self.value)}{self.unit} | {'met' if met else 'MISSED'} |"


def targets(results: Results, workers: int, concurrency: int, overflow: int = 2) -> str:
    pg, lite = RUNNER_PG, RUNNER_SQLITE
    celery = [median(results, r, "w2") for r in results if r.startswith("Celery")]
    celery_best = max(_finite(celery), default=float("nan"))
    conn_limit = workers * (concurrency + overflow) + workers

    def rel(row: str, ref: str, key: str) -> float:
        return median(results, row, key) / median(results, ref, key)

    rows = [
        Target("W2 PG ≥ 10× Celery (best of -c 2/-c 8)", median(results, pg, "w2") / celery_best, 10, unit="×"),
        Target("W2 PG ≥ 3× pgqueuer", rel(pg, PGQ, "w2"), 3, unit="×"),
        Target("W2 PG ≥ 60 % of bare asyncio", rel(pg, BARE, "w2") * 100, 60, unit=" %"),
        Target(
            f"W2 PG connections ≤ w×(c+overflow)+w = {conn_limit}",
            median(results, pg, "w2_connections"),
            conn_limit,
            at_most=True,
        ),
        Target(
            "W2 PG: measuring each attempt's database cost costs ≤ 5 % (vs --no-db-cost)",
            (1 - rel(pg, RUNNER_PG_NOCOST, "w2")) * 100,
            5,
            at_most=True,
            unit=" %",
        ),
        Target("W1 drain PG ≥ 10,000/s", median(results, pg, "drain"), 10_000, unit="/s"),
        Target("W1 drain PG ≥ 3× pgqueuer", rel(pg, PGQ, "drain"), 3, unit="×"),
        Target("W1 drain SQLite ≥ 10,000/s", median(results, lite, "drain"), 10_000, unit="/s"),
        Target("W1 bulk enqueue PG ≥ 100,000/s", median(results, pg, "enqueue_bulk"), 100_000, unit="/s"),
        Target("W1 bulk enqueue PG ≥ 2.5× pgqueuer bulk", rel(pg, PGQ, "enqueue_bulk"), 2.5, unit="×"),
        Target(
            "W1 single async enqueue PG ≥ 3,000/s (concurrent producers)", median(results, pg, "enqueue_async"), 3_000, unit="/s"
        ),
        Target("W3 PG p50 ≤ 2 ms", median(results, pg, "w3_p50"), 2, at_most=True, unit=" ms"),
        Target("W3 PG p99 ≤ 6 ms", median(results, pg, "w3_p99"), 6, at_most=True, unit=" ms"),
        Target("W3 SQLite p50 ≤ 15 ms", median(results, lite, "w3_p50"), 15, at_most=True, unit=" ms"),
        Target("W3 SQLite p99 ≤ 50 ms", median(results, lite, "w3_p99"), 50, at_most=True, unit=" ms"),
        Target("worker RSS ≤ 60 MB (runner PG, peak)", median(results, pg, "rss_mb"), 60, at_most=True, unit=" MB"),
        Target("worker RSS ≤ 60 MB (runner SQLite, peak)", median(results, lite, "rss_mb"), 60, at_most=True, unit=" MB"),
    ]
    return "\n".join(["| target (issue 6) | measured (median) | |", "|---|---|---|", *(t.line() for t in rows)])


def checks(results: Results) -> str:
    """W2 correctness: exactly N users active in every run of every row."""
    lines = []
    for row, figures in results.items():
        off = _finite(figures.get("w2_active_off", []))
        if off:
            bad = [v for v in off if v != 0]
            lines.append(f"- {row}: W2 active users == N in {len(off) - len(bad)} of {len(off)} runs"
                         + (f" (off by {', '.join(f'{v:+.0f}' for v in bad)})" if bad else ""))  # fmt: skip
    bare = median(results, BARE, "w2")
    for row in (RUNNER_PG, RUNNER_PG_ALO, RUNNER_SQLITE):
        value = median(results, row, "w2")
        if not math.isnan(bare) and not math.isnan(value):
            lines.append(f"- {row}: W2 rate = {value / bare:.0%} of the bare asyncio script (same total concurrency, no queue)")
    return "\n".join(lines)
