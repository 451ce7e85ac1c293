"""A provider's prompt cache, in small: a prefix seen lately is read from the cache, as the real ones bill it.

Off unless ``Behaviour.prompt_cache`` is set (the benchmark's path stays as cheap as it was). Prefixes end at
message boundaries (OpenAI, Gemini: automatic, every prompt of ``cache_min_tokens`` or more) or at blocks
marked ``cache_control`` (Anthropic: only there, tools then system then messages, as its API orders them).
A hit starts the prefix's lifetime again, as Anthropic's five-minute cache does.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable

from . import replies

TTL_S = 300.0


class PromptCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._until: dict[str, float] = {}  # prefix hash -> expiry
        self._clock = clock

    def read(self, prefixes: list[tuple[str, int]]) -> tuple[int, int]:
        """``prefixes``: (hash, tokens) of each prefix the provider caches, shortest first. Returns the tokens
        read from the cache (the longest prefix still cached) and written to it (the longest one, if new)."""
        now = self._clock()
        read = 0
        for key, tokens in prefixes:
            if self._until.get(key, 0.0) > now:
                read = tokens
            self._until[key] = now + TTL_S
        written = prefixes[-1][1] - read if prefixes else 0
        if len(self._until) > 10_000:  # a test server: bounded, oldest entries go first
            for key in sorted(self._until, key=self._until.__getitem__)[:5_000]:
                del self._until[key]
        return read, written

    def clear(self) -> None:
        self._until.clear()


def _hash(items: list[Any]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def chat_prefixes(model: str, messages: list[dict[str, Any]], min_tokens: int,
                  count: Callable[[list[dict[str, Any]]], int]) -> list[tuple[str, int]]:
    """OpenAI's automatic caching: every message boundary of a prompt of ``min_tokens`` or more."""
    out = []
    for end in range(1, len(messages) + 1):
        tokens = count(messages[:end])
        if tokens >= min_tokens:
            out.append((_hash([model, messages[:end]]), tokens))
    return out


def anthropic_prefixes(model: str, tools: Any, system: Any, messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Anthropic's caching: the prompt up to each block marked ``cache_control``, tools, system, messages."""
    blocks: list[Any] = list(tools or [])
    blocks += system if isinstance(system, list) else [system] if system else []
    for m in messages:
        content = m.get("content")
        blocks += [{"role": m.get("role")}, *(content if isinstance(content, list) else [content])]
    out = []
    tokens = 0
    for end, block in enumerate(blocks, start=1):
        tokens += replies.count_tokens(_block_text(block))
        if isinstance(block, dict) and block.get("cache_control"):
            stripped = [{k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b
                        for b in blocks[:end]]
            out.append((_hash([model, stripped]), tokens))
    return out


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and isinstance(block.get("text"), str):
        return block["text"]
    return json.dumps(block) if isinstance(block, dict) and "name" in block else ""  # a tool's definition
