"""``EXPLAIN (ANALYZE, BUFFERS)`` of runner's own hot statements, as runner's PostgreSQL driver
spells them (imported from it, not copied): the claim, the batched finish, a busy worker's
finish-and-claim statement, the one-outcome finish of the exactly-once path, and the retention
purge.

Run inside one transaction that is rolled back: ``queued`` no-ops are enqueued, the claim is
explained (ANALYZE executes it, so it really claims), then the finishes are explained on the
rows it claimed, then everything is undone. The summary line per statement is its execution
time and the shared buffers it touched; the full plans go to the growth report's files.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import asyncpg
import msgspec

from runner.drivers import postgres as pgdriver
from runner.drivers import sql as shared

BATCH = 32  # runner's claim batch at -c 32 is 16..32; one full batch
_record = msgspec.json.encode({"worker": "explain:0:0", "attempt": 1, "outcome": "succeeded"}).decode()


@dataclass
class Plan:
    statement: str
    ms: float
    buffers: str
    text: str

    def line(self) -> str:
        return f"{self.statement}: {self.ms:.3f} ms, {self.buffers or 'no buffers reported'}"


def _plan(name: str, rows: list[asyncpg.Record]) -> Plan:
    text = "\n".join(r[0] for r in rows)
    ms = float(m.group(1)) if (m := re.search(r"Execution Time: ([\d.]+) ms", text)) else float("nan")
    buffers = next((line.strip() for line in text.splitlines() if "Buffers:" in line), "")
    return Plan(name, ms, buffers.replace("Buffers: ", ""), text)


async def explain_hot(url: str) -> list[Plan]:
    conn = await asyncpg.connect(url)
    plans = []
    try:
        tr = conn.transaction()
        await tr.start()
        now = time.time()
        await conn.copy_records_to_table(
            "runner_jobs", records=[("noop", "[]", "{}", "default", now, now)] * 1000,
            columns=("name", "args", "kwargs", "queue", "run_at", "created_at"),
        )  # fmt: skip
        await conn.execute("ANALYZE runner_jobs")  # inside the transaction: rolled back with it
        explain = "EXPLAIN (ANALYZE, BUFFERS) "
        owner = "explain:0:0"
        plans.append(
            _plan(
                "claim (32 of 1,000 queued)",
                await conn.fetch(explain + pgdriver._CLAIM_PLAIN_ONE, "default", now, BATCH, owner, now + 30),
            )
        )
        ids = [r[0] for r in await conn.fetch("SELECT id FROM runner_jobs WHERE lease_owner = $1 ORDER BY id", owner)]
        tokens = [r[0] for r in await conn.fetch("SELECT lease_token FROM runner_jobs WHERE lease_owner = $1 ORDER BY id", owner)]
        half = len(ids) // 2
        arrays = _finish_arrays(ids[:half], tokens[:half], now)
        plans.append(_plan(f"finish, batched ({half} outcomes)", await conn.fetch(explain + pgdriver._FINISH, *arrays)))
        # The busy worker's hot path: the previous batch finished, counted and the next claimed, one statement.
        rest = ids[half + 1 :], tokens[half + 1 :]
        plans.append(
            _plan(
                f"finish {len(rest[0])} + claim the next {BATCH}, one statement (a busy worker's cycle)",
                await conn.fetch(
                    explain + pgdriver._FINISH_CLAIM_ONE, *_finish_arrays(*rest, now), *_tally_arrays(rest[0], now),
                    "default", now, BATCH, owner, now + 30,
                ),
            )
        )  # fmt: skip
        one = [a[0] for a in _finish_arrays(ids[half : half + 1], tokens[half : half + 1], now)]
        plans.append(_plan("finish, one outcome (exactly-once path)", await conn.fetch(explain + pgdriver._FINISH_ONE, *one)))
        purge = shared._PURGE_FINISHED.text.replace(":before", "$1").replace(":n", "$2")
        plans.append(_plan("retention purge (nothing old enough)", await conn.fetch(explain + purge, now - 7 * 86400, 500)))
        await tr.rollback()
    finally:
        await conn.close()
    return plans


def _tally_arrays(ids: list[int], now: float) -> tuple[list[object], ...]:
    """The counter deltas the combined statement takes after the finish's twelve arrays."""
    n = len(ids)
    return (ids, ["-1"] * n, [int(now // 60)] * n, ["noop"] * n, ["default"] * n, ["succeeded"] * n, [0.001] * n,
            [0.01] * n, [0] * n, [0] * n, [0.0] * n, [0] * n, [0.0] * n, [0.0] * n)  # fmt: skip


def _finish_arrays(ids: list[int], tokens: list[int], now: float) -> tuple[list[object], ...]:
    n = len(ids)
    return (ids, tokens, ["succeeded"] * n, [None] * n, [None] * n, [None] * n, [now] * n, [1] * n, [0] * n,
            [None] * n, [None] * n, [_record] * n)  # fmt: skip
