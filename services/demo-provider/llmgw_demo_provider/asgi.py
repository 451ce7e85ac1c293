"""Bare ASGI plumbing shared by every face of the demo provider: bodies, JSON answers, event streams."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream; charset=utf-8"


class ClientDisconnected(Exception):
    pass


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = dumps(payload)
    raw_headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", new_id("req_").encode())]
    if headers:
        raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def start_stream(send: Send, headers: dict[str, str] | None = None,
                       content_type: bytes = EVENT_STREAM) -> None:
    raw_headers = [(b"content-type", content_type), (b"cache-control", b"no-cache"),
                   (b"x-request-id", new_id("req_").encode())]
    if headers:
        raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw_headers})


async def send_chunk(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


def sse_event(event: str, payload: Any) -> bytes:
    """A named server-sent event, as Anthropic and the OpenAI Responses API frame them."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(payload) + b"\n\n"


async def abort_connection(send: Send) -> None:
    """Drop the connection mid-response, as a crashing upstream would.

    ASGI has no "abort"; under uvicorn, ``send`` is a method of the request
    cycle that owns the transport, so close that (flushing what was sent).
    Elsewhere, returning without finishing the body makes the server close.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await asyncio.sleep(0)  # let the server see the connection is gone before we return


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
