"""What each page reads, as plain data for its template. One function per page; every read goes
through the driver (indexes, rollups and estimates: see ``Driver``'s dashboard reads)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..app import App
from ..drivers import Driver, JobFilter, JobRow, QueueCounts, WorkerRow
from ..wire import State, decode_json
from .forms import JobQuery
from .summary import QueueFlow, cost_lines, minutes, queue_flows

__all__ = ["bulk", "job_page", "jobs_page", "overview", "periodic_page", "workers_page"]

LIVE_WINDOW = 90.0  # seconds: a worker silent longer is shown as not answering
BULK_BATCH = 1000
BULK_DEADLINE = 20.0  # seconds one bulk request may work; it says how far it got


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return decode_json(text)
    except Exception:
        return text  # shown raw: that may be why the job failed


def error_of(row: JobRow) -> dict[str, Any] | None:
    value = _decoded(row.error)
    if value is None:
        return None
    return value if isinstance(value, dict) else {"type": "?", "message": str(value)}


@dataclass
class QueueLine:
    queue: str
    counts: QueueCounts
    flow: QueueFlow
    lag: float | None


async def overview(driver: Driver, app: App | None, now: float) -> dict[str, Any]:
    minute = int(now // 60)
    rows = await driver.stats_since(minute - 59, per="minute")
    counts = {c.queue: c for c in await driver.queue_counts(now)}
    flows = queue_flows(rows)
    known = set(app.queues()) if app is not None else set()
    lines = []
    for queue in sorted(set(counts) | set(flows) | known):
        c = counts.get(queue) or QueueCounts(queue)
        lag = None if c.oldest_runnable_at is None else max(0.0, now - c.oldest_runnable_at)
        lines.append(QueueLine(queue, c, flows.get(queue) or QueueFlow(queue), lag))
    everything = QueueFlow("*")
    for flow in flows.values():
        for kind, n in flow.kinds.items():
            everything.kinds[kind] = everything.kinds.get(kind, 0.0) + n
    for row in rows:
        if row.kind in ("succeeded", "failed", "retried"):
            everything.run.add(row, "run")
            everything.wait.add(row, "wait")
    costs = [c for c in cost_lines(await driver.stats_since(minute - 59, per="name")) if c.measured]
    cost_scope = "last hour"
    if not costs:
        costs = [c for c in cost_lines(await driver.stats_totals()) if c.measured]
        cost_scope = "all time"
    workers = await driver.workers(now - LIVE_WINDOW)
    size, estimated = await driver.table_size()
    return {
        "queues": lines,
        "all": everything,
        "series": minutes(rows, minute - 59, minute),
        "slowest": sorted(costs, key=lambda c: c.db_ms, reverse=True)[:8],
        "chattiest": sorted(costs, key=lambda c: c.statements, reverse=True)[:8],
        "cost_scope": cost_scope,
        "workers": len(workers),
        "capacity": sum(w.concurrency for w in workers),
        "busy": sum(len(_decoded(w.running) or []) for w in workers),
        "table_size": size,
        "table_estimated": estimated,
        "totals": {
            key: sum(getattr(line.counts, key) for line in lines)
            for key in ("queued", "scheduled", "running", "failed", "cancelled", "expired")
        },
    }


async def jobs_page(driver: Driver, query: JobQuery, app: App | None, now: float) -> dict[str, Any]:
    page = await driver.find_jobs(query.where, query.limit)
    queues = sorted({c.queue for c in await driver.queue_counts(now)} | (set(app.queues()) if app else set()))
    return {
        "rows": [(row, error_of(row)) for row in page.rows],
        "next_before": page.next_before,
        "examined": page.examined,
        "query": query,
        "queues": queues,
        "names": sorted(app.jobs) if app is not None else [],
        "states": State.ALL,
    }


@dataclass
class Step:
    """One line of a job's timeline."""

    at: float
    what: str
    css: str = ""


async def job_page(driver: Driver, job_id: int) -> dict[str, Any] | None:
    row = await driver.get(job_id)
    if row is None:
        return None
    history = _decoded(row.attempts)
    attempts = [a for a in history if isinstance(a, dict)] if isinstance(history, list) else []
    related = {i for i in (row.parent_id, row.root_id) if i is not None and i != row.id}
    found = {r.id: r for r in await driver.get_many(sorted(related))} if related else {}
    children = await driver.children(row.id)
    return {
        "job": row,
        "error": error_of(row),
        "attempts": attempts,
        "raw_attempts": None if isinstance(history, list) else row.attempts,
        "parent": found.get(row.parent_id) if row.parent_id else None,
        "root_job": found.get(row.root_id) if row.root_id and row.root_id != row.parent_id else None,
        "children": children[:200],
        "more_children": max(0, len(children) - 200),
        "callbacks": _decoded(row.callbacks),
        "timeline": _timeline(row, attempts),
    }


def _timeline(row: JobRow, attempts: list[dict[str, Any]]) -> list[Step]:
    steps = [Step(row.created_at, "enqueued")]
    if row.run_at > row.created_at + 0.5 and row.state == State.QUEUED:
        steps.append(Step(row.run_at, "due (scheduled)", "scheduled"))
    for a in attempts:
        started, finished = a.get("started_at"), a.get("finished_at")
        if isinstance(started, (int, float)):
            steps.append(Step(float(started), f"attempt {a.get('attempt', '?')} started on {a.get('worker', '?')}"))
        if isinstance(finished, (int, float)):
            outcome = str(a.get("outcome", "?"))
            error = a.get("error") if isinstance(a.get("error"), dict) else None
            what = f"attempt {a.get('attempt', '?')} ended: {outcome}" + (f" ({error.get('type')})" if error else "")
            css = {"succeeded": "ok", "failed": "bad", "queued": "retry"}.get(outcome, "")
            steps.append(Step(float(finished), what, css))
    if row.state == State.RUNNING and row.started_at is not None:
        steps.append(Step(row.started_at, f"attempt {row.attempt} running on {row.lease_owner}", "running"))
    if row.finished_at is not None and not attempts:
        steps.append(Step(row.finished_at, row.state, "bad" if row.state != State.SUCCEEDED else "ok"))
    if row.expires_at is not None and row.state == State.QUEUED:
        steps.append(Step(row.expires_at, "expires unless started", "scheduled"))
    return sorted(steps, key=lambda s: s.at)


@dataclass
class WorkerLine:
    row: WorkerRow
    running: list[JobRow] = field(default_factory=list)
    silent: bool = False


async def workers_page(driver: Driver, now: float) -> dict[str, Any]:
    rows = await driver.workers(now - 86400)
    running: dict[str, list[JobRow]] = {}
    for job in await driver.running_jobs():
        running.setdefault(job.lease_owner or "?", []).append(job)
    by_node: dict[str, list[WorkerLine]] = {}
    for w in rows:
        by_node.setdefault(w.node, []).append(WorkerLine(w, running.pop(w.owner, []), silent=now - w.seen_at > LIVE_WINDOW))
    live_nodes = {node for node, lines in by_node.items() if any(not line.silent for line in lines)}
    gone = [n for n in await driver.nodes(now - 86400) if n.node not in live_nodes]
    orphans = [job for jobs in running.values() for job in jobs]  # held by no worker we know: a lease will expire
    return {"nodes": sorted(by_node.items()), "gone": gone, "orphans": orphans, "live_window": LIVE_WINDOW}


@dataclass
class ScheduleLine:
    name: str
    job: str
    schedule: str
    missed: str
    next_at: float | None
    fires: list[tuple[float, JobRow | None, int | None]]


async def periodic_page(driver: Driver, app: App | None, now: float) -> dict[str, Any]:
    entries = list(app.schedules) if app is not None else []
    names = [e.name for e in entries]
    names += [n for n in await driver.schedule_names() if n not in names]
    fires = {name: await driver.schedule_fires(name, 5) for name in names}
    job_ids = sorted({j for fs in fires.values() for _, j in fs if j is not None})
    jobs = {r.id: r for r in await driver.get_many(job_ids)} if job_ids else {}
    lines = []
    for name in names:
        entry = next((e for e in entries if e.name == name), None)
        lines.append(
            ScheduleLine(
                name=name,
                job=entry.job.name if entry else "?",
                schedule=str(entry.schedule) if entry else "not in this app",
                missed=entry.missed if entry else "-",
                next_at=entry.schedule.next_after(now) if entry else None,
                fires=[(at, jobs.get(j) if j is not None else None, j) for at, j in fires[name]],
            )  # fmt: skip
        )
    return {"schedules": lines, "has_app": app is not None}


async def bulk(driver: Driver, action: str, ids: list[int] | None, query: JobQuery | None) -> tuple[int, bool]:
    """Apply ``action`` to ``ids``, or to every job matching ``query`` (in batches, newest
    first, for at most ``BULK_DEADLINE`` seconds). Returns (jobs changed, finished?)."""
    apply = {"retry": driver.retry_jobs, "cancel": driver.cancel_jobs, "delete": driver.delete_jobs}[action]
    if ids is not None:
        return await apply(ids), True
    assert query is not None
    deadline = time.monotonic() + BULK_DEADLINE
    where: JobFilter = query.where
    changed = 0
    while True:
        page = await driver.find_jobs(where, BULK_BATCH)
        if page.rows:
            changed += await apply([r.id for r in page.rows])
        if page.next_before is None:
            return changed, True
        if time.monotonic() > deadline:
            return changed, False
        where = query.page(page.next_before).where
