"""ui-api's one error shape, its input limits, and the OpenAPI document that says so.

Every 4xx and 5xx ui-api answers is JSON of one shape::

    {"error": {"message": "...", "type": "invalid_request_error" | "api_error", "code": "not_found"}}

``type`` is ``invalid_request_error`` for a 4xx (the caller's to fix) and
``api_error`` for a 5xx; ``code`` is a short, stable name of the status
(``CODES``). That covers unknown routes (404) and wrong methods (405, with
``Allow``) from Starlette, request validation (a 400, never FastAPI's 422),
bodies over ``MAX_BODY_BYTES`` (413) and query strings over
``MAX_QUERY_BYTES`` (414) refused before any route runs, services that do not
answer (503), and anything unexpected (500, logged; never a stack trace).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

log = logging.getLogger("llmgw.ui-api")

MAX_BODY_BYTES = 64 * 1024  # a request body, whatever the route
MAX_QUERY_BYTES = 8 * 1024  # a query string
MESSAGE_CHARS = 1000  # an error message, at most

CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
    503: "unavailable", 504: "timeout",
}


class ErrorBody(BaseModel):
    message: str
    type: str  # invalid_request_error (4xx) | api_error (5xx)
    code: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_body(status: int, message: str, code: str | None = None) -> dict:
    kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    text = message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"
    return {"error": {"message": text, "type": kind, "code": code or CODES.get(status, "error")}}


def error_response(status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _routes(routes) -> list:
    """Every route with a path, also those of included routers (FastAPI keeps those as routers of their own;
    ui-api includes them without a prefix)."""
    out = []
    for route in routes:
        if getattr(route, "original_router", None) is not None:
            out += _routes(route.original_router.routes)
        elif getattr(route, "path_regex", None) is not None:
            out.append(route)
    return out


def _allowed_methods(request: Request) -> set[str]:
    """Every method some route answers on this path (Starlette's Allow names only the first route's)."""
    path = request.url.path
    return {m for r in _routes(request.app.routes) if r.path_regex.match(path) for m in (getattr(r, "methods", None)
                                                                                         or ())}


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    message = str(exc.detail) if exc.detail is not None else ""
    headers = getattr(exc, "headers", None)
    if status == 404 and message == "Not Found":
        message = f"no such route: {request.method} {_shown(request.url.path)}"
    elif status == 405 and message == "Method Not Allowed":
        methods = _allowed_methods(request) | set((exc.headers or {}).get("Allow", "").replace(",", " ").split())
        allowed = ", ".join(sorted(methods))
        headers = {**(headers or {}), "Allow": allowed}
        message = f"method {request.method} not allowed on {_shown(request.url.path)}" + (
            f" (allowed: {allowed})" if allowed else "")
    return error_response(status, message or "error", headers=headers)


def validation_message(errors: list[dict[str, Any]], what: str = "request") -> str:
    """The first few problems, each as ``where: what`` (never the input itself: it may be huge)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or what
        parts.append(f"{_shown(loc, 100)}: {err.get('msg', 'invalid')}")
    return f"invalid {what}: " + "; ".join(parts)


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return error_response(400, validation_message(list(exc.errors())))


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unhandled error: %s: %s", type(exc).__name__, str(exc)[:300], exc_info=exc)
    return error_response(500, "internal error")


class LimitsMiddleware:
    """Refuses a query string over ``MAX_QUERY_BYTES`` (414) and a body over ``MAX_BODY_BYTES`` (413) before
    any route runs: a declared Content-Length at once, a chunked body as soon as it grows past the limit.
    The body, read whole here (it is small), is handed to the app as it came."""

    def __init__(self, app, max_body: int = MAX_BODY_BYTES, max_query: int = MAX_QUERY_BYTES):
        self.app = app
        self.max_body = max_body
        self.max_query = max_query

    @staticmethod
    async def _send_error(send, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query:
            await self._send_error(send, 414, f"query string over {self.max_query} bytes")
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._send_error(send, 400, "invalid Content-Length")
                    return
        if declared is not None and declared > self.max_body:
            await self._send_error(send, 413, f"request body over {self.max_body} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client is gone
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await self._send_error(send, 413, f"request body over {self.max_body} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document with the truth about errors: no 422 (validation answers 400), every operation's
    4XX and 5XX in ``ErrorResponse``'s shape."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(defs.pop("$defs", {}))
    schemas["ErrorResponse"] = defs
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    # who may call what (services/ui-api/llmgw_ui_api/auth.py): the admin or read-only token, or the login
    # session with the x-llmgw-csrf header on state-changing calls; /healthz and /api/health are open
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the admin token (everything) or the "
                   "read-only token (GET only)"},
        "session": {"type": "apiKey", "in": "cookie", "name": "llmgw_session", "description": "set by POST "
                    "/api/login; state-changing calls also send the header x-llmgw-csrf: 1"},
    }
    for path, path_item in doc.get("paths", {}).items():
        for operation in path_item.values():
            if path not in ("/healthz", "/api/health", "/api/login"):
                operation["security"] = [{"bearer": []}, {"session": []}]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = {"description": "the request was refused", **ref}
            responses["5XX"] = {"description": "a service failed or did not answer", **ref}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    """The error shape, the input limits and the OpenAPI document on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(LimitsMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
