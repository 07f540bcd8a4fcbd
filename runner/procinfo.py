"""What this host can prove about its own processes: memory, start times, the boot.

A worker records its pid, the pid's start time and the kernel's boot id. A later ``runner serve``
on the same node can then prove a predecessor dead -- same boot, and that pid is gone or now
belongs to a process started at another time -- and give its jobs back at once instead of
waiting for their leases to expire. Where /proc is missing nothing is ever "proved": leases
expire as usual.
"""

from __future__ import annotations

import os
from functools import lru_cache

__all__ = ["boot_id", "process_dead", "process_started", "rss_kb"]


def rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


@lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """Fields 3 onwards of /proc/PID/stat (state first); [] if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2 :].split() if ")" in data else []


def process_started(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); 0 if unknown."""
    fields = _stat(pid)
    try:
        return int(fields[19])
    except (ValueError, IndexError):
        return 0


def process_dead(pid: int, started: int, boot: str) -> bool:
    """True only when provable: same boot, and ``pid`` is gone or is another process now."""
    if not boot or boot != boot_id() or started <= 0 or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else: compare start times
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # a zombie nobody has reaped yet holds nothing
        return True
    now = process_started(pid)
    return now != 0 and now != started
