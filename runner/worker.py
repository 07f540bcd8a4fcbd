"""One worker process: its one event loop, its one engine, the claim loop and its side tasks.

Forked by the supervisor, a worker runs ``anyio.run`` exactly once. Inside that loop it builds
its driver (pool sized to its concurrency), settles what its predecessors left running, runs the
app's lifespan hooks, and then claims only as many jobs as it has free slots. Side tasks:
heartbeats to the supervisor, lease renewal of exactly the jobs it holds, the expired-lease
sweep, cancel requests, the outcome writer, the wake-up watcher, retention and the scheduler.

A Drain frame, SIGTERM, a closed supervisor socket, recycling limits or burst completion end the
claim loop; in-flight jobs get the grace period, then are cancelled and given back. Every way
out reports a typed ``StopReason``: a crash or a failed start is restarted by the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import traceback as tb
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio
import msgspec

from .app import App, WorkerInfo
from .complete import Batched, Direct
from .decide import Event, Frozen, GaveBack, HardKilled, NotRunnable, WorkerLost
from .drivers import Driver, WorkerRow, open_driver
from .frames import Drain, Finished, Frame, FrameReader, Heartbeat, Ready, Started, Stop, Stopped, StopReason, encode_frame
from .procinfo import boot_id, process_dead, process_started, rss_kb
from .run_job import JobRunner, Running
from .scheduler import Scheduler
from .session import create_engine, make_sessionmaker, use_sessionmaker
from .settings import Settings
from .wire import Attempt, BadRow

__all__ = ["Fault", "Worker", "owner_name", "run_worker"]

log = logging.getLogger("runner.worker")

POOL_OVERFLOW: Final = 2
HEARTBEAT_EVERY: Final = 1.0
CANCEL_POLL_EVERY: Final = 0.5
RETENTION_EVERY: Final = 60.0  # seconds between result-retention sweeps
BURST_HORIZON: Final = 3.0
BURST_TAIL_CHECK: Final = 0.02  # seconds between burst-end checks while this worker's last jobs finish
CLAIM_BATCH_WAIT: Final = 0.005


@dataclass(frozen=True)
class Fault:
    """Why the previous occupant of this slot died, when the supervisor killed it on purpose."""

    reason: str  # "hard_timeout" or "unresponsive"
    job_ids: tuple[int, ...] = ()
    limit: float = 0.0


def owner_name(settings: Settings, supervisor_pid: int, slot: int) -> str:
    return f"{settings.node}:{supervisor_pid}:{slot}"


def run_worker(app: App, settings: Settings, slot: int, owner: str, sock: socket.socket | None, fault: Fault | None) -> int:
    """Entry point in the forked child; never returns (the process exits with the worker)."""
    worker = Worker(app, settings, slot, owner, sock, fault)
    backend_options = {"use_uvloop": True} if settings.uvloop else {}

    async def main_then_exit() -> None:
        reason = await worker.main()
        # Everything durable is done (outcomes written, jobs given back, engine disposed).
        # Leave now: interpreter teardown would wait on driver threads that a cancelled
        # connection may still be parking in SQLite's busy handler.
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1 if reason in (StopReason.CRASHED, StopReason.STARTUP_FAILED) else 0)

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
        self.queues: tuple[str, ...] = settings.queues or app.queues()
        self.held: dict[int, Attempt | BadRow] = {}  # claimed and not yet handed to a completer
        self.running: dict[int, Running] = {}
        self.done = 0
        self.draining = False
        self.stop_reason = StopReason.DRAINED
        self.grace_deadline: float | None = None
        self.loop_identity: tuple[int, int] | None = None  # (id(loop), id(engine)) for tests and logs
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------------

    async def main(self) -> StopReason:
        """Run until told to stop; returns why, after telling the supervisor. Never raises."""
        ready = False
        detail = ""
        try:
            await self._open()
            await self.driver.ensure_schema()
            await self._seen()
            await self._recover()
            info = WorkerInfo(self.slot, os.getpid(), self.owner, self.concurrency, self.queues)
            async with contextlib.AsyncExitStack() as stack:
                for lifespan in self.app.lifespans:
                    await stack.enter_async_context(lifespan(info))
                self._send(Ready(os.getpid(), self.slot))
                ready = True
                log.info(
                    "worker %s ready: pid=%d queues=%s concurrency=%d",
                    self.owner,
                    os.getpid(),
                    ",".join(self.queues),
                    self.concurrency,
                )
                await self._serve()
        except Exception as exc:
            self.stop_reason = StopReason.CRASHED if ready else StopReason.STARTUP_FAILED
            detail = f"{type(exc).__name__}: {exc}"
            where = "while running" if ready else "before it was ready"
            log.error("worker %s failed %s: %s\n%s", self.owner, where, detail, "".join(tb.format_exception(exc)).rstrip())
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()
            self._send(Stopped(self.stop_reason, detail))
        return self.stop_reason

    async def _open(self) -> None:
        settings = self.settings
        pool = self.concurrency + 1  # +1: lease renewal and claims never wait behind C busy jobs
        # No pre-ping: it costs a round trip per checkout. A dead connection instead fails one
        # statement, which invalidates the pool; queue operations retry, and a job whose
        # connection died is given back without counting an attempt (run_job.py).
        self.driver: Driver = open_driver(
            settings.broker, pool_size=pool, max_overflow=POOL_OVERFLOW, max_payload=settings.max_payload
        )
        db_engine = self.driver.engine
        if not settings.shared_database:
            db_engine = create_engine(
                settings.database_url, pool_size=self.concurrency, max_overflow=POOL_OVERFLOW, pre_ping=False
            )
        self.db_engine = db_engine
        sessions = make_sessionmaker(db_engine, metered=settings.db_cost)
        use_sessionmaker(sessions)
        self._unbound = self.app.client.bound
        self.app.client.bind(self.driver)  # jobs that enqueue jobs reuse this engine
        self.completer = Batched(self.driver, on_requeued=self._poke)
        self.direct = Direct(self.driver)
        self.slot_free = anyio.Event()
        self.wake = anyio.Event()
        self.inbox: asyncio.Queue[Attempt | BadRow] = asyncio.Queue()
        limits = {"max_lost": settings.max_lost, "max_result": settings.max_result, "max_payload": settings.max_payload}
        self.runner = JobRunner(
            self.app, self.driver, sessions=sessions, exactly_once=settings.shared_database, completer=self.completer,
            thread_limiter=anyio.CapacityLimiter(self.concurrency), limits=limits, meter_costs=settings.db_cost,
        )  # fmt: skip
        self.loop_identity = (id(asyncio.get_running_loop()), id(self.driver.engine))

    async def _close(self) -> None:
        if not hasattr(self, "driver"):
            return
        await self._give_back()
        with contextlib.suppress(Exception):
            await self.driver.worker_gone(self.owner)
        self.app.client.bind(self._unbound)
        with contextlib.suppress(Exception):
            await self.driver.dispose()
        if self.db_engine is not self.driver.engine:
            with contextlib.suppress(Exception):
                await self.db_engine.dispose()

    async def _recover(self) -> None:
        """Settle what earlier occupants left running, before claiming anything: this slot's
        predecessor (killed by the supervisor, or crashed), and dead serve processes on this node."""
        settled = await self._settle(self.owner, self._predecessor_event)
        if self.slot == 0:
            for worker in await self.driver.workers(since=0.0):
                if (
                    worker.node == self.settings.node
                    and worker.owner != self.owner
                    and process_dead(worker.pid, worker.pid_started, worker.boot_id)
                ):
                    why = f"worker {worker.owner} died (its process is gone)"
                    settled += await self._settle(worker.owner, lambda _item, why=why: WorkerLost(why))
                    await self.driver.worker_gone(worker.owner)
        if settled:
            log.warning("worker %s: settled %d jobs that dead workers held", self.owner, settled)

    def _predecessor_event(self, item: Attempt | BadRow) -> Event:
        fault = self.fault
        if fault is not None and fault.reason == "hard_timeout" and item.id in fault.job_ids:
            return HardKilled(fault.limit)
        if fault is not None and fault.reason == "unresponsive":
            return Frozen()
        return WorkerLost(f"worker {self.owner} died")

    async def _settle(self, owner: str, event_for: Any) -> int:
        items = await self.driver.held_by(owner)
        for item in items:
            outcome = await self.runner.end(item, event_for(item), self.direct)
            log.warning("job %s (%s) of %s: %s", item.id, item.name, owner, outcome.record.note or outcome.state)
        return len(items)

    async def _serve(self) -> None:
        async with anyio.create_task_group() as side:
            side.start_soon(self._heartbeats)
            side.start_soon(self._leases)
            side.start_soon(self._sweep)
            side.start_soon(self._cancel_requests)
            side.start_soon(self.completer.run)
            side.start_soon(self._signals)
            side.start_soon(self.driver.watch, self._poke, self.completer.until_idle)
            if self.sock is not None:
                side.start_soon(self._control)
            self.scheduler_scope = anyio.CancelScope()
            if self.slot == 0 and not self.settings.burst:  # one per host is plenty
                side.start_soon(self._retention)
                if self.settings.scheduler and self.app.schedules:
                    side.start_soon(self._scheduler)
            async with anyio.create_task_group() as jobs:
                self.jobs_scope = jobs.cancel_scope
                # One long-lived task per slot, fed from the inbox: no task is spawned per job.
                for slot in range(self.concurrency):
                    jobs.start_soon(self._slot, slot, name=f"slot {slot}")
                await self._claim_loop()
                self.completer.claiming(False)
                self._empty_inbox()
                await self._wait_in_flight()
                jobs.cancel_scope.cancel()
            await self.completer.drain()
            side.cancel_scope.cancel()

    async def _wait_in_flight(self) -> None:
        if self.running:
            log.info("worker %s: waiting for %d running jobs to finish", self.owner, len(self.running))
        while self.running:
            remaining = None if self.grace_deadline is None else self.grace_deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                log.warning("grace period over: cancelling %d running jobs; they are given back", len(self.running))
                return
            self.slot_free = anyio.Event()
            with anyio.move_on_after(remaining if remaining is not None else 1.0):
                await self.slot_free.wait()

    async def _give_back(self) -> None:
        """After the loop: write what is pending, then give back every job still held."""
        try:
            await self.completer.drain(timeout=10)
            left = list(self.held.values())
            for item in left:
                await self.runner.end(item, GaveBack(), self.direct)
            if left:
                log.warning("gave back %d unfinished jobs", len(left))
            self.held.clear()
        except Exception as exc:
            log.error("could not give back unfinished jobs (%s); their leases will expire and another worker will", exc)

    # -- the claim loop -------------------------------------------------------------------------

    def _free(self) -> int:
        return self.concurrency - len(self.running) - self.inbox.qsize()

    def _empty_inbox(self) -> None:
        """Claimed but not started: given back by ``_give_back``."""
        while not self.inbox.empty():
            self.inbox.get_nowait()

    async def _slot(self, lane: int) -> None:
        while True:
            item = await self.inbox.get()
            if self.draining:
                continue  # stays held: given back
            await self._run_one(item, lane)

    async def _run_one(self, item: Attempt | BadRow, lane: int = -1) -> None:
        if isinstance(item, BadRow):
            try:
                await self.runner.end(item, NotRunnable(item.error))
                del self.held[item.id]
            finally:
                self.slot_free.set()
            return
        running = self.running[item.id] = Running(item, lane=lane)
        job = self.app.jobs.get(item.name)
        hard = item.hard_timeout or (job.hard_timeout if job is not None else None)
        if hard:
            self._send(Started(item.id, time.time() + hard, hard))
        try:
            await self.runner.run(running)
            del self.held[item.id]  # not on cancellation: a cancelled attempt is given back
            self.done += 1
        finally:
            del self.running[item.id]
            if hard:
                self._send(Finished(item.id))
            self.slot_free.set()
            self._check_recycle()

    async def _claim_loop(self) -> None:
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
            # A wake-up from here on (new work, a retry written, the watch) means "look again":
            # it must not be lost to the checks between this claim and the idle wait.
            self.wake = anyio.Event()
            try:
                claimed = await self.completer.claim_with(
                    partial(self.driver.claim_and_complete, self.owner, self.queues, free, self.settings.lease_ttl)
                )
                if failures:
                    log.warning("claims work again (the database is back)")
                failures = 0
            except Exception as exc:
                self.completer.claiming(False)
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning("claim failed (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            for item in claimed:
                self.held[item.id] = item
                self.inbox.put_nowait(item)
            # Busy: the jobs just claimed end into the buffer, and the next claim writes them.
            # Idle: outcomes are written at once, by the completer. Fewer jobs than free slots
            # means the claim saw no more runnable work: claiming again at once would only ask
            # the database the same question (anything new since sets ``wake``).
            self.completer.claiming(len(claimed) >= free)
            if len(claimed) >= free:
                continue
            if claimed:
                await self._idle()
                continue
            if self.settings.burst and await self._burst_finished():
                self.stop_reason = StopReason.BURST_DONE
                return
            await self._idle()

    async def _idle(self) -> None:
        """Sleep until poked (NOTIFY, a change to the SQLite file, a slot freed), the earliest
        delayed job is due, or the poll interval passes."""
        if self.wake.is_set():
            return  # poked since the claim: claim again before asking anything else
        # Read before the query below: jobs held now may end (and their outcomes be written)
        # while it runs, and nothing pokes the loop for that -- yet a burst must then end.
        tail = self.settings.burst and bool(self.held or self.completer.pending)
        timeout = self.driver.idle_poll(self.settings.poll_interval)
        try:
            due = await self.driver.next_run_at(self.queues)
        except Exception:
            due = None
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.time()))
        if tail or (self.settings.burst and (self.held or self.completer.pending)):
            timeout = min(timeout, BURST_TAIL_CHECK)  # the end of a burst is near: look again soon
        with anyio.move_on_after(timeout):
            await self.wake.wait()

    async def _burst_finished(self) -> bool:
        """Nothing held here, nothing pending, nothing runnable soon and nothing running anywhere."""
        if self.held or self.completer.pending or not self.inbox.empty():
            return False
        try:
            if await self.driver.has_work(self.queues, within=BURST_HORIZON):
                return False
            if await self.driver.has_running(self.queues):
                # Another worker's jobs, or a dead one's: sweep expired leases back, then wait.
                await self._sweep_once()
                await anyio.sleep(0.2)
                return False
            return True
        except Exception as exc:
            log.warning("burst: checking for remaining work failed (%s)", exc)
            return False

    def _poke(self) -> None:
        self.wake.set()

    def _check_recycle(self) -> None:
        limit = self.settings.max_jobs_per_worker
        if limit and self.done >= limit and not self.draining:
            log.info("worker %s ran %d jobs (--max-jobs-per-worker %d): recycling", self.owner, self.done, limit)
            self._drain(StopReason.RECYCLED, grace=self.settings.grace)

    def _drain(self, reason: StopReason, grace: float) -> None:
        if not self.draining:
            self.stop_reason = reason
            log.info("worker %s draining (%s): %d jobs running", self.owner, reason.value, len(self.running))
        self.draining = True
        deadline = time.monotonic() + grace
        self.grace_deadline = deadline if self.grace_deadline is None else min(self.grace_deadline, deadline)
        self.scheduler_scope.cancel()  # a draining host fires no more periodic jobs
        self.wake.set()
        self.slot_free.set()

    # -- side tasks -----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        memory_limit = self.settings.max_memory_per_worker
        while True:
            self._send(Heartbeat())
            # Only after a job: a limit below the worker's own baseline would otherwise recycle
            # it forever without progress. Recycling then happens once per job batch at worst.
            if memory_limit and self.done > 0 and not self.draining:
                rss = rss_kb()
                if rss > memory_limit * 1024:
                    log.warning(
                        "worker %s uses %d MiB (--max-memory-per-worker %d): recycling", self.owner, rss // 1024, memory_limit
                    )
                    self._drain(StopReason.RECYCLED, grace=self.settings.grace)
            await anyio.sleep(HEARTBEAT_EVERY)

    async def _seen(self) -> None:
        running = [[job_id, round(time.time() - (time.monotonic() - r.started), 3)] for job_id, r in self.running.items()]
        await self.driver.worker_seen(
            WorkerRow(
                owner=self.owner,
                node=self.settings.node,
                pid=os.getpid(),
                pid_started=process_started(os.getpid()),
                boot_id=boot_id(),
                queues=",".join(self.queues),
                concurrency=self.concurrency,
                started_at=self.started_at,
                seen_at=time.time(),
                done=self.done,
                rss_kb=rss_kb(),
                running=msgspec.json.encode(running).decode(),
            )  # fmt: skip
        )

    async def _leases(self) -> None:
        """Renew exactly the leases this worker holds; stop an attempt whose lease moved on."""
        ttl = self.settings.lease_ttl
        while True:
            await anyio.sleep(min(ttl / 3, 5.0))
            try:
                held = {i: item.token for i, item in self.held.items()}
                held.update(self.completer.in_flight())  # outcomes not written yet are still ours
                ours = await self.driver.renew(held, ttl)
                for job_id in set(held) - ours:
                    running = self.running.get(job_id)
                    if running is not None and running.stop_reason is None:
                        log.warning("job %s: its lease was taken over by another worker; stopping it", job_id)
                        running.stop_reason = "lease lost"
                        running.scope.cancel()
                await self._seen()
            except Exception as exc:
                log.warning("lease renewal failed (%s)", exc)

    async def _sweep(self) -> None:
        while True:
            await anyio.sleep(self.settings.lease_ttl / 2)
            try:
                await self._sweep_once()
            except Exception as exc:
                log.warning("expired-lease sweep failed (%s)", exc)

    async def _sweep_once(self) -> None:
        """Give back jobs whose lease expired (a whole host died, or a worker froze)."""
        items = [i for i in await self.driver.expired() if i.id not in self.held]
        for item in items:
            await self.runner.end(item, WorkerLost("its lease expired (the worker or host holding it stopped)"))
        if items:
            log.warning("re-queued %d jobs whose lease expired (a worker or host died)", len(items))
            self._poke()

    async def _retention(self) -> None:
        """Delete finished jobs older than ``result_ttl``, a small batch at a time, so that the
        table stays the size of the live work and no purge holds a lock for long."""
        while True:
            try:
                while await self.driver.purge_finished(time.time() - self.settings.result_ttl) > 0:
                    await anyio.sleep(0.05)
                await self.driver.fold_stats(time.time())  # counters older than two hours: one row per key
            except Exception as exc:
                log.warning("result retention purge failed (%s); will try again", exc)
            await anyio.sleep(RETENTION_EVERY)

    async def _scheduler(self) -> None:
        with self.scheduler_scope:
            await Scheduler(self.driver, self.app.schedules).run()

    async def _cancel_requests(self) -> None:
        while True:
            await anyio.sleep(CANCEL_POLL_EVERY)
            if not self.running:
                continue
            try:
                requested = await self.driver.cancel_requests(list(self.running))
            except Exception:
                continue
            for job_id in requested:
                running = self.running.get(job_id)
                if running is not None and running.stop_reason is None:
                    running.stop_reason = "cancelled"
                    running.scope.cancel()

    async def _signals(self) -> None:
        """SIGTERM sent to the worker itself (systemd's control-group kill, a container stop)
        drains like a supervisor's Drain frame."""
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                self._drain(StopReason.DRAINED, grace=self.settings.grace)

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
                self._drain(StopReason.ORPHANED, grace=self.settings.grace)
                return
            for frame in reader.feed(data):
                self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Drain):
            self._drain(StopReason.DRAINED, grace=frame.grace)
        elif isinstance(frame, Stop):
            self._drain(StopReason.DRAINED, grace=0.0)
            self.jobs_scope.cancel()

    def _send(self, frame: Frame) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(encode_frame(frame))
        except OSError:
            pass  # the supervisor is gone; _control notices the EOF and drains
