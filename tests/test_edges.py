"""The edges a new user touches first: per-call options, argument values, soft timeouts, and the
`runner` command's answers (unreachable databases, retry, list, flags, queues nobody serves, no
app). CLI checks run the real command in a subprocess, on both backends where a database is
involved."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from runner import ArgumentsError
from runner.testing import run_burst
from tests.apps import basic

from .conftest import REPO, sql, wait_until

# -- the API --------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"priority": "high"}, "option priority='high' is not valid; accepted: an int from -2147483648 to 2147483647"),
    ({"priority": 10**12}, "option priority=1000000000000 is not valid; accepted: an int from -2147483648"),
    ({"priority": True}, "option priority=True is not valid"),
    ({"max_attempts": "x"}, "option max_attempts='x' is not valid; accepted: an int from 1 to 2147483647"),
    ({"max_attempts": 0}, "option max_attempts=0 is not valid"),
    ({"queue": 5}, "option queue=5 is not valid; accepted: a non-empty str without NUL characters"),
    ({"queue": ""}, "option queue='' is not valid"),
    ({"key": 123}, "option key=123 is not valid; accepted: a non-empty str"),
    ({"countdown": "soon"}, "option countdown='soon' is not valid; accepted: a finite number of seconds"),
    ({"countdown": float("inf")}, "option countdown=inf is not valid"),
    ({"countdown": -5}, "option countdown=-5 is not valid; accepted: a number of seconds of at least 0"),
    ({"eta": datetime.datetime(2030, 1, 1)}, "accepted: a timezone-aware datetime"),
    ({"timeout": 0}, "option timeout=0 is not valid; accepted: a number of seconds greater than 0"),
    ({"expires": "later"}, "option expires='later' is not valid"),
    ({"parent_id": 2**63}, "option parent_id=9223372036854775808 is not valid"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=[f"{k}={v!r}" for o, _ in BAD_OPTIONS for k, v in o.items()])
async def test_every_option_is_checked_alike_on_both_backends(configured: str, options: dict[str, Any], message: str) -> None:
    """One validator before any SQL: the same ArgumentsError on SQLite and PostgreSQL, and no row."""
    await basic.add.defer_async(1, 2)  # the queue exists: the bad call is refused by runner, not the table
    with pytest.raises(ArgumentsError) as raised:
        await basic.add.options(**options).defer_async(1, 2)
    assert message in str(raised.value)
    assert sql(configured, "SELECT count(*) FROM runner_jobs") == [(1,)]


@pytest.mark.anyio
async def test_the_extremes_of_each_range_are_stored_as_given(configured: str) -> None:
    low = await basic.add.options(priority=-(2**31), max_attempts=2**31 - 1).defer_async(1, 2)
    high = await basic.add.options(priority=2**31 - 1, countdown=0, key="k" * 200).defer_async(1, 2)
    rows = sql(configured, f"SELECT id, priority, max_attempts FROM runner_jobs WHERE id IN ({low.id}, {high.id}) ORDER BY id")
    assert [tuple(r[1:]) for r in rows] == [(-(2**31), 2**31 - 1), (2**31 - 1, None)]


NOT_JSON = [
    (datetime.datetime(2026, 1, 2, 3, 4, 5), "datetime"),
    (decimal.Decimal("1.50"), "Decimal"),
    (uuid.UUID(int=7), "UUID"),
    (b"\x00\xff", "bytes"),
    ({1: 2}, "int dict keys"),
    ({"nested": [{"at": datetime.date(2026, 1, 2)}]}, "date"),
    (float("nan"), "NaN or infinity"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "missing"), NOT_JSON, ids=[m for _, m in NOT_JSON])
async def test_a_value_json_would_change_is_refused_for_an_unannotated_parameter(
    configured: str, value: Any, missing: str
) -> None:
    """No silent change: a datetime would arrive as a str, {1: 2} as {"1": 2}, NaN as None."""
    await basic.echo.defer_async(["plain", {"json": 1.5}])
    with pytest.raises(ArgumentsError) as raised:
        await basic.echo.defer_async(value)
    text = str(raised.value)
    assert "would reach the job changed" in text and f"JSON has no {missing}" in text, text
    assert ("annotate the parameter" in text) == (missing != "NaN or infinity"), text
    assert sql(configured, "SELECT count(*) FROM runner_jobs") == [(1,)]


@pytest.mark.anyio
async def test_annotated_values_reach_the_job_as_they_were_passed(configured: str) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=datetime.UTC)
    handle = await basic.typed_values.defer_async(when, decimal.Decimal("2.50"), uuid.UUID(int=7), b"\x00\xff", {1: 2})
    plain = await basic.echo.defer_async(("a", ("tuple", "arrives", "as", "a", "list")))  # tuples: documented
    await run_burst(basic.app, configured)
    assert await handle.wait_async(5) == [
        f"datetime:{when!r}",
        "Decimal:Decimal('2.50')",
        f"UUID:{uuid.UUID(int=7)!r}",
        "bytes:00ff",
        "dict:{1: 2}",
    ]
    assert await plain.wait_async(5) == ["a", ["tuple", "arrives", "as", "a", "list"]]


@pytest.mark.anyio
async def test_a_sync_jobs_soft_timeout_says_what_happened(configured: str) -> None:
    sync_job = await basic.slow_sync.options(max_attempts=1).defer_async(30)
    async_job = await basic.sleeper.options(timeout=0.3, max_attempts=1).defer_async(30)
    await run_burst(basic.app, configured)
    for handle in (sync_job, async_job):
        info = await handle.info_async()
        assert info.error is not None and info.error.type == "JobTimeout", info.error
        assert info.error.message == "soft time limit of 0.3s exceeded", info.error


# -- the CLI --------------------------------------------------------------------------------


def cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_") and k != "PYTHONPATH"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


UNUSABLE = [
    pytest.param("postgresql://postgres:s3cret@127.0.0.1:5433/x", "Connect call failed", id="pg-nothing-listens"),
    pytest.param("postgresql://no_such_role@127.0.0.1:5432/test", 'role "no_such_role" does not exist', id="pg-unknown-role"),
    pytest.param("postgresql://postgres@127.0.0.1:5432/no_such_db_x", 'database "no_such_db_x" does not exist', id="pg-no-db"),
    pytest.param("sqlite:////nonexistent/dir/x.db", "unable to open database file", id="sqlite-no-dir"),
]


@pytest.mark.parametrize(("url", "reason"), UNUSABLE)
@pytest.mark.parametrize("command", [["status"], ["jobs", "list"], ["queues", "list"], ["migrate"]], ids=" ".join)
def test_an_unusable_database_is_one_line_and_exit_code_2(url: str, reason: str, command: list[str], pg_url: str) -> None:
    """pg_url: these PostgreSQL cases mean something only when the server itself is up."""
    result = cli(*command, "--broker", url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runner: cannot use the queue database ") and reason in lines[0], lines[0]
    assert "s3cret" not in result.stderr and ("***" in lines[0]) == ("s3cret" in url)


def enqueue(url: str, name: str, *args: Any, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    result = cli(
        "enqueue", "-A", "tests.apps.basic", "--broker", url, f"tests.apps.basic.{name}", "--args", json.dumps(args), *extra
    )
    assert result.returncode == 0, result.stderr
    return result


def test_retry_says_why_a_job_cannot_be_retried(broker_url: str) -> None:
    job_id = enqueue(broker_url, "add", 1, 2).stdout.split()[0]
    missing = cli("jobs", "retry", "999999", "--broker", broker_url)
    assert missing.returncode == 1 and "job 999999 does not exist (never enqueued, or purged" in missing.stderr
    queued = cli("jobs", "retry", job_id, "--broker", broker_url)
    assert queued.returncode == 1
    assert f"job {job_id} is queued; only failed, cancelled or expired jobs can be retried" in queued.stderr


def test_jobs_list_pages_filters_by_a_word_and_shows_errors_in_utc(broker_url: str, serve: Any) -> None:
    for _ in range(3):
        enqueue(broker_url, "add", 1, 2)
    enqueue(broker_url, "boom", "kaput")
    proc = serve("-A", "tests.apps.basic", "--broker", broker_url, "-w", "1", "--burst")
    assert proc.wait(60) == 0, proc.output[-3000:]

    shown = cli("jobs", "list", "--limit", "2", "--broker", broker_url)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.strip().splitlines()
    assert "created (UTC)" in header and "finished (UTC)" in header and "error" in header
    assert len(rows) == 2, shown.stdout
    assert "(more rows: showing the newest 2" in shown.stderr
    assert time.strftime("%Y-%m-%d", time.gmtime()) in rows[0] and "Z" in rows[0]

    everything = cli("jobs", "list", "--broker", broker_url)
    assert "more rows" not in everything.stderr and len(everything.stdout.strip().splitlines()) == 1 + 4
    failed = [line for line in everything.stdout.splitlines() if "failed" in line]
    assert len(failed) == 1 and failed[0].rstrip().endswith("ValueError: kaput"), everything.stdout

    by_word = cli("jobs", "list", "--name", "boo", "--json", "--broker", broker_url)
    assert [row["name"] for row in json.loads(by_word.stdout)] == ["tests.apps.basic.boom"]
    by_glob = cli("jobs", "list", "--name", "tests.*.add", "--json", "--broker", broker_url)
    assert len(json.loads(by_glob.stdout)) == 3

    for bad, message in (("-1", "-1 is out of range; accepted: 1 to 10,000"), ("all", "'all' is not a whole number")):
        result = cli("jobs", "list", "--limit", bad, "--broker", broker_url)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "usage: runner jobs list" in result.stderr


def test_jobs_names_is_a_table() -> None:
    result = cli("jobs", "names", "-A", "tests.apps.basic")
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["name", "queue", "retries", "signature"]
    add = next(r for r in rows if r.startswith("tests.apps.basic.add "))
    assert add.split()[1:3] == ["default", "0"] and "(x: int, y: int)" in add
    assert len({r.index(" default ") for r in rows if " default " in r}) == 1, "the queue column lines up"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "-c", "abc"], "--concurrency='abc' is not valid: accepted: a whole number from 1 to 10,000"),
        (["serve", "-w", "0"], "--workers='0' is not valid: out of range; accepted: a whole number from 1 to 1,024"),
        (
            ["serve", "--heartbeat-timeout", "0.1"],
            "--heartbeat-timeout='0.1' is not valid: out of range; accepted: a number at least 2",
        ),
        (["serve", "--lease-ttl", "0"], "--lease-ttl='0' is not valid: out of range"),
        (["serve", "--poll-interval", "-1"], "--poll-interval='-1' is not valid"),
        (["serve", "-Q", ""], "no queue named; accepted: comma-separated queue names"),
        (["serve", "-Q", " , "], "no queue named"),
    ],
)
def test_numeric_and_queue_flags_are_checked_before_anything_starts(args: list[str], message: str, tmp_path: Path) -> None:
    result = cli(*args, "-A", "tests.apps.basic", "--broker", f"sqlite:///{tmp_path / 'q.db'}")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "q.db").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["jobs", "list", "--bogus"], "usage: runner jobs list"),
        (["serve", "--wrokers", "2"], "usage: runner serve"),
        (["queues", "pause", "x", "--now"], "usage: runner queues pause"),
    ],
)
def test_an_unknown_flag_shows_the_subcommands_usage(args: list[str], usage: str) -> None:
    result = cli(*args)
    assert result.returncode == 2 and result.stderr.startswith(usage), result.stderr
    assert "unrecognized arguments: " + args[-1 if args[-1].startswith("-") else -2] in result.stderr


def test_enqueue_warns_when_no_live_worker_serves_the_queue(broker_url: str, serve: Any) -> None:
    nobody = enqueue(broker_url, "add", 1, 2)
    assert "no live worker serves queue 'default' (served now: none: no worker is running)" in nobody.stderr
    proc = serve("-A", "tests.apps.basic", "--broker", broker_url, "-w", "1", "-Q", "default")
    wait_until(lambda: _served(broker_url), 60, "a worker serving default", interval=0.2)
    served = enqueue(broker_url, "add", 1, 2)
    assert "warning" not in served.stderr, served.stderr
    other = enqueue(broker_url, "add", 1, 2, extra=("--queue", "other"))
    assert "no live worker serves queue 'other' (served now: default); the job waits there" in other.stderr
    proc.kill()


def _served(url: str) -> bool:
    if url.startswith("sqlite"):  # workers live in SQLite's control plane, beside the queue file
        from runner.drivers.sqlite import control_path

        url = "sqlite:///" + str(control_path(url.split("///", 1)[1]))
    try:
        rows = sql(url, "SELECT queues FROM runner_workers")
    except Exception:  # not created yet
        return False
    return any("default" in str(r[0]) for r in rows)


def test_serving_a_queue_no_job_is_routed_to_warns(sqlite_url: str, serve: Any) -> None:
    proc = serve("-A", "tests.apps.basic", "--broker", sqlite_url, "-w", "1", "-Q", "defualt", "--burst")
    assert proc.wait(60) == 0, proc.output[-3000:]
    assert "serving queue 'defualt', but no job of app tests.apps.basic is routed to it" in proc.output, proc.output
    assert "starting 1 worker " in proc.output or "starting 1 worker\n" in proc.output, proc.output


def test_serve_without_an_app_says_how_to_name_one(tmp_path: Path) -> None:
    result = cli("serve", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no app to serve: none was named (-A MODULE[:ATTR] or RUNNER_APP)" in result.stderr, result.stderr
    assert not any(tmp_path.iterdir()), "no runner.db (or anything else) was created"


@pytest.mark.slow
def test_the_wheel_does_not_claim_the_top_level_name_jobs(tmp_path: Path) -> None:
    """The example app lives in the source tree; installing runner must not shadow a user's
    own `jobs` package."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("runner-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "runner" in tops and "jobs" not in tops, sorted(tops)
    assert "runner/web/templates/overview.html" in zipfile.ZipFile(wheel).namelist() or any(
        n.startswith("runner/web/templates/") for n in zipfile.ZipFile(wheel).namelist()
    )


USER_TEST = """
from runner import App

app = App("user")


@app.job
async def nightly_report() -> str:
    return "done"


async def test_nightly(runner_burst, runner_broker):  # as the README writes it: no marker
    app.configure(broker=runner_broker)
    h = await nightly_report.defer_async()
    await runner_burst(app)
    assert await h.state_async() == "succeeded"


async def test_unrelated_async_test_is_left_alone():
    pass
"""


def test_a_users_async_test_with_runners_fixtures_needs_no_marker(tmp_path: Path) -> None:
    """The plugin marks coroutine tests that use runner_burst/runner_broker for anyio; others
    stay as pytest treats them (unmarked async tests are not run by plain pytest)."""
    (tmp_path / "test_user.py").write_text(USER_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "runner.testing", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary, result.stdout[-3000:]  # test_nightly ran, on a real worker
    assert "FAILED test_user.py::test_unrelated_async_test_is_left_alone" in result.stdout, "unmarked, not ours: left to pytest"


def test_only_aiosqlites_late_answer_to_a_failed_open_is_kept_off_the_one_line_error(capsys: Any) -> None:
    import threading

    from runner.cli import _quiet_failed_open

    def hook_for(name: str, exc: BaseException) -> None:
        thread = threading.Thread(target=lambda: None, name=name)
        _quiet_failed_open(threading.ExceptHookArgs([type(exc), exc, None, thread]))  # type: ignore[call-arg]

    hook_for("Thread-1 (_connection_worker_thread)", RuntimeError("Event loop is closed"))
    assert capsys.readouterr().err == ""
    hook_for("Thread-2 (_connection_worker_thread)", ValueError("something else"))
    hook_for("Thread-3 (mine)", RuntimeError("Event loop is closed"))
    err = capsys.readouterr().err
    assert "ValueError: something else" in err and "Thread-3 (mine)" in err
