"""The HTTP services' middleware: requests by route template, their duration and SERVER span, ``GET /metrics``."""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, Iterator

from .. import tracing
from .exposition import METRICS_PATH, METRICS_TOKEN_ENV, exposition
from .series import http


def _bearer_ok(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    for name, value in headers:
        if name == b"authorization":
            given = value.decode("latin-1")
            return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())
    return False


class HttpMetrics:
    """ASGI middleware of the edge and ui-api: requests by route template / method / status and their
    duration, the request's SERVER span while tracing is on, and ``GET /metrics``.

    ``install(app, scope)`` adds it outside the app's own middleware, ui-api's auth included: a refused
    request is counted too, and ``GET /metrics`` is answered here, before any credential check (a scraper
    holds no admin token; the series are counts and names from the config, no secrets). With
    ``LLMGW_METRICS_TOKEN`` set it wants ``Authorization: Bearer <that token>``. It is no route of the app
    (not in the OpenAPI document, not among the routes the apps enumerate) and the scrapes are not counted.
    """

    def __init__(self, app, scope: str = "llmgw.http", router: Any = None):
        self.app = app
        self.scope = scope
        self.router = router  # the app's router: the route template of a request refused before routing
        self._templates: list[tuple[Any, str]] | None = None
        self.metrics = http()
        self._children: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    @classmethod
    def install(cls, app, scope: str) -> None:
        app.add_middleware(cls, scope=scope, router=app.router)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            await _scrape(scope, send)
            return
        if tracing.enabled:
            await self._traced(scope, receive, send)
            return
        status = 500  # an exception escaping the app: the server answers 500
        t0 = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._count(scope, status, time.perf_counter() - t0)

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        # refused before routing (ui-api's auth, a body too large): the template its path would have had
        if self._templates is None:
            self._templates = list(_route_templates(getattr(self.router, "routes", ())))
        path = scope["path"]
        for regex, template in self._templates:
            if regex.match(path):
                return template
        return "unmatched"

    def _count(self, scope, status: int, seconds: float) -> None:
        path = self._route(scope)
        key = (path, scope["method"], status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.requests.labels(path, scope["method"], str(status))
            self._durations.setdefault(path, self.metrics.duration.labels(path))
        child.inc()
        self._durations[path].observe(seconds)

    async def _traced(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
                   if k in (b"traceparent", b"tracestate", b"baggage")}
        method = scope["method"]
        status = 500
        t0 = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.tracer(self.scope).start_as_current_span(
                method, context=tracing.extract(headers), kind=tracing.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]}) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                self._count(scope, status, time.perf_counter() - t0)
                route = self._route(scope)
                if route != "unmatched":
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(tracing.Status(tracing.StatusCode.ERROR))


def _route_templates(routes) -> Iterator[tuple[Any, str]]:
    """(regex, template) of every route, also those of included routers (FastAPI keeps them nested)."""
    from starlette.routing import compile_path

    for route in routes:
        nested = getattr(route, "effective_candidates", None)
        if nested is not None:
            yield from _route_templates(nested())
        elif getattr(route, "original_router", None) is not None:
            yield from _route_templates(route.original_router.routes)
        elif isinstance(getattr(route, "path", None), str) and route.path:
            yield compile_path(route.path)[0], route.path


async def _scrape(scope, send) -> None:
    token = os.environ.get(METRICS_TOKEN_ENV)
    if token and not _bearer_ok(scope.get("headers", []), token):
        status, body, content_type = 401, b"metrics need the bearer token\n", "text/plain; charset=utf-8"
        extra = [(b"www-authenticate", b'Bearer realm="llmgw-metrics"')]
    else:
        body, content_type = exposition()
        status, extra = 200, []
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
