"""The growth benchmark EXPLAINs runner's hot statements by importing them from the driver: a
rename in the driver must fail here, not in the middle of a long benchmark run."""

from __future__ import annotations

import math

import pytest

from bench.explain import explain_hot
from runner.drivers import open_driver

pytestmark = pytest.mark.anyio


async def test_the_benchmark_explains_every_hot_statement_of_the_driver(pg_url: str) -> None:
    driver = open_driver(pg_url, pool_size=1)
    try:
        await driver.migrate()
    finally:
        await driver.dispose()
    plans = {p.statement: p for p in await explain_hot(pg_url)}
    assert len(plans) == 5, sorted(plans)
    assert all(math.isfinite(p.ms) for p in plans.values()), [p.line() for p in plans.values()]
    combined = next(p for name, p in plans.items() if "one statement" in name)
    assert "CTE done" in combined.text and "CTE claimed" in combined.text and "LockRows" in combined.text
