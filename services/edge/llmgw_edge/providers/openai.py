"""OpenAI-compatible upstreams: OpenAI, Groq, Mistral, OpenRouter, Gemini's OpenAI endpoint,
vLLM, llama.cpp, Ollama, LM Studio...

Pass-through for clients that speak OpenAI (chat, embeddings; Responses where
the upstream serves it): the client's body with the model rewritten, the
answer relayed as it came, only the usage read. Translated requests (an
Anthropic or Responses client) are built from and parsed into core types.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, AsyncIterator, Mapping

import msgspec

from llmgw_common.failures import FailureKind

from ..core.errors import UpstreamError
from ..core.types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Finish, Image, Message,
                          Start, StreamEvent, Text, TextDelta, Thinking, ThinkingDelta, ToolCall, ToolCallDelta,
                          ToolCallStart, ToolResult, Usage, UsageUpdate)
from .base import HttpProvider, RawCall, RawReply, dumps, loads_object, relayed_bytes, token_count
from .http import HttpReply, sse_events

_FINISH_IN = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
              "content_filter": "content_filter"}


class OpenAIProvider(HttpProvider):
    type = "openai"
    genai_system = "openai"
    default_base_url = "https://api.openai.com/v1"

    @property
    def passthrough(self) -> frozenset[str]:  # type: ignore[override]
        formats = {"openai_chat", "embeddings", "raw"}
        if self.serves_responses:
            formats.add("openai_responses")
        return frozenset(formats)

    @property
    def serves_responses(self) -> bool:
        if self.config.responses_api is not None:
            return self.config.responses_api
        return (self.config.base_url or "").startswith("https://api.openai.com/")

    # ---- translated ---------------------------------------------------------

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse:
        return parse_chat_response(await self.post_json("/chat/completions", chat_body(req, model, stream=False)),
                                   model)

    def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        return self.post_events("/chat/completions", chat_body(req, model, stream=True),
                                lambda reply: stream_events(reply, model))

    async def embed(self, req: EmbeddingRequest, model: str) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": model, "input": req.inputs}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        if req.encoding_format:
            body["encoding_format"] = req.encoding_format
        obj = loads_object(await (await self.send("/embeddings", dumps(body), stream=False)).read())
        data = sorted(obj.get("data") or [], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        return EmbeddingResponse(model=model, vectors=[d.get("embedding") for d in data if isinstance(d, dict)],
                                 usage=usage_from(obj.get("usage")) or Usage())

    # ---- pass-through -------------------------------------------------------

    async def relay_body(self, call: RawCall, body: dict[str, Any]) -> RawReply:
        path = {"openai_chat": "/chat/completions", "embeddings": "/embeddings",
                "openai_responses": "/responses"}[call.format]
        if call.stream and call.format == "openai_chat":
            # always ask for usage so streams are counted; stripped again if the client did not ask
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        reply = await self.send(path, relayed_bytes(call, body), stream=call.stream)
        if not call.stream:
            content = await reply.read()
            return RawReply(status=reply.status, headers={}, media_type="application/json", body=content,
                            usage=usage_of_body(content))
        out = RawReply(status=reply.status, headers={}, media_type="text/event-stream")
        relay = relay_chat_stream if call.format == "openai_chat" else relay_responses_stream
        out.chunks = relay(reply, out, call.include_usage)
        return out

    def raw_usage(self, payload: bytes) -> Usage:
        return usage_of_body(payload)

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        err = super().classify(status, body, headers)
        text = body[:2000].decode("utf-8", "replace")
        if status in (402, 403) and ("insufficient_quota" in text or "quota" in text.lower()):
            err.kind = FailureKind.RATE_LIMITED  # out of credit: another provider, and cool down
        elif status == 400 and '"context_length_exceeded"' in text:
            err.kind = FailureKind.CONTEXT_LENGTH
        elif status == 400 and ('"content_filter"' in text or '"content_policy_violation"' in text):
            err.kind = FailureKind.CONTENT_FILTER  # Azure OpenAI's content management policy, OpenAI's moderation
        return err


# ---- core -> OpenAI chat ------------------------------------------------------

def _content(parts: list) -> str | list[dict[str, Any]]:
    if all(isinstance(p, Text) for p in parts):
        return "".join(p.text for p in parts)
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Text):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, Image):
            image: dict[str, Any] = {"url": p.data_url()}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
    return out


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        results = [p for p in m.parts if isinstance(p, ToolResult)]
        others = [p for p in m.parts if not isinstance(p, (ToolResult, Thinking))]
        for r in results:  # each tool result is a message of its own in OpenAI's format
            out.append({"role": "tool", "tool_call_id": r.tool_call_id,
                        "content": _content([p for p in r.content if isinstance(p, (Text, Image))]) or ""})
        if m.role == "tool":
            continue
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(
                p.text for p in others if isinstance(p, Text)) or None}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                                     for c in m.tool_calls]
            out.append(msg)
        elif others or not results:
            out.append({"role": m.role, "content": _content(others)})
    return out


def chat_body(req: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": chat_messages(req.messages)}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    # cache_control breakpoints are not sent: OpenAI caches every long prefix on its own, and its API knows
    # no such field; the messages keep their order, so the prefix a client meant to cache still comes first
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "user",
                 "reasoning_effort", "response_format", "prompt_cache_key"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.n != 1:
        body["n"] = req.n
    if req.stop:
        body["stop"] = req.stop
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            "parameters": t.parameters}} for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        if choice.mode == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif req.tools or choice.mode == "none":
            body["tool_choice"] = choice.mode
        if choice.parallel is not None and req.tools:
            body["parallel_tool_calls"] = choice.parallel
    return body


# ---- OpenAI chat -> core ------------------------------------------------------

def usage_from(obj: Any) -> Usage | None:
    """OpenAI's usage object (chat: prompt/completion tokens; Responses and embeddings: input/output)."""
    if not isinstance(obj, dict):
        return None

    prompt_details = obj.get("prompt_tokens_details") or obj.get("input_tokens_details") or {}
    out_details = obj.get("completion_tokens_details") or obj.get("output_tokens_details") or {}
    usage = Usage(
        input_tokens=token_count(obj.get("prompt_tokens", obj.get("input_tokens"))),
        output_tokens=token_count(obj.get("completion_tokens", obj.get("output_tokens"))),
        cache_read_tokens=token_count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        reasoning_tokens=token_count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0)
    # some OpenAI-compatible servers (DeepSeek, vLLM with prefix caching) name cache figures differently
    if not usage.cache_read_tokens:
        usage.cache_read_tokens = token_count(obj.get("prompt_cache_hit_tokens"))
    cost = obj.get("cost")  # OpenRouter reports what it charged
    if isinstance(cost, (int, float, str)) and not isinstance(cost, bool):
        try:
            reported = Decimal(str(cost))
            if reported.is_finite() and reported >= 0:
                usage.reported_cost = reported
        except ArithmeticError:
            pass
    return usage


class _UsageParts(msgspec.Struct):
    """What ``usage_of_body`` reads of an answer: msgspec skips everything else without building it."""

    usage: Any = None  # chat, embeddings, Responses
    response: Any = None  # a Responses event: {"response": {"usage": ...}}


_USAGE_PARTS = msgspec.json.Decoder(_UsageParts)


def usage_of_body(content: bytes) -> Usage:
    # cheap test first: the usage object is near the end of the body
    if b'"usage"' not in content:
        return Usage()
    try:
        parts = _USAGE_PARTS.decode(content)
    except msgspec.DecodeError:  # no JSON object, or one only Python's json reads (NaN, 1e400): as before
        return _usage_of_json(content)
    inner = parts.response.get("usage") if isinstance(parts.response, dict) else None
    return usage_from(parts.usage) or usage_from(inner) or Usage()


def _usage_of_json(content: bytes) -> Usage:
    try:
        obj = json.loads(content)
    except ValueError:
        return Usage()
    if isinstance(obj, dict):
        response = obj.get("response")
        return usage_from(obj.get("usage")) or usage_from(response.get("usage") if isinstance(response, dict)
                                                          else None) or Usage()
    return Usage()


def parse_chat_response(obj: dict[str, Any], model: str) -> ChatResponse:
    choices = obj.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    parts: list = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(Thinking(text=reasoning))
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(Text(content))
    elif isinstance(content, list):
        parts += [Text(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    calls = [ToolCall(id=str(c.get("id") or f"call_{i}"), name=str((c.get("function") or {}).get("name") or ""),
                      arguments=str((c.get("function") or {}).get("arguments") or "{}"))
             for i, c in enumerate(message.get("tool_calls") or []) if isinstance(c, dict)]
    finish = _FINISH_IN.get(choice.get("finish_reason") or "stop", "stop")
    if calls and finish == "stop":
        finish = "tool_calls"
    return ChatResponse(id=str(obj.get("id") or ""), model=str(obj.get("model") or model), parts=parts,
                        tool_calls=calls, finish_reason=finish, usage=usage_from(obj.get("usage")) or Usage(),
                        created=int(obj.get("created") or 0))


async def stream_events(reply: HttpReply, model: str) -> AsyncIterator[StreamEvent]:
    """OpenAI chat chunks as core stream events (choice 0 only)."""
    started = False
    finish: Finish | None = None
    tool_index: dict[int, int] = {}  # upstream tool call index -> ours
    async for _event, data in sse_events(reply.lines()):
        if data == "[DONE]":
            if finish is None:
                finish = Finish("stop")
            yield finish
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(502, "upstream sent a stream chunk that is not JSON", kind=FailureKind.PROTOCOL) from None
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("error"), dict):
            raise UpstreamError(502, f"upstream stream error: {chunk['error'].get('message', '')}"[:500],
                                kind=FailureKind.SERVER)
        if not started:
            started = True
            yield Start(id=str(chunk.get("id") or ""), model=str(chunk.get("model") or model),
                        created=int(chunk.get("created") or 0))
        usage = usage_from(chunk.get("usage"))
        if usage is not None:
            yield UsageUpdate(usage)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                yield ThinkingDelta(text=reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                yield TextDelta(delta["content"])
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                upstream_index = call.get("index", 0)
                fn = call.get("function") or {}
                if upstream_index not in tool_index:
                    tool_index[upstream_index] = len(tool_index)
                    yield ToolCallStart(tool_index[upstream_index], str(call.get("id") or f"call_{upstream_index}"),
                                        str(fn.get("name") or ""))
                if fn.get("arguments"):
                    yield ToolCallDelta(tool_index[upstream_index], str(fn["arguments"]))
            if choice.get("finish_reason"):
                reason = _FINISH_IN.get(choice["finish_reason"], "stop")
                finish = Finish("tool_calls" if tool_index and reason == "stop" else reason)
    if finish is None:
        raise UpstreamError(502, "upstream closed the stream before it finished", kind=FailureKind.PROTOCOL)
    yield finish  # some servers end without [DONE]: the finish reason is enough


# ---- pass-through relays ------------------------------------------------------

def _strip_null_usage(payload: str) -> str:
    """Drop the ``"usage":null`` that include_usage adds to every chunk (OpenAI omits the key otherwise)."""
    return payload.replace(',"usage":null', "").replace(', "usage": null', "")


async def relay_chat_stream(reply: HttpReply, out: RawReply, client_wants_usage: bool) -> AsyncIterator[bytes]:
    """Chat chunks as they came; the usage chunk we asked for on the client's behalf is hidden again."""
    try:
        async for line in reply.lines():
            if not line.startswith("data:"):
                continue  # comments, event names and blank lines: we frame each chunk ourselves
            payload = line[5:].strip()
            if payload == "[DONE]":
                out.finished = True
                yield b"data: [DONE]\n\n"
                return
            out.pieces += 1
            # cheap test first: most chunks carry no usage (or "usage":null)
            if '"usage"' in payload and '"usage":null' not in payload and '"usage": null' not in payload:
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    chunk = None
                if isinstance(chunk, dict):
                    usage = usage_from(chunk.get("usage"))
                    if usage is not None:
                        out.usage.merge(usage)
                        if not client_wants_usage and not chunk.get("choices"):
                            continue  # the usage-only chunk the client did not ask for
            if client_wants_usage:
                yield b"data: " + payload.encode() + b"\n\n"
            else:
                yield b"data: " + _strip_null_usage(payload).encode() + b"\n\n"
    finally:
        reply.close()


async def relay_responses_stream(reply: HttpReply, out: RawReply, _wants_usage: bool) -> AsyncIterator[bytes]:
    """Responses API events as they came; usage from ``response.completed``."""
    try:
        async for event, data in sse_events(reply.lines()):
            out.pieces += 1
            if event in ("response.completed", "response.incomplete", "response.failed") or \
                    '"response.completed"' in data[:200]:
                out.usage.merge(usage_of_body(data.encode()))
                out.finished = True
            head = f"event: {event}\n".encode() if event else b""
            yield head + b"data: " + data.encode() + b"\n\n"
    finally:
        reply.close()
