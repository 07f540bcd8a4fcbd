"""The dashboard in a real browser: headless Chromium (Debian's package, driven by Playwright)
against `runner dashboard` started as a process, over a queue that a real `runner serve` is
filling. Screenshots of every page are kept in the test's tmp dir (printed at the end).

Without Chromium these tests skip locally and fail in CI (``CI`` set): `.ci/run` installs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.apps import basic

from .conftest import REPO, sql, wait_until
from .serving import enqueue, prepare, serve_args, states

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chromium() -> Any:
    """Starts Chromium when called: Playwright's sync API keeps an event loop in this thread,
    so the test prepares its database (with anyio.run) first."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the browser tests", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    @contextlib.contextmanager
    def launch() -> Iterator[Any]:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                yield browser
            finally:
                browser.close()

    return launch


def off_loop(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in another thread: this one has Playwright's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


class DashboardProcess:
    def __init__(self, url: str, log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "dashboard", "-A", "tests.apps.basic", "--broker", url, "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(self._up, 30, "the dashboard to answer /healthz")

    def _up(self) -> bool:
        assert self.proc.poll() is None, "runner dashboard exited"
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_the_dashboard_in_chromium_while_workers_fill_the_queue(
    broker_url: str, serve: Any, chromium: Any, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    prepare(broker_url)
    enqueue(broker_url, [basic.record.call(f"b{i}", 0.01) for i in range(60)] + [basic.boom.call("browser says no")])
    workers = serve(*serve_args(broker_url, "-w", "1", "-c", "4", "--node", "browser-host"))
    board = DashboardProcess(broker_url, tmp_path / "dashboard.log")
    try:
        with chromium() as browser:
            _walk_through(broker_url, board, browser, shots)
    finally:
        board.close()
        workers.kill()
    print(f"\nscreenshots: {shots}")


def _walk_through(broker_url: str, board: DashboardProcess, browser: Any, shots: Path) -> None:
    """Every page, as a person would use them, with a screenshot of each."""
    wait_until(lambda: states(broker_url) == {"succeeded": 60, "failed": 1}, 60, "the jobs to run")
    [(failed_id,)] = sql(broker_url, "SELECT id FROM runner_jobs WHERE state = 'failed'")
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Overview: the queue with its counts, and the throughput chart drawn with bars.
    page.goto(board.base + "/")
    page.wait_for_selector("#queues td a[href='/jobs?queue=default']")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.chart rect.ok").count() >= 1, "the throughput chart has no bars"
    assert page.locator("svg.chart rect.bad").count() >= 1, "the failure is not on the chart"
    assert "tests.apps.basic.record" in page.inner_text("#slowest"), "the measured job is not in the cost table"
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # Live refresh (our script): new jobs show up without a reload.
    def succeeded_card() -> int:
        text = page.locator(".card", has_text="succeeded, last hour").locator("b").inner_text()
        return int(text.replace(",", ""))

    before = succeeded_card()
    off_loop(enqueue, broker_url, [basic.record.call(f"live{i}") for i in range(5)])
    page.wait_for_function(
        f"() => parseInt(document.querySelector('.cards .card:nth-child(5) b').textContent.replace(/,/g, '')) >= {before + 5}",
        timeout=30_000,
    )

    # Jobs: filtered to the failures, the error's first line as a column.
    page.goto(board.base + "/jobs")
    page.select_option("select[name=state]", "failed")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*state=failed.*"))
    assert "browser says no" in page.inner_text("#jobs")
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)

    # The failed job's page: its traceback; then Retry makes it run again.
    page.click(f"#jobs a[href='/jobs/{failed_id}']")
    page.wait_for_selector("#error pre.traceback")
    assert "Traceback (most recent call last)" in page.inner_text("#error") and "ValueError" in page.inner_text("#error")
    page.screenshot(path=str(shots / "job-failed.png"), full_page=True)
    page.click("button#retry")
    page.wait_for_selector(".flash")
    assert "re-queued" in page.inner_text(".flash")
    wait_until(lambda: sql(broker_url, f"SELECT state FROM runner_jobs WHERE id = {failed_id}") == [("failed",)]
               and len(sql(broker_url, f"SELECT attempts FROM runner_jobs WHERE id = {failed_id}")[0][0]) > 0
               and _attempts(broker_url, failed_id) == 2, 30, "the retried job to run again")  # fmt: skip
    page.reload()
    assert page.locator("#attempts tbody tr").count() == 2, "the second attempt is not on the page"
    page.screenshot(path=str(shots / "job-retried.png"), full_page=True)

    # A job that took a session: its attempt's database cost.
    [(costed,)] = sql(broker_url, "SELECT min(id) FROM runner_jobs WHERE name = 'tests.apps.basic.record'")
    page.goto(f"{board.base}/jobs/{costed}")
    cells = page.locator("#attempts tbody tr").first.locator("td.n").all_inner_texts()
    assert int(cells[1]) >= 2, f"statements of the attempt: {cells}"
    page.screenshot(path=str(shots / "job-cost.png"), full_page=True)

    # Workers and periodic pages.
    page.goto(board.base + "/workers")
    assert "browser-host" in page.inner_text("main")
    page.screenshot(path=str(shots / "workers.png"), full_page=True)
    page.goto(board.base + "/periodic")
    page.wait_for_selector("#schedules")
    page.screenshot(path=str(shots / "periodic.png"), full_page=True)
    assert errors == [], f"script errors on the pages: {errors}"
    page.close()


def _attempts(url: str, job_id: int) -> int:
    import json

    [(text,)] = sql(url, f"SELECT attempts FROM runner_jobs WHERE id = {job_id}")
    return len(json.loads(text))
