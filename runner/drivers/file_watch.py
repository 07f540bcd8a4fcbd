"""Wake when a file changes, at no cost while it does not: inotify on Linux, a short poll elsewhere.

An idle SQLite worker must notice a commit from another process within milliseconds (the W3
latency target) without spending a core on checking. Polling ``PRAGMA data_version`` every 5 ms
cost about 6 % of a core per idle worker, nearly all of it in waking up 200 times a second. The
kernel already knows when the queue file or its write-ahead log is written: an inotify watch on
their directory makes the event loop sleep until then. Where inotify is missing (macOS, some
network file systems) the caller's poll interval is used instead, as before.

inotify is reached through ``ctypes`` (three libc calls) rather than a package: the whole of
what runner needs is a readable descriptor for ``anyio.wait_readable``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from pathlib import Path
from typing import Final

import anyio

__all__ = ["FileWatch"]

_IN_MODIFY: Final = 0x002
_IN_CLOSE_WRITE: Final = 0x008
_IN_MOVED_TO: Final = 0x080
_IN_CREATE: Final = 0x100
_IN_NONBLOCK: Final = 0o4000
_IN_CLOEXEC: Final = 0o2000000
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class FileWatch:
    """Changes to a few files of one directory, as a wait that returns when one was written.

    ``wait(timeout)`` returns True when a watched file was written, False when the timeout
    passed; without inotify it always sleeps ``fallback`` seconds and returns True, so the
    caller checks as often as it did before. False positives are harmless: the caller confirms
    with its own cheap check.
    """

    def __init__(self, files: list[Path], *, fallback: float) -> None:
        self.fallback = fallback
        self.names = {os.fsencode(f.name) for f in files}
        self.fd = -1
        directories = {f.parent for f in files}
        libc = _libc() if len(directories) == 1 else None
        if libc is None:
            return
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(directories.pop()), mask) < 0:
            os.close(fd)
            return
        self.fd = fd

    @classmethod
    def of_database(cls, path: str | Path, *, fallback: float) -> FileWatch:
        """An SQLite file and the journals its commits write (WAL, or rollback journal)."""
        full = Path(os.path.abspath(path))
        return cls([full, full.with_name(full.name + "-wal"), full.with_name(full.name + "-journal")], fallback=fallback)

    @property
    def native(self) -> bool:
        return self.fd >= 0

    async def wait(self, timeout: float) -> bool:
        if self.fd < 0:
            await anyio.sleep(self.fallback)
            return True
        with anyio.move_on_after(timeout):
            while True:
                await anyio.wait_readable(self.fd)
                if self._drain():
                    return True
        return False

    def _drain(self) -> bool:
        """Read every queued event; True if one names a watched file."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return hit
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                hit = hit or name in self.names
                offset += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
