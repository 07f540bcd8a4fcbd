"""A wide chord under kill -9, with real `runner serve` hosts: every member's effect happens once
and the callback runs exactly once, with every result, however often workers die mid-release."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from runner import create_engine
from runner.workflows import chord
from tests.apps import flows

from .conftest import sql

pytestmark = pytest.mark.slow

MEMBERS = 1000


def prepare(url: str) -> int:
    async def run() -> int:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS ran_nodes (name TEXT, at DOUBLE PRECISION, pid INTEGER)"))
        await engine.dispose()
        flows.app.configure(broker=url)
        try:
            handle = await chord([flows.member.call(i, 0.03) for i in range(MEMBERS)], flows.collect.call()).defer_async()
        finally:
            await flows.app.client.aclose()
        return handle.id

    return anyio.run(run)


def test_a_thousand_member_chord_survives_kill_9_every_half_second(broker_url: str, serve: Any) -> None:
    callback = prepare(broker_url)
    procs = [
        serve(
            "-A", "tests.apps.flows", "--broker", broker_url, "-w", "2", "-c", "8", "--burst",
            "--node", f"host-{h}", "--lease-ttl", "3", env={"RUNNER_MAX_LOST": "1000"},
        )
        for h in range(2)
    ]  # fmt: skip
    rng, kills, deadline = random.Random(7), 0, time.monotonic() + 240
    while any(p.proc.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
        pids = [pid for p in procs for pid in p.worker_pids()]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    for proc in procs:
        assert proc.wait(240) == 0, proc.output[-3000:]
    assert kills >= 5, f"only {kills} kills: the run was too short to prove anything"
    states = dict(sql(broker_url, "SELECT state, count(*) FROM runner_jobs GROUP BY state"))
    assert states == {"succeeded": MEMBERS + 1}, states
    total = sum(range(MEMBERS))
    assert sql(broker_url, "SELECT name FROM ran_nodes WHERE name LIKE 'callback:%'") == [(f"callback:{MEMBERS}:{total}",)]
    assert sql(broker_url, f"SELECT result FROM runner_jobs WHERE id = {callback}") == [(str(total),)]
    members = sql(broker_url, "SELECT count(*), count(DISTINCT name) FROM ran_nodes WHERE name LIKE 'm%'")
    assert members == [(MEMBERS, MEMBERS)], f"each member's write happens exactly once: {members}"
