"""Child processes for the benchmark: each in its own process group, logged to a file, its
workers' RSS sampled while it runs, and always killed on the way out.

Why so careful: a benchmark that dies half-way must not leave a Celery pool or a ``runner serve``
consuming the next run's queue (or the CPU of the next figure). Every Child registers itself;
``stop_all()`` runs from ``atexit`` and from the SIGTERM handler of ``python -m bench``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from .settings import WORK

REPO = Path(__file__).resolve().parents[1]
LOGS = WORK / "logs"

_live: set[Child] = set()


class Child:
    """A subprocess (own session, output in ``LOGS/<name>.log``) whose workers' peak RSS is
    sampled every 0.2 s: its descendants (a supervisor's workers, a Celery prefork pool) or, with
    ``is_worker``, the process itself (a pgqueuer worker)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None, *, is_worker: bool = False) -> None:
        self.is_worker = is_worker
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _live.add(self)
        self.peak_rss: dict[int, int] = {}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name=f"rss {name}", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(0.2)

    def sample_once(self) -> None:
        """Record the RSS of every worker (not a supervisor or Celery's main process)."""
        try:
            parent = psutil.Process(self.proc.pid)
            children = [parent] if self.is_worker else parent.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            self.peak_rss[child.pid] = max(self.peak_rss.get(child.pid, 0), rss)

    def worker_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def wait(self, timeout: float) -> int:
        """Wait for a normal exit (``--burst``, pgqueuer's drain mode); raises on a timeout or a
        non-zero exit, quoting the end of the child's log."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout}s; log: {self.log_path}") from None
        if code != 0:
            raise RuntimeError(f"{self.name} exited {code}:\n{self.tail()}")
        return code

    def check_alive(self, allow_clean_exit: bool = False) -> None:
        code = self.proc.poll()
        if code is not None and not (allow_clean_exit and code == 0):
            raise RuntimeError(f"{self.name} exited early with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL after 20 s: nothing outlives a benchmark step."""
        self._stop.set()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group (pool children)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._log.close()
        _live.discard(self)

    def worker_peak_mb(self) -> float:
        return max(self.peak_rss.values(), default=0) / 2**20


def stop_all() -> None:
    """Stop every Child still running (atexit, SIGTERM, Ctrl-C)."""
    for child in list(_live):
        child.stop()


atexit.register(stop_all)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "step") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"benchmark {what} did not finish within {timeout}s")
