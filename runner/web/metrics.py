"""``/metrics`` in Prometheus's text format, built from the queue database at scrape time.

Every figure is read through the driver, so every host's scrape target returns the same numbers
and nothing is counted twice or lost with a process: gauges from the jobs and workers tables
(partial indexes: exact and cheap), counters and histograms from ``runner_stats``, which each
worker writes in the statement (PostgreSQL) or transaction (SQLite) that writes its outcomes.
Sum over instances only what is per host (none of these are); scrape one dashboard or all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..decide import GIVEN_BACK, LOST, RETRIED
from ..drivers import Driver, QueueCounts, StatsRow, WorkerRow
from ..schema import BUCKETS
from ..wire import State
from .summary import RAN

__all__ = ["CONTENT_TYPE", "METRICS", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIVE_WINDOW = 90.0  # a worker silent for longer is not counted alive (3 lease renewals at the default TTL)

# name -> help: the README's table is this.
METRICS = {
    "runner_queue_jobs": "Jobs in the table by queue and state (queued: runnable now; scheduled: waiting for run_at).",
    "runner_queue_oldest_runnable_age_seconds": "Age of the oldest runnable job per queue (the lag); 0 when none.",
    "runner_jobs_finished_total": "Jobs that reached a final state, by name, queue and outcome.",
    "runner_job_retries_total": "Attempts that failed and were retried.",
    "runner_job_lost_total": "Attempts whose worker died or went silent; the job was re-queued.",
    "runner_job_given_back_total": "Attempts handed back unfinished (shutdown, database away); not counted as attempts.",
    "runner_job_run_seconds": "Run time of attempts that ran to an end (succeeded, failed, retried).",
    "runner_job_queue_wait_seconds": "Time from runnable (run_at) to claimed, of the same attempts.",
    "runner_job_db_measured_total": "Attempts whose database cost was measured (jobs that take a session).",
    "runner_job_db_statements_total": "Statements sent by the measured attempts' sessions.",
    "runner_job_db_seconds_total": "Time spent in those statements.",
    "runner_job_db_rows_total": "Rows returned or affected by those statements.",
    "runner_job_db_transaction_seconds_total": "Time the measured attempts' transactions were open while the job ran.",
    "runner_job_db_pool_wait_seconds_total": "Time the measured attempts waited for a connection.",
    "runner_workers_alive": "Worker processes seen in the last 90 seconds, per node.",
    "runner_workers_jobs_capacity": "Concurrent job slots of the live workers, per node.",
    "runner_worker_rss_bytes": "Resident memory of each live worker.",
    "runner_metrics_scrape_duration_seconds": "Time this scrape spent reading the database.",
}
_QUEUE_STATES = ("queued", "scheduled", "running", "failed", "cancelled", "expired")
_COST_COUNTERS = (
    ("runner_job_db_measured", "costed"), ("runner_job_db_statements", "statements"), ("runner_job_db_seconds", "db_s"),
    ("runner_job_db_rows", "db_rows"), ("runner_job_db_transaction_seconds", "tx_s"),
    ("runner_job_db_pool_wait_seconds", "pool_wait_s"),
)  # fmt: skip


# Sums of seconds are added in whatever order the database and the folds leave their rows, so
# two scrapes of the same total can differ in the last bit, and Prometheus reads any decrease of
# a counter as a reset. A float series that drops by no more than rounding is reported as before.
_REPORTED: dict[tuple[str, str, str], float] = {}


def _steady(series: tuple[str, str, str], value: float) -> float:
    last = _REPORTED.get(series)
    if last is not None and last - 1e-9 * max(1.0, abs(last)) <= value < last:
        return last  # the same total, summed in another order: not a reset
    _REPORTED[series] = value
    return value


async def render_metrics(driver: Driver) -> bytes:
    """One scrape: read the database, return the exposition."""
    started = time.perf_counter()
    now = time.time()
    queues = await driver.queue_counts(now)
    totals = await driver.stats_totals()
    workers = await driver.workers(now - LIVE_WINDOW)
    nodes = [n.node for n in await driver.nodes(now - 86400)]  # hosts of the last day: 0 workers is a figure too
    families = list(_families(queues, totals, workers, nodes, now))
    scrape = GaugeMetricFamily("runner_metrics_scrape_duration_seconds", METRICS["runner_metrics_scrape_duration_seconds"])
    scrape.add_metric([], time.perf_counter() - started)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families, scrape]))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _families(
    queues: list[QueueCounts], totals: list[StatsRow], workers: list[WorkerRow], nodes: list[str], now: float
) -> Iterable[Metric]:
    depth = GaugeMetricFamily("runner_queue_jobs", METRICS["runner_queue_jobs"], labels=["queue", "state"])
    lag = GaugeMetricFamily(
        "runner_queue_oldest_runnable_age_seconds", METRICS["runner_queue_oldest_runnable_age_seconds"], labels=["queue"]
    )
    for q in queues:
        for state in _QUEUE_STATES:
            depth.add_metric([q.queue, state], getattr(q, state))
        lag.add_metric([q.queue], max(0.0, now - q.oldest_runnable_at) if q.oldest_runnable_at is not None else 0.0)
    yield depth
    yield lag
    yield from _counters(totals)
    yield from _workers(workers, nodes)


def _counters(totals: list[StatsRow]) -> Iterable[Metric]:
    finished = CounterMetricFamily(
        "runner_jobs_finished", METRICS["runner_jobs_finished_total"], labels=["name", "queue", "outcome"]
    )
    by_kind = {
        RETRIED: CounterMetricFamily("runner_job_retries", METRICS["runner_job_retries_total"], labels=["name", "queue"]),
        LOST: CounterMetricFamily("runner_job_lost", METRICS["runner_job_lost_total"], labels=["name", "queue"]),
        GIVEN_BACK: CounterMetricFamily(
            "runner_job_given_back", METRICS["runner_job_given_back_total"], labels=["name", "queue"]
        ),
    }
    costs = {
        column: CounterMetricFamily(name, METRICS[name + "_total"], labels=["name", "queue"]) for name, column in _COST_COUNTERS
    }
    run = HistogramMetricFamily("runner_job_run_seconds", METRICS["runner_job_run_seconds"], labels=["name", "queue"])
    wait = HistogramMetricFamily(
        "runner_job_queue_wait_seconds", METRICS["runner_job_queue_wait_seconds"], labels=["name", "queue"]
    )
    per_job: dict[tuple[str, str], dict[str, float]] = {}
    for row in totals:
        labels = [row.name, row.queue]
        if row.kind in State.FINAL:
            finished.add_metric([*labels, row.kind], row.values["n"])
        elif row.kind in by_kind:
            by_kind[row.kind].add_metric(labels, row.values["n"])
        acc = per_job.setdefault((row.name, row.queue), {})
        for _, column in _COST_COUNTERS:
            acc[column] = acc.get(column, 0.0) + row.values[column]
        if row.kind in RAN:
            for key, value in row.values.items():
                if key.startswith(("run_", "wait_")) or key == "n":
                    acc["h_" + key] = acc.get("h_" + key, 0.0) + value
    for (name, queue), acc in sorted(per_job.items()):
        for _, column in _COST_COUNTERS:
            costs[column].add_metric([name, queue], _steady((column, name, queue), acc[column]))
        if acc.get("h_n"):
            for family, prefix in ((run, "run"), (wait, "wait")):
                buckets = [(_le(b), acc[f"h_{prefix}_b{i}"]) for i, b in enumerate(BUCKETS)] + [("+Inf", acc["h_n"])]
                family.add_metric([name, queue], buckets, _steady((prefix, name, queue), acc[f"h_{prefix}_s"]))
    yield finished
    yield from by_kind.values()
    yield run
    yield wait
    yield from costs.values()


def _workers(workers: list[WorkerRow], nodes: list[str]) -> Iterable[Metric]:
    alive = GaugeMetricFamily("runner_workers_alive", METRICS["runner_workers_alive"], labels=["node"])
    capacity = GaugeMetricFamily("runner_workers_jobs_capacity", METRICS["runner_workers_jobs_capacity"], labels=["node"])
    rss = GaugeMetricFamily("runner_worker_rss_bytes", METRICS["runner_worker_rss_bytes"], labels=["node", "worker"])
    per_node: dict[str, list[WorkerRow]] = {node: [] for node in nodes}
    for w in workers:
        per_node.setdefault(w.node, []).append(w)
        rss.add_metric([w.node, w.owner], w.rss_kb * 1024)
    for node, rows in sorted(per_node.items()):
        alive.add_metric([node], len(rows))
        capacity.add_metric([node], sum(w.concurrency for w in rows))
    yield alive
    yield capacity
    yield rss


def _le(bound: float) -> str:
    return repr(float(bound))
