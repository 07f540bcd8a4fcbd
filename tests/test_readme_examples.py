"""Every ```python block of README.md, run as a test, one test per block (numbered in README
order), so a README that drifts from the code fails CI:

 1 "The API in short"            test_readme_block_1_the_api_in_short
 2 "Beyond running once"         test_readme_block_2_beyond_running_once
 3 "Workflows"                   test_readme_block_3_workflows
 4 "Flow control"                test_readme_block_4_flow_control
 5 "Testing your jobs"           test_readme_block_5_test_signup_sends_mail / _test_nightly / _test_repository
 6 mounting the dashboard        test_readme_block_6_mount_the_dashboard
 7 Celery: a DatabaseTask base   test_readme_block_7_celery_database_task
 8 Celery: asyncio.run + engine  test_readme_block_8_celery_asyncio_run_with_a_pooled_engine
 9 Celery: session_scope form    test_readme_block_9_celery_async_task_with_session_scope
10 Celery: beat_schedule         test_readme_block_10_celery_beat_schedule
11 Celery: workflows and ids     test_readme_block_11_celery_workflows_and_the_ids_you_choose

Each test's body is the block as the README writes it. What the README leaves undefined
(``UserRepository``, ``send_receipt``, ``fetch``/``parse``/``store``, ``SessionLocal``, the
Celery tasks, ...) is a small stand-in defined just before it; a README ``...`` body stays
``...`` unless the test needs the job to do something observable, where a commented stand-in
body replaces it. The jobs then really run: a real worker in this process
(``runner.testing.run_burst``) drains a real queue -- a SQLite file under tmp_path, or the
PostgreSQL test database (``broker_url`` runs a test on both) -- and the test checks what the
README says happens. Stand-in tables live in tests/apps/readme_shop.py.

Block 5 is the README's own testing example: its three tests are module-level tests here, and
``test_readme_block_5_test_nightly`` is written exactly as the README writes it (no anyio
marker): ``runner.testing`` marks coroutine tests using its worker fixtures.
"""

import asyncio
import functools
import html
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from runner import CancelResult, JobFailed, create_engine
from runner.drivers import open_driver
from runner.scheduler import Scheduler
from runner.testing import eager, rollback_session, run_burst
from runner.worker import Worker
from tests.apps import readme_shop
from tests.apps.readme_shop import (
    Note,
    NoteBase,
    User,
    UserRepository,
    app,
    nightly_report,
    seed_users,
    send_mail,
    user_statuses,
)

from .conftest import sql

# -- helpers ------------------------------------------------------------------------------------


async def _drain(app: Any, broker: str, **settings: Any) -> Worker:
    with anyio.fail_after(60):  # a burst worker that never ends fails here, not at pytest's timeout
        return await run_burst(app, broker, **settings)


def drain(app: Any, broker: str, **settings: Any) -> Worker:
    """From sync code (as the README's examples are): a real worker drains everything runnable."""
    return anyio.run(functools.partial(_drain, app, broker, **settings))


async def _fire(app: Any, broker: str, at: float) -> int:
    """What every `runner serve`'s scheduler does at instant ``at`` (a second scheduler, as on a
    second host, must find each fire time taken)."""
    driver = open_driver(broker)
    try:
        await driver.migrate()
        fired = 0
        for _host in range(2):
            scheduler = Scheduler(driver, app.schedules)
            await scheduler.start(now=at - 10)
            await scheduler.tick(now=at)
            fired += scheduler.fired
        return fired
    finally:
        await driver.dispose()


def fire(app: Any, broker: str, at: float) -> int:
    return anyio.run(_fire, app, broker, at)


async def _make_due(broker: str, ids: list[int]) -> int:
    driver = open_driver(broker)
    try:
        return await driver.make_due(ids)
    finally:
        await driver.dispose()


def row(broker: str, job_id: int, columns: str) -> tuple[Any, ...]:
    return sql(broker, f"SELECT {columns} FROM runner_jobs WHERE id = {int(job_id)}")[0]


@pytest.fixture
def on_queue(broker_url: str) -> Iterator[Callable[[Any], str]]:
    """``broker = on_queue(app)``: point the app's producers at this test's queue (what
    ``--broker``/``RUNNER_BROKER`` does in the README), closed at the end."""
    apps: list[Any] = []

    def point(app: Any) -> str:
        app.configure(broker=broker_url)
        apps.append(app)
        return broker_url

    yield point
    for made in apps:
        made.client.close()


@pytest.fixture
def celery_apps() -> Iterator[list[Any]]:
    """The Celery apps a test makes (closed at the end) -- and the shim's process-wide state they
    touch (the current app, publish-signal receivers) put back, so later tests don't see them."""
    from runner.compat.celery import _state, signals

    current, every = list(_state._current), list(_state.all_apps)
    receivers = list(signals.before_task_publish.receivers)
    apps: list[Any] = []
    yield apps
    for made in apps:
        made.close()
    signals.before_task_publish.receivers[:] = receivers
    _state._current[:] = current
    _state.all_apps[:] = every


@pytest.fixture(autouse=True)
def _reset_the_testing_examples_app() -> Iterator[None]:
    """Block 5's tests point the shared ``app`` at their temporary queue (as the README does);
    point it back afterwards."""
    yield
    readme_shop.app.configured_broker = None
    readme_shop.app.configure()


def _async_url(broker: str) -> str:
    return broker.replace("sqlite:///", "sqlite+aiosqlite:///", 1).replace("postgresql://", "postgresql+asyncpg://", 1)


# -- the mirror itself: every block has its test, and every line of a block is in its test ---------

README = Path(__file__).resolve().parent.parent / "README.md"
# What the tests write differently from the README, on purpose: its example database URL is the
# test's queue. Nothing else is rewritten.
SUBSTITUTIONS = {'"postgresql://app@db/app"': "broker_url"}


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def code_lines(block: str) -> list[str]:
    """A block's lines of code, stripped: no comments, and a one-line ``...`` body cut off (a
    test may give the job a stand-in body there)."""
    lines = []
    for line in block.splitlines():
        code = line.split("  # ", 1)[0].strip()
        if not code or code.startswith("#") or code == "...":
            continue
        code = code.removesuffix(" ...") if code.endswith(": ...") else code
        for old, new in SUBSTITUTIONS.items():
            code = code.replace(old, new)
        lines.append(code)
    return lines


def test_readme_every_python_block_is_mirrored_line_for_line() -> None:
    """The README's blocks and these tests cannot drift apart: each block compiles, has a test
    named ``test_readme_block_<n>_...``, and each of its lines of code appears in that test (or,
    for imports at the top of a block, in this module's imports)."""
    import inspect
    import sys

    blocks = readme_blocks()
    assert len(blocks) == 11, f"README.md has {len(blocks)} python blocks; mirror each new one here"
    module = sys.modules[__name__]
    tests: dict[int, list[str]] = {}
    for name, fn in vars(module).items():
        found = re.match(r"test_readme_block_(\d+)_", name)
        if found:
            source = inspect.getsource(fn).replace(f"def test_readme_block_{found[1]}_test_", "def test_")
            tests.setdefault(int(found[1]), []).append(source)
    assert sorted(tests) == list(range(1, len(blocks) + 1)), "one test (or more) per README block, by number"
    imports = inspect.getsource(module).split("# -- helpers", 1)[0]
    missing = []
    for number, block in enumerate(blocks, 1):
        compile(block, f"README.md python block {number}", "exec")
        haystack = "\n".join([imports, *tests[number]])
        missing += [f"block {number}: {line}" for line in code_lines(block) if line not in haystack]
    assert not missing, "README lines no test runs (update the test, or the README):\n" + "\n".join(missing)


# -- block 1: "The API in short" ---------------------------------------------------------------


def test_readme_block_1_the_api_in_short(on_queue: Callable[[Any], str]) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from runner import App, Context, Retry, session_scope

    app = App("shop", routes={"shop.reports.*": "reports"})  # broker from --broker / RUNNER_BROKER
    broker = on_queue(app)
    anyio.run(seed_users, broker, [1, 2, 3, 42])

    @app.job(retries=3, retry_on=(ConnectionError,), timeout=30, hard_timeout=120)
    async def activate_user(session: AsyncSession, user_id: int) -> dict:
        user = await UserRepository(session).get_by_id(user_id)  # eager-loads the profile
        user.status = "active"
        return {"id": user.id, "status": user.status}  # committed with the job's completion

    @app.job
    def render_invoice(invoice_id: int) -> str:  # sync: runs in the worker's thread pool
        ...

    @app.job(queue="reports")
    async def nightly(ctx: Context) -> None:  # Context: id, attempt, progress
        await ctx.progress({"step": 1})
        raise Retry(delay=60)  # explicit retry, counts as an attempt

    # "session_scope() opens another transaction on the worker's engine" (the text under the block)
    @app.job
    async def status_of(user_id: int) -> str:
        async with session_scope() as session:
            return (await UserRepository(session).get_by_id(user_id)).status

    # The enqueue table under the block.
    h = activate_user.defer(42)
    invoice = render_invoice.defer(7)
    failed_retry = nightly.defer()  # retries=0 (the default): no attempt left for the Retry
    retried = nightly.options(max_attempts=2).defer()
    delayed = activate_user.options(countdown=10, queue="slow", priority=5, key="user-42", expires=3600).defer(42)
    bulk = app.defer_many([activate_user.call(i) for i in (1, 2, 3)])
    deferred_at = time.time()
    drain(app, broker)

    assert h.wait(timeout=10) == {"id": 42, "status": "active"}
    assert app.handle(h.id).wait(timeout=10) == {"id": 42, "status": "active"}
    assert [b.wait(timeout=10) for b in bulk] == [{"id": i, "status": "active"} for i in (1, 2, 3)]
    assert anyio.run(user_statuses, broker) == {1: "active", 2: "active", 3: "active", 42: "active"}, "committed"
    assert (invoice.wait(timeout=10), invoice.state()) == (None, "succeeded")
    assert h.cancel() == CancelResult.FINISHED, "a finished job: nothing changed"

    # Retry(delay=60) with no attempts left fails at once, and says so.
    info = failed_retry.info()
    assert (info.state, info.queue, info.attempt, info.progress) == ("failed", "reports", 1, {"step": 1})
    assert info.error is not None and "retry requested, but no attempts were left (attempt 1 of 1" in info.error.message
    with pytest.raises(JobFailed, match="no attempts were left"):
        failed_retry.wait(timeout=1)
    # With an attempt left it is queued again 60 s later, the attempt counted.
    again = retried.info()
    assert (again.state, again.attempt) == ("queued", 1)
    assert 50 < again.run_at.timestamp() - deferred_at < 70, again.run_at
    assert [a.note for a in again.attempts] == ["retry requested, in 60s"]

    slow = delayed.info()
    assert (slow.state, slow.queue, slow.priority, slow.key) == ("queued", "slow", 5, "user-42")
    assert 9 < (slow.run_at - slow.created_at).total_seconds() <= 11
    assert slow.expires_at is not None and 3590 < (slow.expires_at - slow.created_at).total_seconds() <= 3610

    status = status_of.defer(42)
    drain(app, broker)
    assert status.wait(timeout=10) == "active"


# -- block 2: "Beyond running once" -------------------------------------------------------------


def test_readme_block_2_beyond_running_once(on_queue: Callable[[Any], str]) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from runner import App, Context

    app = App("shop")
    broker = on_queue(app)
    anyio.run(seed_users, broker, [42])

    # stand-ins: block 1's activate_user; a charge whose card is declined for a negative order
    @app.job
    async def activate_user(session: AsyncSession, user_id: int) -> dict:
        user = await UserRepository(session).get_by_id(user_id)
        user.status = "active"
        return {"id": user.id, "status": user.status}

    @app.job
    async def charge(order_id: int) -> dict:
        if order_id < 0:
            raise ValueError("card declined")
        return {"order": order_id, "cents": 1999}

    receipts: list[Any] = []
    alerts: list[str] = []

    @app.job
    async def send_receipt(charged: dict, order_id: int) -> None:
        receipts.append((charged, order_id))

    @app.job
    async def alert() -> None:
        alerts.append("alerted")

    # Periodic: cron in a timezone, or a fixed interval. No beat process: every `runner serve` runs the
    # scheduler and each fire time is enqueued once (a (name, fire_at) primary key, same transaction).
    @app.periodic(cron="0 3 * * *", tz="Europe/Paris", missed="once")  # missed="skip" drops missed runs
    @app.job
    async def nightly_report(session: AsyncSession) -> None: ...

    @app.periodic(every=timedelta(minutes=5), args=("eu",), name="sync-eu")
    @app.job
    async def sync_region(region: str) -> None: ...

    # Unique: one live job per key; key_ttl also returns a job that succeeded that recently.
    h = activate_user.options(key="activate:42", key_ttl=3600).defer(42)
    assert activate_user.options(key="activate:42", key_ttl=3600).defer(42).id == h.id, "one live job per key"

    # Follow-ups: on_success is a one-step chain (the next job waits in the database and gets the
    # result first; immutable=True: it doesn't). on_failure is an errback: enqueued with the failed
    # job's id first, in the transaction that fails it for good -- also when it was killed past its
    # hard limit or failed by --max-lost.
    for order_id in (7, -1):
        charge.options(on_success=send_receipt.call(order_id), on_failure=alert.options(immutable=True).call()).defer(order_id)

    # Cancel: a queued job ends `cancelled` at once; a running one within a second (its cancel scope
    # fires and its session rolls back).
    assert h.cancel() == CancelResult.CANCELLED
    assert h.state() == "cancelled"

    # Progress: a small JSON value, readable while the job runs.
    @app.job
    async def import_file(ctx: Context, path: str) -> None:
        await ctx.progress({"rows": 1000})  # h.info().progress, `runner jobs show ID`

    imported = import_file.defer("users.csv")
    drain(app, broker)

    assert imported.info().progress == {"rows": 1000}
    assert receipts == [({"order": 7, "cents": 1999}, 7)], "the receipt got the charge's result first, only on success"
    assert alerts == ["alerted"], "the errback ran once, for the declined card"
    assert anyio.run(user_statuses, broker) == {42: "new"}, "the cancelled activation never ran"
    fresh = activate_user.options(key="activate:42", key_ttl=3600).defer(42)
    assert fresh.id != h.id, "a cancelled job does not hold its key"
    drain(app, broker)
    assert fresh.wait(timeout=10) == {"id": 42, "status": "active"}
    remembered = activate_user.options(key="activate:42", key_ttl=3600).defer(42)
    assert remembered.id == fresh.id, "within key_ttl the job that succeeded is returned"

    # The two schedules: 03:00 in Paris is also a 5-minute boundary; each fires once, on two hosts.
    assert [(p.name, str(p.schedule), p.args, p.missed) for p in app.schedules] == [
        (nightly_report.name, "cron '0 3 * * *' (Europe/Paris)", (), "once"),
        ("sync-eu", "every 300s", ("eu",), "once"),
    ]
    three_in_paris = datetime(2026, 1, 10, 3, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert fire(app, broker, three_in_paris) == 2, "each fire time is enqueued once"
    drain(app, broker)
    ran = sql(broker, f"SELECT name, args, state FROM runner_jobs WHERE name IN ('{nightly_report.name}', '{sync_region.name}')")
    assert sorted(ran) == sorted([(nightly_report.name, "[]", "succeeded"), (sync_region.name, '["eu"]', "succeeded")])


# -- block 3: "Workflows: chains, groups, chords, any DAG" -------------------------------------


def test_readme_block_3_workflows(on_queue: Callable[[Any], str]) -> None:
    from runner import App

    app = App("shop")
    broker = on_queue(app)

    # stand-ins
    @app.job
    async def fetch(url: str) -> str:
        return f"<title>{url}</title>"

    @app.job
    async def parse(html: str) -> dict:
        return {"title": html.removeprefix("<title>").removesuffix("</title>")}

    @app.job
    async def store(page: dict, table: str) -> str:
        return f"{table}: {page['title']}"

    @app.job
    async def resize(path: str, size: int) -> str:
        return f"{path}@{size}"

    @app.job
    async def count_rows(table: str) -> int:
        return len(table)

    @app.job
    async def add_up(counts: list[int]) -> int:
        return sum(counts)

    @app.job
    async def extract(region: str) -> dict:
        if region not in ("eu", "us"):
            raise LookupError(region)
        return {"region": region}

    @app.job
    async def merge(results: list) -> list:
        return results

    url, paths, tables = "https://example.com/a", ["a.png", "b.png", "c.png"], ["users", "orders", "items"]

    from runner import chain, chord, group

    # a chain: each step gets the previous result prepended (.options(immutable=True): it doesn't)
    h = chain(fetch.call(url), parse.call(), store.call(table="pages")).defer()
    # a group: parallel; one handle, results in order
    g = group(resize.call(p, 128) for p in paths).defer()
    # a chord: the callback gets the list of the members' results once all have finished
    total = chord([count_rows.call(t) for t in tables], add_up.call()).defer()
    # any DAG: start when all the given jobs have finished (handles or ids, even ones enqueued long ago)
    a, b = extract.defer("eu"), extract.defer("us")
    merged = merge.options(depends_on=[a, b], with_results=True, on_parent_failure="run").defer()
    # on_parent_failure="run": a parent that failed counts as finished, its result None
    lost = extract.defer("mars")
    merged_anyway = merge.options(depends_on=[a, lost], with_results=True, on_parent_failure="run").defer()
    # cancel_workflow: everything unfinished in it (here a chain not run yet: all three steps)
    unrun = chain(fetch.call(url), parse.call(), store.call(table="pages")).defer()
    assert unrun.cancel_workflow() == (3, 0)

    drain(app, broker)
    assert h.wait(60) == f"pages: {url}"  # the last step's result
    assert g.wait(60) == [f"{p}@128" for p in paths]  # [r0, r1, ...]
    assert g.states() == ["succeeded"] * 3 and [x.wait(1) for x in g.handles] == g.wait(1)
    assert total.wait(60) == sum(len(t) for t in tables)
    assert merged.wait(60) == [{"region": "eu"}, {"region": "us"}]
    assert merged_anyway.wait(60) == [{"region": "eu"}, None]
    assert unrun.state() == "cancelled"
    assert sql(broker, f"SELECT state FROM runner_jobs WHERE root_id = {unrun.id - 2}") == [("cancelled",), ("cancelled",)]
    assert h.cancel_workflow() == (0, 0), "everything in it had finished"  # or `runner jobs cancel ID --workflow`


# -- block 4: "Flow control: limits per key, rate limits, pausing a queue" ---------------------


def test_readme_block_4_flow_control(on_queue: Callable[[Any], str]) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from runner import App

    app = App("shop")
    broker = on_queue(app)

    from runner import ConcurrencyLimit, RateLimit

    # stand-in bodies (the README's are `...`): count how many run at once, per key
    running: Counter[Any] = Counter()
    peak: Counter[Any] = Counter()

    async def occupy(key: Any) -> None:
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        await anyio.sleep(0.05)
        running[key] -= 1

    @app.job(concurrency=ConcurrencyLimit(3, key=lambda tenant_id, **_: tenant_id))
    async def sync_tenant(session: AsyncSession, tenant_id: int) -> None:  # ≤ 3 per tenant, all hosts
        await occupy(tenant_id)

    @app.job(rate=RateLimit("100/m", key="stripe"))  # shared by every job naming "stripe"
    async def charge(session: AsyncSession, order_id: int) -> None: ...

    @app.job(rate=RateLimit("100/m", key="stripe"))  # another job naming "stripe" (stand-in)
    async def refund(order_id: int) -> None: ...

    @app.job(concurrency=1)  # one at a time, whole job (key: the job's name)
    async def rebuild_index() -> None:
        await occupy("rebuild_index")

    @app.job(queue="reports")  # stand-in: a job on the queue the README pauses
    async def monthly() -> str:
        return "report"

    tenants = [sync_tenant.defer(t) for t in [1] * 7 + [2] * 2]
    charges, refunds = [charge.defer(i) for i in range(5)], [refund.defer(i) for i in range(2)]
    rebuilds = [rebuild_index.defer() for _ in range(3)]

    export = sync_tenant.options(concurrency_key="tenant-7-export").defer(7)  # a per-call key
    app.pause("reports")
    report = monthly.defer()
    others = [*tenants, *charges, *refunds, *rebuilds, export]
    drain(app, broker, concurrency=10)  # serves "reports" too, and ends: a paused queue's job is not work
    assert report.state() == "queued", "a paused queue is not claimed"
    app.resume("reports")  # or `runner queues pause reports`
    drain(app, broker)
    assert report.wait(10) == "report"

    for job in others:
        assert job.state() == "succeeded"
    assert peak[1] <= 3 and peak[2] <= 3 and peak["rebuild_index"] == 1, peak
    assert row(broker, tenants[0].id, "concurrency_key, concurrency_limit") == (f"{sync_tenant.name}:1", 3), "namespaced"
    assert row(broker, export.id, "concurrency_key") == ("tenant-7-export",)
    assert row(broker, rebuilds[0].id, "concurrency_key, concurrency_limit") == (rebuild_index.name, 1)
    assert {row(broker, j.id, "rate_key, rate_limit, rate_period") for j in [*charges, *refunds]} == {("stripe", 100, 60.0)}


# -- block 5: "Testing your jobs" (module-level tests, as the README writes them) --------------


def test_readme_block_5_test_signup_sends_mail():  # eager: jobs run inline at defer time, on a
    with eager(app) as ran:  # real in-memory SQLite queue (retries run at once)
        assert send_mail.defer("a@b.c").wait(1) == "sent"
    assert len(ran) == 1


async def test_readme_block_5_test_nightly(runner_burst, runner_broker):  # a real in-process worker, temp SQLite queue
    app.configure(broker=runner_broker)
    h = await nightly_report.defer_async()
    await runner_burst(app)  # drains everything runnable, then returns
    assert await h.state_async() == "succeeded"


@pytest.fixture
async def engine(tmp_path: Path) -> Any:
    """The user's own test-database engine the README's test_repository takes."""
    made = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    async with made.begin() as conn:
        await conn.run_sync(readme_shop.Base.metadata.create_all)
    yield made
    await made.dispose()


@pytest.mark.anyio
async def test_readme_block_5_test_repository(engine):  # the outer transaction always rolls back
    async with rollback_session(engine) as session:
        session.add(User(id=1, email="a@b.c", profile=readme_shop.Profile(display_name="A")))
        await session.commit()  # a savepoint release inside the outer transaction
        assert (await UserRepository(session).get_by_id(1)).profile.display_name == "A"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar() == 0


# -- block 6: mounting the dashboard in your own app --------------------------------------------


@pytest.mark.anyio
async def test_readme_block_6_mount_the_dashboard(broker_url: str) -> None:
    try:
        from fastapi import FastAPI
    except ImportError:  # FastAPI is not a dependency; its `mount` *is* Starlette's (FastAPI subclasses Starlette)
        from starlette.applications import Starlette as FastAPI
    from runner import App
    from runner.web import dashboard

    my_runner_app = App("shop")

    @my_runner_app.job(queue="reports")
    async def report() -> str:
        return "done"

    my_runner_app.configure(broker=broker_url)
    try:
        ran = await report.defer_async()
        await run_burst(my_runner_app, broker_url)
    finally:
        await my_runner_app.client.aclose()

    api = FastAPI()
    runner_ui = dashboard(broker=broker_url, app=my_runner_app)  # app: queues, names, schedules
    api.mount("/runner", runner_ui)  # Starlette does not pass lifespans to mounts: `await runner_ui.aclose()` at shutdown
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://testserver") as client:
            overview = await client.get("/runner/")
            assert overview.status_code == 200 and ">reports</a>" in overview.text
            jobs = await client.get("/runner/jobs")
            assert jobs.status_code == 200 and f'href="/runner/jobs/{ran.id}"' in jobs.text, "links follow the mount point"
            page = await client.get(f"/runner/jobs/{ran.id}")
            assert page.status_code == 200 and html.escape(report.name) in page.text
            assert (await client.get("/runner/static/app.css")).status_code == 200
            assert (await client.get("/elsewhere")).status_code == 404
    finally:
        await runner_ui.aclose()


# -- block 7: Celery, a `DatabaseTask` base ----------------------------------------------------


def test_readme_block_7_celery_database_task(broker_url: str, tmp_path: Path, celery_apps: list[Any]) -> None:
    # stand-in: the project's sync SQLAlchemy sessions, each recording that it was closed
    made: list[Any] = []

    class TrackedSession(Session):
        closed = False

        def close(self) -> None:
            super().close()
            self.closed = True

    project_db = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'project.db'}")
    NoteBase.metadata.create_all(project_db)

    def SessionLocal() -> Session:
        session = sessionmaker(bind=project_db, class_=TrackedSession)()
        made.append((session, threading.get_ident()))
        return session

    from runner.compat.celery import Celery, Task  # was: from celery import Celery, Task

    app = Celery("proj", broker=broker_url)
    celery_apps.append(app)

    class DatabaseTask(Task):
        _session = None

        @property
        def session(self):
            if self._session is None:
                self._session = SessionLocal()  # created lazily, once per worker thread
            return self._session

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            if self._session is not None:
                self._session.close()
                self._session = None

    @app.task(base=DatabaseTask, bind=True)
    def save_note(self, text):  # stand-in body for the README's `...`
        note = Note(text=text)
        self.session.add(note)
        self.session.commit()
        time.sleep(0.02)  # let the worker's threads overlap
        return note.id

    results = [save_note.delay(f"note {i}") for i in range(8)]
    drain(app.runner_app, broker_url, concurrency=4)
    assert sorted(r.get(timeout=10) for r in results) == list(range(1, 9))
    with project_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 8
    assert len(made) == 8 and all(s.closed for s, _ in made), "one session per task, closed by after_return"
    assert len({thread for _, thread in made}) > 1, "the tasks ran in several worker threads at once"
    assert save_note._session is None
    project_db.dispose()


# -- block 8: Celery, `asyncio.run(_inner())` with a module-level async engine -----------------


def test_readme_block_8_celery_asyncio_run_with_a_pooled_engine(broker_url: str, celery_apps: list[Any]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from runner.compat.celery import Celery

    app = Celery("proj", broker=broker_url)
    celery_apps.append(app)
    URL = _async_url(broker_url)  # stand-in: the project's own database URL
    worker_loops: list[Any] = []
    on_worker_loop: list[bool] = []
    failed_once: set[int] = set()

    engine = create_async_engine(URL, pool_size=5)  # module level; no NullPool needed

    async def _inner(user_id):
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))  # stand-in body for the README's `...`
            on_worker_loop.append(asyncio.get_running_loop() is worker_loops[-1])
            if user_id == 13 and user_id not in failed_once:
                failed_once.add(user_id)
                raise ConnectionError("the database went away")
        return user_id

    @app.task(bind=True, max_retries=3)
    def sync_user(self, user_id):
        try:
            return asyncio.run(_inner(user_id))
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=60)  # same task id, request.retries + 1

    # test harness: note the worker's loop; dispose the engine on that loop when the worker stops
    @app.runner.on_startup
    async def note_loop(info: Any) -> None:
        worker_loops.append(asyncio.get_running_loop())

    @app.runner.on_shutdown
    async def close_engine(info: Any) -> None:
        await engine.dispose()

    results = [sync_user.delay(i) for i in (1, 2, 13)]
    retried_at = time.time()
    drain(app.runner_app, broker_url, concurrency=4)
    assert [results[0].get(timeout=10), results[1].get(timeout=10)] == [1, 2]
    assert on_worker_loop == [True, True, True], "asyncio.run ran each coroutine on the worker's own loop"
    retry = results[2]
    assert retry.state == "RETRY"
    [(job_id, state, run_at)] = sql(broker_url, f"SELECT id, state, run_at FROM runner_jobs WHERE key = '{retry.id}'")
    assert state == "queued" and 55 < run_at - retried_at < 65, "retried 60 s later"

    assert anyio.run(_make_due, broker_url, [job_id]) == 1  # don't wait the minute
    drain(app.runner_app, broker_url)
    assert retry.get(timeout=10) == 13 and retry.retries == 1, "same task id, request.retries + 1"
    assert sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE key = '{retry.id}'") == [(1,)]


# -- block 9: Celery, the idiomatic async form with session_scope ------------------------------


def test_readme_block_9_celery_async_task_with_session_scope(broker_url: str, celery_apps: list[Any]) -> None:
    from runner.compat.celery import Celery

    app = Celery("proj", broker=broker_url)
    celery_apps.append(app)
    app.conf.runner_bridge_asyncio_run = False
    anyio.run(seed_users, broker_url, [5])

    from runner import session_scope

    @app.task
    async def sync_user(user_id: int) -> dict:  # runs on the worker's loop
        async with session_scope() as session:  # the worker's engine; commit on exit
            user = await UserRepository(session).get_by_id(user_id)
            user.status = "synced"  # stand-in for the README's `...`
            return {"id": user.id, "status": user.status, "profile": user.profile.display_name}

    result = sync_user.delay(5)
    drain(app.runner_app, broker_url)
    assert result.get(timeout=10) == {"id": 5, "status": "synced", "profile": "User 5"}
    assert anyio.run(user_statuses, broker_url) == {5: "synced"}, "committed on exit"


# -- block 10: Celery, `beat_schedule` with `crontab` ------------------------------------------


def test_readme_block_10_celery_beat_schedule(broker_url: str, celery_apps: list[Any]) -> None:
    from runner.compat.celery import Celery
    from runner.compat.celery.schedules import crontab

    app = Celery("proj", broker=broker_url)
    celery_apps.append(app)

    # stand-ins for the two tasks the schedule names
    @app.task(name="proj.tasks.report")
    def report():
        return "reported"

    @app.task(name="proj.tasks.poll")
    def poll(feed):
        return f"polled {feed}"

    app.conf.beat_schedule = {
        "nightly-report": {"task": "proj.tasks.report", "schedule": crontab(minute=30, hour=3)},
        "poll": {"task": "proj.tasks.poll", "schedule": 30.0, "args": ("feed",)},
    }

    runner_app = app.runner_app  # what `runner serve -A proj` loads: beat_schedule becomes its schedules
    assert sorted((p.name, p.job.name, str(p.schedule), p.args) for p in runner_app.schedules) == [
        ("nightly-report", "proj.tasks.report", "cron '30 3 * * *' (UTC)", ()),
        ("poll", "proj.tasks.poll", "every 30s", ("feed",)),
    ]
    half_past_three = datetime(2026, 1, 10, 3, 30, tzinfo=UTC).timestamp()  # also a 30-second boundary
    assert fire(runner_app, broker_url, half_past_three) == 2, "each fire time is enqueued once, on two hosts"
    drain(runner_app, broker_url)
    done = sql(broker_url, "SELECT name, state, result FROM runner_jobs ORDER BY name")
    assert done == [("proj.tasks.poll", "succeeded", '"polled feed"'), ("proj.tasks.report", "succeeded", '"reported"')]


# -- block 11: Celery, workflows and the ids you choose ----------------------------------------


@pytest.fixture
def task_record(tmp_path: Path) -> Any:
    """Stand-in for the project's tracking model (``TaskRecord.create(...)``, a peewee/Django-style
    create), a table in the project's own SQLite file."""
    path = tmp_path / "tracking.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE task_records (id TEXT PRIMARY KEY, name TEXT, root TEXT, status TEXT)")

    class TaskRecord:
        @staticmethod
        def create(**fields: Any) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("INSERT INTO task_records VALUES (:id, :name, :root, :status)", fields)

        @staticmethod
        def all() -> dict[str, tuple[str, str, str]]:
            with sqlite3.connect(path) as conn:
                return {r[0]: tuple(r[1:]) for r in conn.execute("SELECT * FROM task_records")}

    return TaskRecord


def test_readme_block_11_celery_workflows_and_the_ids_you_choose(
    broker_url: str, celery_apps: list[Any], task_record: Any
) -> None:
    from runner.compat.celery import Celery, signals

    app = Celery("proj", broker=broker_url)
    celery_apps.append(app)
    TaskRecord = task_record

    # stand-ins: the tasks the block sends, and its inputs
    @app.task
    def ingest(doc):
        return f"text of {doc}"

    @app.task
    def ocr(text):
        return text.upper()

    @app.task
    def index(text):
        return {"indexed": text}

    @app.task
    def resize(i):
        return i * 10

    @app.task
    def count(part):
        return len(part)

    @app.task
    def tsum(values):
        return sum(values)

    @app.task
    def a():
        return 1

    @app.task
    def b():
        return 2

    @app.task
    def c(values):
        return ["c", values]

    @app.task
    def d(values):
        return ["d", values]

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def test(arg):
        return arg

    @app.task(name="shop.webhooks.deliver")
    def deliver(url):
        return f"delivered {url}"

    doc, images, parts = "invoice-7", [1, 2, 3], ["ab", "cde", "f"]
    xs, ys = range(150), range(150)

    from runner.compat.celery import chain, chord, group, signature
    from runner.compat.celery.result import AsyncResult, GroupResult
    from runner.compat.celery.utils import uuid
    from runner.compat.kombu import Exchange, Queue  # was: from kombu import Exchange, Queue

    batch_id = uuid()

    app.conf.task_queues = (Queue("default", Exchange("default"), routing_key="default"), Queue("webhooks"))
    app.conf.task_routes = {"shop.webhooks.*": {"queue": "webhooks"}}

    @signals.before_task_publish.connect  # protocol-2 headers and (args, kwargs, embed), as Celery's
    def track(sender=None, headers=None, body=None, **kwargs):
        TaskRecord.create(id=headers["id"], name=headers["task"], root=headers["root_id"], status="PENDING")

    @app.on_after_configure.connect  # Celery's docs' periodic example, as it is
    def setup_periodic_tasks(sender, **kwargs):
        sender.add_periodic_task(10.0, test.s("hello"), name="add every 10")

    task_id = uuid()  # chosen up front, keyed into the project's own table
    flow = chain(ingest.s(doc).set(task_id=task_id), ocr.s(), index.s(), task_id=f"{doc}-done").apply_async()
    done_id, ocr_id = flow.id, flow.parent.id  # f"{doc}-done", ocr's id
    assert done_id == f"{doc}-done" and ocr_id not in (task_id, done_id) and flow.parent.parent.id == task_id
    fan = group((resize.s(i) for i in images), task_id=batch_id).apply_async()  # fan.id == batch_id
    total = chord(group(count.s(p) for p in parts), tsum.s())()  # tsum([...]), once
    both = (group(a.s(), b.s()) | group(c.s(), d.s())).apply_async()  # c and d each get [a, b]
    chunked = add.chunks(zip(xs, ys), 100).apply_async()  # a group of celery.starmap tasks: [[...], [...]]
    fan.save()
    by_name = signature("shop.webhooks.deliver", args=("https://example.com/hook",), app=app).apply_async()

    drain(app.runner_app, broker_url, concurrency=8)
    assert AsyncResult(task_id).get(timeout=10) == f"text of {doc}"  # finds ingest's
    assert AsyncResult(ocr_id).get(timeout=10) == f"TEXT OF {doc.upper()}"
    assert flow.get(timeout=10) == {"indexed": f"TEXT OF {doc.upper()}"}
    assert fan.id == batch_id and fan.get(timeout=10) == [10, 20, 30]
    assert total.get(timeout=10) == 6
    assert sql(broker_url, f"SELECT count(*) FROM runner_jobs WHERE name = '{tsum.name}'") == [(1,)], "once"
    assert both.get(timeout=10) == [["c", [1, 2]], ["d", [1, 2]]]
    assert chunked.get(timeout=10) == [[2 * i for i in range(100)], [2 * i for i in range(100, 150)]]
    assert GroupResult.restore(batch_id).get() == [10, 20, 30]

    # kombu Queues and task_routes: the webhooks queue is served, the route sends deliver there
    assert by_name.get(timeout=10) == "delivered https://example.com/hook"
    assert "webhooks" in app.runner_app.queues()
    assert sql(broker_url, f"SELECT queue FROM runner_jobs WHERE name = '{deliver.name}'") == [("webhooks",)]

    # before_task_publish: one tracking row per task, written with the id chosen up front
    records = TaskRecord.all()
    assert records[task_id] == (ingest.name, task_id, "PENDING")
    assert records[f"{doc}-done"] == (index.name, task_id, "PENDING")
    assert len(records) == sql(broker_url, "SELECT count(*) FROM runner_jobs WHERE name NOT LIKE 'celery.save_group'")[0][0]

    # on_after_configure: the periodic task was added when the app was finalized, and fires
    [periodic] = [p for p in app.runner_app.schedules if p.name == "add every 10"]
    assert (str(periodic.schedule), periodic.args) == ("every 10s", ("hello",))
    assert fire(app.runner_app, broker_url, 1_700_000_000.0) == 1  # a past instant: runnable now
    drain(app.runner_app, broker_url)
    assert sql(broker_url, f"SELECT state, result FROM runner_jobs WHERE name = '{test.name}'") == [("succeeded", '"hello"')]
