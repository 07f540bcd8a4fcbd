"""Who may see the dashboard and who may change things through it.

* **Basic auth** (``basic_auth="user:pass"``): every request, ``/metrics`` included, needs the
  credentials; compared in constant time. Mounted in your own app, use your own auth instead.
* **Same origin** for every state-changing request (CSRF): a browser sends ``Origin`` (and
  ``Sec-Fetch-Site``) with a form POST; a request from another site, or one that says where it
  came from in neither header nor ``Referer``, is refused. Behind a proxy that rewrites the
  host, name the public origin in ``allowed_origins``.
* **Read-only**: every state-changing request is refused, and the pages show no buttons.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BasicAuth", "refuse_change"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BasicAuth:
    """ASGI middleware: HTTP basic auth on every request."""

    def __init__(self, app: ASGIApp, credentials: str, realm: str = "runner") -> None:
        self.app = app
        self.expected = credentials.encode()
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            "authentication required", status_code=401, headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'}
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"basic":
                    return False
                try:
                    given = base64.b64decode(token.strip(), validate=True)
                except (binascii.Error, ValueError):
                    return False
                return hmac.compare_digest(given, self.expected)
        return False


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def refuse_change(request: Request, *, read_only: bool, allowed_origins: Iterable[str]) -> Response | None:
    """A 403 response if this state-changing request must not run; None if it may."""
    if request.method in SAFE_METHODS:
        return None
    if read_only:
        return PlainTextResponse("this dashboard is read-only: nothing can be changed through it", status_code=403)
    own = _origin_of(str(request.base_url))
    allowed = {own, *(o.rstrip("/").lower() for o in allowed_origins)}
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return PlainTextResponse(f"refused: a {site} request may not change anything here (CSRF)", status_code=403)
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if not referer:
            return PlainTextResponse(
                "refused: a state-changing request must come from this dashboard's own pages (no Origin or Referer)",
                status_code=403,
            )
        origin = _origin_of(referer)
    if origin.lower() not in allowed:
        return PlainTextResponse(f"refused: requests from {origin} may not change anything here (CSRF)", status_code=403)
    return None
