"""The supervisor: fork workers, watch them, restart, kill, relay signals. No loop, no database.

It owns no event loop, engine or connection, so forking from it is always safe, and it survives
any database outage untouched. Each worker gets a socketpair; frames (``wire.py``) carry
readiness, heartbeats and hard deadlines up, and Drain/Stop down. Decisions:

* a worker that exits or dies is replaced in the same slot, by the reason it gave (``Stopped``):
  recycled at once, crashed or killed at once (with backoff if it keeps dying), failed to start
  with backoff; the new occupant settles what the old one held before claiming (``worker.py``);
* a slot that cannot reach Ready after ``MAX_START_FAILURES`` tries in a row makes the whole host
  stop and exit with code 3, naming the cause: systemd's and Docker's restart policies read that
  code, and nothing runs at half capacity unnoticed. A worker that was ready and then died (kill
  -9, the OOM killer, a segfaulting job) is replaced at once, every time: its slots sit idle until
  it is, and a job that keeps killing workers is failed by ``--max-lost`` instead;
* a worker whose job passed its hard deadline, or whose loop stopped sending heartbeats, is
  SIGKILLed and replaced; the job is handed to the new occupant to retry or fail by its policy;
* SIGTERM or SIGINT: Drain every worker (stop claiming, finish within the grace period, re-queue
  the rest); a second SIGINT: Stop (cancel now, re-queue); workers still alive after the grace
  period and a margin are SIGKILLed, their leases expire and other workers take the jobs.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .frames import Drain, Finished, Frame, FrameReader, Ready, Started, Stop, Stopped, StopReason, encode_frame

__all__ = ["EXIT_GAVE_UP", "Supervisor", "WorkerEntry"]

log = logging.getLogger(__name__)

# (slot, sock, fault) -> exit code; runs in the forked child.
WorkerEntry = Callable[[int, socket.socket, Any], int]

STARTUP_TIMEOUT = 120.0
STOP_MARGIN = 15.0
MAX_START_FAILURES = 5  # tries in a row before the host gives up on a slot that never gets ready
EXIT_GAVE_UP = 3


@dataclass
class Slot:
    index: int
    pid: int = 0
    sock: socket.socket | None = None
    reader: FrameReader = field(default_factory=FrameReader)
    started_at: float = 0.0
    last_seen: float = 0.0
    ready: bool = False
    finished: bool = False  # left for good (burst done, or stopping)
    leaving: Stopped | None = None
    deadlines: dict[int, tuple[float, float]] = field(default_factory=dict)  # job -> (deadline, limit)
    kill_reason: Any = None
    start_failures: int = 0
    next_start: float = 0.0
    fault: Any = None


class Supervisor:
    """Runs in the foreground until every worker has left; returns the process exit code."""

    def __init__(
        self,
        workers: int,
        entry: WorkerEntry,
        *,
        grace: float,
        heartbeat_timeout: float,
        fault_factory: Callable[[str, tuple[int, ...], float], Any],
    ) -> None:
        self.entry = entry
        self.grace = grace
        self.heartbeat_timeout = heartbeat_timeout
        self.fault_factory = fault_factory
        self.slots = [Slot(i) for i in range(workers)]
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.fast = False
        self.stop_deadline = float("inf")
        self.forced = False
        self.sigints = 0
        self.gave_up: str | None = None

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        self._wake_fds = (wake_r, wake_w)
        try:
            log.info("supervisor pid=%d starting %d worker%s", os.getpid(), len(self.slots), "" if len(self.slots) == 1 else "s")
            for slot in self.slots:
                self._spawn(slot)
            while any(not s.finished for s in self.slots):
                for key, _ in self.selector.select(timeout=0.2):
                    if key.data is None:
                        self._on_signals(wake_r)
                    else:
                        self._on_readable(key.data)
                self._reap()
                self._enforce(time.monotonic())
                self._respawn(time.monotonic())
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
        if self.gave_up is not None:
            log.error("supervisor stopped: %s", self.gave_up)
            print(f"runner serve: {self.gave_up}", file=sys.stderr)
            return EXIT_GAVE_UP
        log.info("supervisor stopped")
        return 1 if self.forced else 0

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        parent_sock, child_sock = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        for handler in logging.getLogger().handlers:
            handler.flush()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                parent_sock.close()
                self._child_setup()
                code = self.entry(slot.index, child_sock, slot.fault)
            except BaseException:
                logging.getLogger("runner.worker").exception("worker slot %d crashed", slot.index)
            finally:
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(code)
        child_sock.close()
        parent_sock.setblocking(False)
        now = time.monotonic()
        slot.pid, slot.sock, slot.reader = pid, parent_sock, FrameReader()
        slot.started_at = slot.last_seen = now
        slot.ready, slot.leaving, slot.kill_reason, slot.fault = False, None, None, None
        slot.deadlines.clear()
        self.selector.register(parent_sock, selectors.EVENT_READ, slot)
        log.info("worker slot=%d pid=%d started", slot.index, pid)

    def _child_setup(self) -> None:
        """In the child: drop the supervisor's fds and signal wiring. Ctrl-C reaches the whole
        process group; only the supervisor acts on SIGINT and it tells workers by frame."""
        signal.set_wakeup_fd(-1)
        for sock in self._wake_fds:
            sock.close()
        for other in self.slots:
            if other.sock is not None:
                other.sock.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._on_exit(slot, status)

    def _on_exit(self, slot: Slot, status: int) -> None:
        if slot.sock is not None:
            self._drain_socket(slot)
            self.selector.unregister(slot.sock)
            slot.sock.close()
            slot.sock = None
        how = f"exit code {os.waitstatus_to_exitcode(status)}"
        if os.WIFSIGNALED(status):
            how = f"signal {signal.Signals(os.WTERMSIG(status)).name}"
        slot.pid = 0
        leaving, now = slot.leaving, time.monotonic()
        reason = leaving.reason if leaving is not None else None
        if self.stopping or (reason is not None and not reason.wants_replacement):
            slot.finished = True
            log.info("worker slot=%d left (%s, %s)", slot.index, reason.value if reason else "stopping", how)
            return
        slot.fault = slot.kill_reason
        if reason is StopReason.RECYCLED:
            log.info("worker slot=%d recycled; replacing it", slot.index)
            slot.next_start = now
            return
        detail = (leaving.detail if leaving is not None else "") or how
        # Killed from outside before it was ready (kill -9, the OOM killer) is not a failure to
        # start; crashing by itself (a segfault, an exit) or timing out at startup is.
        killed_from_outside = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and slot.kill_reason is None
        if reason is StopReason.STARTUP_FAILED or (reason is None and not slot.ready and not killed_from_outside):
            self._start_failed(slot, detail, now)
        else:
            self._died(slot, detail, now)

    def _start_failed(self, slot: Slot, detail: str, now: float) -> None:
        slot.start_failures += 1
        if slot.start_failures >= MAX_START_FAILURES:
            self._give_up(f"worker slot {slot.index} could not start {slot.start_failures} times in a row; last: {detail}")
            return
        backoff = min(30.0, 0.5 * 2 ** (slot.start_failures - 1))
        log.error(
            "worker slot=%d failed to start (%s); try %d of %d in %.1fs",
            slot.index,
            detail,
            slot.start_failures + 1,
            MAX_START_FAILURES,
            backoff,
        )
        slot.next_start = now + backoff

    def _died(self, slot: Slot, detail: str, now: float) -> None:
        """Killed (kill -9, the OOM killer, a hard limit) or crashed after it was ready: replaced
        at once, because its queue slots sit idle until it is."""
        why = slot.kill_reason.reason if slot.kill_reason is not None else "died"
        log.warning("worker slot=%d %s (%s); restarting in 0.0s", slot.index, why, detail)
        slot.next_start = now

    def _give_up(self, why: str) -> None:
        """Stop the whole host: better a loud exit than a host serving at part capacity."""
        log.error("%s; stopping every worker", why)
        self.gave_up = why
        self._begin_stop()

    def _respawn(self, now: float) -> None:
        if self.stopping:
            return
        for slot in self.slots:
            if not slot.finished and slot.pid == 0 and now >= slot.next_start:
                self._spawn(slot)  # the child forks with slot.fault; the parent then clears it

    # -- frames ---------------------------------------------------------------------------------

    def _on_readable(self, slot: Slot) -> None:
        assert slot.sock is not None
        try:
            data = slot.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return  # EOF: the exit is handled when the child is reaped
        self._feed(slot, data)

    def _drain_socket(self, slot: Slot) -> None:
        assert slot.sock is not None
        while True:
            try:
                data = slot.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self._feed(slot, data)

    def _feed(self, slot: Slot, data: bytes) -> None:
        slot.last_seen = time.monotonic()
        try:
            frames = slot.reader.feed(data)
        except Exception as exc:  # a corrupt stream: the worker cannot be trusted
            log.error("worker slot=%d sent an undecodable frame (%s); killing it", slot.index, exc)
            self._kill(slot, self.fault_factory("unresponsive", (), 0.0))
            return
        for frame in frames:
            self._on_frame(slot, frame)

    def _on_frame(self, slot: Slot, frame: Frame) -> None:
        if isinstance(frame, Started):
            slot.deadlines[frame.job_id] = (frame.hard_deadline, frame.limit)
        elif isinstance(frame, Finished):
            slot.deadlines.pop(frame.job_id, None)
        elif isinstance(frame, Ready):
            slot.ready = True
            slot.start_failures = 0
            log.info("worker slot=%d pid=%d ready", slot.index, frame.pid)
        elif isinstance(frame, Stopped):
            slot.leaving = frame

    def _send(self, slot: Slot, frame: Drain | Stop) -> None:
        if slot.sock is None:
            return
        try:
            slot.sock.send(encode_frame(frame))
        except OSError:
            pass

    # -- policing -------------------------------------------------------------------------------

    def _enforce(self, now: float) -> None:
        wall = time.time()
        for slot in self.slots:
            if slot.pid == 0 or slot.kill_reason is not None:
                continue
            late = [(job, limit) for job, (deadline, limit) in slot.deadlines.items() if wall > deadline]
            if late:
                job_ids = tuple(job for job, _ in late)
                log.error(
                    "worker slot=%d pid=%d: job(s) %s passed their hard time limit; killing it", slot.index, slot.pid, job_ids
                )
                self._kill(slot, self.fault_factory("hard_timeout", job_ids, late[0][1]))
                continue
            silent = now - slot.last_seen
            limit = self.heartbeat_timeout if slot.ready else STARTUP_TIMEOUT
            if silent > limit:
                log.error(
                    "worker slot=%d pid=%d silent for %.0fs (event loop blocked?); killing it", slot.index, slot.pid, silent
                )
                self._kill(slot, self.fault_factory("unresponsive", (), 0.0))
        if self.stopping and now > self.stop_deadline:
            for slot in self.slots:
                if slot.pid:
                    log.error("worker slot=%d pid=%d did not stop in time; killing it", slot.index, slot.pid)
                    self.forced = True
                    self._kill(slot, None)
            self.stop_deadline = float("inf")

    def _kill(self, slot: Slot, reason: Any) -> None:
        slot.kill_reason = reason
        try:
            os.kill(slot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- signals --------------------------------------------------------------------------------

    def _on_signals(self, wake_r: socket.socket) -> None:
        try:
            data = wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                continue
            if signum == signal.SIGINT:
                self.sigints += 1
            if not self.stopping:
                log.warning(
                    "%s received: draining workers (grace %.0fs); press Ctrl-C again to stop fast",
                    signal.Signals(signum).name,
                    self.grace,
                )
                self._begin_stop()
            elif signum == signal.SIGINT and self.sigints >= 2 and not self.fast:
                log.warning("second SIGINT: stopping fast; unfinished jobs are re-queued")
                self.fast = True
                self.stop_deadline = min(self.stop_deadline, time.monotonic() + STOP_MARGIN)
                for slot in self.slots:
                    self._send(slot, Stop())

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.grace + STOP_MARGIN
        for slot in self.slots:
            if slot.pid == 0:
                slot.finished = True
            self._send(slot, Drain(self.grace))
