"""Pure helpers for the OpenAI chat wire format: request validation, usage, SSE lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import bad_request

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ChatRequest:
    body: dict[str, Any]  # the client's body, passed through (model rewritten per provider)
    model: str
    stream: bool
    client_wants_usage: bool
    max_tokens: int | None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate just enough to route and account; everything else passes through untouched."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("We could not parse the JSON body of your request. The body must be a JSON object.")
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {role!r}",
                              param=f"messages[{i}].role")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise bad_request("'max_tokens' must be a positive integer", param="max_tokens")
    wants_usage = bool(stream and isinstance(opts, dict) and opts.get("include_usage"))
    return ChatRequest(body, model, stream, wants_usage, max_tokens)


def upstream_body(req: ChatRequest, upstream_model: str) -> bytes:
    body = dict(req.body)
    body["model"] = upstream_model
    if req.stream:
        # always ask for usage so streamed requests are counted; stripped again if the client didn't ask
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    reported_cost: Decimal | None = None  # USD, when the provider says what it charged (OpenRouter)


def usage_from(obj: dict[str, Any] | None) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    details = obj.get("prompt_tokens_details") or {}
    cost = obj.get("cost")
    reported = None
    if isinstance(cost, (int, float, str)) and not isinstance(cost, bool):
        try:
            reported = Decimal(str(cost))
        except ArithmeticError:
            reported = None
        if reported is not None and (not reported.is_finite() or reported < 0):
            reported = None
    return Usage(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0, reported)


@dataclass
class SseChunk:
    """One ``data:`` payload from an upstream stream, classified."""

    payload: str
    done: bool = False
    usage: Usage | None = None
    usage_only: bool = False  # OpenAI's final ``choices: []`` chunk that only carries usage


def classify_sse_data(payload: str) -> SseChunk:
    if payload == "[DONE]":
        return SseChunk(payload, done=True)
    # cheap test first: most chunks carry no usage (or "usage":null)
    if '"usage"' not in payload or '"usage":null' in payload or '"usage": null' in payload:
        return SseChunk(payload)
    try:
        obj = json.loads(payload)
    except ValueError:
        return SseChunk(payload)
    usage = usage_from(obj.get("usage"))
    return SseChunk(payload, usage=usage, usage_only=usage is not None and not obj.get("choices"))


def strip_null_usage(payload: str) -> str:
    """Drop the ``"usage":null`` that include_usage adds to every chunk (OpenAI omits the key otherwise)."""
    return payload.replace(',"usage":null', "").replace(', "usage": null', "")


def sse_error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
