"""Figures from the counters (runner_stats): throughput per minute, quantiles from histogram
buckets, and what each job name costs the database. Pure functions, tested without a database.

Quantiles are estimates, interpolated inside the bucket that holds them (Prometheus's
``histogram_quantile``): exact to the bucket, never a scan of the jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..decide import LOST, RETRIED
from ..drivers import StatsRow
from ..schema import BUCKETS
from ..wire import State

__all__ = ["RAN", "CostLine", "Minute", "QueueFlow", "cost_lines", "minutes", "quantile", "queue_flows"]

RAN = (State.SUCCEEDED, State.FAILED, RETRIED)  # attempts that ran their course: timed by the histograms


def quantile(q: float, cumulative: Sequence[float], total: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram with cumulative ``BUCKETS`` counts and ``total``
    observations; None without observations. Past the last bound: that bound."""
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(BUCKETS, cumulative):
        if count >= rank:
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return BUCKETS[-1]


@dataclass
class Histogram:
    """Cumulative bucket counts and the number of observations, summed over counter rows."""

    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    total: float = 0.0
    seconds: float = 0.0

    def add(self, row: StatsRow, prefix: str) -> None:
        values = row.values
        for i in range(len(BUCKETS)):
            self.buckets[i] += values[f"{prefix}_b{i}"]
        self.total += values["n"]
        self.seconds += values[f"{prefix}_s"]

    def quantile(self, q: float) -> float | None:
        return quantile(q, self.buckets, self.total)


@dataclass
class Minute:
    """One minute of the chart: attempts by kind, and the run-time / wait histograms."""

    minute: int
    kinds: dict[str, float] = field(default_factory=dict)
    run: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)


def minutes(rows: Iterable[StatsRow], first: int, last: int, queue: str | None = None) -> list[Minute]:
    """One ``Minute`` for every minute from ``first`` to ``last`` (empty ones included)."""
    series = {m: Minute(m) for m in range(first, last + 1)}
    for row in rows:
        slot = series.get(row.minute)
        if slot is None or (queue is not None and row.queue != queue):
            continue
        slot.kinds[row.kind] = slot.kinds.get(row.kind, 0.0) + row.values["n"]
        if row.kind in RAN:
            slot.run.add(row, "run")
            slot.wait.add(row, "wait")
    return list(series.values())


@dataclass
class QueueFlow:
    """A queue's last hour: attempts by kind and the run-time / wait histograms."""

    queue: str
    kinds: dict[str, float] = field(default_factory=dict)
    run: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)

    @property
    def succeeded(self) -> float:
        return self.kinds.get(State.SUCCEEDED, 0.0)

    @property
    def failed(self) -> float:
        return self.kinds.get(State.FAILED, 0.0)

    @property
    def retried(self) -> float:
        return self.kinds.get(RETRIED, 0.0) + self.kinds.get(LOST, 0.0)


def queue_flows(rows: Iterable[StatsRow]) -> dict[str, QueueFlow]:
    flows: dict[str, QueueFlow] = {}
    for row in rows:
        flow = flows.setdefault(row.queue, QueueFlow(row.queue))
        flow.kinds[row.kind] = flow.kinds.get(row.kind, 0.0) + row.values["n"]
        if row.kind in RAN:
            flow.run.add(row, "run")
            flow.wait.add(row, "wait")
    return flows


@dataclass
class CostLine:
    """What one job name did to the database, per measured attempt on average."""

    name: str
    attempts: float  # attempts that ended (any kind)
    measured: float  # attempts whose cost was measured (session-taking jobs)
    run_ms: float  # mean run time of the attempts that ran
    db_ms: float
    statements: float
    rows: float
    tx_ms: float
    pool_wait_ms: float


def cost_lines(rows: Iterable[StatsRow]) -> list[CostLine]:
    """Per job name, the mean cost of a measured attempt, over the rows given."""
    sums: dict[str, dict[str, float]] = {}
    for row in rows:
        acc = sums.setdefault(row.name, {"n": 0.0, "ran": 0.0, "run_s": 0.0, "costed": 0.0, "db_s": 0.0,
                                         "statements": 0.0, "db_rows": 0.0, "tx_s": 0.0, "pool_wait_s": 0.0})  # fmt: skip
        acc["n"] += row.values["n"]
        if row.kind in RAN:
            acc["ran"] += row.values["n"]
            acc["run_s"] += row.values["run_s"]
        for key in ("costed", "db_s", "statements", "db_rows", "tx_s", "pool_wait_s"):
            acc[key] += row.values[key]
    lines = []
    for name, acc in sums.items():
        per = acc["costed"] or 1.0
        lines.append(
            CostLine(
                name=name,
                attempts=acc["n"],
                measured=acc["costed"],
                run_ms=1000 * acc["run_s"] / acc["ran"] if acc["ran"] else 0.0,
                db_ms=1000 * acc["db_s"] / per,
                statements=acc["statements"] / per,
                rows=acc["db_rows"] / per,
                tx_ms=1000 * acc["tx_s"] / per,
                pool_wait_ms=1000 * acc["pool_wait_s"] / per,
            )  # fmt: skip
        )
    return lines
