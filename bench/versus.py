"""runner against the limit of its database and against the best peer, figure by figure, and the
targets of the "machine's own limit" issue marked met or MISSED.

The limit rows (``limit_pg.py``, ``limit_sqlite.py``) are the ceiling: the fastest loop we could
write on runner's own schema with no queue library. The peers are what users would pick instead
(pgqueuer, Celery). For a rate, ÷ above 1 is runner ahead; for a latency or CPU figure (marked
"lower is better"), ÷ below 1 is runner ahead.
"""

from __future__ import annotations

import math

from .table import CELERY_PREFIX, PGQ, RUNNER_PG, RUNNER_PG_ALO, RUNNER_SQLITE, Results, Target, _fmt, median

LIMIT_PG = "limit PostgreSQL (asyncpg on runner's schema, no queue library)"
LIMIT_SQLITE = "limit SQLite (sqlite3 on runner's schema, no queue library)"
LIMIT_OF = {RUNNER_PG: LIMIT_PG, RUNNER_SQLITE: LIMIT_SQLITE}

# (key, label, lower is better)
FIGURES = [
    ("enqueue_sync", "W1 enqueue, single, sync, one call at a time /s", False),
    ("enqueue_async1", "W1 enqueue, single, async, one awaited call at a time /s", False),
    ("enqueue_async", "W1 enqueue, single, async, 16 concurrent producers /s", False),
    ("enqueue_bulk_1k", "W1 enqueue, bulk, calls of 1,000 /s", False),
    ("enqueue_bulk", "W1 enqueue, bulk, one call of N /s", False),
    ("drain", "W1 drain /s", False),
    ("w2", "W2 jobs/s", False),
    ("w3_p50", "W3 p50 ms (lower is better)", True),
    ("w3_p95", "W3 p95 ms (lower is better)", True),
    ("w3_p99", "W3 p99 ms (lower is better)", True),
    ("idle_cpu_pct", "idle host CPU % of a core (lower is better)", True),
]
# The limit has one single-call figure: a prepared INSERT, awaited one at a time.
LIMIT_KEY = {"enqueue_sync": "enqueue_async1"}
# A peer's best single-call API, whichever it has (Celery: sync delay(); pgqueuer: async enqueue).
PEER_KEYS = {"enqueue_sync": ("enqueue_sync", "enqueue_async1"), "enqueue_async1": ("enqueue_sync", "enqueue_async1")}


def peers(results: Results) -> list[str]:
    return [r for r in results if r == PGQ or r.startswith(CELERY_PREFIX)]


def best_peer(results: Results, key: str, lower: bool) -> tuple[str, float]:
    found = [
        (median(results, row, k), row)
        for row in peers(results)
        for k in PEER_KEYS.get(key, (key,))
        if not math.isnan(median(results, row, k))
    ]
    if not found:
        return "—", float("nan")
    value, row = min(found) if lower else max(found)
    return row, value


def _ratio(a: float, b: float) -> str:
    return "—" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:,.2f}×"


def _v(x: float) -> str:
    return "—" if math.isnan(x) else _fmt(x)


def versus(results: Results) -> str:
    """One table per runner row: runner, its limit, runner ÷ limit, the best peer, runner ÷ peer."""
    out = []
    for runner in (RUNNER_PG, RUNNER_SQLITE):
        if runner not in results:
            continue
        limit = LIMIT_OF[runner]
        lines = [
            f"| {runner}: figure | runner | limit | runner ÷ limit | best peer | peer | runner ÷ peer |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, label, lower in FIGURES:
            mine = median(results, runner, key)
            if math.isnan(mine):
                continue
            lim = median(results, limit, LIMIT_KEY.get(key, key))
            peer, pv = best_peer(results, key, lower)
            short = peer.replace(" PostgreSQL", "").replace("Celery Redis prefork", "Celery")
            lines.append(f"| {label} | {_v(mine)} | {_v(lim)} | {_ratio(mine, lim)} | {short} | {_v(pv)} | {_ratio(mine, pv)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def limit_targets(results: Results) -> str:
    pg, lite = RUNNER_PG, RUNNER_SQLITE

    def m(row: str, key: str) -> float:
        return median(results, row, key)

    def of_limit(row: str, key: str) -> float:
        return m(row, key) / m(LIMIT_OF[row], LIMIT_KEY.get(key, key)) * 100

    _, single_peer = best_peer(results, "enqueue_sync", False)
    p50_peer = min((m(r, "w3_p50") for r in peers(results) if not math.isnan(m(r, "w3_p50"))), default=float("nan"))
    p99_peer = min((m(r, "w3_p99") for r in peers(results) if not math.isnan(m(r, "w3_p99"))), default=float("nan"))
    alo = m(RUNNER_PG_ALO, "w2")
    rows = [
        Target("W1 bulk enqueue PG, calls of 1,000 ≥ 90 % of COPY", of_limit(pg, "enqueue_bulk_1k"), 90, unit=" %"),
        Target(
            "W1 bulk enqueue PG, calls of 1,000 ≥ 3× pgqueuer", m(pg, "enqueue_bulk_1k") / m(PGQ, "enqueue_bulk_1k"), 3, unit="×"
        ),
        Target("W1 bulk enqueue PG, one call of N ≥ 90 % of COPY", of_limit(pg, "enqueue_bulk"), 90, unit=" %"),
        Target("W1 bulk enqueue PG, one call of N ≥ 3× pgqueuer", m(pg, "enqueue_bulk") / m(PGQ, "enqueue_bulk"), 3, unit="×"),
        Target(
            "W1 single enqueue PG, async one at a time ≥ 80 % of a prepared INSERT", of_limit(pg, "enqueue_async1"), 80, unit=" %"
        ),
        Target(
            "W1 single enqueue PG, async one at a time ≥ 1.5× best peer", m(pg, "enqueue_async1") / single_peer, 1.5, unit="×"
        ),
        Target("W1 single enqueue PG, sync defer() ≥ 80 % of a prepared INSERT", of_limit(pg, "enqueue_sync"), 80, unit=" %"),
        Target("W1 single enqueue PG, sync defer() ≥ 1.5× best peer", m(pg, "enqueue_sync") / single_peer, 1.5, unit="×"),
        Target("W1 drain PG ≥ 85 % of the bare claim loop", of_limit(pg, "drain"), 85, unit=" %"),
        Target("W1 drain PG ≥ 3× pgqueuer", m(pg, "drain") / m(PGQ, "drain"), 3, unit="×"),
        Target("W1 drain SQLite ≥ 85 % of the bare claim loop", of_limit(lite, "drain"), 85, unit=" %"),
        Target("W1 drain SQLite ≥ 10,000/s", m(lite, "drain"), 10_000, unit="/s"),
        Target("W2 PG (exactly-once) ≥ 95 % of the bare script in w processes", of_limit(pg, "w2"), 95, unit=" %"),
        Target("W2 PG exactly-once costs ≤ 5 % against at-least-once", (1 - m(pg, "w2") / alo) * 100, 5, at_most=True, unit=" %"),
        Target("W2 SQLite ≥ 90 % of the bare script in w processes", of_limit(lite, "w2"), 90, unit=" %"),
        Target("W3 PG p50 ≤ 1.5 ms", m(pg, "w3_p50"), 1.5, at_most=True, unit=" ms"),
        Target("W3 PG p99 ≤ 4 ms", m(pg, "w3_p99"), 4, at_most=True, unit=" ms"),
        Target("W3 PG p50 below pgqueuer's and Celery's", m(pg, "w3_p50") / p50_peer, 1, at_most=True, unit="× best peer"),
        Target("W3 PG p99 below pgqueuer's and Celery's", m(pg, "w3_p99") / p99_peer, 1, at_most=True, unit="× best peer"),
        Target("idle host PG ≤ 1 % of a core", m(pg, "idle_cpu_pct"), 1, at_most=True, unit=" %"),
        Target("idle host SQLite ≤ 1 % of a core", m(lite, "idle_cpu_pct"), 1, at_most=True, unit=" %"),
    ]
    return "\n".join(["| target (this issue) | measured (median) | |", "|---|---|---|", *(t.line() for t in rows)])


COST_KEYS = [("host_ms", "host CPU ms/job"), ("db_ms", "DB backends CPU ms/job"), ("xacts", "transactions/job")]  # fmt: skip


def costs_table(results: Results) -> str:
    """Where a job's time goes, per system: CPU on the host, CPU in PostgreSQL, round trips."""
    heads = [(w, k, f"{name}: {label}") for w, name in (("drain", "W1 drain"), ("w2", "W2")) for k, label in COST_KEYS]
    rows = [r for r in results if any(f"{w}_{k}" in results[r] for w, k, _ in heads)]
    if not rows:
        return ""
    lines = ["| cost per job (busy span only) | " + " | ".join(h for *_, h in heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for row in rows:
        cells = [_ms(median(results, row, f"{w}_{k}")) for w, k, _ in heads]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"
