"""One worker process: its one event loop, its one engine, the claim loop and its side tasks.

Forked by the supervisor, a worker runs ``anyio.run`` exactly once. Inside that loop it builds the
engine (pool sized to its concurrency), runs the app's lifespan hooks, gives back whatever the
previous occupant of its slot left running, and then claims only as many jobs as it has free
slots. Side tasks: heartbeats to the supervisor, lease renewal, the expired-lease sweep, cancel
requests, the outcome writer and (PostgreSQL) the NOTIFY listener. A Drain frame, a closed
supervisor socket, recycling limits or burst completion end the claim loop; in-flight jobs get the
grace period, then are cancelled and given back in one statement.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import asyncio

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from .app import App, JobDef, WorkerInfo
from .errors import JobTimeout, SerializationError
from .run_job import Executor, Running
from .notify import listen_forever
from .outcomes import OutcomeWriter
from .scheduler import Scheduler
from .session import create_engine, make_sessionmaker, use_sessionmaker
from .settings import Settings, backend_of
from .store import Outcome, Store, error_json
from .wire import (
    Claimed,
    Drain,
    Finished,
    Frame,
    FrameReader,
    Heartbeat,
    Ready,
    Started,
    State,
    Stop,
    Stopped,
    decode_json,
    encode_frame,
)

__all__ = ["Fault", "Worker", "rss_kb", "run_worker"]

log = logging.getLogger(__name__)

POOL_OVERFLOW = 2
HEARTBEAT_EVERY = 1.0
CANCEL_POLL_EVERY = 0.5
RETENTION_EVERY = 60.0  # seconds between result-retention sweeps
BURST_HORIZON = 3.0
CLAIM_BATCH_WAIT = 0.005


@dataclass(frozen=True)
class Fault:
    """Why the previous occupant of this slot died, when the supervisor killed it on purpose."""

    reason: str  # "hard_timeout" or "unresponsive"
    job_ids: tuple[int, ...] = ()
    limit: float = 0.0


def rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def owner_name(settings: Settings, supervisor_pid: int, slot: int) -> str:
    return f"{settings.node}:{supervisor_pid}:{slot}"


def run_worker(app: App, settings: Settings, slot: int, owner: str, sock: socket.socket | None, fault: Fault | None) -> int:
    """Entry point in the forked child; returns the process exit code."""
    worker = Worker(app, settings, slot, owner, sock, fault)
    backend_options = {"use_uvloop": True} if settings.uvloop else {}

    async def main_then_exit() -> None:
        await worker.main()
        # Everything durable is done (outcomes written, leases given back, engine disposed).
        # Leave now: interpreter teardown would wait on driver threads that a cancelled
        # connection may still be parking in SQLite's busy handler.
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    anyio.run(main_then_exit, backend="asyncio", backend_options=backend_options)
    return 0


class Worker:
    def __init__(
        self,
        app: App,
        settings: Settings,
        slot: int,
        owner: str,
        sock: socket.socket | None,
        fault: Fault | None = None,
    ) -> None:
        # Constructors touch no loop, engine or signal: those are made inside main().
        self.app = app
        self.settings = settings
        self.slot = slot
        self.owner = owner
        self.sock = sock
        self.fault = fault
        self.concurrency = settings.concurrency
        self.queues: tuple[str, ...] = settings.queues or _app_queues(app)
        self.running: dict[int, Running] = {}
        self.done = 0
        self.draining = False
        self.stop_reason = "drained"
        self.replace_me = False
        self.grace_deadline: float | None = None
        self.loop_identity: tuple[int, int] | None = None  # (id(loop), id(engine)) for tests and logs

    # -- lifecycle ------------------------------------------------------------------------------

    async def main(self) -> None:
        settings = self.settings
        pool = self.concurrency + 1  # +1: lease renewal and claims never wait behind C busy jobs
        # No pre-ping: it costs a round trip per checkout. A dead connection instead fails one
        # statement, which invalidates the pool; queue operations retry, and a job whose
        # connection died is given back without counting an attempt (run_job.py).
        engine = create_engine(settings.broker, pool_size=pool, max_overflow=POOL_OVERFLOW, pre_ping=False)
        db_engine: AsyncEngine = engine
        if not settings.shared_database:
            db_engine = create_engine(settings.database_url, pool_size=self.concurrency, max_overflow=POOL_OVERFLOW, pre_ping=False)
        self.engine, self.db_engine = engine, db_engine
        self.store = Store(engine, max_payload=settings.max_payload)
        sessions = make_sessionmaker(db_engine)
        use_sessionmaker(sessions)
        client = self.app.client
        unbound = client.bound_store
        client.bind_store(self.store)  # jobs that enqueue jobs reuse this engine
        self.writer = OutcomeWriter(self.store)
        self.slot_free = anyio.Event()
        self.wake = anyio.Event()
        self.inbox: asyncio.Queue[Claimed] = asyncio.Queue()
        self.executor = Executor(
            self.app,
            self.store,
            sessions,
            exactly_once=settings.shared_database,
            max_payload=settings.max_payload,
            max_result=settings.max_result,
            thread_limiter=anyio.CapacityLimiter(self.concurrency),
            timeout_exception=getattr(self.app, "timeout_exception", JobTimeout),
        )
        self.loop_identity = (id(asyncio.get_running_loop()), id(engine))
        try:
            await self.store.ensure_schema()
            await self._recover_slot()
            info = WorkerInfo(self.slot, os.getpid(), self.owner, self.concurrency, self.queues)
            async with contextlib.AsyncExitStack() as stack:
                for lifespan in self.app.lifespans:
                    await stack.enter_async_context(lifespan(info))
                self._send(Ready(os.getpid(), self.slot))
                log.info("worker %s ready: pid=%d queues=%s concurrency=%d", self.owner, os.getpid(), ",".join(self.queues), self.concurrency)
                await self._serve()
        finally:
            with anyio.CancelScope(shield=True):
                await self._give_back()
                with contextlib.suppress(Exception):
                    await self.store.worker_gone(self.owner)
                client.bind_store(unbound)
                await engine.dispose()
                if db_engine is not engine:
                    await db_engine.dispose()
            self._send(Stopped(self.stop_reason, replace=self.replace_me))

    async def _recover_slot(self) -> None:
        """Settle what the previous occupant of this slot left running, before claiming anything."""
        if self.fault is not None:
            for job_id in self.fault.job_ids:
                await self._settle_killed(job_id)
        rescued = await self.store.rescue_owner(self.owner, self.settings.max_lost)
        if rescued:
            log.warning("slot %s: gave back %d jobs its previous worker held", self.owner, len(rescued))

    async def _settle_killed(self, job_id: int) -> None:
        """The supervisor killed our predecessor because of this job: apply the job's retry policy."""
        held = await self.store.held(job_id, self.owner)
        if held is None:
            return
        _id, name, token, attempt, max_attempts = held
        assert self.fault is not None
        if self.fault.reason == "hard_timeout":
            message = f"hard time limit of {self.fault.limit:g}s exceeded; the worker running it was killed"
            type_ = "TimeLimitExceeded"
        else:
            message = "the worker's event loop stopped answering while running this job; it was killed"
            type_ = "WorkerUnresponsive"
        job = self.app.jobs.get(name)
        limit = max_attempts or (job.max_attempts if job else 1)
        retry_on_timeout = job is not None and (TimeoutError in job.retry_on or Exception in job.retry_on)
        error = error_json(type_, message, attempt=attempt)
        if retry_on_timeout and attempt < limit and job is not None:
            outcome = Outcome(job_id, token, State.QUEUED, error=error, run_at=time.time() + job.backoff.delay(attempt))
        else:
            outcome = Outcome(job_id, token, State.FAILED, error=error, finished_at=time.time())
        await self.store.finish([outcome])
        log.warning("job %s (%s): %s", job_id, name, message)

    async def _serve(self) -> None:
        async with anyio.create_task_group() as side:
            side.start_soon(self._heartbeats)
            side.start_soon(self._leases)
            side.start_soon(self._cancel_requests)
            side.start_soon(self.writer.run)
            side.start_soon(self._signals)
            if self.sock is not None:
                side.start_soon(self._control)
            if backend_of(self.settings.broker) == "postgresql":
                side.start_soon(listen_forever, self.settings.broker, self._poke)
            if self.slot == 0 and not self.settings.burst:  # one per host is plenty
                side.start_soon(self._retention)
                if self.settings.scheduler and self.app.schedules:
                    side.start_soon(Scheduler(self.store, self.app.schedules).run)
            async with anyio.create_task_group() as jobs:
                self.jobs_scope = jobs.cancel_scope
                # One long-lived task per slot, fed from the inbox: no task is spawned per job.
                for slot in range(self.concurrency):
                    jobs.start_soon(self._slot, name=f"slot {slot}")
                await self._claim_loop()
                self._empty_inbox()
                await self._wait_in_flight()
                jobs.cancel_scope.cancel()
            await self.writer.drain()
            side.cancel_scope.cancel()

    async def _wait_in_flight(self) -> None:
        while self.running:
            remaining = None if self.grace_deadline is None else self.grace_deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                log.warning("grace period over: cancelling %d in-flight jobs; they will be re-queued", len(self.running))
                return
            self.slot_free = anyio.Event()
            with anyio.move_on_after(remaining if remaining is not None else 1.0):
                await self.slot_free.wait()

    async def _give_back(self) -> None:
        """After the loop: re-queue anything still marked running under our name (cancelled jobs)."""
        try:
            await self.writer.drain(timeout=10)
            count = await self.store.requeue_owner(self.owner)
            if count:
                log.warning("re-queued %d unfinished jobs", count)
        except Exception as exc:
            log.error("could not re-queue unfinished jobs (%s); their leases will expire and another worker will", exc)

    # -- the claim loop -------------------------------------------------------------------------

    def _free(self) -> int:
        return self.concurrency - len(self.running) - self.inbox.qsize()

    def _empty_inbox(self) -> None:
        """Claimed but not started: left to the give-back statement at shutdown."""
        while not self.inbox.empty():
            self.inbox.get_nowait()

    async def _slot(self) -> None:
        while True:
            claimed = await self.inbox.get()
            if self.draining:
                continue
            running = Running(claimed)
            self.running[claimed.id] = running
            await self._run_one(running)

    async def _claim_loop(self) -> None:
        poll = self.settings.effective_poll_interval
        sqlite = self.store.backend == "sqlite"
        failures = 0
        batch = max(1, self.concurrency // 2)
        while not self.draining:
            free = self._free()
            if free <= 0 or (0 < free < batch and self.running):
                # Claim in batches: a round trip per freed slot would cap throughput on short
                # jobs. Wait briefly for more slots to free up; a lone slot still gets work soon.
                self.slot_free = anyio.Event()
                with anyio.move_on_after(CLAIM_BATCH_WAIT if free > 0 else None):
                    await self.slot_free.wait()
                if free <= 0 or self._free() != free:
                    continue  # more slots freed up: recompute; else claim for what we have
            try:
                claimed = await self.store.claim(self.owner, self.queues, free, self.settings.lease_ttl)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning("claim failed (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            for row in claimed:
                self.inbox.put_nowait(row)
            if claimed:
                continue
            if self.settings.burst and await self._burst_finished():
                self.stop_reason, self.replace_me = "burst", False
                return
            await self._idle(poll, probe=sqlite)

    async def _idle(self, poll: float, *, probe: bool) -> None:
        """Sleep until poked (NOTIFY, a slot freed) or the poll interval passes; on SQLite, keep
        polling with a cheap read so that the claim's write lock is only taken when there is work."""
        while not self.draining:
            self.wake = anyio.Event()
            with anyio.move_on_after(poll):
                await self.wake.wait()
            if not probe:
                return
            try:
                if await self.store.has_runnable(self.queues):
                    return
            except Exception as exc:
                log.warning("probe failed (%s)", exc)
                await anyio.sleep(1.0)
            if self.settings.burst:
                return

    async def _burst_finished(self) -> bool:
        if self.running or self.writer.pending or not self.inbox.empty():
            return False
        try:
            if await self.store.has_runnable(self.queues, within=BURST_HORIZON):
                return False
            if await self.store.has_expiring(self.queues, within=BURST_HORIZON):
                # A dead worker's jobs: sweep them back now rather than exit without them.
                await self.store.rescue_expired(self.settings.max_lost)
                await anyio.sleep(0.2)
                return False
            return True
        except Exception:
            return False

    def _poke(self) -> None:
        self.wake.set()

    async def _run_one(self, running: Running) -> None:
        claimed = running.claimed
        hard = _hard_limit(claimed, self.app.jobs.get(claimed.name))
        if hard:
            self._send(Started(claimed.id, time.time() + hard, hard))
        try:
            outcome = await self.executor.run(running)
            if outcome is not None:
                self.writer.add(outcome)
            self.done += 1
        finally:
            del self.running[claimed.id]
            if hard:
                self._send(Finished(claimed.id))
            self.slot_free.set()
            self._check_recycle()

    def _check_recycle(self) -> None:
        limit = self.settings.max_jobs_per_worker
        if limit and self.done >= limit and not self.draining:
            log.info("worker %s ran %d jobs (--max-jobs-per-worker %d): recycling", self.owner, self.done, limit)
            self._drain("recycled", grace=self.settings.grace, replace=True)

    def _drain(self, reason: str, grace: float, replace: bool) -> None:
        if not self.draining:
            self.stop_reason, self.replace_me = reason, replace
        self.draining = True
        deadline = time.monotonic() + grace
        self.grace_deadline = deadline if self.grace_deadline is None else min(self.grace_deadline, deadline)
        self.wake.set()
        self.slot_free.set()

    # -- side tasks -----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        memory_limit = self.settings.max_memory_per_worker
        while True:
            rss = rss_kb()
            self._send(Heartbeat(len(self.running), self.done, rss))
            # Only after a job: a limit below the worker's own baseline would otherwise recycle
            # it forever without progress. Recycling then happens once per job batch at worst.
            if memory_limit and rss > memory_limit * 1024 and self.done > 0 and not self.draining:
                log.warning("worker %s uses %d MiB (--max-memory-per-worker %d): recycling", self.owner, rss // 1024, memory_limit)
                self._drain("recycled", grace=self.settings.grace, replace=True)
            await anyio.sleep(HEARTBEAT_EVERY)

    async def _leases(self) -> None:
        ttl = self.settings.lease_ttl
        queues = ",".join(self.queues)
        last_sweep = 0.0
        while True:
            try:
                await self.store.renew(self.owner, ttl)
                await self.store.worker_seen(self.owner, self.settings.node, os.getpid(), queues, self.done)
                if time.monotonic() - last_sweep > ttl / 2:
                    last_sweep = time.monotonic()
                    rescued = await self.store.rescue_expired(self.settings.max_lost)
                    if rescued:
                        log.warning("re-queued %d jobs whose lease expired (a worker or host died)", len(rescued))
                        self._poke()
            except Exception as exc:
                log.warning("lease renewal failed (%s)", exc)
            await anyio.sleep(min(ttl / 3, 5.0))

    async def _retention(self) -> None:
        """Delete finished jobs older than ``result_ttl``, a small batch at a time, so that the
        table stays the size of the live work and no purge holds a lock for long."""
        while True:
            try:
                while await self.store.purge_finished(time.time() - self.settings.result_ttl) > 0:
                    await anyio.sleep(0.05)
            except Exception as exc:
                log.warning("result retention purge failed (%s); will try again", exc)
            await anyio.sleep(RETENTION_EVERY)

    async def _cancel_requests(self) -> None:
        while True:
            await anyio.sleep(CANCEL_POLL_EVERY)
            if not self.running:
                continue
            try:
                requests = await self.store.cancel_requests(self.owner)
            except Exception:
                continue
            for job_id, token in requests:
                running = self.running.get(job_id)
                if running is not None and running.claimed.lease_token == token and running.stop_reason is None:
                    running.stop_reason = "cancelled"
                    running.scope.cancel()

    async def _signals(self) -> None:
        """SIGTERM sent to the worker itself (systemd's control-group kill, a container stop)
        drains like a supervisor's Drain frame."""
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self._drain("terminated", grace=self.settings.grace, replace=False)

    async def _control(self) -> None:
        """Frames from the supervisor; EOF means it is gone, so drain and leave."""
        assert self.sock is not None
        reader = FrameReader()
        while True:
            try:
                await anyio.wait_readable(self.sock)
                data = self.sock.recv(65536)
            except (OSError, ValueError):
                data = b""
            if not data:
                log.warning("supervisor is gone: draining")
                self._drain("orphaned", grace=self.settings.grace, replace=False)
                return
            for frame in reader.feed(data):
                self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Drain):
            self._drain("drained", grace=frame.grace, replace=False)
        elif isinstance(frame, Stop):
            self._drain("stopped", grace=0.0, replace=False)
            self.jobs_scope.cancel()

    def _send(self, frame: Frame) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(encode_frame(frame))
        except OSError:
            pass  # the supervisor is gone; _control notices the EOF and drains


def _hard_limit(claimed: Claimed, job: JobDef[Any, Any] | None) -> float | None:
    """The attempt's hard limit: a per-call ``hard_timeout`` in the row's meta wins over the
    job's. Meta is decoded here only when it names one (most rows have no meta at all)."""
    if claimed.meta and '"hard_timeout"' in claimed.meta:
        try:
            meta = decode_json(claimed.meta, "meta column")
        except SerializationError:
            meta = None  # the executor fails the job with the decoding error
        value = meta.get("hard_timeout") if isinstance(meta, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return job.hard_timeout if job is not None else None


def _app_queues(app: App) -> tuple[str, ...]:
    """Without -Q a worker serves every queue the app's jobs name, the default one first."""
    named = {job.queue for job in app.jobs.values()} | set(app.routes.values())
    return (app.default_queue, *sorted(named - {app.default_queue}))
