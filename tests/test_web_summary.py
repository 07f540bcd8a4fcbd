"""The dashboard's arithmetic, without a database: quantiles from cumulative buckets, the
per-minute series, the cost lines, the charts, and the filters' parsing."""

from __future__ import annotations

import pytest

from runner.drivers import StatsRow
from runner.schema import BUCKETS, STATS_SUMS
from runner.web.charts import latency_chart, throughput_chart
from runner.web.forms import BadRequest, parse_ids, parse_query, parse_time
from runner.web.summary import cost_lines, minutes, quantile


def row(minute: int, kind: str, n: int, seconds: float, name: str = "job", costed: int = 0) -> StatsRow:
    values = dict.fromkeys(STATS_SUMS, 0.0)
    values.update(n=n, run_s=seconds * n, wait_s=seconds * n, costed=costed, statements=3 * costed, db_s=0.002 * costed)
    for i, bound in enumerate(BUCKETS):
        values[f"run_b{i}"] = values[f"wait_b{i}"] = n if seconds <= bound else 0
    return StatsRow(minute, name, "default", kind, values)


def test_quantiles_interpolate_inside_the_bucket_that_holds_them() -> None:
    cumulative = [0.0] * len(BUCKETS)
    i = BUCKETS.index(0.1)
    for k in range(i, len(BUCKETS)):
        cumulative[k] = 100.0  # all 100 observations in (0.05, 0.1]
    assert quantile(0.5, cumulative, 100) == pytest.approx(0.075)
    assert quantile(0.95, cumulative, 100) == pytest.approx(0.0975)
    assert quantile(0.5, [0.0] * len(BUCKETS), 0) is None
    assert quantile(0.99, [0.0] * len(BUCKETS), 10) == BUCKETS[-1], "past the last bound: that bound"


def test_minutes_fill_the_hour_and_sum_kinds() -> None:
    series = minutes([row(10, "succeeded", 5, 0.02), row(10, "failed", 1, 0.02), row(12, "retried", 2, 0.5)], 10, 13)
    assert [m.minute for m in series] == [10, 11, 12, 13]
    assert series[0].kinds == {"succeeded": 5, "failed": 1} and series[1].kinds == {}
    assert series[0].run.total == 6 and series[2].run.quantile(0.5) == pytest.approx(0.375)
    assert "5 succeeded, 1 failed" in throughput_chart(series) and "<svg" in latency_chart(series)


def test_cost_lines_are_means_per_measured_attempt() -> None:
    [line] = cost_lines([row(0, "succeeded", 10, 0.01, costed=4), row(0, "failed", 2, 0.03, costed=2)])
    assert (line.attempts, line.measured, line.statements) == (12, 6, 3.0)
    assert line.db_ms == pytest.approx(2.0) and line.run_ms == pytest.approx(1000 * (0.1 + 0.06) / 12)


def test_filters_parse_or_say_what_is_accepted() -> None:
    q = parse_query({"state": "failed", "queue": " emails ", "q": "sync", "id": "42", "since": "2026-01-31T14:05", "limit": "20"})
    assert (q.where.state, q.where.queue, q.where.contains, q.where.job_id, q.limit) == ("failed", "emails", "sync", 42, 20)
    assert q.where.created_after == parse_time("2026-01-31T14:05:00+00:00", "since")
    assert parse_time("1700000000.5", "since") == 1700000000.5
    assert parse_query({}).limit == 50 and parse_query({"state": ""}).where.state is None
    for bad in ({"state": "done"}, {"id": "1e3"}, {"limit": "501"}, {"until": "tomorrow"}, {"key": "a\x00b"}):
        with pytest.raises(BadRequest, match=r"accepted|at most"):
            parse_query(bad)
    assert parse_ids(["3", " 4 "]) == [3, 4]
    with pytest.raises(BadRequest, match="is not a job id"):
        parse_ids(["3; DROP TABLE runner_jobs"])
