"""Anthropic's native Messages API.

Pass-through for Anthropic clients (the SDK, Claude Code): the client's body
with the model rewritten, ``anthropic-version`` and ``anthropic-beta``
forwarded unchanged, the stream relayed event for event as it came; only the
usage is read (``message_start`` and ``message_delta``). Other clients are
translated through core types. Prompt-caching figures are kept apart (cache
reads and cache writes are priced at their own rates); 529 is "overloaded";
``anthropic-ratelimit-*`` resets set the cooldown.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping

from llmgw_common.failures import FailureKind

from ..core.errors import UpstreamError, unsupported
from ..core.types import (ChatRequest, ChatResponse, Finish, Image, Start, StreamEvent, Text, TextDelta,
                          Thinking, ThinkingDelta, ToolCall, ToolCallDelta, ToolCallStart, ToolResult, Usage,
                          UsageUpdate)
from .base import HttpProvider, RawCall, RawReply, relayed_bytes, token_count
from .http import HttpReply, sse_events

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out
_EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_STOP_IN = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop_sequence", "tool_use": "tool_calls",
            "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}
_ERROR_KINDS = {"overloaded_error": FailureKind.OVERLOADED, "rate_limit_error": FailureKind.RATE_LIMITED,
                "api_error": FailureKind.SERVER, "authentication_error": FailureKind.AUTH,
                "permission_error": FailureKind.AUTH, "not_found_error": FailureKind.NOT_FOUND,
                "billing_error": FailureKind.RATE_LIMITED, "timeout_error": FailureKind.TIMEOUT}
# client headers an Anthropic upstream must see as the client sent them (Claude Code relies on the betas)
FORWARDED = ("anthropic-version", "anthropic-beta")


class AnthropicProvider(HttpProvider):
    type = "anthropic"
    genai_system = "anthropic"
    error_format = "anthropic"
    default_base_url = "https://api.anthropic.com"
    passthrough = frozenset({"anthropic_messages", "anthropic_count_tokens", "raw"})

    @property
    def base_url(self) -> str:
        # accept both https://api.anthropic.com and .../v1 in the config
        url = super().base_url
        return url[:-3] if url.endswith("/v1") else url

    def auth_headers(self) -> dict[str, str]:
        h = {"anthropic-version": API_VERSION}
        if self.ctx.secret:
            h["x-api-key"] = self.ctx.secret
        return h

    # ---- translated ---------------------------------------------------------

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse:
        return parse_message(await self.post_json("/v1/messages", messages_body(req, model, stream=False)), model)

    def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        return self.post_events("/v1/messages", messages_body(req, model, stream=True),
                                lambda reply: stream_events(reply, model))

    # ---- pass-through -------------------------------------------------------

    async def relay_body(self, call: RawCall, body: dict[str, Any]) -> RawReply:
        forwarded = {name: call.headers[name] for name in FORWARDED if name in call.headers}
        path = "/v1/messages/count_tokens" if call.format == "anthropic_count_tokens" else "/v1/messages"
        reply = await self.send(path, relayed_bytes(call, body), stream=call.stream, extra_headers=forwarded)
        headers = {k.lower(): v for k, v in reply.headers.items()
                   if k.lower() == "request-id" or k.lower().startswith("anthropic-ratelimit-")}
        if not call.stream:
            content = await reply.read()
            usage = Usage()
            if call.format == "anthropic_messages":
                try:
                    usage = usage_from(json.loads(content).get("usage")) or Usage()
                except (ValueError, AttributeError):
                    pass
            return RawReply(status=reply.status, headers=headers, media_type="application/json", body=content,
                            usage=usage)
        out = RawReply(status=reply.status, headers=headers, media_type="text/event-stream")
        out.chunks = relay_stream(reply, out)
        return out

    def raw_usage(self, payload: bytes) -> Usage:
        try:
            obj = json.loads(payload)
        except ValueError:
            return Usage()
        if not isinstance(obj, dict):
            return Usage()
        return usage_from(obj.get("usage") or (obj.get("message") or {}).get("usage")) or Usage()

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        err = super().classify(status, body, headers)
        try:
            kind = (json.loads(body).get("error") or {}).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind in _ERROR_KINDS and status >= 401:
            err.kind = _ERROR_KINDS[kind]
        text = body[:2000].decode("utf-8", "replace").lower()
        if "credit balance" in text:  # out of credit shows as a 400: another provider, and cool down
            err.kind = FailureKind.RATE_LIMITED
        elif status == 400 and ("prompt is too long" in text or "exceed context limit" in text):
            err.kind = FailureKind.CONTEXT_LENGTH  # "prompt is too long: 208310 tokens > 200000 maximum"
        return err


# ---- core -> Anthropic -----------------------------------------------------------

def _image(p: Image) -> dict[str, Any]:
    if p.data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": p.media_type or "image/png",
                                            "data": p.data}}
    return {"type": "image", "source": {"type": "url", "url": p.url}}


def _cached(block: dict[str, Any], part: Any) -> dict[str, Any]:
    """The block with the client's prompt-cache breakpoint, where the client put it (types.CacheControl)."""
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _blocks(parts: list) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Text):
            if p.text:
                out.append(_cached({"type": "text", "text": p.text}, p))
        elif isinstance(p, Image):
            out.append(_cached(_image(p), p))
        elif isinstance(p, Thinking):
            if p.redacted:
                out.append({"type": "redacted_thinking", "data": p.redacted})
            elif p.signature:  # Anthropic refuses thinking it did not sign; unsigned reasoning is dropped
                out.append({"type": "thinking", "thinking": p.text, "signature": p.signature})
        elif isinstance(p, ToolResult):
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.tool_call_id,
                                     "content": _blocks(p.content) or ""}
            if p.is_error:
                block["is_error"] = True
            out.append(_cached(block, p))
    return out


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def messages_body(req: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    if req.n != 1:
        raise unsupported("Anthropic answers one choice per request (n must be 1)")
    system_parts = [p for m in req.messages if m.role == "system" for p in m.parts if isinstance(p, Text)]
    # the system prompt as one string, or as its text blocks when the client marked a cache breakpoint in it
    system: str | list[dict[str, Any]] = (_blocks(system_parts) if any(p.cache_control for p in system_parts)
                                          else req.system_text())
    fmt = req.response_format or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema")
        note = "Respond with a single JSON object and nothing else."
        if schema:
            note += " It must match this JSON schema: " + json.dumps(schema)
        if isinstance(system, list):  # after the cached blocks: the cached prefix stays as it was
            system.append({"type": "text", "text": note})
        else:
            system = f"{system}\n\n{note}" if system else note
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role == "system":
            continue
        role = "assistant" if m.role == "assistant" else "user"  # tool results are user turns
        blocks = _blocks(m.parts)
        if m.role == "assistant":
            blocks += [_cached({"type": "tool_use", "id": c.id, "name": c.name, "input": _arguments(c.arguments)}, c)
                       for c in m.tool_calls]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # Anthropic wants turns to alternate
        else:
            messages.append({"role": role, "content": blocks})
    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if system:
        body["system"] = system
    budget = req.thinking_budget or (_EFFORT_BUDGET.get(req.reasoning_effort or "") if req.reasoning_effort else None)
    if budget:
        budget = max(1024, budget)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            body["max_tokens"] = budget + max_tokens
    elif req.temperature is not None:
        body["temperature"] = min(1.0, max(0.0, req.temperature))  # Anthropic's range is 0..1
    if req.top_p is not None and not budget:
        body["top_p"] = req.top_p
    if req.top_k is not None:
        body["top_k"] = req.top_k
    if req.stop:
        body["stop_sequences"] = req.stop
    if stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_cached({"name": t.name, **({"description": t.description} if t.description else {}),
                                  "input_schema": t.parameters}, t) for t in req.tools]
    choice = req.tool_choice
    if choice is not None and (req.tools or choice.mode == "none"):
        tc: dict[str, Any] = {"type": {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}[choice.mode]}
        if choice.mode == "tool":
            tc["name"] = choice.name
        if choice.parallel is False and choice.mode != "none":
            tc["disable_parallel_tool_use"] = True
        body["tool_choice"] = tc
    if req.user:
        body["metadata"] = {"user_id": req.user}
    return body


# ---- Anthropic -> core -----------------------------------------------------------

def usage_from(obj: Any) -> Usage | None:
    """Anthropic's usage: ``input_tokens`` excludes cache reads and writes; ours is the whole prompt."""
    if not isinstance(obj, dict):
        return None
    read = token_count(obj.get("cache_read_input_tokens"))
    write = token_count(obj.get("cache_creation_input_tokens"))
    return Usage(input_tokens=token_count(obj.get("input_tokens")) + read + write,
                 output_tokens=token_count(obj.get("output_tokens")), cache_read_tokens=read, cache_write_tokens=write)


def parse_message(obj: dict[str, Any], model: str) -> ChatResponse:
    parts: list = []
    calls: list[ToolCall] = []
    for block in obj.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(Text(block["text"]))
        elif kind == "thinking":
            parts.append(Thinking(text=str(block.get("thinking") or ""), signature=block.get("signature")))
        elif kind == "redacted_thinking":
            parts.append(Thinking(redacted=str(block.get("data") or "")))
        elif kind == "tool_use":
            calls.append(ToolCall(id=str(block.get("id") or ""), name=str(block.get("name") or ""),
                                  arguments=json.dumps(block.get("input") or {}, ensure_ascii=False)))
    return ChatResponse(id=str(obj.get("id") or ""), model=str(obj.get("model") or model), parts=parts,
                        tool_calls=calls, finish_reason=_STOP_IN.get(obj.get("stop_reason") or "end_turn", "stop"),
                        stop_sequence=obj.get("stop_sequence"), usage=usage_from(obj.get("usage")) or Usage())


def _stream_error(data: dict[str, Any]) -> UpstreamError:
    err = data.get("error") or {}
    kind = _ERROR_KINDS.get(err.get("type"), FailureKind.SERVER)
    status = 529 if kind is FailureKind.OVERLOADED else 429 if kind is FailureKind.RATE_LIMITED else 502
    return UpstreamError(status, f"upstream stream error: {str(err.get('message', ''))[:500]}", kind=kind)


async def stream_events(reply: HttpReply, model: str) -> AsyncIterator[StreamEvent]:
    raw_usage: dict[str, Any] = {}
    tool_index: dict[int, int] = {}  # content block index -> tool call index
    stop: tuple[str, str | None] | None = None
    async for _name, data in sse_events(reply.lines()):
        try:
            event = json.loads(data)
        except ValueError:
            raise UpstreamError(502, "upstream sent a stream event that is not JSON", kind=FailureKind.PROTOCOL) from None
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            raw_usage.update({k: v for k, v in (message.get("usage") or {}).items() if k != "output_tokens"})
            yield Start(id=str(message.get("id") or ""), model=str(message.get("model") or model))
            yield UsageUpdate(usage_from(raw_usage) or Usage())
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            index = event.get("index", 0)
            if block.get("type") == "tool_use":
                tool_index[index] = len(tool_index)
                yield ToolCallStart(tool_index[index], str(block.get("id") or ""), str(block.get("name") or ""))
            elif block.get("type") == "text" and block.get("text"):
                yield TextDelta(block["text"])
            elif block.get("type") == "redacted_thinking":
                yield ThinkingDelta(redacted=str(block.get("data") or ""))
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                yield TextDelta(str(delta.get("text") or ""))
            elif dtype == "input_json_delta":
                index = event.get("index", 0)
                if index in tool_index and delta.get("partial_json"):
                    yield ToolCallDelta(tool_index[index], str(delta["partial_json"]))
            elif dtype == "thinking_delta":
                yield ThinkingDelta(text=str(delta.get("thinking") or ""))
            elif dtype == "signature_delta":
                yield ThinkingDelta(signature=str(delta.get("signature") or ""))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            raw_usage.update(event.get("usage") or {})
            yield UsageUpdate(usage_from(raw_usage) or Usage())
            if delta.get("stop_reason"):
                stop = (delta["stop_reason"], delta.get("stop_sequence"))
        elif kind == "message_stop":
            reason, sequence = stop or ("end_turn", None)
            yield Finish(_STOP_IN.get(reason, "stop"), sequence)
            return
        elif kind == "error":
            raise _stream_error(event)
    raise UpstreamError(502, "upstream closed the stream before message_stop", kind=FailureKind.PROTOCOL)


# ---- pass-through relay ------------------------------------------------------------

async def relay_stream(reply: HttpReply, out: RawReply) -> AsyncIterator[bytes]:
    """Anthropic's events exactly as they came (one chunk per event); usage and the end read on the way."""
    raw_usage: dict[str, Any] = {}
    event_lines: list[str] = []
    try:
        async for line in reply.lines():
            if line:
                event_lines.append(line)
                continue
            if not event_lines:
                continue
            frame = "\n".join(event_lines) + "\n\n"
            event_lines = []
            data = next((ln[5:].lstrip() for ln in frame.split("\n") if ln.startswith("data:")), "")
            head = data[:60]
            if '"message_start"' in head or '"message_delta"' in head:
                try:
                    event = json.loads(data)
                except ValueError:
                    event = {}
                usage = event.get("usage") if event.get("type") == "message_delta" else \
                    (event.get("message") or {}).get("usage")
                if isinstance(usage, dict):
                    raw_usage.update(usage)
                    out.usage.merge(usage_from(raw_usage) or Usage())
            elif '"content_block_delta"' in head:
                out.pieces += 1
            elif '"message_stop"' in head:
                out.finished = True
            elif '"error"' in head and '"type":"error"' in data.replace(" ", "")[:40]:
                try:
                    error = _stream_error(json.loads(data))
                except ValueError:
                    error = UpstreamError(502, "upstream stream error", kind=FailureKind.SERVER)
                raise error
            yield frame.encode()
    finally:
        reply.close()
