"""``python -m bench growth``: does runner's cost stay flat as the table grows?

* **retained** -- W1 drain and W3 latency (runner and the limit) with 0, 1M and 5M finished rows
  kept in ``runner_jobs`` (``growth_seed.py``), and ``EXPLAIN (ANALYZE, BUFFERS)`` of runner's
  claim and finish statements at each size (``explain.py``);
* **churn** -- 1M jobs through one queue: sizes, dead tuples, vacuums, first vs last 10 % claim
  rate (``churn.py``);
* **hosts** -- 1, 2, 4 ``runner serve`` on one database: claims/s and database CPU per job
  (``hosts.py``), the inputs of ``deploy/CAPACITY.md``.

Every size is an option, so ``--quick`` (100k / 500k retained, 100k churned) smoke-tests it in a
few minutes. The report goes to stdout and ``bench/results/<time>-growth.md`` (plans and the raw
figures beside it, ``.plans.txt`` and ``.json``), also after each section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import limit_pg, seed, workloads_runner
from .churn import run_churn
from .explain import explain_hot
from .growth_seed import add_finished, settle
from .hosts import run_hosts
from .pgstats import mb, server_setting, table_stats
from .procs import stop_all

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("retained", "churn", "hosts")


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench growth", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: retained 0,100k,500k; churn 100k; hosts N=10k")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--retained", default="0,1000000,5000000", help="finished rows kept, one measurement each")
    p.add_argument("--n-drain", type=int, default=20_000, help="W1 jobs drained at each retained size; default 20000")
    p.add_argument("--n-w3", type=int, default=500, help="W3 jobs at each retained size; default 500")
    p.add_argument("--w3-rate", type=float, default=100.0)
    p.add_argument("--churn", type=int, default=1_000_000, help="jobs pushed through the churn queue; default 1M")
    p.add_argument("--churn-vacuum", default="0,60",
                   help="one churn run per value: seconds between bench-issued VACUUMs (0: none); default 0,60")  # fmt: skip
    p.add_argument("--churn-systems", default="runner", help="runner and/or limit; default runner")
    p.add_argument("--hosts", default="1,2,4", help="runner serve processes at once, one run each")
    p.add_argument("--host-workers", type=int, default=1, help="-w of each serve in the hosts runs; default 1")
    p.add_argument("--n-hosts", type=int, default=50_000, help="jobs drained in each hosts run; default 50000")
    p.add_argument("-w", "--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("-c", "--concurrency", type=int, default=32)
    if "--quick" in argv:  # smaller defaults; sizes given explicitly still win
        p.set_defaults(retained="0,100000,500000", n_drain=5_000, n_w3=200, churn=100_000, churn_vacuum="0", n_hosts=10_000)
    ns = p.parse_args(argv)
    ns.only = set(ns.only.split(","))
    if ns.only - set(SECTIONS):
        p.error(f"--only: choose from {', '.join(SECTIONS)}")
    return ns


async def _max_id(url: str) -> int:
    return int((await limit_pg.fetch(url, "SELECT COALESCE(max(id), 0) FROM runner_jobs"))[0][0])


def retained(ns: argparse.Namespace, plans_out: list[str]) -> list[dict[str, Any]]:
    sizes = sorted(_ints(ns.retained))
    url = asyncio.run(seed.fresh_postgres("growth"))
    asyncio.run(limit_pg.migrate(url))
    rows: list[dict[str, Any]] = []
    have = 0
    w, c = ns.workers, ns.concurrency
    for size in sizes:
        print(f"bench growth: {size:,} finished rows: seeding", file=sys.stderr, flush=True)
        took = asyncio.run(add_finished(url, have, size, max(sizes)))
        have = size
        row: dict[str, Any] = {"retained": size, "seed_s": took}
        print(f"bench growth: {size:,}: drains, latency, plans", file=sys.stderr, flush=True)
        asyncio.run(settle(url))  # every measurement starts vacuumed and checkpointed
        row["runner_drain"] = workloads_runner.drain(url, ns.n_drain, w, c, after_id=asyncio.run(_max_id(url)))
        asyncio.run(settle(url))
        floor = asyncio.run(_max_id(url))
        limit_pg.enqueue(url, ns.n_drain)
        row["limit_drain"] = limit_pg.drain(url, ns.n_drain, w, c, after_id=floor)
        asyncio.run(settle(url))
        runner_w3 = workloads_runner.run_w3(url, ns.n_w3, ns.w3_rate, w, c, after_id=asyncio.run(_max_id(url)))
        asyncio.run(settle(url))
        limit_w3 = limit_pg.run_w3(url, ns.n_w3, ns.w3_rate, w, c, after_id=asyncio.run(_max_id(url)))
        asyncio.run(settle(url))
        row.update({f"runner_{k}": v for k, v in runner_w3.items()})
        row.update({f"limit_{k}": v for k, v in limit_w3.items()})
        plans = asyncio.run(explain_hot(url))
        row["plans"] = [p.line() for p in plans]
        plans_out += [f"### {size:,} finished rows: {p.statement}\n{p.text}\n" for p in plans]
        stats = asyncio.run(table_stats(url))
        row["total_bytes"], row["index_bytes"] = stats["total_bytes"], stats["index_bytes"]
        rows.append(row)
        print(
            f"bench growth: {size:,}: {json.dumps({k: v for k, v in row.items() if k != 'plans'})}", file=sys.stderr, flush=True
        )
    return rows


def _vs(value: float, base: float) -> str:
    return "—" if math.isnan(value) or not base else f"{value / base:.2f}×"


def render_retained(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    base = rows[0]
    lines = [
        "| finished rows kept | table + indexes | runner drain /s | ÷ first | limit drain /s | ÷ first "
        "| runner W3 p50 / p95 / p99 ms | p99 ÷ first | limit W3 p50 / p99 ms | seeding s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['retained']:,} | {mb(r['total_bytes'])} | {r['runner_drain']:,.0f} | {_vs(r['runner_drain'], base['runner_drain'])} "
            f"| {r['limit_drain']:,.0f} | {_vs(r['limit_drain'], base['limit_drain'])} "
            f"| {r['runner_w3_p50']:.2f} / {r['runner_w3_p95']:.2f} / {r['runner_w3_p99']:.2f} "
            f"| {_vs(r['runner_w3_p99'], base['runner_w3_p99'])} | {r['limit_w3_p50']:.2f} / {r['limit_w3_p99']:.2f} "
            f"| {r['seed_s']:.0f} |"
        )
    last = rows[-1]
    drain_ok = last["runner_drain"] >= 0.9 * base["runner_drain"]
    p99_ok = last["runner_w3_p99"] <= 1.2 * base["runner_w3_p99"]
    lines += [
        "",
        f"- target: drain at {last['retained']:,} within 10 % of {base['retained']:,}: "
        f"{last['runner_drain'] / base['runner_drain']:.0%} — {'met' if drain_ok else 'MISSED'}",
        f"- target: W3 p99 at {last['retained']:,} within 20 % of {base['retained']:,}: "
        f"{last['runner_w3_p99'] / base['runner_w3_p99']:.0%} — {'met' if p99_ok else 'MISSED'}",
        "",
        "EXPLAIN (ANALYZE, BUFFERS) of runner's statements (execution time; shared buffers of the top node):",
    ]
    for r in rows:
        lines += [f"- {r['retained']:,} finished rows:", *(f"  - {p}" for p in r["plans"])]
    return "\n".join(lines)


def churn(ns: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for system in ns.churn_systems.split(","):
        for every in _ints(ns.churn_vacuum):
            url = asyncio.run(seed.fresh_postgres("churn"))
            print(
                f"bench growth: {system} churn of {ns.churn:,} (VACUUM every {every or 'never'} s)", file=sys.stderr, flush=True
            )
            out.append(run_churn(url, ns.churn, ns.workers, ns.concurrency, float(every), system))
            out[-1]["autovacuum"] = asyncio.run(server_setting(url, "autovacuum"))
    return out


def render_churn(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    lines = [
        f"Server autovacuum: {runs[0]['autovacuum']}.",
        "",
        "| system | vacuum | jobs | wall s | claims/s first 10 % | last 10 % | last ÷ first | table + indexes after | heap | indexes "
        "| live / dead tuples after | HOT updates | autovacuum runs | bench VACUUMs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["after"]
        hot = a["n_tup_hot_upd"] / a["n_tup_upd"] if a["n_tup_upd"] else float("nan")
        vac = f"every {r['vacuum_every']:g} s (bench)" if r["vacuum_every"] else "none"
        lines.append(
            f"| {r.get('system', 'runner')} | {vac} | {r['n']:,} | {r['wall_s']:.0f} | {r['first_rate']:,.0f} | {r['last_rate']:,.0f} "
            f"| {r['last_rate'] / r['first_rate']:.2f} | {mb(a['total_bytes'])} | {mb(a['heap_bytes'])} | {mb(a['index_bytes'])} "
            f"| {a['n_live_tup']:,} / {a['n_dead_tup']:,} | {hot:.0%} | {a['autovacuum_count']} | {r['vacuums']} |"
        )
    for r in runs:
        ok = r["last_rate"] >= 0.9 * r["first_rate"]
        vac = f"VACUUM every {r['vacuum_every']:g} s" if r["vacuum_every"] else "no vacuum"
        idx = ", ".join(f"{k} {mb(v)}" for k, v in r["after"]["indexes"].items())
        lines += [
            f"- {r.get('system', 'runner')}, {vac}: last 10 % within 10 % of the first: {'met' if ok else 'MISSED'}; indexes after: {idx}"
        ]
    return "\n".join(lines)


def hosts(ns: argparse.Namespace) -> list[dict[str, float]]:
    out = []
    for k in _ints(ns.hosts):
        url = asyncio.run(seed.fresh_postgres("hosts"))
        print(f"bench growth: {k} hosts", file=sys.stderr, flush=True)
        out.append(run_hosts(url, k, ns.host_workers, ns.concurrency, ns.n_hosts))
        print(f"bench growth: {k} hosts: {out[-1]}", file=sys.stderr, flush=True)
    return out


def render_hosts(runs: list[dict[str, float]]) -> str:
    if not runs:
        return ""
    lines = [
        "| runner serve processes | workers | claims/s | DB backend CPU ms/job | runner host CPU ms/job "
        "| transactions/job | tuples updated/job | buffers/job | WAL bytes/job (server-wide) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['hosts']:.0f} | {r['workers']:.0f} | {r['claims_per_s']:,.0f} | {r['db_cpu_ms_per_job']:.3f} "
            f"| {r['host_cpu_ms_per_job']:.3f} | {r['xacts_per_job']:.3f} | {r['tup_upd_per_job']:.2f} "
            f"| {r['buffers_per_job']:.1f} | {r['wal_bytes_per_job']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ns = _args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    plans: list[str] = []
    figures: dict[str, Any] = {"args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(ns).items()}}
    header = (
        f"Growth: {ns.workers} workers × {ns.concurrency}; retained sizes {ns.retained} (drain N={ns.n_drain:,}, W3 "
        f"{ns.n_w3} jobs at {ns.w3_rate:g}/s); churn {ns.churn:,} jobs (VACUUM every {ns.churn_vacuum} s; 0 = none); "
        f"hosts {ns.hosts} × -w {ns.host_workers} (N={ns.n_hosts:,}). Machine: {os.cpu_count()} cores."
    )

    def save() -> str:
        report = "\n\n".join(
            p
            for p in (
                header,
                "## Retained finished rows\n\n" + render_retained(figures.get("retained", [])),
                "## Churn\n\n" + render_churn(figures.get("churn", [])),
                "## Hosts on one PostgreSQL\n\n" + render_hosts(figures.get("hosts", [])),
            )
            if p  # fmt: skip
        )
        (RESULTS / f"{stamp}-growth.md").write_text(report + "\n")
        (RESULTS / f"{stamp}-growth.plans.txt").write_text("\n".join(plans))
        (RESULTS / f"{stamp}-growth.json").write_text(json.dumps(figures, indent=1, default=str))
        return report

    try:
        if "retained" in ns.only:
            figures["retained"] = retained(ns, plans)
            save()
        if "churn" in ns.only:
            figures["churn"] = churn(ns)
            save()
        if "hosts" in ns.only:
            figures["hosts"] = hosts(ns)
        print(save())
        print(f"\nbench growth: written to {RESULTS / stamp}-growth.md (.plans.txt, .json)", file=sys.stderr)
    finally:
        stop_all()
    return 0
