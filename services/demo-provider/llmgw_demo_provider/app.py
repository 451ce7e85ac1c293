"""The demo provider as a bare ASGI app.

No framework on purpose: it is the upstream of ``make bench``, so the less it
costs per request, the more the benchmark measures the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Awaitable, Callable

from . import wire
from .behaviour import Behaviour

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"


class ClientDisconnected(Exception):
    pass


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = _dumps(payload)
    raw_headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", _new_id("req_").encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _abort_connection(send: Send) -> None:
    """Drop the connection mid-response, as a crashing upstream would.

    ASGI has no "abort"; under uvicorn, ``send`` is a method of the request
    cycle that owns the transport, so close that (flushing what was sent).
    Elsewhere, returning without finishing the body makes the server close.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await asyncio.sleep(0)  # let the server see the connection is gone before we return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class DemoProviderApp:
    def __init__(self, behaviour: Behaviour):
        self.behaviour = behaviour

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except wire.OpenAIError as error:
            await _send_json(send, error.status, error.body(), error.headers)
        except ClientDisconnected:
            pass

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"].rstrip("/")
        if path == "/healthz" and method == "GET":
            await _send_json(send, 200, {"status": "ok"})
            return
        handler = {
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
        }.get((method, path))
        if handler is None:
            raise wire.invalid_url(method, scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.behaviour.api_key
        if key is not None and headers.get("authorization") != f"Bearer {key}":
            raise wire.invalid_api_key()
        body: Any = None
        if method == "POST":
            raw = await _read_body(receive)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            # Recorded before any validation, so tests can count every attempt the gateway made.
            self.behaviour.record({"method": method, "path": path, "headers": headers, "body": body})
            if body is None:
                raise wire.unparsable_json()
        await handler(body, send)

    async def _models(self, _body: Any, send: Send) -> None:
        await _send_json(send, 200, wire.models_list(self.behaviour.models))

    def _check_model_and_failures(self, model: str) -> None:
        b = self.behaviour
        if b.should_fail():
            raise wire.injected_failure(b.fail_status, model, b.retry_after)
        if model not in b.models:
            raise wire.model_not_found(model)

    async def _embeddings(self, body: Any, send: Send) -> None:
        req = wire.parse_embedding_request(body)
        self._check_model_and_failures(req.model)
        if self.behaviour.delay_s:
            await asyncio.sleep(self.behaviour.delay_s)
        await _send_json(send, 200, wire.embeddings_response(req))

    async def _chat(self, body: Any, send: Send) -> None:
        req = wire.parse_chat_request(body)
        self._check_model_and_failures(req.model)
        b = self.behaviour
        reply = b.reply if b.reply is not None else wire.default_reply(req.messages)
        content, finish_reason = wire.apply_limits(reply, req.stop, req.max_tokens)
        usage = wire.usage(wire.prompt_tokens(req.messages), wire.count_tokens(content) * req.n)
        completion_id, created = _new_id("chatcmpl-"), int(time.time())
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if not req.stream:
            await _send_json(send, 200, wire.chat_completion(
                completion_id, created, req.model, req.n, content, finish_reason, usage))
            return
        await self._stream_chat(req, send, completion_id, created, content, finish_reason, usage)

    async def _stream_chat(self, req: wire.ChatRequest, send: Send, completion_id: str, created: int,
                           content: str, finish_reason: str, usage: dict[str, Any]) -> None:
        b = self.behaviour
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-request-id", _new_id("req_").encode())]})

        async def emit(choices: list[dict[str, Any]], usage_body: dict[str, Any] | None = None) -> None:
            chunk = wire.chat_chunk(completion_id, created, req.model, choices, req.include_usage, usage_body)
            await send({"type": "http.response.body", "body": b"data: " + _dumps(chunk) + b"\n\n",
                        "more_body": True})

        indexes = range(req.n)
        for i in indexes:
            await emit([wire.chunk_choice(i, {"role": "assistant", "content": "", "refusal": None})])
        sent = 0
        for piece in wire.split_chunks(content):
            for i in indexes:
                if b.die_after_chunks is not None and sent >= b.die_after_chunks:
                    await _abort_connection(send)
                    return
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                await emit([wire.chunk_choice(i, {"content": piece})])
                sent += 1
        if b.die_after_chunks is not None and sent >= b.die_after_chunks:
            await _abort_connection(send)  # "after N chunks" also means: never the finish chunk
            return
        for i in indexes:
            await emit([wire.chunk_choice(i, {}, finish_reason)])
        if req.include_usage:
            await emit([], usage)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def create_app(behaviour: Behaviour | None = None) -> DemoProviderApp:
    """The ASGI app; ``app.behaviour`` is the live ``Behaviour`` it obeys."""
    return DemoProviderApp(behaviour if behaviour is not None else Behaviour())
