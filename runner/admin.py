"""``runner status`` and ``runner jobs ...``: what a person on call needs, as tables or ``--json``.

Bulk changes (retry by state, purge) run in batches and print progress, so they can be stopped
half-way and re-run safely.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from .drivers import CancelResult, Driver, JobFilter, JobRow, QueueCounts, open_driver
from .errors import ConfigError
from .settings import Settings
from .wire import State, decode_json

__all__ = ["add_admin_commands", "parse_age", "run_admin"]


def add_admin_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    status = sub.add_parser("status", help="counts by queue and state, live workers, jobs/s")
    common(status)
    status.add_argument("--json", action="store_true")

    queues = sub.add_parser("queues", help="list queues; pause or resume one on every host")
    queues_sub = queues.add_subparsers(dest="queues_command", required=True, metavar="ACTION")
    for action, helptext in (("list", "every queue with its counts, and whether it is paused"),
                             ("pause", "stop every host claiming from a queue; running jobs finish"),
                             ("resume", "let every host claim from a paused queue again")):  # fmt: skip
        parser = queues_sub.add_parser(action, help=helptext)
        common(parser)
        if action != "list":
            parser.add_argument("queue", help="the queue's name")
        else:
            parser.add_argument("--json", action="store_true")

    jobs = sub.add_parser("jobs", help="list, show, retry, cancel, purge jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = jobs_sub.add_parser("list", help="newest first")
    common(listing)
    listing.add_argument("--state", choices=State.ALL)
    listing.add_argument("--queue")
    listing.add_argument("--name", help="a word found anywhere in the name (typed finds jobs.users.typed), or a glob")
    listing.add_argument("--limit", type=_limit, default=50, help="rows shown, 1 to 10,000 (default: 50)")
    listing.add_argument("--json", action="store_true")
    show = jobs_sub.add_parser("show", help="one job: arguments, attempts, error with traceback, timings")
    common(show)
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    retry = jobs_sub.add_parser("retry", help="re-queue a failed/cancelled/expired job, or all in a state")
    common(retry)
    retry.add_argument("id", type=int, nargs="?")
    retry.add_argument("--state", choices=["failed", "cancelled", "expired"])
    cancel = jobs_sub.add_parser("cancel", help="cancel a queued job now, or a running one cooperatively")
    common(cancel)
    cancel.add_argument("id", type=int)
    cancel.add_argument("--workflow", action="store_true", help="cancel every unfinished job of the workflow this job belongs to")
    purge = jobs_sub.add_parser("purge", help="delete finished jobs older than an age")
    common(purge)
    purge.add_argument("--state", choices=["succeeded", "failed", "cancelled", "expired"], required=True)
    purge.add_argument("--older-than", required=True, help="age like 90s, 30m, 12h, 7d")
    names = jobs_sub.add_parser("names", help="the jobs registered in the app")
    common(names)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; accepted: 1 to 10,000") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: 1 to 10,000")
    return value


def parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ConfigError(f"--older-than {text!r}: expected a number with a unit s, m, h, d or w (e.g. 7d)")
    value, unit = float(match[1]), match[2] or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]


def run_admin(ns: argparse.Namespace, settings: Settings) -> int:
    if ns.command == "jobs" and ns.jobs_command == "names":
        from .loader import load_app

        app = load_app(settings.app)
        _table(
            ["name", "queue", "retries", "signature"],
            [
                [name, job.queue, str(job.max_attempts - 1), str(job.signature).replace("'", "")]
                for name, job in sorted(app.jobs.items())
            ],
        )
        return 0
    return anyio.run(_run, ns, settings)


async def _run(ns: argparse.Namespace, settings: Settings) -> int:
    driver = open_driver(settings.broker, pool_size=1)
    try:
        await driver.ensure_schema()
        admin = driver
        store = driver
        if ns.command == "status":
            return await _status(admin, settings, ns.json)
        if ns.command == "queues":
            return await _queues(driver, ns)
        action = ns.jobs_command
        if action == "list":
            rows = await admin.list_jobs(JobFilter(state=ns.state, queue=ns.queue, name=ns.name), limit=ns.limit + 1)
            _print_rows(rows[: ns.limit], ns.json)
            if len(rows) > ns.limit and not ns.json:
                print(
                    f"(more rows: showing the newest {ns.limit}; raise --limit or filter by --state/--queue/--name)",
                    file=sys.stderr,
                )
        elif action == "show":
            row = await store.get(ns.id)
            if row is None:
                print(f"no job {ns.id}", file=sys.stderr)
                return 1
            _print_job(row, ns.json, await _workflow_links(store, row))
        elif action == "retry":
            return await _retry(admin, ns)
        elif action == "cancel" and ns.workflow:
            return await _cancel_workflow(store, ns.id)
        elif action == "cancel":
            outcome = await store.cancel(ns.id)
            print(_CANCEL_MESSAGES[outcome].format(id=ns.id))
            return 0 if outcome in (CancelResult.CANCELLED, CancelResult.REQUESTED) else 1
        elif action == "purge":
            before = time.time() - parse_age(ns.older_than)
            total = 0
            while count := await admin.purge_batch(ns.state, before):
                total += count
                print(f"purged {total} {ns.state} jobs...", file=sys.stderr)
            print(f"purged {total} {ns.state} jobs older than {ns.older_than}")
        return 0
    finally:
        await driver.dispose()


_CANCEL_MESSAGES = {
    CancelResult.CANCELLED: "job {id} cancelled (it had not started)",
    CancelResult.REQUESTED: "job {id} is running: cancel requested; its worker stops it within a second and rolls its session back",
    CancelResult.FINISHED: "job {id} had already finished; nothing to cancel",
    CancelResult.NOT_FOUND: "no job {id}",
}


async def _queues(driver: Driver, ns: argparse.Namespace) -> int:
    if ns.queues_command in ("pause", "resume"):
        await driver.set_paused(ns.queue, ns.queues_command == "pause")
        print(
            f"queue {ns.queue} {'paused: no host claims from it; running jobs finish' if ns.queues_command == 'pause' else 'resumed'}"
        )
        return 0
    queues = await driver.queue_counts(time.time())  # the partial indexes: fast at any table size
    if ns.json:
        print(json.dumps([
            {"queue": q.queue, "paused": q.paused, "counts": {s: getattr(q, s) for s in _COUNTED if getattr(q, s)}}
            for q in queues
        ]))  # fmt: skip
        return 0
    rows = [[q.queue, "paused" if q.paused else "", *(str(getattr(q, s)) for s in _COUNTED)] for q in queues]
    _table(["queue", "", *_COUNTED], rows)
    return 0


async def _status(admin: Driver, settings: Settings, as_json: bool) -> int:
    """Counts from the partial indexes (exact), the table's size (exact on SQLite, the planner's
    estimate on PostgreSQL) and the last hour from the counters: fast at millions of rows."""
    now = time.time()
    queues = await admin.queue_counts(now)
    size, estimated = await admin.table_size()
    hour = await admin.stats_since(int(now // 60) - 59, per="queue")
    workers = await admin.workers(now - 3 * settings.lease_ttl)
    rate = await admin.finished_since(now - 60) / 60.0
    live = sum(getattr(q, s) for q in queues for s in _COUNTED)
    succeeded = max(0, size - live)  # every other row has finished well
    done = {(r.queue, r.kind): 0.0 for r in hour}
    for r in hour:
        done[(r.queue, r.kind)] += r.values["n"]
    if as_json:
        counts = [{"queue": q.queue, "state": s, "count": getattr(q, s)} for q in queues for s in _COUNTED if getattr(q, s)]
        if succeeded:
            counts.append({"queue": "*", "state": "succeeded", "count": succeeded, "estimated": estimated})
        print(json.dumps({
            "counts": counts,
            "lag_seconds": {q.queue: round(now - q.oldest_runnable_at, 3) for q in queues if q.oldest_runnable_at is not None},
            "last_hour": [{"queue": q, "outcome": k, "count": int(n)} for (q, k), n in sorted(done.items())],
            "rows": size, "rows_estimated": estimated,
            "workers": [{"owner": w.owner, "node": w.node, "pid": w.pid, "queues": w.queues, "seen_at": w.seen_at, "done": w.done} for w in workers],
            "jobs_per_second_last_minute": round(rate, 2),
            "paused_queues": sorted(q.queue for q in queues if q.paused),
        }))  # fmt: skip
        return 0
    names = sorted({q.queue for q in queues} | {q for q, _ in done})
    by_queue = {q.queue: q for q in queues}
    rows = []
    for name in names:
        q = by_queue.get(name) or QueueCounts(name)
        name += " (paused)" if q.paused else ""
        lag = "-" if q.oldest_runnable_at is None else f"{now - q.oldest_runnable_at:.1f}s"
        rows.append([name, *(str(getattr(q, s)) for s in _COUNTED), lag,
                     str(int(done.get((name, "succeeded"), 0))), str(int(done.get((name, "failed"), 0)))])  # fmt: skip
    _table(["queue", *_COUNTED, "lag", "done/1h", "failed/1h"], rows)
    print(
        f"\n{'~' if estimated else ''}{size:,} rows in runner_jobs{' (estimate)' if estimated else ''}; succeeded: {'~' if estimated else ''}{succeeded:,}"
    )
    print()
    _table(
        ["worker", "pid", "queues", "jobs done", "seen"],
        [[w.owner, str(w.pid), w.queues, str(w.done), f"{now - w.seen_at:.0f}s ago"] for w in workers],
    )
    print(f"\n{rate:.1f} jobs/s finished over the last minute")
    return 0


_COUNTED = ("waiting", "queued", "scheduled", "running", "failed", "cancelled", "expired")


async def _retry(admin: Driver, ns: argparse.Namespace) -> int:
    if ns.id is not None:
        ok = await admin.retry_one(ns.id)
        if ok:
            print(f"job {ns.id} re-queued")
            return 0
        row = await admin.get(ns.id)
        if row is None:
            print(f"job {ns.id} does not exist (never enqueued, or purged after --result-ttl)", file=sys.stderr)
        else:
            print(f"job {ns.id} is {row.state}; only failed, cancelled or expired jobs can be retried", file=sys.stderr)
        return 1
    if ns.state is None:
        raise ConfigError("runner jobs retry: give a job ID or --state failed|cancelled|expired")
    total = 0
    while count := await admin.retry_batch(ns.state):
        total += count
        print(f"re-queued {total}...", file=sys.stderr)
    print(f"re-queued {total} {ns.state} jobs")
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _when(ts: float | None) -> str:
    """UTC, marked so: a table read on another host or in a bug report means the same instant."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _error_line(row: JobRow) -> str:
    if not row.error:
        return ""
    try:
        error = decode_json(row.error)
    except Exception:
        return str(row.error).splitlines()[0][:80] if str(row.error).strip() else ""
    if isinstance(error, dict):
        message = (str(error.get("message", "")).splitlines() or [""])[0]
        return f"{error.get('type', '?')}: {message}"[:80]
    return str(error)[:80]


def _as_dict(row: JobRow) -> dict[str, Any]:
    data = dict(vars(row))
    for column in ("args", "kwargs", "result", "error", "progress", "meta", "callbacks", "attempts"):
        try:
            data[column] = decode_json(data[column]) if data[column] else data[column]
        except Exception:
            pass  # an undecodable column is shown raw: that may be why the job failed
    return data


def _print_rows(rows: list[JobRow], as_json: bool) -> None:
    if as_json:
        print(json.dumps([_as_dict(r) for r in rows]))
        return
    _table(
        ["id", "name", "queue", "state", "attempt", "created (UTC)", "finished (UTC)", "error"],
        [
            [str(r.id), r.name, r.queue, r.state, str(r.attempt), _when(r.created_at), _when(r.finished_at), _error_line(r)]
            for r in rows
        ],
    )


_SHOWN_LINKS = 20


async def _workflow_links(driver: Driver, row: JobRow) -> dict[str, list[dict[str, Any]]]:
    """The jobs this one waits for and the jobs waiting for it, each with its state, so a stuck
    step shows which parent holds it (the first few of a wide chord are enough to see that)."""
    parents, dependants = await driver.dependencies(row.id)
    links: dict[str, list[dict[str, Any]]] = {}
    for label, ids in (("waits_for", parents), ("dependants", dependants)):
        shown = []
        for job_id in ids[:_SHOWN_LINKS]:
            other = await driver.get(job_id)
            shown.append({"id": job_id, "name": other.name if other else None, "state": other.state if other else "purged"})
        links[label] = shown
        if len(ids) > _SHOWN_LINKS:
            links[label].append({"more": len(ids) - _SHOWN_LINKS})
    return links


async def _cancel_workflow(driver: Driver, job_id: int) -> int:
    row = await driver.get(job_id)
    if row is None:
        print(f"no job {job_id}", file=sys.stderr)
        return 1
    root = row.root_id or row.id
    cancelled, requested = await driver.cancel_workflow(root)
    print(
        f"workflow {root}: {cancelled} jobs cancelled, {requested} running jobs asked to stop"
        + ("" if cancelled or requested else " (everything in it had already finished)")
    )
    return 0


def _print_job(row: JobRow, as_json: bool, links: dict[str, list[dict[str, Any]]] | None = None) -> None:
    data = _as_dict(row)
    if links:
        data.update(links)
    if as_json:
        print(json.dumps(data))
        return
    for key in (
        "id",
        "name",
        "queue",
        "priority",
        "state",
        "attempt",
        "max_attempts",
        "lost",
        "key",
        "parent_id",
        "root_id",
        "lease_owner",
        "timeout",
        "hard_timeout",
    ):
        print(f"{key:>13}: {data[key]}")
    print(f"{'args':>13}: {json.dumps(data['args'])}")
    print(f"{'kwargs':>13}: {json.dumps(data['kwargs'])}")
    for key in ("created_at", "run_at", "started_at", "finished_at", "expires_at"):
        print(f"{key:>13}: {_when(data[key])}")
    if row.started_at and row.finished_at:
        print(f"{'took':>13}: {row.finished_at - row.started_at:.3f}s")
    if data["progress"] is not None:
        print(f"{'progress':>13}: {json.dumps(data['progress'])}")
    if data["result"] is not None:
        print(f"{'result':>13}: {json.dumps(data['result'])}")
    error = data["error"]
    if error:
        if isinstance(error, dict):
            print(f"{'error':>13}: {error.get('type')}: {error.get('message')}")
            if error.get("traceback"):
                print(error["traceback"].rstrip())
        else:
            print(f"{'error':>13}: {error}")
    for label in ("waits_for", "dependants"):
        if data.get(label):
            print(f"{label:>13}: " + ", ".join(
                f"+{link['more']} more" if "more" in link else f"{link['id']} {link['name']} ({link['state']})"
                for link in data[label]
            ))  # fmt: skip
    _print_history(data.get("attempts"))


def _print_history(history: Any) -> None:
    """The job's attempts, oldest first: who ran each, when, for how long, and how it ended."""
    if not isinstance(history, list) or not history:
        return
    print(f"{'attempts':>13}:")
    rows = []
    for record in history:
        if not isinstance(record, dict):
            continue
        error = record.get("error") or {}
        first_line = (str(error.get("message", "")).splitlines() or [""])[0][:120]
        took = (record.get("finished_at") or 0) - (record.get("started_at") or 0)
        rows.append([
            str(record.get("attempt", "")), str(record.get("worker", "")), _when(record.get("started_at")),
            f"{took * 1000:.1f} ms" if took >= 0 else "-", str(record.get("outcome", "")),
            f"{error.get('type')}: {first_line}" if error else str(record.get("note", "")),
        ])  # fmt: skip
    _table(["#", "worker", "started", "took", "outcome", "error / note"], rows)
