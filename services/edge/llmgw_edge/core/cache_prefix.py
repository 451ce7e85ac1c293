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
    # fed to the hash as it is walked, not serialized first: a 250 kB system prompt with 20 tools took 0.33 ms
    # this way, 1.6 ms through json.dumps (measured on the shared dev machine); sha256 for its speed where the
    # CPU has SHA instructions (a cache key, not a secret)
    digest = hashlib.sha256()
    chars = _feed(digest, [model, parts])
    return digest.hexdigest()[:32], chars // CHARS_PER_TOKEN


def _opening(items: Any) -> list[Any]:
    """The leading system / developer messages and the first message after them."""
    if not isinstance(items, list):
        return []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and item.get("role") in _SYSTEM_ROLES):
            return items[:i + 1]
    return items


def _feed(digest: Any, value: Any, depth: int = 0) -> int:
    """Hash ``value`` unambiguously (each item tagged, each string with its length), ``cache_control`` left
    out; its characters (the size estimate)."""
    if isinstance(value, str):
        data = value.encode()
        digest.update(b"s%d:" % len(data))
        digest.update(data)
        return len(value)
    if depth > 64:  # the codecs bound JSON nesting already (edge.max_json_depth); this walk needs no more
        digest.update(b"deep")
        return 0
    if isinstance(value, dict):
        digest.update(b"{")
        chars = 0
        for k, v in value.items():
            if k != "cache_control":
                chars += _feed(digest, k, depth + 1) + _feed(digest, v, depth + 1)
        digest.update(b"}")
        return chars
    if isinstance(value, list):
        digest.update(b"[")
        chars = sum(_feed(digest, v, depth + 1) for v in value)
        digest.update(b"]")
        return chars
    digest.update(b"v" + repr(value).encode())  # numbers, booleans, None
    return 1
