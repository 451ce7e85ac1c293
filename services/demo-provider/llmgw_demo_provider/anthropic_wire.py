"""The Anthropic Messages wire format: request validation, messages, stream events and error bodies.

Pure functions, no I/O. Shapes follow api.anthropic.com (and the anthropic SDK's types):
errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``, usage counts
``input_tokens`` without the cache reads and writes, streams are named server-sent events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import replies
from .asgi import new_id

ROLES = ("user", "assistant")
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
               "search_result", "server_tool_use", "web_search_tool_result", "container_upload")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive")
MIN_THINKING_BUDGET = 1024
# Counted like the OpenAI face, so every face gives the same prompt the same count.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
RATE_LIMIT_REQUESTS = 50

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
STOP_REASONS = {"end": "end_turn", "stop_sequence": "stop_sequence", "max_tokens": "max_tokens"}


class AnthropicError(Exception):
    """An error answer: HTTP status plus Anthropic's {"type": "error", ...} body and request-id header."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.request_id = new_id("req_")
        self.headers = {"request-id": self.request_id, **(headers or {})}

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.type, "message": self.message},
                "request_id": self.request_id}


def _invalid(message: str) -> AnthropicError:
    return AnthropicError(400, message)


# ---------------------------------------------------------------- errors


def missing_api_key() -> AnthropicError:
    return AnthropicError(401, "x-api-key header is required")


def invalid_api_key() -> AnthropicError:
    return AnthropicError(401, "invalid x-api-key")  # never echo the key back


def missing_version() -> AnthropicError:
    return _invalid("anthropic-version: header is required")


def unparsable_json() -> AnthropicError:
    return _invalid("There was an error parsing the body of your request as JSON.")


def model_not_found(model: str) -> AnthropicError:
    return AnthropicError(404, f"model: {model}")


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def prompt_too_long(window: int, prompt: int) -> AnthropicError:
    return AnthropicError(400, f"prompt is too long: {prompt} tokens > {window} maximum")


def injected_failure(status: int, model: str, retry_after: float | None,
                     now: float | None = None) -> AnthropicError:
    """The error api.anthropic.com sends with this status (Behaviour.fail_status)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if status == 429:
        wait = retry_after if retry_after is not None else 1.0
        headers.update({
            "anthropic-ratelimit-requests-limit": str(RATE_LIMIT_REQUESTS),
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": _rfc3339((time.time() if now is None else now) + wait),
        })
        return AnthropicError(429, f"This request would exceed the rate limit for your organization of "
                                   f"{RATE_LIMIT_REQUESTS} requests per minute. For details, refer to: "
                                   "https://docs.claude.com/en/api/rate-limits. You can see the response headers "
                                   "for current usage. Please try again later.", headers=headers)
    if status == 529:
        return AnthropicError(529, "Overloaded", headers=headers)
    if status == 401:
        error = invalid_api_key()
    elif status == 403:
        error = AnthropicError(403, "Your API key does not have permission to use the specified resource.")
    elif status == 404:
        error = model_not_found(model)
    elif status == 413:
        error = AnthropicError(413, "Request exceeds the maximum allowed number of bytes.")
    elif status >= 500:
        error = AnthropicError(status, "Internal server error")
    else:
        error = AnthropicError(status, f"The demo provider was told to fail with HTTP {status}.")
    error.headers.update(headers)
    return error


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    messages: list[dict[str, Any]]
    system: Any
    max_tokens: int | None
    stream: bool
    stop_sequences: tuple[str, ...]
    tools: tuple[str, ...]
    tool_choice: dict[str, Any] | None
    thinking: bool


def _check_int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{where}: Input should be a valid integer")
    if value < minimum:
        raise _invalid(f"{where}: Input should be greater than or equal to {minimum}")
    return value


def _check_text_blocks(blocks: Any, where: str) -> None:
    if isinstance(blocks, str):
        return
    if not isinstance(blocks, list):
        raise _invalid(f"{where}: Input should be a valid string or a valid list")
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"{where}.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise _invalid(f"{where}.{i}.text: Field required")


def _check_block(block: Any, where: str) -> None:
    if not isinstance(block, dict):
        raise _invalid(f"{where}: Input should be a valid dictionary or object to extract fields from")
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
        raise _invalid(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected "
                       f"tags: {expected}")
    required = {"text": ("text",), "tool_use": ("id", "name", "input"), "tool_result": ("tool_use_id",),
                "thinking": ("thinking", "signature"), "redacted_thinking": ("data",),
                "image": ("source",), "document": ("source",)}.get(kind, ())
    for name in required:
        if name not in block:
            raise _invalid(f"{where}.{kind}.{name}: Field required")
    if kind == "image":
        source = block["source"]
        source_type = source.get("type") if isinstance(source, dict) else None
        if source_type == "base64":
            if not isinstance(source.get("data"), str) or not isinstance(source.get("media_type"), str):
                raise _invalid(f"{where}.image.source.base64: media_type and data are required")
        elif source_type == "url":
            if not isinstance(source.get("url"), str):
                raise _invalid(f"{where}.image.source.url.url: Field required")
        elif source_type != "file":
            raise _invalid(f"{where}.image.source: Input tag '{source_type}' found using 'type' does not match "
                           "any of the expected tags: 'base64', 'url', 'file'")
    elif kind == "tool_use" and not isinstance(block["input"], dict):
        raise _invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result" and "content" in block and not isinstance(block["content"], (str, list)):
        raise _invalid(f"{where}.tool_result.content: Input should be a valid string or a valid list")


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise _invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise _invalid('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                           'parameter, not "system" as an input message role.')
        if role not in ROLES:
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"messages.{i}.content: Field required")
        content = message["content"]
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"messages.{i}.content.{j}")
        elif not isinstance(content, str):
            raise _invalid(f"messages.{i}.content: Input should be a valid string or a valid list")
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if not content and not final_assistant:
            raise _invalid(f"messages.{i}: all messages must have non-empty content except for the optional "
                           "final assistant message")
    return messages


def _check_tools(tools: Any, tool_choice: Any) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{i}: Input should be a valid dictionary")
            if tool.get("type", "custom") != "custom":
                continue  # a server tool (web_search_..., bash_..., ...): never called by the demo
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _invalid(f"tools.{i}.custom.name: Field required")
            if not isinstance(tool.get("input_schema"), dict):
                raise _invalid(f"tools.{i}.custom.input_schema: Field required")
            names.append(tool["name"])
    if tool_choice is not None:
        if not isinstance(tool_choice, dict) or tool_choice.get("type") not in TOOL_CHOICES:
            raise _invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                           "'auto', 'any', 'tool', 'none'")
        if tool_choice["type"] == "tool":
            name = tool_choice.get("name")
            if not isinstance(name, str):
                raise _invalid("tool_choice.tool.name: Field required")
            if name not in names:
                raise _invalid(f"Tool '{name}' not found in provided tools")
        if tool_choice["type"] in ("any", "tool") and not names:
            raise _invalid("tool_choice: tool_choice may only be specified while providing tools.")
    return tuple(names), tool_choice


def parse_messages_request(body: Any, count_only: bool = False) -> MessagesRequest:
    """Validate a /v1/messages (or, with ``count_only``, /v1/messages/count_tokens) body."""
    if not isinstance(body, dict):
        raise _invalid("Input should be a valid dictionary or object to extract fields from")
    model = body.get("model")
    if model is None:
        raise _invalid("model: Field required")
    if not isinstance(model, str):
        raise _invalid("model: Input should be a valid string")
    messages = _check_messages(body.get("messages"))
    max_tokens = None
    if not count_only:
        if body.get("max_tokens") is None:
            raise _invalid("max_tokens: Field required")
        max_tokens = _check_int(body["max_tokens"], "max_tokens", 1)
    system = body.get("system")
    if system is not None:
        _check_text_blocks(system, "system")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("stop_sequences: Input should be a valid list of strings")
    tools, tool_choice = _check_tools(body.get("tools"), body.get("tool_choice"))
    thinking = body.get("thinking")
    enabled = False
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
            raise _invalid("thinking: Input tag found using 'type' does not match any of the expected tags: "
                           "'enabled', 'disabled', 'adaptive'")
        if thinking["type"] == "enabled":
            if thinking.get("budget_tokens") is None:
                raise _invalid("thinking.enabled.budget_tokens: Field required")
            budget = _check_int(thinking["budget_tokens"], "thinking.enabled.budget_tokens", MIN_THINKING_BUDGET)
            if max_tokens is not None and max_tokens <= budget:
                raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                               "documentation at https://docs.claude.com/en/docs/build-with-claude/"
                               "extended-thinking#max-tokens-and-context-window-size")
        enabled = thinking["type"] in ("enabled", "adaptive")
    return MessagesRequest(model=model, messages=messages, system=system, max_tokens=max_tokens, stream=stream,
                           stop_sequences=tuple(stops), tools=tools, tool_choice=tool_choice, thinking=enabled)


# ---------------------------------------------------------------- the reply


def content_text(content: Any) -> str:
    """The text of a message's content: the string, or its text blocks and tool results."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_result":
            texts.append(replies.tool_result_text(block.get("content", "")))
    return " ".join(texts)


def prompt_tokens(req: MessagesRequest) -> int:
    total = TOKENS_REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + replies.count_tokens(content_text(m["content"]))
                                      for m in req.messages)
    if req.system:
        total += TOKENS_PER_MESSAGE + replies.count_tokens(content_text(req.system))
    return total


def turn(req: MessagesRequest) -> replies.Turn:
    last = req.messages[-1]
    tool_result = None
    if last["role"] == "user" and isinstance(last["content"], list):
        results = [b for b in last["content"] if b.get("type") == "tool_result"]
        if results:
            tool_result = replies.tool_result_text(results[-1].get("content", ""))
    user = next((m for m in reversed(req.messages) if m["role"] == "user"), None)
    user_text, images = "", 0
    if user is not None:
        content = user["content"]
        if isinstance(content, str):
            user_text = content
        else:
            user_text = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
            images = sum(1 for b in content if b.get("type") == "image")
    choice = req.tool_choice or {}
    return replies.Turn(user_text=user_text, images=images, tool_result=tool_result, tools=req.tools,
                        forced_tool=choice.get("name") if choice.get("type") == "tool" else None,
                        tools_off=choice.get("type") == "none")


@dataclass(frozen=True)
class Answer:
    """A whole Messages reply: its content blocks, why it stopped and what it cost."""

    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def answer(req: MessagesRequest, reply: replies.Reply, reasoning_tokens: int = 0) -> Answer:
    content: list[dict[str, Any]] = []
    output = reasoning_tokens
    if req.thinking:
        thought = replies.thinking_text(turn(req).user_text)
        content.append({"type": "thinking", "thinking": thought, "signature": replies.signature(thought)})
        output += replies.count_tokens(thought)
    if reply.is_tool_call:
        content.append({"type": "tool_use", "id": new_id("toolu_"), "name": reply.tool_name,
                        "input": reply.tool_arguments})
        return Answer(content, "tool_use", None, output + 1 + replies.count_tokens(reply.arguments_json))
    limited = replies.limit(reply.text or "", req.stop_sequences, req.max_tokens)
    content.append({"type": "text", "text": limited.text})
    return Answer(content, STOP_REASONS[limited.reason], limited.stop_sequence,
                  output + replies.count_tokens(limited.text))


def usage(prompt: int, output: int, cache_read: int = 0, cache_write: int = 0) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` are the tokens neither read from nor written to the cache."""
    return {
        "input_tokens": max(0, prompt - cache_read - cache_write),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def message(message_id: str, model: str, ans: Answer, usage_body: dict[str, Any]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": ans.content,
            "stop_reason": ans.stop_reason, "stop_sequence": ans.stop_sequence, "usage": usage_body}


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    content: bool = False  # a content_block_delta: what Behaviour.die_after_chunks counts


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return Event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}, True)


def stream_events(message_id: str, model: str, ans: Answer, usage_body: dict[str, Any]) -> list[Event]:
    """The events of a streamed reply, as api.anthropic.com sends them (ping after the first block start)."""
    start_usage = {**usage_body, "output_tokens": 1}
    events = [Event("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
    for index, block in enumerate(ans.content):
        kind = block["type"]
        if kind == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in replies.split_words(block["text"])]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": piece}
                      for piece in replies.split_words(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # tool_use: the input arrives as JSON text, in pieces, after an empty one
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            arguments = replies.Reply(tool_name=block["name"], tool_arguments=block["input"]).arguments_json
            deltas = [{"type": "input_json_delta", "partial_json": piece}
                      for piece in ["", *replies.split_fragments(arguments)]]
        events.append(Event("content_block_start",
                            {"type": "content_block_start", "index": index, "content_block": start}))
        if index == 0:
            events.append(Event("ping", {"type": "ping"}))
        events.extend(_delta(index, d) for d in deltas)
        events.append(Event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(Event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": ans.stop_reason, "stop_sequence": ans.stop_sequence},
        # recent API versions repeat the (cumulative) input and cache counts here
        "usage": {"input_tokens": usage_body["input_tokens"],
                  "cache_creation_input_tokens": usage_body["cache_creation_input_tokens"],
                  "cache_read_input_tokens": usage_body["cache_read_input_tokens"],
                  "output_tokens": ans.output_tokens}}))
    events.append(Event("message_stop", {"type": "message_stop"}))
    return events
