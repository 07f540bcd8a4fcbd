"""CPU seconds spent by a set of processes over an interval, sampled with psutil.

* ``TreeCPU(pid)`` -- a process and all its descendants (a ``runner serve`` and its workers).
* ``BackendCPU(db)`` -- the PostgreSQL server backends serving one database, found by their
  process title (``postgres: user DB host(port) state``), so other engineers' databases on the same
  server do not count. Used because ``pg_stat_statements`` is not in ``shared_preload_libraries``
  on this server. Shared server processes (WAL writer, checkpointer, background writer, and the
  autovacuum launcher) serve every database and are *not* counted: per-job figures are the
  backends' own work, a lower bound on the server's.

Both sample every 0.2 s in a thread and keep the last reading of each process, so a process
that exits loses at most its last 0.2 s.
"""

from __future__ import annotations

import threading

import psutil


class _Sampler:
    def __init__(self) -> None:
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        raise NotImplementedError

    def _read(self, first: bool) -> None:
        for proc in self._procs():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            used = t.user + t.system
            if proc.pid not in self._base:
                self._base[proc.pid] = used if first else 0.0  # a process born during the interval counts whole
            self._last[proc.pid] = used

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
        return sum(self._last[p] - self._base.get(p, 0.0) for p in self._last)


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
