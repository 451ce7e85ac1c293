"""The demo provider as a bare ASGI app.

No framework on purpose: it is the upstream of ``make bench``, so the less it
costs per request, the more the benchmark measures the gateway.

Faces, each exactly as the real provider frames it:

- OpenAI: ``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``
  (``Authorization: Bearer``); the chat path is the benchmark's and stays the cheapest;
- Anthropic: ``POST /v1/messages``, ``/v1/messages/count_tokens`` (``x-api-key``, ``anthropic-version``);
- Gemini: ``GET /v1beta/models[/{model}]``, ``POST /v1beta/models/{model}:generateContent``,
  ``:streamGenerateContent`` (``?alt=sse`` or a streamed JSON array), ``:countTokens``
  (``x-goog-api-key`` or ``?key=``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from . import anthropic_wire, gemini_wire, prompt_cache, replies, responses_wire, wire
from .asgi import (EVENT_STREAM, JSON, ClientDisconnected, Receive, Scope, Send, abort_connection, dumps,
                   lifespan, new_id, read_body, send_chunk, send_json, sse_event, start_stream)
from .behaviour import Behaviour

Handler = Callable[[Any, Send], Awaitable[None]]
_ERRORS = (wire.OpenAIError, anthropic_wire.AnthropicError, gemini_wire.GeminiError)
_GEMINI_PREFIX = "/v1beta/"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class DemoProviderApp:
    def __init__(self, behaviour: Behaviour):
        self.behaviour = behaviour
        self._openai_routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
        }
        self._anthropic_routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/messages/count_tokens"): self._count_message_tokens,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _ERRORS as error:
            await send_json(send, error.status, error.body(), error.headers)
        except ClientDisconnected:
            pass

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"].rstrip("/")
        handler = self._openai_routes.get((method, path))
        if handler is not None:  # the benchmark's path, inline
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            key = self.behaviour.api_key
            if key is not None and headers.get("authorization") != f"Bearer {key}":
                raise wire.invalid_api_key()
            body: Any = None
            if method == "POST":
                try:
                    body = json.loads(await read_body(receive))
                except ValueError:
                    body = None
                # Recorded before any validation, so tests can count every attempt the gateway made.
                self.behaviour.record({"method": method, "path": path, "headers": headers, "body": body})
                if body is None:
                    raise wire.unparsable_json()
            await handler(body, send)
            return
        handler = self._anthropic_routes.get((method, path))
        if handler is not None:
            await self._anthropic(handler, method, path, scope, receive, send)
        elif path.startswith(_GEMINI_PREFIX):
            await self._gemini(method, path, scope, receive, send)
        elif path == "/healthz" and method == "GET":
            await send_json(send, 200, {"status": "ok"})
        else:
            raise wire.invalid_url(method, scope["path"])

    # ------------------------------------------------------------ shared

    def _check(self, model: str, failure: Callable[..., Exception], not_found: Callable[[str], Exception]) -> None:
        b = self.behaviour
        if b.should_fail():
            raise failure(b.fail_status, model, b.retry_after)
        if model not in b.models:
            raise not_found(model)

    async def _stream(self, send: Send, frames: list[tuple[bytes, bool]], headers: dict[str, str] | None = None,
                      content_type: bytes = EVENT_STREAM) -> None:
        """Send a stream of frames; ``True`` marks the content frames that the chunk knobs apply to.

        ``die_after_chunks``: after that many content frames the connection drops, before the next
        content frame or anything that follows the content (finish, usage, closing events).
        """
        b = self.behaviour
        die = b.die_after_chunks
        last_content = max((i for i, (_, is_content) in enumerate(frames) if is_content), default=-1)
        await start_stream(send, headers, content_type)
        sent = 0
        for i, (data, is_content) in enumerate(frames):
            if die is not None and sent >= die and (is_content or i > last_content):
                await abort_connection(send)
                return
            if is_content:
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                sent += 1
            await send_chunk(send, data)
        if die is not None and sent >= die:
            await abort_connection(send)  # every frame was content (Gemini): still never a clean end
            return
        await send_chunk(send, b"", more=False)

    # ------------------------------------------------------------ OpenAI

    async def _models(self, _body: Any, send: Send) -> None:
        await send_json(send, 200, wire.models_list(self.behaviour.models))

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
        await send_json(send, 200, wire.embeddings_response(req))

    async def _chat(self, body: Any, send: Send) -> None:
        req = wire.parse_chat_request(body)
        self._check_model_and_failures(req.model)
        b = self.behaviour
        prompt = wire.prompt_tokens(req.messages)
        if b.context_window is not None and prompt > b.context_window:
            raise wire.context_length_exceeded(b.context_window, prompt)
        # tools offered, or a tool result to answer: the reply rule decides (off the benchmark's path)
        if req.tools is not None or req.messages[-1].get("role") == "tool":
            reply = replies.decide(wire.chat_turn(req), b.reply, b.tool_arguments)
            if reply.is_tool_call:
                await self._chat_tool_call(req, reply, send)
                return
            text = reply.text or ""
        else:
            text = b.reply if b.reply is not None else wire.default_reply(req.messages)
        content, finish_reason = wire.apply_limits(text, req.stop, req.max_tokens)
        if b.content_filter:
            content, finish_reason = "", "content_filter"
        usage = wire.usage(prompt, wire.count_tokens(content) * req.n,
                           self._chat_cached(req), b.reasoning_tokens)
        completion_id, created = new_id("chatcmpl-"), int(time.time())
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if not req.stream:
            await send_json(send, 200, wire.chat_completion(
                completion_id, created, req.model, req.n, content, finish_reason, usage))
            return
        await self._stream_chat(req, send, completion_id, created, content, finish_reason, usage)

    def _chat_cached(self, req: wire.ChatRequest) -> int:
        b = self.behaviour
        if not b.prompt_cache:
            return b.cached_tokens
        read, _ = b.cache.read(prompt_cache.chat_prefixes(req.model, req.messages, b.cache_min_tokens,
                                                          wire.prompt_tokens))
        return read

    async def _stream_chat(self, req: wire.ChatRequest, send: Send, completion_id: str, created: int,
                           content: str, finish_reason: str, usage: dict[str, Any]) -> None:
        b = self.behaviour
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", EVENT_STREAM), (b"cache-control", b"no-cache"),
            (b"x-request-id", new_id("req_").encode())]})

        async def emit(choices: list[dict[str, Any]], usage_body: dict[str, Any] | None = None) -> None:
            chunk = wire.chat_chunk(completion_id, created, req.model, choices, req.include_usage, usage_body)
            await send({"type": "http.response.body", "body": b"data: " + dumps(chunk) + b"\n\n",
                        "more_body": True})

        indexes = range(req.n)
        for i in indexes:
            await emit([wire.chunk_choice(i, {"role": "assistant", "content": "", "refusal": None})])
        sent = 0
        for piece in wire.split_chunks(content):
            for i in indexes:
                if b.die_after_chunks is not None and sent >= b.die_after_chunks:
                    await abort_connection(send)
                    return
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                await emit([wire.chunk_choice(i, {"content": piece})])
                sent += 1
        if b.die_after_chunks is not None and sent >= b.die_after_chunks:
            await abort_connection(send)  # "after N chunks" also means: never the finish chunk
            return
        for i in indexes:
            await emit([wire.chunk_choice(i, {}, finish_reason)])
        if req.include_usage:
            await emit([], usage)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _chat_tool_call(self, req: wire.ChatRequest, reply: replies.Reply, send: Send) -> None:
        b = self.behaviour
        usage = wire.usage(wire.prompt_tokens(req.messages), wire.tool_call_tokens(reply) * req.n,
                           self._chat_cached(req), b.reasoning_tokens)
        completion_id, created = new_id("chatcmpl-"), int(time.time())
        calls = [wire.tool_call(new_id("call_"), reply) for _ in range(req.n)]
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if not req.stream:
            await send_json(send, 200, wire.chat_completion(
                completion_id, created, req.model, req.n, None, "tool_calls", usage, tool_calls=calls))
            return

        def frame(choices: list[dict[str, Any]], usage_body: dict[str, Any] | None = None) -> bytes:
            chunk = wire.chat_chunk(completion_id, created, req.model, choices, req.include_usage, usage_body)
            return b"data: " + dumps(chunk) + b"\n\n"

        frames = [(frame([wire.chunk_choice(i, {
            "role": "assistant", "content": None, "refusal": None,
            "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                            "function": {"name": reply.tool_name, "arguments": ""}}]})]), False)
            for i, call in enumerate(calls)]
        for piece in replies.split_fragments(reply.arguments_json):
            frames += [(frame([wire.chunk_choice(i, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})]),
                        True) for i in range(req.n)]
        frames += [(frame([wire.chunk_choice(i, {}, "tool_calls")]), False) for i in range(req.n)]
        if req.include_usage:
            frames.append((frame([], usage), False))
        frames.append((b"data: [DONE]\n\n", False))
        await self._stream(send, frames)

    async def _responses(self, body: Any, send: Send) -> None:
        req = responses_wire.parse_responses_request(body)
        self._check_model_and_failures(req.model)
        b = self.behaviour
        reply = replies.decide(responses_wire.turn(req), b.reply, b.tool_arguments)
        ans = responses_wire.answer(reply, req.max_output_tokens)
        usage = responses_wire.usage(responses_wire.prompt_tokens(req), ans.output_tokens,
                                     b.cached_tokens, b.reasoning_tokens)
        response_id, created = new_id("resp_"), int(time.time())
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if not req.stream:
            status = "incomplete" if ans.incomplete else "completed"
            await send_json(send, 200, responses_wire.response_object(
                response_id, created, req, [ans.item], status, usage, None if ans.incomplete else created))
            return
        events = responses_wire.stream_events(response_id, created, req, ans, usage)
        await self._stream(send, [(sse_event(e.name, e.data), e.content) for e in events])

    # ------------------------------------------------------------ Anthropic

    async def _anthropic(self, handler: Handler, method: str, path: str, scope: Scope, receive: Receive,
                         send: Send) -> None:
        headers = _headers(scope)
        key = self.behaviour.api_key
        if key is not None:
            # x-api-key, as the API documents; recent anthropic SDKs send "Authorization: Bearer <key>"
            given = headers.get("x-api-key")
            if given is None:
                bearer = headers.get("authorization", "")
                given = bearer[7:] if bearer[:7].lower() == "bearer " else None
            if given is None:
                raise anthropic_wire.missing_api_key()
            if given != key:
                raise anthropic_wire.invalid_api_key()
        body = _json_or_none(await read_body(receive))
        self.behaviour.record({"method": method, "path": path, "headers": headers, "body": body})
        if "anthropic-version" not in headers:
            raise anthropic_wire.missing_version()
        if body is None:
            raise anthropic_wire.unparsable_json()
        await handler(body, send)

    async def _messages(self, body: Any, send: Send) -> None:
        req = anthropic_wire.parse_messages_request(body)
        self._check(req.model, anthropic_wire.injected_failure, anthropic_wire.model_not_found)
        b = self.behaviour
        if b.context_window is not None and anthropic_wire.prompt_tokens(req) > b.context_window:
            raise anthropic_wire.prompt_too_long(b.context_window, anthropic_wire.prompt_tokens(req))
        reply = replies.decide(anthropic_wire.turn(req), b.reply, b.tool_arguments)
        ans = anthropic_wire.answer(req, reply, b.reasoning_tokens)
        if b.content_filter:
            ans = anthropic_wire.Answer([], "refusal", None, 0)
        cache_read, cache_write = b.cache_read_tokens, b.cache_write_tokens
        if b.prompt_cache:
            cache_read, cache_write = b.cache.read(prompt_cache.anthropic_prefixes(
                req.model, body.get("tools"), req.system, req.messages))
        usage = anthropic_wire.usage(anthropic_wire.prompt_tokens(req), ans.output_tokens, cache_read, cache_write)
        message_id = new_id("msg_")
        headers = {"request-id": new_id("req_")}
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if not req.stream:
            await send_json(send, 200, anthropic_wire.message(message_id, req.model, ans, usage), headers)
            return
        events = anthropic_wire.stream_events(message_id, req.model, ans, usage)
        await self._stream(send, [(sse_event(e.name, e.data), e.content) for e in events], headers)

    async def _count_message_tokens(self, body: Any, send: Send) -> None:
        req = anthropic_wire.parse_messages_request(body, count_only=True)
        self._check(req.model, anthropic_wire.injected_failure, anthropic_wire.model_not_found)
        await send_json(send, 200, {"input_tokens": anthropic_wire.prompt_tokens(req)},
                        {"request-id": new_id("req_")})

    # ------------------------------------------------------------ Gemini

    async def _gemini(self, method: str, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = parse_qs(query_string)
        key = self.behaviour.api_key
        if key is not None:
            given = headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
            if given is None:
                raise gemini_wire.missing_api_key()
            if given != key:
                raise gemini_wire.invalid_api_key()
        rest = path[len(_GEMINI_PREFIX):]
        models = self.behaviour.models
        if method == "GET":
            if rest == "models":
                await send_json(send, 200, gemini_wire.models_list(models))
                return
            model = rest.removeprefix("models/")
            if rest.startswith("models/") and model in models:
                await send_json(send, 200, gemini_wire.model_info(model))
                return
            raise gemini_wire.model_not_found(model, "GET") if rest.startswith("models/") else \
                wire.invalid_url(method, scope["path"])
        model, _, action = rest.removeprefix("models/").rpartition(":")
        if method != "POST" or not rest.startswith("models/") or not model:
            raise wire.invalid_url(method, scope["path"])
        if action not in ("generateContent", "streamGenerateContent", "countTokens"):
            raise gemini_wire.unknown_method(action)
        body = _json_or_none(await read_body(receive))
        self.behaviour.record({"method": method, "path": path, "headers": headers, "body": body,
                               "query": query_string})
        if body is None:
            raise gemini_wire.unparsable_json()
        b = self.behaviour
        if action == "countTokens":
            req = gemini_wire.count_request(model, body)
            self._check(model, gemini_wire.injected_failure, lambda m: gemini_wire.model_not_found(m, action))
            await send_json(send, 200, gemini_wire.count_tokens_response(gemini_wire.prompt_tokens(req)))
            return
        req = gemini_wire.parse_generate_request(model, body)
        self._check(model, gemini_wire.injected_failure, lambda m: gemini_wire.model_not_found(m, action))
        reply = replies.decide(gemini_wire.turn(req), b.reply, b.tool_arguments)
        ans = gemini_wire.answer(req, reply, b.reasoning_tokens)
        prompt = gemini_wire.prompt_tokens(req)
        response_id = new_id("")
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if action == "generateContent":
            usage = gemini_wire.usage_metadata(prompt, ans.candidates_tokens, ans.thoughts_tokens, b.cached_tokens)
            await send_json(send, 200, gemini_wire.response(response_id, model, ans.parts, ans.finish_reason, usage))
            return
        chunks = gemini_wire.stream_chunks(response_id, model, ans, prompt, b.cached_tokens)
        if query.get("alt") == ["sse"]:
            await self._stream(send, [(b"data: " + dumps(c) + b"\r\n\r\n", True) for c in chunks])
            return
        # without alt=sse: one JSON array, streamed element by element
        frames = [((b"[" if i == 0 else b",\r\n") + dumps(c), True) for i, c in enumerate(chunks)]
        frames.append((b"]", False))
        await self._stream(send, frames, content_type=JSON)


def create_app(behaviour: Behaviour | None = None) -> DemoProviderApp:
    """The ASGI app; ``app.behaviour`` is the live ``Behaviour`` it obeys."""
    return DemoProviderApp(behaviour if behaviour is not None else Behaviour())
