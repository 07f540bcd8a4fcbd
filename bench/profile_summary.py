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
    supervisor = startup = drain = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if "run_worker" not in stack and not producer:
            supervisor += n
            continue
        if "_find_and_load" in stack or "create_engine (runner/session.py" in stack:
            startup += n
            continue
        drain += n
        frames = stack.split(";")
        owner = next((f.split(" (")[0] for f in reversed(frames) if "(runner/" in f or "(bench/" in f), "(no runner frame)")
        by_runner[owner] += n
        by_leaf[frames[-1]] += n
    if not drain:
        return f"{path}: no worker samples"
    lines = [
        f"py-spy samples (CPU only): workers during the drain {drain}, worker start-up {startup}, supervisor {supervisor}",
        "worker drain CPU by innermost runner function:",
        *(f"  {n / drain:6.1%}  {name}" for name, n in by_runner.most_common(top)),
        "worker drain CPU by leaf frame:",
        *(f"  {n / drain:6.1%}  {name[:110]}" for name, n in by_leaf.most_common(top)),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(summarise(Path(args[-1]), producer="--producer" in args))
