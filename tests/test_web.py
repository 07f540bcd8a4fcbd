"""The dashboard's routes on a real queue, both backends: every page, filter and action, auth,
read-only, CSRF refusal, and clear 400s for bad input (never a 500)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runner.drivers import WorkerRow, open_driver
from runner.testing import run_burst
from runner.web import Dashboard, dashboard
from tests.apps import basic

from .conftest import sql

pytestmark = pytest.mark.anyio

ORIGIN = {"Origin": "http://testserver"}


class Seeded:
    """A queue that real jobs ran through: ids of each kind of job, by role."""

    def __init__(self, url: str, ids: dict[str, int]) -> None:
        self.url = url
        self.ids = ids


@pytest.fixture
async def seeded(configured: str) -> Seeded:
    url = configured
    ids = {
        "ok": (await basic.add.defer_async(2, 3)).id,
        "failed": (await basic.boom.defer_async("kaput")).id,
        "costed": (await basic.record.defer_async("web")).id,
        "parent": (await basic.parent_of_chain.options(on_success=basic.child_of_chain.call(5)).defer_async(4)).id,
        "keyed": (await basic.add.options(key="order-77").defer_async(1, 1)).id,
    }
    await run_burst(basic.app, url)
    ids["scheduled"] = (await basic.sleeper.options(countdown=3600).defer_async(1)).id
    ids["child"] = int(sql(url, f"SELECT id FROM runner_jobs WHERE parent_id = {ids['parent']}")[0][0])
    driver = open_driver(url, pool_size=1)
    try:
        now = time.time()
        await driver.worker_seen(
            WorkerRow(
                owner="web-host:1:0",
                node="web-host",
                pid=4242,
                pid_started=0,
                boot_id="",
                queues="default",
                concurrency=8,
                started_at=now - 60,
                seen_at=now,
                done=12,
                rss_kb=51200,
                running="[]",
            )  # fmt: skip
        )
        ids["fired"] = await driver.fire("nightly", now - 60, basic.add.call(7, 8).envelope(now)) or 0
    finally:
        await driver.dispose()
    return Seeded(url, ids)


@pytest.fixture
async def board(seeded: Seeded) -> AsyncIterator[Dashboard]:
    board = dashboard(seeded.url, app=basic.app)
    yield board
    await board.aclose()


@pytest.fixture
async def client(board: Dashboard) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=board), base_url="http://testserver") as c:
        yield c


def ids_in(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'name="ids" value="(\d+)"', html)]


async def test_every_page_renders_what_the_queue_holds(client: httpx.AsyncClient, seeded: Seeded) -> None:
    ids = seeded.ids
    overview = await client.get("/")
    assert overview.status_code == 200
    assert 'id="queues"' in overview.text and ">default</a>" in overview.text
    assert "<svg" in overview.text and 'class="ok"' in overview.text, "the throughput chart has bars"
    assert "tests.apps.basic.record" in overview.text, "the measured job is in the cost tables"
    jobs = await client.get("/jobs")
    assert jobs.status_code == 200 and set(ids.values()) <= set(ids_in(jobs.text))
    assert "kaput" in jobs.text, "the error's first line is a column"
    failed = await client.get(f"/jobs/{ids['failed']}")
    assert failed.status_code == 200
    assert "Traceback (most recent call last)" in failed.text and "ValueError" in failed.text
    costed = await client.get(f"/jobs/{ids['costed']}")
    assert re.search(r'<td class="n">\d+</td><td class="n">[\d.,]+</td>', costed.text), "the attempt's cost is shown"
    parent = await client.get(f"/jobs/{ids['parent']}")
    assert f'href="/jobs/{ids["child"]}"' in parent.text, "a parent links its children"
    child = await client.get(f"/jobs/{ids['child']}")
    assert f'href="/jobs/{ids["parent"]}"' in child.text and "parent" in child.text
    workers = await client.get("/workers")
    assert workers.status_code == 200 and "web-host:1:0" in workers.text and "50.0 MB" in workers.text
    periodic = await client.get("/periodic")
    assert periodic.status_code == 200 and "nightly" in periodic.text and f'href="/jobs/{ids["fired"]}"' in periodic.text
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert re.search(
        r'runner_jobs_finished_total\{name="tests.apps.basic.boom",outcome="failed",queue="default"\} 1.0', metrics.text
    )
    assert 'runner_queue_jobs{queue="default",state="scheduled"} 1.0' in metrics.text
    assert (await client.get("/healthz")).text == "ok"
    missing = await client.get("/jobs/999999")
    assert missing.status_code == 404 and "no job 999999" in missing.text


async def test_filters_narrow_the_list_and_pages_follow_the_keyset(client: httpx.AsyncClient, seeded: Seeded) -> None:
    ids = seeded.ids
    assert ids_in((await client.get("/jobs?state=failed")).text) == [ids["failed"]]
    assert ids_in((await client.get("/jobs", params={"name": "tests.apps.basic.bo"})).text) == [ids["failed"]]
    assert ids_in((await client.get("/jobs", params={"q": "_of_chain"})).text) == [ids["child"], ids["parent"]]
    assert ids_in((await client.get("/jobs", params={"key": "order-77"})).text) == [ids["keyed"]]
    assert ids_in((await client.get("/jobs", params={"id": ids["ok"]})).text) == [ids["ok"]]
    assert ids_in((await client.get("/jobs", params={"queue": "nope"})).text) == []
    future = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    assert ids_in((await client.get("/jobs", params={"since": future})).text) == []
    assert len(ids_in((await client.get("/jobs", params={"until": future})).text)) == len(set(ids.values()))
    seen: list[int] = []
    url = "/jobs?limit=3"
    while url:
        page = await client.get(url)
        seen += ids_in(page.text)
        older = re.search(r'href="(/jobs\?[^"]+)" id="older"', page.text)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == sorted(set(ids.values()), reverse=True), "keyset pages: newest first, no gaps, no repeats"
    second = await client.get(f"/jobs?limit=3&before={seen[2]}")
    assert 'href="/jobs?limit=3" id="newest"' in second.text, "a later page links back to the newest"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=bogus", "state='bogus' is not a job state; accepted: waiting, queued"),
        ("id=abc", "id='abc' is not valid; accepted: a whole number"),
        ("since=yesterday", "since='yesterday' is not a time; accepted: YYYY-MM-DDTHH:MM"),
        ("limit=0", "limit='0' is not valid"),
        ("limit=100000", "limit='100000' is not valid"),
        ("before=-3", "before='-3' is not valid"),
        ("since=2030-01-01T00:00&until=2020-01-01T00:00", "since must be earlier than until"),
        ("name=" + "x" * 300, "name: at most 200 characters"),
    ],
)
async def test_a_bad_filter_is_a_clear_400(client: httpx.AsyncClient, query: str, message: str) -> None:
    response = await client.get("/jobs?" + query)
    assert response.status_code == 400
    assert message.replace("'", "&#39;") in response.text


async def test_job_actions_change_the_row(client: httpx.AsyncClient, seeded: Seeded) -> None:
    ids, url = seeded.ids, seeded.url
    retried = await client.post(f"/jobs/{ids['failed']}/retry", headers=ORIGIN)
    assert retried.status_code == 303 and "re-queued" in retried.headers["location"]
    assert sql(url, f"SELECT state, attempt FROM runner_jobs WHERE id = {ids['failed']}") == [("queued", 0)]
    again = await client.post(f"/jobs/{ids['ok']}/retry", headers=ORIGIN)
    assert "only+failed" in again.headers["location"], "a succeeded job is not retried, and the page says why"
    assert (await client.post(f"/jobs/{ids['scheduled']}/cancel", headers=ORIGIN)).status_code == 303
    assert sql(url, f"SELECT state FROM runner_jobs WHERE id = {ids['scheduled']}") == [("cancelled",)]
    deleted = await client.post(f"/jobs/{ids['ok']}/delete", headers=ORIGIN)
    assert deleted.status_code == 303 and sql(url, f"SELECT count(*) FROM runner_jobs WHERE id = {ids['ok']}") == [(0,)]
    unknown = await client.post(f"/jobs/{ids['keyed']}/explode", headers=ORIGIN)
    assert unknown.status_code == 400 and "accepted: retry, cancel, delete" in unknown.text


async def test_bulk_actions_on_a_selection_and_on_everything_matching(client: httpx.AsyncClient, seeded: Seeded) -> None:
    url = seeded.url
    more = [(await basic.boom.defer_async(f"bulk {i}")).id for i in range(4)]
    await run_burst(basic.app, url)
    picked = await client.post("/jobs/bulk", headers=ORIGIN, data={"action": "retry", "scope": "selected", "ids": more[:2]})
    assert picked.status_code == 303 and "2+jobs+re-queued" in picked.headers["location"]
    states = dict(sql(url, f"SELECT id, state FROM runner_jobs WHERE id IN ({','.join(map(str, more))})"))
    assert [states[i] for i in more] == ["queued", "queued", "failed", "failed"]
    matching = await client.post("/jobs/bulk", headers=ORIGIN, data={"action": "delete", "scope": "matching", "state": "failed"})
    assert matching.status_code == 303 and "state=failed" in matching.headers["location"]
    assert sql(url, "SELECT count(*) FROM runner_jobs WHERE state = 'failed'") == [(0,)]
    assert sql(url, f"SELECT count(*) FROM runner_jobs WHERE id IN ({more[0]}, {more[1]})") == [(2,)], "the rest is untouched"
    nothing = await client.post("/jobs/bulk", headers=ORIGIN, data={"action": "retry", "scope": "selected"})
    assert nothing.status_code == 400 and "no jobs selected" in nothing.text
    bad = await client.post("/jobs/bulk", headers=ORIGIN, data={"action": "retry", "scope": "selected", "ids": ["1x"]})
    assert bad.status_code == 400 and "is not a job id" in bad.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
        {"Referer": "https://evil.example/page"},
    ],
)
async def test_a_change_from_another_origin_is_refused(
    client: httpx.AsyncClient, seeded: Seeded, headers: dict[str, str]
) -> None:
    response = await client.post(f"/jobs/{seeded.ids['failed']}/retry", headers=headers)
    assert response.status_code == 403 and "refused" in response.text
    assert sql(seeded.url, f"SELECT state FROM runner_jobs WHERE id = {seeded.ids['failed']}") == [("failed",)]


async def test_a_same_origin_referer_is_enough_without_origin(client: httpx.AsyncClient, seeded: Seeded) -> None:
    response = await client.post(f"/jobs/{seeded.ids['failed']}/retry", headers={"Referer": "http://testserver/jobs"})
    assert response.status_code == 303


async def test_read_only_shows_everything_and_changes_nothing(seeded: Seeded) -> None:
    board = dashboard(seeded.url, read_only=True)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=board), base_url="http://testserver") as client:
            page = await client.get(f"/jobs/{seeded.ids['failed']}")
            assert page.status_code == 200 and "Traceback" in page.text
            assert "/retry" not in page.text and 'name="ids"' not in (await client.get("/jobs")).text
            refused = await client.post(f"/jobs/{seeded.ids['failed']}/retry", headers=ORIGIN)
            assert refused.status_code == 403 and "read-only" in refused.text
    finally:
        await board.aclose()
    assert sql(seeded.url, f"SELECT state FROM runner_jobs WHERE id = {seeded.ids['failed']}") == [("failed",)]


async def test_basic_auth_guards_every_route(seeded: Seeded) -> None:
    board = dashboard(seeded.url, basic_auth="ops:s3cret")
    good = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    wrong = "Basic " + base64.b64encode(b"ops:guess").decode()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=board), base_url="http://testserver") as client:
            for path in ("/", "/jobs", "/metrics", "/static/app.css"):
                response = await client.get(path)
                assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
                assert (await client.get(path, headers={"Authorization": wrong})).status_code == 401
                assert (await client.get(path, headers={"Authorization": "Basic !!!"})).status_code == 401
                assert (await client.get(path, headers={"Authorization": good})).status_code == 200
    finally:
        await board.aclose()


async def test_mounted_under_a_prefix_in_another_app(seeded: Seeded) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    board = dashboard(seeded.url, app=basic.app)
    host = Starlette(routes=[Mount("/runner", app=board)])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://testserver") as client:
            page = await client.get("/runner/jobs")
            assert page.status_code == 200
            assert 'href="/runner/static/app.css"' in page.text and f'href="/runner/jobs/{seeded.ids["failed"]}"' in page.text
            assert (await client.get("/runner/static/app.js")).status_code == 200
            done = await client.post(f"/runner/jobs/{seeded.ids['failed']}/retry", headers=ORIGIN)
            assert done.status_code == 303 and done.headers["location"].startswith(f"/runner/jobs/{seeded.ids['failed']}")
    finally:
        await board.aclose()


def test_the_cli_refuses_bad_dashboard_settings(tmp_path: Any) -> None:
    from runner.cli import main

    assert main(["dashboard", "--broker", f"sqlite:///{tmp_path}/q.db", "--basic-auth", "nopassword"]) == 2
    assert main(["dashboard", "--broker", f"sqlite:///{tmp_path}/q.db", "--port", "70000"]) == 2
