"""What a request needs of a model, and when a refusal for what it is sends it to another model.

``needs``: the capabilities a request uses (tools, vision, json_schema, reasoning, embeddings), read off the
client's own body in its format. They travel in ``RouteRequest.needs``; the router plans only models that
have them (``llmgw_router.model_fit``), and they are part of a reused plan's key (``plans.py``), so a plan
made for a text request is never reused for one with images.

``fallback_for``: an upstream refused the model for the request itself (``FailureKind.CONTEXT_LENGTH``, or
``CONTENT_FILTER``: a content-filter error, or a whole answer that ends with a content-filter finish) and
``routing.fallbacks`` names other models for it: the gateway then asks the router for those (once per
request). A stream whose content-filter finish arrives after its first bytes were sent cannot be taken
back: it ends as the provider ended it.
"""

from __future__ import annotations

import json
from typing import Any

from llmgw_common.config import GatewayConfig
from llmgw_common.failures import FailureKind
from llmgw_common.messages import Candidate, FallbackKind, RouteRequest

from .provider import RawCall

FALLBACK_KINDS: dict[FailureKind, FallbackKind] = {FailureKind.CONTEXT_LENGTH: "context_window", FailureKind.CONTENT_FILTER: "content_filter"}


def needs(raw: RawCall, embeddings: bool) -> list[str]:
    """The capabilities this request uses, sorted (the plan key holds them)."""
    if embeddings:
        return ["embeddings"]
    body = raw.body
    if not isinstance(body, dict):
        return []
    found: set[str] = set()
    if body.get("tools") or body.get("functions"):
        found.add("tools")
    if raw.format == "openai_chat":
        if _type_of(body.get("response_format")) == "json_schema":
            found.add("json_schema")
        if body.get("reasoning_effort") is not None:
            found.add("reasoning")
        messages = body.get("messages")
    elif raw.format == "openai_responses":
        text = body.get("text")
        if isinstance(text, dict) and _type_of(text.get("format")) == "json_schema":
            found.add("json_schema")
        if isinstance(body.get("reasoning"), dict) and body["reasoning"].get("effort") not in (None, "none"):
            found.add("reasoning")
        messages = body.get("input")
    elif raw.format in ("anthropic_messages", "anthropic_count_tokens"):
        if _type_of(body.get("thinking")) in ("enabled", "adaptive"):
            found.add("reasoning")
        if _type_of(body.get("output_format")) == "json_schema":
            found.add("json_schema")
        messages = body.get("messages")
    else:
        return sorted(found)
    if isinstance(messages, list) and any(_has_image(m) for m in messages):
        found.add("vision")
    return sorted(found)


_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def _has_image(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return False
    for part in content:
        if isinstance(part, dict):
            if part.get("type") in _IMAGE_PARTS:
                return True
            if part.get("type") == "tool_result" and _has_image(part):  # Anthropic: images inside a tool result
                return True
    return False


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else None


def fallback_for(config: GatewayConfig, kind: FailureKind, cand: Candidate, request: RouteRequest) -> list[str]:
    """The models to ask the router for after this refusal; [] when it stands (not a refusal, no fallback
    configured, or the request already fell back once)."""
    why = FALLBACK_KINDS.get(kind)
    if why is None or request.fallback is not None:
        return []
    return config.routing.fallbacks.for_model(why, cand.model, request.model)


def filtered_answer(client_format: str, body: bytes | None) -> bool:
    """Whether a whole answer in the client's format ended with a content-filter finish (OpenAI chat
    ``content_filter``, Anthropic ``refusal``, Responses ``incomplete_details.reason``)."""
    if not body or (b"content_filter" not in body and b"refusal" not in body):
        return False  # the common case costs a substring search, not a parse
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    if client_format == "openai_chat":
        choices = obj.get("choices")
        return isinstance(choices, list) and any(
            isinstance(c, dict) and c.get("finish_reason") == "content_filter" for c in choices)
    if client_format == "anthropic_messages":
        return obj.get("stop_reason") == "refusal"
    if client_format == "openai_responses":
        details = obj.get("incomplete_details")
        return isinstance(details, dict) and details.get("reason") == "content_filter"
    return False
