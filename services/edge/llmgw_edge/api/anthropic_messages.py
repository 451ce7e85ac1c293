"""Anthropic Messages in and out: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Follows Anthropic's contract for gateways in front of Claude Code: the key may
come as ``x-api-key`` or a bearer token; ``anthropic-version`` and
``anthropic-beta`` go unchanged to Anthropic upstreams (which get the body as
it is and whose stream comes back event for event); any other provider is
translated, and its answer rendered as Anthropic frames it (``message_start``,
``content_block_*`` with text / ``input_json_delta`` / thinking deltas,
``message_delta`` with usage, ``message_stop``). Errors are Anthropic's
``{"type": "error", "error": {...}}``, in streams an ``error`` event.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping

from llmgw_common.failures import FailureKind
from llmgw_common.messages import COUNT_TOKENS_ENDPOINT

from ..core.errors import GatewayError, UpstreamError, bad_request
from ..core.gateway import Exchange
from ..core.tokens import PromptTokens, estimate_chat_tokens
from ..core.types import (ChatRequest, ChatResponse, EmbeddingResponse, Finish, Image, Message, Start, StreamEvent,
                          Text, TextDelta, Thinking, ThinkingDelta, ToolCall, ToolCallDelta, ToolCallStart, ToolChoice,
                          ToolResult, ToolSpec, Usage, UsageUpdate)
from ..core.provider import RawCall
from .body import json_object

_STOP_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "stop_sequence": "stop_sequence",
             "content_filter": "refusal", "error": "end_turn"}


# Anthropic's error `type` by status (its documented set)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
                529: "overloaded_error"}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(err: GatewayError) -> bytes:
    return json.dumps({"type": "error", "error": {"type": error_type(err.status), "message": err.message}}).encode()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: ".encode() + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


class AnthropicCodec:
    format = "anthropic_messages"
    error_format = "anthropic"
    endpoint = "messages"
    render_error = staticmethod(error_body)

    def __init__(self, max_depth: int = 100) -> None:
        self.max_depth = max_depth
        self.prompt_tokens = PromptTokens(lambda exact: 0)

    @property
    def estimated_input(self) -> int:
        """The exact estimate: what a client reads back (count_tokens, a translated stream's start)."""
        return self.prompt_tokens(True)

    # ---- parse --------------------------------------------------------------

    def parse(self, raw: bytes, headers: Mapping[str, str], count_only: bool = False) -> Exchange:
        body = json_object(raw, self.max_depth)
        req = chat_request(body, count_only)
        self.prompt_tokens = PromptTokens(lambda exact: estimate_chat_tokens(req, exact))
        return Exchange(
            model=req.model, stream=req.stream, max_tokens=req.max_tokens, headers=headers,
            raw=RawCall("anthropic_count_tokens" if count_only else "anthropic_messages", body, raw,
                        stream=req.stream, headers=headers),
            build_chat=lambda: _translatable(body, req), count_prompt=self.prompt_tokens,
            prompt_text=req.last_user_text())

    # ---- render -------------------------------------------------------------

    def render_response(self, resp: ChatResponse) -> bytes:
        content: list[dict[str, Any]] = []
        for p in resp.parts:
            if isinstance(p, Thinking):
                content.append({"type": "redacted_thinking", "data": p.redacted} if p.redacted else
                               {"type": "thinking", "thinking": p.text, "signature": p.signature or ""})
            elif isinstance(p, Text) and p.text:
                content.append({"type": "text", "text": p.text})
        for c in resp.tool_calls:
            content.append({"type": "tool_use", "id": _tool_id(c.id), "name": c.name, "input": _input(c.arguments)})
        return json.dumps({"id": _message_id(resp.id), "type": "message", "role": "assistant", "model": resp.model,
                           "content": content, "stop_reason": _STOP_OUT.get(resp.finish_reason, "end_turn"),
                           "stop_sequence": resp.stop_sequence, "usage": usage_body(resp.usage)},
                          ensure_ascii=False).encode()

    async def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
        usage = Usage()
        block = -1  # index of the open content block
        open_kind: str | None = None  # text | thinking | tool_use
        tools: dict[int, int] = {}  # tool call index -> block index
        stop: Finish | None = None

        def close() -> bytes:
            nonlocal open_kind
            open_kind = None
            return _sse("content_block_stop", {"type": "content_block_stop", "index": block})

        def start(kind: str, content_block: dict[str, Any]) -> bytes:
            nonlocal block, open_kind
            block += 1
            open_kind = kind
            return _sse("content_block_start", {"type": "content_block_start", "index": block,
                                                "content_block": content_block})

        async for event in events:
            if isinstance(event, Start):
                usage_start = usage_body(Usage(input_tokens=usage.input_tokens or self.estimated_input,
                                               output_tokens=1))
                yield _sse("message_start", {"type": "message_start", "message": {
                    "id": _message_id(event.id), "type": "message", "role": "assistant", "model": event.model,
                    "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage_start}})
                yield _sse("ping", {"type": "ping"})
            elif isinstance(event, TextDelta):
                if open_kind != "text":
                    if open_kind:
                        yield close()
                    yield start("text", {"type": "text", "text": ""})
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                   "delta": {"type": "text_delta", "text": event.text}})
            elif isinstance(event, ThinkingDelta):
                if event.redacted is not None:
                    if open_kind:
                        yield close()
                    yield start("redacted", {"type": "redacted_thinking", "data": event.redacted})
                    yield close()
                    continue
                if open_kind != "thinking":
                    if open_kind:
                        yield close()
                    yield start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                if event.text:
                    yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                       "delta": {"type": "thinking_delta", "thinking": event.text}})
                if event.signature:
                    yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                       "delta": {"type": "signature_delta",
                                                                 "signature": event.signature}})
            elif isinstance(event, ToolCallStart):
                if open_kind:
                    yield close()
                yield start("tool_use", {"type": "tool_use", "id": _tool_id(event.id), "name": event.name,
                                         "input": {}})
                tools[event.index] = block
            elif isinstance(event, ToolCallDelta):
                index = tools.get(event.index)
                if index is not None:
                    yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "input_json_delta",
                                                                 "partial_json": event.arguments}})
            elif isinstance(event, Finish):
                stop = event
            elif isinstance(event, UsageUpdate):
                usage.merge(event.usage)
        if open_kind:
            yield close()
        reason = stop.reason if stop else "stop"
        yield _sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": _STOP_OUT.get(reason, "end_turn"),
                                               "stop_sequence": stop.stop_sequence if stop else None},
                                     "usage": usage_body(usage)})
        yield _sse("message_stop", {"type": "message_stop"})

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes:  # pragma: no cover - not an Anthropic route
        raise NotImplementedError

    def stream_error(self, err: GatewayError) -> bytes:
        status = err.status if err.status != 502 or not isinstance(err, UpstreamError) else 500
        return _sse("error", {"type": "error", "error": {"type": error_type(status), "message": err.message}})


def _message_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else "msg_" + (upstream_id or "llmgw").replace("-", "")


def _tool_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id


def _input(arguments: str) -> Any:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` is the prompt without cache reads and writes."""
    uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
    return {"input_tokens": uncached, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens}


# ---- Anthropic -> core ---------------------------------------------------------------

def _require_int(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad_request(f"{name}: Field required to be an integer >= {minimum}", param=name)
    return value


def _content_parts(content: Any, where: str) -> tuple[list, list[ToolCall]]:
    if isinstance(content, str):
        return [Text(content)], []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: Input should be a string or a list of content blocks", param=where)
    parts: list = []
    calls: list[ToolCall] = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise bad_request(f"{where}.content.{i}: Input should be an object", param=where)
        kind = block.get("type")
        cache = _cache_control(block)
        if kind == "text":
            parts.append(Text(str(block.get("text") or ""), cache))
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                parts.append(Image(data=str(source.get("data") or ""), media_type=source.get("media_type"),
                                   cache_control=cache))
            elif source.get("type") == "url":
                parts.append(Image(url=str(source.get("url") or ""), cache_control=cache))
            else:
                raise bad_request(f"{where}.content.{i}.source: unsupported image source", param=where)
        elif kind == "tool_use":
            calls.append(ToolCall(id=str(block.get("id") or ""), name=str(block.get("name") or ""),
                                  arguments=json.dumps(block.get("input") or {}, ensure_ascii=False),
                                  cache_control=cache))
        elif kind == "tool_result":
            inner, _ = _content_parts(block.get("content") if block.get("content") is not None else "",
                                      f"{where}.content.{i}")
            parts.append(ToolResult(str(block.get("tool_use_id") or ""), inner, bool(block.get("is_error")),
                                    cache_control=cache))
        elif kind == "thinking":
            parts.append(Thinking(text=str(block.get("thinking") or ""), signature=block.get("signature")))
        elif kind == "redacted_thinking":
            parts.append(Thinking(redacted=str(block.get("data") or "")))
        elif kind == "document":
            source = block.get("source") or {}
            if source.get("type") == "text":
                parts.append(Text(str(source.get("data") or ""), cache))
        elif kind is None:
            raise bad_request(f"{where}.content.{i}.type: Field required", param=where)
        # other block kinds (server tool results, search results...) only mean something to Anthropic
    return parts, calls


def _cache_control(block: dict[str, Any]) -> dict[str, Any] | None:
    """A block's prompt-cache breakpoint, kept as the client wrote it (types.CacheControl)."""
    value = block.get("cache_control")
    return value if isinstance(value, dict) else None


def chat_request(body: dict[str, Any], count_only: bool = False) -> ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model: Field required", param="model")
    max_tokens = None if count_only else _require_int(body, "max_tokens", 1)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or (not raw_messages and not count_only):
        raise bad_request("messages: Field required to be a non-empty list", param="messages")
    messages: list[Message] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append(Message("system", [Text(system)]))
    elif isinstance(system, list):
        parts, _ = _content_parts(system, "system")
        messages.append(Message("system", [p for p in parts if isinstance(p, Text)]))
    elif system is not None and not isinstance(system, str):
        raise bad_request("system: Input should be a string or a list of text blocks", param="system")
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request(f"messages.{i}.role: Input should be 'user' or 'assistant'", param=f"messages.{i}")
        parts, calls = _content_parts(m.get("content"), f"messages.{i}")
        if m["role"] == "assistant":
            messages.append(Message("assistant", parts, calls))
        else:
            results = [p for p in parts if isinstance(p, ToolResult)]
            others = [p for p in parts if not isinstance(p, ToolResult)]
            if results:
                messages.append(Message("tool", results))
            if others or not results:
                messages.append(Message("user", others))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream: Input should be a valid boolean", param="stream")
    tools = []
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise bad_request("tools: Input should be a valid list", param="tools")
    for i, t in enumerate(body.get("tools") or []):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad_request(f"tools.{i}.name: Field required", param=f"tools.{i}")
        tools.append(ToolSpec(t["name"], t.get("description"), t.get("input_schema") or
                              {"type": "object", "properties": {}}, _cache_control(t)))
    thinking = body.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) and thinking.get("type") == "enabled" else None
    stops = body.get("stop_sequences")
    metadata = body.get("metadata")
    return ChatRequest(
        model=model, messages=messages, stream=stream and not count_only, max_tokens=max_tokens,
        temperature=_number(body.get("temperature")), top_p=_number(body.get("top_p")),
        top_k=body.get("top_k") if isinstance(body.get("top_k"), int) else None,
        stop=[s for s in stops if isinstance(s, str)] if isinstance(stops, list) else [],
        tools=tools, tool_choice=_tool_choice(body.get("tool_choice")),
        thinking_budget=budget if isinstance(budget, int) else None,
        user=metadata.get("user_id") if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str)
        else None)


def _translatable(body: dict[str, Any], req: ChatRequest) -> ChatRequest:
    """The core request for a provider that is not Anthropic: Anthropic's own server tools cannot go there."""
    for t in body.get("tools") or []:
        if isinstance(t, dict) and t.get("type") not in (None, "custom"):
            raise UpstreamError(400, f"tool type {t.get('type')!r} is served by Anthropic only",
                                kind=FailureKind.UNSUPPORTED)
    return req


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _tool_choice(choice: Any) -> ToolChoice | None:
    if not isinstance(choice, dict):
        return None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "any":
        return ToolChoice("required", parallel=parallel)
    if kind == "tool" and isinstance(choice.get("name"), str):
        return ToolChoice("tool", name=choice["name"], parallel=parallel)
    if kind == "none":
        return ToolChoice("none")
    return ToolChoice("auto", parallel=parallel)


# ---- count_tokens --------------------------------------------------------------------

class CountTokensCodec(AnthropicCodec):
    """``POST /v1/messages/count_tokens``: planned like every call (the router resolves the model, applies its
    rules and the key's providers, skips cooling and broken ones) but never admitted: it reserves nothing and
    counts in no window (a client such as Claude Code asks it often; it must not eat a free tier). Asked of
    the first provider that counts tokens itself (an Anthropic provider: exact, and free there), else
    answered with our own estimate. In the request log without tokens: nothing is generated. Never a
    ``proxy-cli`` command, never classified."""

    endpoint = COUNT_TOKENS_ENDPOINT

    def parse(self, raw: bytes, headers: Mapping[str, str], count_only: bool = True) -> Exchange:
        exchange = super().parse(raw, headers, count_only=True)
        exchange.prompt_text = ""
        exchange.answer_here = lambda: json.dumps({"input_tokens": self.estimated_input}).encode()
        exchange.uses_capacity = False
        return exchange
