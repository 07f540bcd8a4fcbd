"""The interface a queue database offers: everything the worker, the producer, the scheduler, the
CLI and the dashboard may ask of it, and nothing else.

Two implementations, ``postgres.py`` and ``sqlite.py``, share their backend-neutral SQL through
``sql.py``; one driver test suite (``tests/test_driver.py``) runs against both. Backend
differences live in the drivers and nowhere else.

Every state change is one statement guarded by ``id``, ``lease_token`` (the fencing token bumped
by every claim) and ``state = 'running'``, so a worker that lost its lease -- paused, partitioned,
presumed dead -- can never overwrite a newer attempt: its write matches no row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..decide import Outcome
from ..wire import Attempt, BadRow, Envelope

__all__ = ["CancelResult", "Driver", "JobFilter", "JobPage", "JobRow", "NodeRow", "QueueCounts", "StatsRow", "WorkerRow"]


class CancelResult(StrEnum):
    """What ``cancel`` did. ``CANCELLED``: the job was queued and is now cancelled.
    ``REQUESTED``: it is running; its worker cancels it within a second (its session rolls back).
    ``FINISHED``: it had already finished; nothing changed. ``NOT_FOUND``: no such job."""

    CANCELLED = "cancelled"
    REQUESTED = "requested"
    FINISHED = "finished"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Claimed:
    """What ``claim_and_complete`` did: the rows it leased, the outcomes it left for
    ``complete`` (children to insert, dependants to release), and how many it wrote."""

    rows: list[Attempt | BadRow]
    left: Sequence[Outcome]
    written: int


@dataclass(frozen=True)
class JobRow:
    """A row as people and handles read it: JSON columns still text (a column that does not
    decode is shown as it is; that may be why the job failed)."""

    id: int
    name: str
    queue: str
    priority: int
    state: str
    attempt: int
    max_attempts: int | None
    lost: int
    args: str
    kwargs: str
    result: str | None
    error: str | None
    progress: str | None
    key: str | None
    parent_id: int | None
    root_id: int | None
    meta: str | None
    lease_owner: str | None
    created_at: float
    run_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    timeout: float | None
    hard_timeout: float | None
    callbacks: str | None
    attempts: str


@dataclass(frozen=True)
class WorkerRow:
    """One live worker process, as it reports itself with each lease renewal."""

    owner: str  # node:supervisor-pid:slot
    node: str
    pid: int
    pid_started: int  # the process's start time in clock ticks since boot (pid reuse guard)
    boot_id: str  # the kernel's boot id: pids of another boot (or host) say nothing here
    queues: str
    concurrency: int
    started_at: float
    seen_at: float
    done: int
    rss_kb: int
    running: str  # JSON [[job_id, started_at], ...]


@dataclass(frozen=True)
class JobFilter:
    """What ``runner jobs list`` and the dashboard filter on; None means any."""

    state: str | None = None
    queue: str | None = None
    name: str | None = None  # a word found anywhere in the name, or a glob with * and ?
    key: str | None = None
    before_id: int | None = None  # keyset paging: rows with smaller ids
    created_after: float | None = None
    created_before: float | None = None
    contains: str | None = None  # a substring of the name (the dashboard's search)
    job_id: int | None = None


@dataclass(frozen=True)
class JobPage:
    """One page of ``find_jobs``: newest first. ``next_before`` continues below it (None: the
    end). Filters no index can answer examine at most a window of rows per page; ``examined``
    then says how far down this page looked, so a person knows a short page is not the end."""

    rows: list[JobRow]
    next_before: int | None
    examined: int | None = None  # rows looked at when the search was windowed, else None


@dataclass(frozen=True)
class QueueCounts:
    """One queue as the overview shows it: exact counts from the partial indexes (queued,
    running and ended-badly rows are few beside the finished ones, so they are cheap to count)."""

    queue: str
    waiting: int = 0  # workflow steps whose parents have not all finished
    queued: int = 0  # runnable now
    scheduled: int = 0  # queued with a future run_at (countdown, ETA, retry backoff)
    running: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    oldest_runnable_at: float | None = None  # run_at of the job waiting longest: the queue's lag
    paused: bool = False  # claims on every host skip it (runner queues pause)


@dataclass(frozen=True)
class StatsRow:
    """Summed ``runner_stats`` counters for one key (``minute`` 0 when summed over all time);
    ``values`` holds every additive column, by name (``schema.STATS_SUMS``)."""

    minute: int
    name: str
    queue: str
    kind: str
    values: dict[str, float]


@dataclass(frozen=True)
class NodeRow:
    """A host that ran workers: first and last seen (its workers' own rows go when they stop)."""

    node: str
    first_seen: float
    seen_at: float


class Driver(ABC):
    """A queue database, reached through one engine. Stateless beyond its engines and the
    per-loop batching of concurrent single enqueues, so one driver serves a whole process."""

    backend: str
    engine: AsyncEngine  # the queue database; also the jobs' engine when exactly-once applies
    max_payload: int

    # -- schema ---------------------------------------------------------------------------------

    @abstractmethod
    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema; returns (version before, version after)."""

    @abstractmethod
    async def ensure_schema(self) -> None:
        """Create the schema on first use; one cheap read when it is current."""

    @abstractmethod
    async def ensure_schema_in(self, conn: AsyncConnection) -> None:
        """The same, inside the caller's transaction (transactional enqueue)."""

    # -- producers ------------------------------------------------------------------------------

    @abstractmethod
    async def enqueue(self, envelopes: Sequence[Envelope], conn: AsyncConnection | None = None) -> list[int]:
        """Insert jobs; returns their ids in order. A job whose idempotency key is live returns
        the live job's id. With ``conn``, inside the caller's transaction."""

    def enqueue_here(self, envelope: Envelope) -> int | None:
        """One job written on the calling thread, for a sync producer: its id, or None where
        this database cannot (the caller then goes through ``enqueue`` on its loop). Safe from
        any thread once ``ensure_schema`` has run on this driver."""
        return None

    # -- the worker: claim, hold, complete ------------------------------------------------------

    @abstractmethod
    async def claim(self, owner: str, queues: Sequence[str], n: int, lease_ttl: float) -> list[Attempt | BadRow]:
        """Lease up to ``n`` runnable jobs, preferring the queues in the order given. One
        statement; every row claimed comes back decoded or as a BadRow, never lost."""

    async def claim_and_complete(
        self, owner: str, queues: Sequence[str], n: int, lease_ttl: float, outcomes: Sequence[Outcome]
    ) -> Claimed:
        """Write ``outcomes`` and claim up to ``n`` jobs, in as few commits as the database
        allows: a busy worker's finished batch and its next claim are one write, not two
        (PostgreSQL: one statement; SQLite: one hold of the writer lock). Outcomes the driver
        could not write with the claim come back in ``Claimed.left``: the caller writes them
        with ``complete``. This default writes them first, then claims."""
        written = await self.complete(outcomes) if outcomes else 0
        return Claimed(await self.claim(owner, queues, n, lease_ttl), (), written)

    @abstractmethod
    async def complete(self, outcomes: Sequence[Outcome]) -> int:
        """Write outcomes in their own transaction; returns how many still belonged to us.
        Children of an outcome are inserted in the same transaction, only if it matched."""

    @abstractmethod
    async def complete_in(self, conn: AsyncConnection, outcome: Outcome) -> bool:
        """Write one outcome inside the caller's transaction (exactly-once: the job's own)."""

    @abstractmethod
    async def renew(self, held: Mapping[int, int], lease_ttl: float) -> set[int]:
        """Extend the leases of exactly these ``{job_id: token}``; returns the ids still ours."""

    @abstractmethod
    async def held_by(self, owner: str) -> list[Attempt | BadRow]:
        """Running rows leased to ``owner`` (a dead predecessor's, to settle them)."""

    @abstractmethod
    async def expired(self, limit: int = 500) -> list[Attempt | BadRow]:
        """Running rows whose lease has expired: their worker or host is gone."""

    @abstractmethod
    async def set_progress(self, job_id: int, token: int, progress: str) -> bool:
        """Record a running attempt's progress, readable at once (never inside its transaction)."""

    @abstractmethod
    async def cancel_requests(self, ids: Sequence[int]) -> list[int]:
        """Which of these running jobs someone asked to cancel."""

    @abstractmethod
    async def has_work(self, queues: Sequence[str], within: float = 0.0) -> bool:
        """Anything runnable in these queues now (or within ``within`` seconds)? A paused
        queue's jobs do not count: nothing claims them until it is resumed."""

    @abstractmethod
    async def has_running(self, queues: Sequence[str]) -> bool:
        """Anything running in these queues, on any host?"""

    @abstractmethod
    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """When an idle worker should claim again though nothing woke it: the earliest future
        ``run_at`` here (delayed jobs, retries), or soon if runnable jobs were held back by a
        limit. Never a time in the past: runnable jobs the claim skipped (a paused queue, a
        saturated key) would otherwise make the worker claim in a tight loop."""

    @abstractmethod
    async def watch(self, on_change: Callable[[], None], idle: Callable[[], Awaitable[None]] | None = None) -> None:
        """Call ``on_change`` soon after new work may have arrived, until cancelled. PostgreSQL:
        LISTEN/NOTIFY. SQLite: a cheap check of the database file when the kernel says it was
        written (inotify), or between polls where it cannot. ``idle()`` returns when the worker
        is not claiming back to back: until then it needs no wake-up, and a driver whose
        wake-ups cost something may wait for it first."""

    def idle_poll(self, poll_interval: float) -> float:
        """How long an idle worker may sleep with no wake-up from ``watch``: the configured poll
        interval, unless the driver's watch sees every commit (then a poll finds nothing the
        watch did not, and a longer sleep saves an idle host's queries)."""
        return poll_interval

    # -- workers --------------------------------------------------------------------------------

    @abstractmethod
    async def worker_seen(self, worker: WorkerRow) -> None: ...

    @abstractmethod
    async def worker_gone(self, owner: str) -> None: ...

    @abstractmethod
    async def workers(self, since: float) -> list[WorkerRow]:
        """Workers seen since ``since`` (epoch seconds), on every host."""

    # -- periodic jobs and retention --------------------------------------------------------------

    @abstractmethod
    async def last_fire(self, name: str) -> float | None: ...

    @abstractmethod
    async def fire(self, name: str, fire_at: float, envelope: Envelope) -> int | None:
        """Enqueue a periodic job for one fire time unless any scheduler already did."""

    @abstractmethod
    async def prune_schedule(self, before: float) -> int: ...

    @abstractmethod
    async def purge_finished(self, before: float, batch: int = 500) -> int:
        """Delete one small batch of jobs that finished before ``before``."""

    # -- reads ----------------------------------------------------------------------------------

    @abstractmethod
    async def get(self, job_id: int) -> JobRow | None: ...

    @abstractmethod
    async def get_many(self, ids: Sequence[int]) -> list[JobRow]: ...

    @abstractmethod
    async def children(self, parent_id: int) -> list[JobRow]: ...

    @abstractmethod
    async def get_by_key(self, key: str) -> JobRow | None: ...

    @abstractmethod
    async def cancel(self, job_id: int) -> CancelResult: ...

    # -- workflows --------------------------------------------------------------------------------

    @abstractmethod
    async def parent_results(self, job_id: int) -> list[tuple[int, str, str | None]]:
        """(parent id, state, result JSON) of the jobs ``job_id`` waits for, in their order."""

    @abstractmethod
    async def dependencies(self, job_id: int) -> tuple[list[int], list[int]]:
        """(the jobs it waits for, the jobs that wait for it)."""

    @abstractmethod
    async def group_members(self, group_id: str) -> list[int]: ...

    @abstractmethod
    async def cancel_workflow(self, root_id: int) -> tuple[int, int]:
        """Cancel what has not finished in a workflow; (cancelled now, cancel requested)."""

    # -- flow control ---------------------------------------------------------------------------

    @abstractmethod
    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause a queue (claims on every host skip it; running jobs finish) or resume it."""

    @abstractmethod
    async def paused_queues(self) -> list[str]: ...

    # -- admin ----------------------------------------------------------------------------------

    @abstractmethod
    async def stats(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) for every queue and state present."""

    @abstractmethod
    async def finished_since(self, since: float) -> int: ...

    @abstractmethod
    async def list_jobs(self, where: JobFilter, limit: int) -> list[JobRow]:
        """Newest first; ``where.before_id`` pages by keyset."""

    @abstractmethod
    async def retry_one(self, job_id: int) -> bool:
        """Re-queue one failed, cancelled or expired job with fresh counters."""

    @abstractmethod
    async def retry_batch(self, state: str, batch: int = 1000) -> int: ...

    @abstractmethod
    async def purge_batch(self, state: str, before: float, batch: int = 1000) -> int: ...

    @abstractmethod
    async def make_due(self, ids: Sequence[int]) -> int:
        """Let queued jobs run now whatever their ETA (eager mode runs retries at once)."""

    @abstractmethod
    async def dispose(self) -> None:
        """Close every connection this driver opened."""

    # -- counters and dashboard reads -------------------------------------------------------------
    # What the dashboard, /metrics and `runner status` read. Each answers from an index, a
    # rollup or an estimate, never a scan of the finished jobs, so it stays fast at millions of rows.

    @abstractmethod
    async def fold_stats(self, now: float) -> int:
        """Fold the counter rows of ended minutes into one row per (minute, key), and minutes
        older than two hours into one row per key (minute 0); returns how many rows were
        folded. Sums are unchanged, so counters never go back."""

    @abstractmethod
    async def stats_totals(self) -> list[StatsRow]:
        """Counters over all time, per (name, queue, kind)."""

    @abstractmethod
    async def stats_since(self, minute: int, per: str = "minute") -> list[StatsRow]:
        """Counters of the minutes from ``minute`` on, summed ``per`` minute (and queue and
        kind; name ``*``), per ``name`` (and queue and kind; minute 0), or per ``queue``."""

    @abstractmethod
    async def queue_counts(self, now: float) -> list[QueueCounts]:
        """Per queue: runnable, scheduled, running, failed, cancelled, expired, and the lag."""

    @abstractmethod
    async def table_size(self) -> tuple[int, bool]:
        """Rows in the jobs table, and whether that figure is an estimate (PostgreSQL's planner
        statistics) rather than an exact count."""

    @abstractmethod
    async def find_jobs(self, where: JobFilter, limit: int) -> JobPage:
        """The dashboard's job list: ``where`` applied newest first, paged by keyset."""

    @abstractmethod
    async def running_jobs(self, limit: int = 1000) -> list[JobRow]:
        """Running jobs, on every host (the workers page: exact, not the heartbeat's copy)."""

    @abstractmethod
    async def nodes(self, since: float) -> list[NodeRow]:
        """Hosts seen since ``since``."""

    @abstractmethod
    async def schedule_names(self) -> list[str]:
        """Names of the periodic schedules that ever fired."""

    @abstractmethod
    async def schedule_fires(self, name: str, limit: int = 5) -> list[tuple[float, int | None]]:
        """The latest fire times of one schedule, newest first, with the job each created."""

    @abstractmethod
    async def retry_jobs(self, ids: Sequence[int]) -> int:
        """Re-queue those of ``ids`` that failed, were cancelled or expired."""

    @abstractmethod
    async def cancel_jobs(self, ids: Sequence[int]) -> int:
        """Cancel those of ``ids`` that are queued, and ask the running ones to stop."""

    @abstractmethod
    async def delete_jobs(self, ids: Sequence[int]) -> int:
        """Delete those of ``ids`` that are not running (a running job is cancelled first)."""
