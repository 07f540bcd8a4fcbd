"""Settings, URLs, the CLI's errors, and the public API surface."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import runner
from runner import ConfigError, Settings
from runner.settings import async_url, backend_of

from .conftest import REPO


def test_public_api_is_pinned() -> None:
    assert sorted(runner.__all__) == [
        "App", "ArgumentsError", "AttemptRecord", "Call", "CancelResult", "ChildSpec", "ConcurrencyLimit", "ConfigError", "Context",
        "EnqueueError", "Envelope", "ErrorInfo", "GroupHandle", "JobCancelled", "JobDef", "JobError", "JobExpired", "JobFailed",
        "JobHandle", "JobInfo", "JobTimeout", "LeaseLost", "PayloadTooLarge", "RateLimit", "ResultTimeout", "Retry", "RunnerError",
        "SchemaError", "SerializationError", "Settings", "State", "TimeLimitExceeded", "UnknownJob", "WorkerInfo",
        "chain", "chord", "create_engine", "group", "session_scope",
    ]  # fmt: skip
    public = {
        name
        for name, value in vars(runner).items()
        if not name.startswith("_") and name != "annotations" and not isinstance(value, type(runner))
    }
    assert public == set(runner.__all__), "every public name of the package is in __all__, and only those"


def test_flags_win_over_environment_over_defaults() -> None:
    settings = Settings.load({"workers": "3"}, env={"RUNNER_WORKERS": "5", "RUNNER_CONCURRENCY": "7", "RUNNER_QUEUES": "a, b"})
    assert (settings.workers, settings.concurrency, settings.queues) == (3, 7, ("a", "b"))
    assert Settings.load({}, env={}).broker == "sqlite:///runner.db"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUNNER_WORKRES": "2"}, "unknown environment variable RUNNER_WORKRES; accepted: "),
        ({"RUNNER_WORKERS": "zero"}, "RUNNER_WORKERS='zero' is not valid"),
        ({"RUNNER_WORKERS": "0"}, "out of range; accepted: a whole number from 1 to 1,024"),
        ({"RUNNER_BURST": "maybe"}, "accepted: 1/0, true/false"),
        ({"RUNNER_BROKER": "redis://localhost:6379/0"}, "runner keeps its queue in a database table"),
        ({"RUNNER_BROKER": "amqp://guest@localhost//"}, "scheme 'amqp' is not supported"),
        ({"RUNNER_BROKER": "not a url"}, "is not a URL; accepted: sqlite:///"),
        ({"RUNNER_BROKER": "postgresql:///nohost"}, "names no host"),
        ({"RUNNER_LOG_LEVEL": "loud"}, "accepted: debug, info, warning, error"),
    ],
)
def test_bad_settings_name_the_problem_and_what_is_accepted(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.").replace("/", "/")):
        Settings.load({}, env=env)


def test_urls_map_to_async_drivers() -> None:
    assert async_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_url("sqla+postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert backend_of("sqla+sqlite:///x.db") == "sqlite"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


def test_cli_rejects_bad_config_with_exit_code_2() -> None:
    result = run_cli("serve", "--broker", "redis://localhost/0")
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "redis" in result.stderr
    result = run_cli("serve", "-A", "no_such_module_here")
    assert result.returncode == 2 and "no module named 'no_such_module_here'" in result.stderr


def test_cli_migrate_enqueue_show_status(sqlite_url: str) -> None:
    assert "version 3" in run_cli("migrate", "--broker", sqlite_url).stdout
    enqueued = run_cli("enqueue", "-A", "tests.apps.basic", "--broker", sqlite_url, "tests.apps.basic.add", "--args", "[2, 3]")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    shown = run_cli("jobs", "show", job_id, "--broker", sqlite_url)
    assert "tests.apps.basic.add" in shown.stdout and "queued" in shown.stdout
    status = run_cli("status", "--broker", sqlite_url, "--json")
    assert '"state": "queued", "count": 1' in status.stdout
    bad = run_cli("enqueue", "-A", "tests.apps.basic", "--broker", sqlite_url, "tests.apps.basic.add", "--args", "[1]")
    assert bad.returncode == 1 and "missing a required argument: 'y'" in bad.stderr
    unknown = run_cli("enqueue", "-A", "tests.apps.basic", "--broker", sqlite_url, "nope")
    assert unknown.returncode == 1 and "unknown job 'nope'; registered jobs:" in unknown.stderr
    listed = run_cli("jobs", "list", "--broker", sqlite_url)
    assert "tests.apps.basic.add" in listed.stdout
    cancelled = run_cli("jobs", "cancel", job_id, "--broker", sqlite_url)
    assert "cancelled" in cancelled.stdout
    retried = run_cli("jobs", "retry", "--state", "cancelled", "--broker", sqlite_url)
    assert "re-queued 1" in retried.stdout


def test_admin_cli_after_a_real_run(sqlite_url: str, serve: Any) -> None:
    """status, list --state, show with the traceback, retry --state, purge: on a queue that a
    real `runner serve` just worked through."""
    import json

    for args in (["tests.apps.basic.add", "--args", "[1, 2]"], ["tests.apps.basic.boom", "--args", '["kaput"]']):
        assert run_cli("enqueue", "-A", "tests.apps.basic", "--broker", sqlite_url, *args).returncode == 0
    proc = serve("-A", "tests.apps.basic", "--broker", sqlite_url, "-w", "1", "--burst")
    assert proc.wait(60) == 0, proc.output[-2000:]
    status = json.loads(run_cli("status", "--broker", sqlite_url, "--json").stdout)
    assert {(c["state"], c["count"]) for c in status["counts"]} == {("succeeded", 1), ("failed", 1)}
    assert status["jobs_per_second_last_minute"] > 0
    human = run_cli("status", "--broker", sqlite_url).stdout
    assert "succeeded" in human and "jobs/s finished over the last minute" in human
    failed = json.loads(run_cli("jobs", "list", "--state", "failed", "--json", "--broker", sqlite_url).stdout)
    assert [j["name"] for j in failed] == ["tests.apps.basic.boom"]
    shown = run_cli("jobs", "show", str(failed[0]["id"]), "--broker", sqlite_url).stdout
    assert "ValueError" in shown and "kaput" in shown and "Traceback" in shown
    assert "re-queued 1" in run_cli("jobs", "retry", "--state", "failed", "--broker", sqlite_url).stdout
    purged = run_cli("jobs", "purge", "--state", "succeeded", "--older-than", "0s", "--broker", sqlite_url)
    assert "purged 1 succeeded" in purged.stdout, purged.stdout + purged.stderr
    bad_age = run_cli("jobs", "purge", "--state", "succeeded", "--older-than", "soon", "--broker", sqlite_url)
    assert bad_age.returncode != 0 and "expected a number with a unit" in bad_age.stderr
    remaining = json.loads(run_cli("status", "--broker", sqlite_url, "--json").stdout)["counts"]
    assert [(c["state"], c["count"]) for c in remaining] == [("queued", 1)]


def test_runner_broker_url_is_read_as_runner_broker() -> None:
    """Celery users set *_BROKER_URL; runner accepts RUNNER_BROKER_URL as RUNNER_BROKER."""
    settings = Settings.load({}, env={"RUNNER_BROKER_URL": "postgresql://u@h/db"})
    assert settings.broker == "postgresql://u@h/db"
