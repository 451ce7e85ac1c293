"""OpenAI chat completions in and out: ``POST /v1/chat/completions``.

Parsing validates only what routing and accounting need and keeps the
client's body for providers that speak OpenAI (byte pass-through); the core
request is built only when another format must be sent. Rendering turns core
answers and stream events back into OpenAI's JSON and chunks. Errors are
OpenAI's ``{"error": {...}}`` (``error_body``), used by every OpenAI-format route.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Mapping

from ..core.errors import GatewayError, bad_request
from ..core.gateway import Exchange
from ..core.provider import RawCall
from .body import json_object
from ..core.types import (ChatRequest, ChatResponse, EmbeddingResponse, Finish, Image, Message, Start, StreamEvent,
                          Text, TextDelta, Thinking, ThinkingDelta, ToolCall, ToolCallDelta, ToolCallStart, ToolChoice,
                          ToolResult, ToolSpec, Usage, UsageUpdate)
from ..core.tokens import PromptTokens, estimate_prompt_tokens

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_FINISH_OUT = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
               "stop_sequence": "stop", "error": "stop"}


# OpenAI's error `type` by status: one table for every OpenAI-format route
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
                413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_exceeded"}


def error_type(err: GatewayError) -> str:
    if err.status < 500:
        return _ERROR_TYPES.get(err.status, "invalid_request_error")
    return "upstream_error" if err.kind is not None else "server_error"  # an upstream's failure, or ours


def error_body(err: GatewayError) -> bytes:
    """OpenAI's error JSON: every OpenAI-format route (chat, responses, embeddings, pass-through) renders this."""
    return json.dumps({"error": {"message": err.message, "type": error_type(err), "param": err.param,
                                 "code": err.code}}).encode()


class OpenAIChatCodec:
    format = "openai_chat"
    error_format = "openai"
    endpoint = "chat.completions"
    render_error = staticmethod(error_body)

    def __init__(self, max_depth: int = 100):
        self.max_depth = max_depth  # JSON nesting the edge accepts (config edge.max_json_depth)
        self.include_usage = False

    # ---- parse --------------------------------------------------------------

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Exchange:
        body = json_object(raw, self.max_depth)
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise bad_request("you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty array", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
            _check_message(m, i)
        _check_list_of_objects(body, "tools")
        _check_list_of_objects(body, "functions")
        stop = body.get("stop")
        if stop is not None and not isinstance(stop, (str, list)):
            raise bad_request("'stop' must be a string or an array of strings", param="stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise bad_request("'stream' must be a boolean", param="stream")
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise bad_request("'stream_options' must be an object", param="stream_options")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise bad_request("'max_tokens' must be a positive integer", param="max_tokens")
        self.include_usage = bool(stream and isinstance(opts, dict) and opts.get("include_usage"))
        return Exchange(
            model=model, stream=stream, max_tokens=max_tokens, headers=headers,
            raw=RawCall("openai_chat", body, raw, stream=stream, headers=headers, include_usage=self.include_usage),
            build_chat=lambda: chat_request(body), count_prompt=PromptTokens(lambda exact: estimate_prompt_tokens(body, exact)),
            prompt_text=last_user_text(messages))

    # ---- render -------------------------------------------------------------

    def render_response(self, resp: ChatResponse) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": resp.text() or (None if resp.tool_calls else ""),
                                   "refusal": None}
        thinking = "".join(p.text for p in resp.parts if isinstance(p, Thinking))
        if thinking:
            message["reasoning_content"] = thinking  # the de-facto extension (DeepSeek, vLLM, OpenRouter)
        if resp.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in resp.tool_calls]
        return json.dumps({
            "id": _completion_id(resp.id), "object": "chat.completion", "created": resp.created or int(time.time()),
            "model": resp.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _FINISH_OUT.get(resp.finish_reason, "stop")}],
            "usage": usage_body(resp.usage)}, ensure_ascii=False).encode()

    async def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
        cid, created, model = "chatcmpl-", int(time.time()), ""
        usage = Usage()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

        async for event in events:
            if isinstance(event, Start):
                cid, model = _completion_id(event.id), event.model
                created = event.created or created
                yield chunk({"role": "assistant", "content": ""})
            elif isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, ThinkingDelta):
                if event.text:
                    yield chunk({"reasoning_content": event.text})
            elif isinstance(event, ToolCallStart):
                yield chunk({"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                             "function": {"name": event.name, "arguments": ""}}]})
            elif isinstance(event, ToolCallDelta):
                yield chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})
            elif isinstance(event, Finish):
                yield chunk({}, _FINISH_OUT.get(event.reason, "stop"))
            elif isinstance(event, UsageUpdate):
                usage.merge(event.usage)
        if self.include_usage:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage_body(usage)}
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes:  # pragma: no cover - not a chat answer
        raise NotImplementedError

    def stream_error(self, err: GatewayError) -> bytes:
        body = {"error": {"message": err.message, "type": "upstream_error", "param": None,
                          "code": "upstream_stream_error"}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"


def _check_message(m: dict[str, Any], i: int) -> None:
    """The types of what the gateway reads of a message (role, content, tool calls): a 400, never a crash
    further on in translation or token counting. Cheap: no walk into the content parts."""
    role = m.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        shown = repr(role)[:40] if isinstance(role, str) else _a(_json_type(role))
        raise bad_request(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {shown}",
                          param=f"messages[{i}].role")
    content = m.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise bad_request(f"messages[{i}].content must be a string or an array of content parts, got "
                          f"{_a(_json_type(content))}", param=f"messages[{i}].content")
    if m.get("tool_calls") is not None:
        _check_list_of_objects(m, "tool_calls", f"messages[{i}].")
    if m.get("name") is not None and not isinstance(m["name"], str):
        raise bad_request(f"messages[{i}].name must be a string", param=f"messages[{i}].name")


def _check_list_of_objects(body: dict[str, Any], name: str, where: str = "") -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise bad_request(f"'{where}{name}' must be an array of objects", param=f"{where}{name}")


def _json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words: for messages that never echo the (maybe huge) value."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _completion_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl") else "chatcmpl-" + (upstream_id or "llmgw")


def usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict)
                                and isinstance(p.get("text"), str))
    return ""


# ---- OpenAI chat -> core --------------------------------------------------------

def _parts(content: Any) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts: list = []
    for p in content if isinstance(content, list) else []:
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        # a part's cache_control: OpenRouter's and LiteLLM's convention for Anthropic's breakpoints
        cache = p.get("cache_control") if isinstance(p.get("cache_control"), dict) else None
        if kind in ("text", "input_text", "output_text") and isinstance(p.get("text"), str):
            parts.append(Text(p["text"], cache))
        elif kind == "image_url":
            image = p.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append(image_from_url(url, image.get("detail") if isinstance(image, dict) else None))
                parts[-1].cache_control = cache
        elif kind == "refusal" and isinstance(p.get("refusal"), str):
            parts.append(Text(p["refusal"]))
    return parts


def image_from_url(url: str, detail: str | None = None) -> Image:
    """An image URL; ``data:`` URLs become inline data (what Anthropic and Gemini want)."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return Image(data=data, media_type=media_type or "image/png", detail=detail)
    return Image(url=url, detail=detail)


def chat_request(body: dict[str, Any]) -> ChatRequest:
    messages: list[Message] = []
    for m in body["messages"]:
        role = m.get("role")
        if role in ("system", "developer"):
            messages.append(Message("system", _parts(m.get("content"))))
        elif role == "user":
            messages.append(Message("user", _parts(m.get("content"))))
        elif role == "assistant":
            calls = [ToolCall(id=str(c.get("id") or f"call_{i}"),
                              name=str((c.get("function") or {}).get("name") or ""),
                              arguments=str((c.get("function") or {}).get("arguments") or "{}"))
                     for i, c in enumerate(m.get("tool_calls") or []) if isinstance(c, dict)]
            fc = m.get("function_call")
            if isinstance(fc, dict):  # the legacy single function call
                calls.append(ToolCall(id=f"call_{fc.get('name', 'fn')}", name=str(fc.get("name") or ""),
                                      arguments=str(fc.get("arguments") or "{}")))
            parts = _parts(m.get("content"))
            if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
                parts.insert(0, Thinking(text=m["reasoning_content"]))
            messages.append(Message("assistant", parts, calls))
        elif role in ("tool", "function"):
            call_id = str(m.get("tool_call_id") or f"call_{m.get('name', 'fn')}")
            messages.append(Message("tool", [ToolResult(call_id, _parts(m.get("content")), name=m.get("name"))]))
    tools = []
    for t in body.get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            cache = t.get("cache_control") if isinstance(t.get("cache_control"), dict) else None
            tools.append(ToolSpec(str(fn["name"]), fn.get("description"),
                                  fn.get("parameters") or {"type": "object", "properties": {}}, cache))
    for fn in body.get("functions") or []:  # legacy
        if isinstance(fn, dict) and fn.get("name"):
            tools.append(ToolSpec(str(fn["name"]), fn.get("description"),
                                  fn.get("parameters") or {"type": "object", "properties": {}}))
    stop = body.get("stop")
    return ChatRequest(
        model=body["model"], messages=messages, stream=bool(body.get("stream")),
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        temperature=_number(body.get("temperature")), top_p=_number(body.get("top_p")),
        stop=[stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)],
        tools=tools, tool_choice=_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        n=body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1,
        response_format=body.get("response_format") if isinstance(body.get("response_format"), dict) else None,
        reasoning_effort=body.get("reasoning_effort") if isinstance(body.get("reasoning_effort"), str) else None,
        user=body.get("user") if isinstance(body.get("user"), str) else None,
        seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        presence_penalty=_number(body.get("presence_penalty")),
        frequency_penalty=_number(body.get("frequency_penalty")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        prompt_cache_key=body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"), str) else None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _tool_choice(choice: Any, parallel: Any) -> ToolChoice | None:
    par = parallel if isinstance(parallel, bool) else None
    if choice is None:
        return ToolChoice("auto", parallel=par) if par is not None else None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice, parallel=par)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return ToolChoice("tool", name=str(name), parallel=par)
    return ToolChoice("auto", parallel=par)
