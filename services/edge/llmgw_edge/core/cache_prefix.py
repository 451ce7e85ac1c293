"""The cacheable prefix of a chat request, as the key of its prompt-cache affinity (docs/routing.md).

A provider's prompt cache holds the start of a prompt: tools, then the system prompt, then the messages in
order. The affinity key must be the same for every turn of one conversation and differ between
conversations, so it hashes what every turn repeats unchanged and nothing that grows:

- the model as the client named it: caches are per model;
- the tools, the system prompt (Anthropic ``system``; OpenAI's leading ``system`` / ``developer`` messages;
  Responses ``instructions``) and the first message after them: the conversation's opening, which tells
  two conversations with the same system prompt apart;
- without ``cache_control`` markers: clients such as Claude Code move their breakpoints to the newest
  message every turn, and a marker changes what is written to the cache, not what was said.

Not the caller's gateway key: an upstream's cache belongs to the gateway's account with that provider, so
callers who share a prefix share its cache. Later messages are not hashed (they change every turn); the
provider caches them too, so a conversation that stays gains more than the prefix's estimate says.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .provider import RawCall

CHARS_PER_TOKEN = 4  # the cheap estimate (core/tokens.py): the prefix's size only decides "long enough"
_SYSTEM_ROLES = ("system", "developer")


def cacheable_prefix(raw: RawCall, model: str) -> tuple[str, int] | None:
    """(key, estimated tokens) of the request's prefix; None for a request with no conversation in it."""
    body = raw.body
    if body is None:
        return None
    if raw.format == "anthropic_messages":
        messages = body.get("messages")
        opening = [messages[0]] if isinstance(messages, list) and messages else []
        parts: list[Any] = [body.get("tools"), body.get("system"), opening]
    elif raw.format == "openai_chat":
        parts = [body.get("tools") or body.get("functions"), _opening(body.get("messages"))]
    elif raw.format == "openai_responses":
        if body.get("previous_response_id"):
            return None  # the provider holds the conversation itself: there is no prefix to hash
        value = body.get("input")
        parts = [body.get("tools"), body.get("instructions"), value if isinstance(value, str) else _opening(value)]
    else:
        return None
    text = json.dumps([model, _without_cache_control(parts)], separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest(), len(text) // CHARS_PER_TOKEN


def _opening(items: Any) -> list[Any]:
    """The leading system / developer messages and the first message after them."""
    if not isinstance(items, list):
        return []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and item.get("role") in _SYSTEM_ROLES):
            return items[:i + 1]
    return items


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value
