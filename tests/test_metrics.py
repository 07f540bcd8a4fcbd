"""/metrics during a real run with workers killed by kill -9: scrapes answer all along, counters
never go back, and afterwards they equal the job counts in the table, from whichever host is
scraped (they come from the database, written with the outcomes, not from process memory)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps import basic

from .conftest import REPO, sql, wait_until
from .serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow

JOBS = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def counters(samples: dict[Any, float]) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if k[0].endswith(("_total", "_count", "_bucket"))}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _up(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def test_counters_survive_kill_9_and_match_the_table(broker_url: str, serve: Any, tmp_path: Path) -> None:
    prepare(broker_url)
    calls = [basic.record.call(f"m{i}", 0.01) for i in range(JOBS)]
    calls += [basic.add.call(i, i) for i in range(200)] + [basic.boom.call("counted") for _ in range(30)]
    enqueue(broker_url, calls)
    port, other = _free_port(), _free_port()
    proc = serve(
        *serve_args(broker_url, "-w", "2", "-c", "8", "--burst", "--metrics-port", str(port)), env={"RUNNER_MAX_LOST": "50"}
    )
    # A second scrape target, as another host would run it.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "exporter.log", "wb")
    second = subprocess.Popen(
        [sys.executable, "-m", "runner.web.serve", "--broker", broker_url, "--port", str(other)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: _up(port) and _up(other), 30, "both scrape targets")
        rng = random.Random(11)
        kills, scrapes, last = 0, 0, {}
        deadline = time.monotonic() + 150
        while proc.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.4)
            try:
                now = counters(scrape(port))
            except OSError:
                try:
                    proc.proc.wait(10)  # burst done: runner serve stops its exporter on the way out
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"/metrics stopped answering while runner serve runs:\n{proc.output[-3000:]}") from None
                break
            scrapes += 1
            went_back = {k: (last[k], v) for k, v in now.items() if k in last and v < last[k]}
            assert not went_back, f"counters went back between scrapes: {went_back}"
            last = now
            if states(broker_url).get("succeeded", 0) >= JOBS + 200 - 60:
                break  # let the tail finish so burst mode can exit
            workers = [p for p in proc.worker_pids() if b"runner.web.serve" not in _cmdline(p)]
            if workers and kills < 6:
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        assert proc.wait(150) == 0, proc.output[-3000:]
        assert kills >= 3 and scrapes >= 3, f"{kills} kills, {scrapes} scrapes: the run was too short to prove anything"
        from_other = counters(scrape(other))
    finally:
        second.terminate()
        second.wait(10)
        log.close()

    assert states(broker_url) == {"succeeded": JOBS + 200, "failed": 30}
    in_table = {(n, s): c for n, s, c in sql(broker_url, "SELECT name, state, count(*) FROM runner_jobs GROUP BY name, state")}
    finished = {
        (dict(labels)["name"], dict(labels)["outcome"]): v
        for (name, labels), v in from_other.items()
        if name == "runner_jobs_finished_total"
    }
    assert finished == in_table, "jobs finished by name and outcome equal the table's rows"
    lost_total = sum(v for (name, _), v in from_other.items() if name == "runner_job_lost_total")
    assert lost_total == sql(broker_url, "SELECT COALESCE(sum(lost), 0) FROM runner_jobs")[0][0] > 0, "lost attempts, re-queued"
    ran = sum(v for (name, _), v in from_other.items() if name == "runner_job_run_seconds_count")
    assert ran == JOBS + 200 + 30, "every attempt that ran to an end is in the run-time histogram once"
    measured = sum(v for (name, labels), v in from_other.items() if name == "runner_job_db_measured_total")
    assert measured >= JOBS, "each session attempt's cost is counted"
    print(f"\nmetrics: {kills} kill -9, {scrapes} scrapes, {int(lost_total)} lost attempts, counters == table")


def test_a_float_counter_never_goes_back_by_rounding_but_a_reset_shows() -> None:
    # The same sum of seconds, added in another order (a fold moved rows between scrapes), can
    # come out one bit lower; Prometheus would read that as a counter reset.
    from runner.web.metrics import _steady

    series = ("tx_s", "test.steady", "default")
    assert _steady(series, 33.357617000000005) == 33.357617000000005
    assert _steady(series, 33.357617) == 33.357617000000005, "a last-bit drop is the same total"
    assert _steady(series, 40.0) == 40.0
    assert _steady(series, 1.5) == 1.5, "a real drop (the stats were reset) is reported as it is"
