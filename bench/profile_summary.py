"""Summarise a py-spy ``--format raw`` profile of ``runner serve`` (``python -m bench --profile``):
where the workers' CPU went during the drain, by the innermost runner function on the stack and
by leaf frame. Start-up (imports, engine creation) and the supervisor are counted apart, since
the drain figure excludes them. ``python -m bench.profile_summary [--producer] FILE``."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int = 15, producer: bool = False) -> str:
    """``producer``: the profile is of one producer process (``profile_enqueue.py``), not a serve."""
    by_runner: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    by_greenlet: Counter[str] = Counter()  # SQLAlchemy's sync core, run in greenlets: by their root frame
    supervisor = startup = drain = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # A worker's samples carry two process frames (supervisor;worker); the greenlets
        # SQLAlchemy runs its sync core in have no run_worker frame of their own.
        if not producer and stack.count("process ") < 2 and "run_worker" not in stack:
            supervisor += n
            continue
        if "_find_and_load" in stack or "create_engine (runner/session.py" in stack:
            startup += n
            continue
        drain += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")] or ["(native code, no Python frame)"]
        owner = next((f.split(" (")[0] for f in reversed(frames) if "(runner/" in f or "(bench/" in f), "(no runner frame)")
        if owner == "(no runner frame)" and "run_worker" not in stack and not producer:
            owner = "(greenlet: SQLAlchemy sync core)"
            by_greenlet[frames[0].split(" (")[0]] += n
        by_runner[owner] += n
        by_leaf[frames[-1]] += n
    if not drain:
        return f"{path}: no worker samples"
    lines = [
        f"py-spy samples (CPU only): workers during the drain {drain}, worker start-up {startup}, supervisor {supervisor}",
        "worker drain CPU by innermost runner function:",
        *(f"  {n / drain:6.1%}  {name}" for name, n in by_runner.most_common(top)),
        *(["greenlet samples by root frame (what SQLAlchemy was doing):"] if by_greenlet else []),
        *(f"  {n / drain:6.1%}  {name}" for name, n in by_greenlet.most_common(8)),
        "worker drain CPU by leaf frame:",
        *(f"  {n / drain:6.1%}  {name[:110]}" for name, n in by_leaf.most_common(top)),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(summarise(Path(args[-1]), producer="--producer" in args))
