"""The dashboard as an ASGI app (Starlette): routes, the driver it reads through, errors.

``dashboard(broker=...)`` returns an app to serve (``runner dashboard``) or mount in your own
Starlette/FastAPI app (``app.mount("/runner", dashboard(...))``); links follow the mount point.
The driver is opened on the first request, in the serving loop, and closed with the app's
lifespan (or ``await dash.aclose()`` when mounted, since mounts do not forward lifespans).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..app import App
from ..drivers import Driver, open_driver
from ..settings import Settings
from . import charts, pages
from .fmt import FILTERS
from .forms import BadRequest, action_of, parse_ids, parse_query
from .metrics import CONTENT_TYPE, render_metrics
from .security import BasicAuth, refuse_change

__all__ = ["Dashboard", "dashboard", "metrics_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
_env.filters.update(FILTERS)
_env.globals.update(throughput_chart=charts.throughput_chart, latency_chart=charts.latency_chart)


class Backend:
    """The driver of one dashboard, opened lazily in the loop that serves it."""

    def __init__(self, broker: str, driver: Driver | None = None) -> None:
        self.broker = broker
        self._driver = driver
        self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop() if driver is not None else None
        self._lock: asyncio.Lock | None = None

    async def driver(self) -> Driver:
        loop = asyncio.get_running_loop()
        if self._driver is not None and self._loop is loop:
            return self._driver
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._driver is None or self._loop is not loop:  # a new loop (tests): a new engine
                driver = open_driver(self.broker, pool_size=4, max_overflow=4)
                await driver.ensure_schema()
                self._driver, self._loop = driver, loop
        return self._driver

    async def aclose(self) -> None:
        if self._driver is not None:
            await self._driver.dispose()
            self._driver = None


class Dashboard:
    """The dashboard app; call it as ASGI. See ``dashboard`` for the options."""

    def __init__(
        self,
        broker: str,
        *,
        app: App | None = None,
        read_only: bool = False,
        basic_auth: str | None = None,
        allowed_origins: Sequence[str] = (),
        title: str = "runner",
        refresh: float = 5.0,
    ) -> None:
        self.backend = Backend(broker)
        self.app = app
        self.read_only = read_only
        self.allowed_origins = tuple(allowed_origins)
        self.title = title
        self.refresh = refresh
        routes = [
            Route("/", self._page(self.overview)),
            Route("/jobs", self._page(self.jobs)),
            Route("/jobs/bulk", self._page(self.bulk), methods=["POST"]),
            Route("/jobs/{job_id:int}", self._page(self.job)),
            Route("/jobs/{job_id:int}/{action:str}", self._page(self.act), methods=["POST"]),
            Route("/workers", self._page(self.workers)),
            Route("/periodic", self._page(self.periodic)),
            Route("/metrics", self._page(self.metrics)),
            Route("/healthz", self._page(self.healthz)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan)
        self._asgi: Any = BasicAuth(self.starlette, basic_auth) if basic_auth else self.starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)

    async def aclose(self) -> None:
        await self.backend.aclose()

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        await self.backend.aclose()

    # -- plumbing -------------------------------------------------------------------------------

    def _page(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = refuse_change(request, read_only=self.read_only, allowed_origins=self.allowed_origins)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except BadRequest as exc:
                return self._render(request, "error.html", {"status": 400, "message": str(exc)}, status=400)
            except HTTPException:
                raise
            except Exception as exc:
                log.exception("dashboard: %s %s failed", request.method, request.url.path)
                message = f"{type(exc).__name__}: {exc}"
                return self._render(request, "error.html", {"status": 500, "message": message}, status=500)

        return endpoint

    def _render(self, request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        base = {
            "root": root, "title": self.title, "read_only": self.read_only, "refresh": self.refresh,
            "path": request.url.path[len(root):] or "/", "now": time.time(), "flash": request.query_params.get("msg"),
            "status": status,
        }  # fmt: skip
        html = _env.get_template(template).render({**base, **context})
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def _back(self, request: Request, path: str, message: str) -> RedirectResponse:
        root = request.scope.get("root_path", "")
        sep = "&" if "?" in path else "?"
        return RedirectResponse(f"{root}{path}{sep}{urlencode({'msg': message})}", status_code=303)

    # -- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        data = await pages.overview(await self.backend.driver(), self.app, time.time())
        return self._render(request, "overview.html", data)

    async def jobs(self, request: Request) -> Response:
        query = parse_query(request.query_params)
        data = await pages.jobs_page(await self.backend.driver(), query, self.app, time.time())
        return self._render(request, "jobs.html", data)

    async def job(self, request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        data = await pages.job_page(await self.backend.driver(), job_id)
        if data is None:
            return self._render(request, "error.html", {"status": 404, "message": f"no job {job_id}"}, status=404)
        return self._render(request, "job.html", data)

    async def workers(self, request: Request) -> Response:
        return self._render(request, "workers.html", await pages.workers_page(await self.backend.driver(), time.time()))

    async def periodic(self, request: Request) -> Response:
        data = await pages.periodic_page(await self.backend.driver(), self.app, time.time())
        return self._render(request, "periodic.html", data)

    async def metrics(self, request: Request) -> Response:
        return Response(await render_metrics(await self.backend.driver()), media_type=CONTENT_TYPE)

    async def healthz(self, request: Request) -> Response:
        await (await self.backend.driver()).queue_counts(time.time())
        return PlainTextResponse("ok")

    # -- changes --------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        action = action_of(request.path_params["action"])
        changed, _ = await pages.bulk(await self.backend.driver(), action, [job_id], None)
        verb = {"retry": "re-queued", "cancel": "cancelled (or asked to stop)", "delete": "deleted"}[action]
        if changed:
            message = f"job {job_id} {verb}"
        else:
            message = f"job {job_id} was not {verb}: {_WHY_NOT[action]}"
        return self._back(request, "/jobs" if action == "delete" and changed else f"/jobs/{job_id}", message)

    async def bulk(self, request: Request) -> Response:
        pairs = await _form(request)
        form = dict(pairs)
        action = action_of(form.get("action"))
        scope = form.get("scope", "selected")
        if scope not in ("selected", "matching"):
            raise BadRequest(f"scope={scope!r} is not known; accepted: selected, matching")
        query = parse_query({k: v for k, v in form.items() if k not in ("action", "scope", "ids")})
        if scope == "selected":
            ids = parse_ids([v for k, v in pairs if k == "ids"])
            if not ids:
                raise BadRequest("no jobs selected; tick some, or choose 'all matching the filter'")
            changed, finished = await pages.bulk(await self.backend.driver(), action, ids, None)
        else:
            changed, finished = await pages.bulk(await self.backend.driver(), action, None, query)
        verb = {"retry": "re-queued", "cancel": "cancelled", "delete": "deleted"}[action]
        message = f"{changed:,} jobs {verb}" + ("" if finished else "; stopped after 20 s, more may match: run it again")
        back = "/jobs" + ("?" + urlencode(query.raw) if query.raw else "")
        return self._back(request, back, message)


MAX_FORM = 1 << 20


async def _form(request: Request) -> list[tuple[str, str]]:
    """The fields of a urlencoded form (all the dashboard's forms are), at most 1 MiB: no
    multipart parser needed, and no upload accepted."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest(f"content type {kind or '(none)'!r} is not accepted; accepted: application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise BadRequest(f"the form is over {MAX_FORM:,} bytes; select fewer jobs or use 'all matching the filter'")
    try:
        return parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=20_000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form could not be read ({exc})") from None


_WHY_NOT = {
    "retry": "only failed, cancelled or expired jobs can be retried",
    "cancel": "it had already finished",
    "delete": "a running job cannot be deleted; cancel it first",
}


def dashboard(
    broker: str | None = None,
    *,
    app: App | None = None,
    read_only: bool = False,
    basic_auth: str | None = None,
    allowed_origins: Sequence[str] = (),
    title: str = "runner",
) -> Dashboard:
    """The dashboard for the queue at ``broker`` (default: ``RUNNER_BROKER``, else the app's
    broker, else ``sqlite:///runner.db``).

    :param app: your runner ``App``: its queues, job names and periodic schedules are shown.
    :param read_only: show everything, refuse every change.
    :param basic_auth: ``"user:password"`` required of every request (mounted in your own app,
        prefer your own auth).
    :param allowed_origins: origins besides the request's own that may change things (a proxy
        that rewrites ``Host``), e.g. ``["https://ops.example.com"]``.
    """
    url = broker or Settings.env_broker() or (getattr(app, "broker", None) if app is not None else None) or "sqlite:///runner.db"
    return Dashboard(url, app=app, read_only=read_only, basic_auth=basic_auth, allowed_origins=allowed_origins, title=title)


def metrics_app(broker: str, *, basic_auth: str | None = None) -> Any:
    """Just ``/metrics`` and ``/healthz``: what ``runner serve --metrics-port`` serves."""
    board = Dashboard(broker, read_only=True)
    routes = [Route("/metrics", board._page(board.metrics)), Route("/healthz", board._page(board.healthz))]
    app = Starlette(routes=routes, lifespan=board._lifespan)
    return BasicAuth(app, basic_auth) if basic_auth else app
