"""Apps whose workers fail while starting, for the supervisor's restart and give-up rules.

``RUNNER_TEST_FAIL_STARTS`` (read here, by the test app, not by runner) says how many worker
starts fail before they succeed; a file beside the queue counts the attempts across processes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runner import App, WorkerInfo

app = App("startup")
COUNTER = Path(os.environ.get("STARTUP_COUNTER", "/tmp/runner-startup-counter"))


def _next_start() -> int:
    with open(COUNTER, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
        return n


@app.on_startup
async def flaky_start(info: WorkerInfo) -> None:
    failing = int(os.environ.get("STARTUP_FAILS", "0"))
    if info.slot == 1 and _next_start() <= failing:
        raise RuntimeError(f"lifespan hook refused to start (slot {info.slot})")


@app.job
async def hello(n: int) -> int:
    return n
