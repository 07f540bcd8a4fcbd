"""CPU seconds spent by a set of processes over an interval, sampled with psutil.

* ``TreeCPU(pid)`` -- a process and all its descendants (a ``runner serve`` and its workers).
* ``BackendCPU(db)`` -- the PostgreSQL server backends serving one database, found by their
  process title (``postgres: user DB host(port) state``), so other engineers' databases on the same
  server do not count. Used because ``pg_stat_statements`` is not in ``shared_preload_libraries``
  on this server. Shared server processes (WAL writer, checkpointer, background writer, and the
  autovacuum launcher) serve every database and are *not* counted: per-job figures are the
  backends' own work, a lower bound on the server's.

Both sample every 0.2 s in a thread and keep the last reading of each process, so a process
that exits loses at most its last 0.2 s. The samples form a time series, so ``between(t0, t1)``
gives what the busy span alone cost -- a drain's first start to its last finish -- without the
processes' imports and start-up. Write syscalls (``/proc/PID/io``) count as well: for a worker
that speaks to its database over a socket, each round trip is at least one ``write``.
"""

from __future__ import annotations

import itertools
import threading
import time

import psutil


class _Sampler:
    def __init__(self) -> None:
        self._base: dict[int, tuple[float, int]] = {}
        self._last: dict[int, tuple[float, int]] = {}
        self.series: list[tuple[float, float, int]] = []  # (epoch, CPU seconds, write syscalls) since start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        raise NotImplementedError

    def _read(self, first: bool) -> None:
        for proc in self._procs():
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    writes = proc.io_counters().write_count
            except (psutil.Error, AttributeError):
                continue
            used = (t.user + t.system, writes)
            if proc.pid not in self._base:
                self._base[proc.pid] = used if first else (0.0, 0)  # born during the interval: counts whole
            self._last[proc.pid] = used
        cpu, writes = self.totals()
        self.series.append((time.time(), cpu, writes))

    def totals(self) -> tuple[float, int]:
        cpu = sum(v[0] - self._base[p][0] for p, v in self._last.items())
        writes = sum(v[1] - self._base[p][1] for p, v in self._last.items())
        return cpu, writes

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._read(first=False)

    def start(self) -> _Sampler:
        self._read(first=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        """CPU seconds used since ``start``."""
        self._stop.set()
        self._thread.join()
        self._read(first=False)
        return self.totals()[0]

    def between(self, t0: float, t1: float) -> tuple[float, float]:
        """(CPU seconds, write syscalls) spent between two epoch times, interpolated between
        samples: the busy span of a run, without the processes' start-up and exit."""
        return _at(self.series, t1, 1) - _at(self.series, t0, 1), _at(self.series, t1, 2) - _at(self.series, t0, 2)


def _at(series: list[tuple[float, float, int]], t: float, i: int) -> float:
    if not series or t <= series[0][0]:
        return float(series[0][i]) if series else 0.0
    for (ta, *a), (tb, *b) in itertools.pairwise(series):
        if ta <= t <= tb:
            return a[i - 1] + (b[i - 1] - a[i - 1]) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
    return float(series[-1][i])


class TreeCPU(_Sampler):
    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__()

    def _procs(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []


class BackendCPU(_Sampler):
    def __init__(self, database: str) -> None:
        self.marker = f" {database} "
        super().__init__()

    def _procs(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if cmd and cmd[0].startswith("postgres:") and self.marker in f" {' '.join(cmd)} ":
                found.append(proc)
        return found
