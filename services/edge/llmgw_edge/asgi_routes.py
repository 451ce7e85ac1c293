"""The client-format routes (chat completions, messages, count_tokens, responses, embeddings) as plain ASGI.

Every request a client sends goes through one of these routes, so they skip
FastAPI's per-request machinery (dependency solving, its exception / body-limit /
telemetry middleware layers, Starlette's Request and Response objects, an anyio
task group per stream): measured alone on uvicorn + httptools, a FastAPI route
costs ~64 µs of CPU per request, a plain ASGI callable ~21 µs (docs/benchmarks.md).
What the FastAPI routes did stays: the body is bounded while it arrives, the
caller's key is checked, every error is rendered by the route's codec (the
caller's format is the route's: decided here, once), a stream stops (and its
upstream call is closed) when the client goes away. The routes stay declared
in FastAPI too, only for the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping

from starlette.datastructures import Headers

from .api.body import read_body
from .auth import check_model
from .core.errors import GatewayError
from .core.gateway import Reply
from .core.tokens import key_needs_exact

log = logging.getLogger("llmgw.edge")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _Route:
    """What ``scope["route"]`` holds for these routes: the metrics read the route template from it."""

    __slots__ = ("path", "codec_type")

    def __init__(self, path: str, codec_type: type):
        self.path = path
        self.codec_type = codec_type


class ClientRoutes:
    """ASGI: ``POST`` to one of ``paths`` is served here, anything else by ``app`` (the FastAPI app).

    ``edge_of()`` gives the running edge (set up by the app's lifespan); ``render_error(err, error_body)``
    makes a ``GatewayError`` a full ``(status, headers, body)``, its body written by ``error_body`` (the
    route's codec's ``render_error``).
    """

    def __init__(self, app, paths: dict[str, type], edge_of: Callable[[], Any],
                 render_error: Callable[[GatewayError, Callable[[GatewayError], bytes]],
                                        tuple[int, list[tuple[bytes, bytes]], bytes]]):
        self.app = app
        self.routes = {path: _Route(path, codec_type) for path, codec_type in paths.items()}
        self.edge_of = edge_of
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        headers = Headers(scope=scope)
        try:
            reply = await self._handle(route, scope, headers, receive)
        except _Disconnected:
            return
        except GatewayError as err:
            await self._send_error(send, err, route)
            return
        except Exception:
            log.exception("unhandled error")
            await self._send_error(send, GatewayError(500, "The gateway hit an internal error.",
                                                      code="internal_error"), route)
            return
        if reply.stream is None:
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": raw_headers(reply.headers, reply.media_type, len(reply.body or b""))})
            await send({"type": "http.response.body", "body": reply.body or b""})
        else:
            await _stream(reply, receive, send)

    async def handle(self, path: str, scope: Scope, headers: Headers, receive: Receive) -> Reply:
        """The gateway's reply to a request for ``path`` (one of the paths served here); raises
        ``GatewayError``."""
        try:
            return await self._handle(self.routes[path], scope, headers, receive)
        except _Disconnected:
            raise GatewayError(400, "The client closed the connection before its body arrived.") from None

    async def _handle(self, route: _Route, scope: Scope, headers: Headers, receive: Receive) -> Reply:
        edge = self.edge_of()
        client = scope.get("client")
        key = exchange = None
        try:
            key = await edge.keys.authenticate(headers, client[0] if client else "unknown")
            codec = route.codec_type(max_depth=edge.config.edge.max_json_depth)
            body = await read_body(headers, _body_chunks(receive), edge.config.edge.max_body_bytes)
            exchange = codec.parse(body, headers)
            check_model(key, exchange.model)
            exchange.key_id = key.id if key else None
            exchange.exact_tokens = key_needs_exact(key)
            reply = await edge.gateway.handle(exchange, codec)
        except GatewayError as err:
            if not err.recorded:  # refused before any provider was tried: a usage event all the same
                edge.refusals.record(err, route.codec_type.endpoint, key.id if key else None,
                                     exchange.model if exchange else None)
            raise
        if edge.replica:  # which edge replica answered (the runner and compose name them: edge-1, edge-2...)
            reply.headers["x-llmgw-edge"] = edge.replica
        return reply

    async def _send_error(self, send: Send, err: GatewayError, route: _Route) -> None:
        status, raw_headers, body = self.render_error(err, route.codec_type.render_error)
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


class _Disconnected(Exception):
    """The client went away before its body arrived: nobody to answer."""


async def _body_chunks(receive: Receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _content_type(media_type: str) -> bytes:
    # as Starlette's responses say it: text types carry their charset
    return (f"{media_type}; charset=utf-8" if media_type.startswith("text/") else media_type).encode("latin-1")


def raw_headers(headers: Mapping[str, str], media_type: str, length: int | None) -> list[tuple[bytes, bytes]]:
    """ASGI's header list: ``headers`` with the content type (and length, unless streamed) set here."""
    raw = [(name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in headers.items()
           if name.lower() not in ("content-length", "content-type")]
    raw.append((b"content-type", _content_type(media_type)))
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return raw


async def _stream(reply: Reply, receive: Receive, send: Send) -> None:
    """Send a stream's chunks as they come; when the client disconnects, stop, which closes the stream
    (and with it the upstream call) through the cancellation."""
    streaming = asyncio.current_task()
    gone = done = False

    async def watch_disconnect() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        if not done:  # after the last chunk, the server says "disconnect" for a finished response too
            gone = True
            streaming.cancel()

    watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    chunks = reply.stream
    try:
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": raw_headers(reply.headers, reply.media_type, None)})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        streaming.uncancel()  # our own cancel, not the server's: the request is simply over
    finally:
        watcher.cancel()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
