"""What the demo provider answers, whatever the wire format: the face-independent reply rule.

Every face (OpenAI chat, OpenAI Responses, Anthropic Messages, Gemini) reduces its
request to a ``Turn`` and gets back a ``Reply``:

- the last input is a tool result: text "Tool said: <result>";
- else tools are offered (and not switched off): a call of the forced tool, or of the first one,
  with ``Behaviour.tool_arguments`` or ``{"input": "<last user text>"}`` as arguments;
- else text: ``Behaviour.reply``, or "Echo: <last user text>" (plus " [N image(s)]").

``Behaviour.reply`` replaces every text answer (the echo and "Tool said: ..."), never a tool call.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

ECHO_MAX_WORDS = 64
WORDS_PER_CHUNK = 3  # streamed text comes a few words per chunk
_WORD = re.compile(r"\S+")
ARGUMENT_FRAGMENT_CHARS = 12  # streamed tool arguments come in pieces of about this many characters


@dataclass(frozen=True)
class Turn:
    """What a face's request says, reduced to what the reply rule needs."""

    user_text: str = ""  # text of the last user message
    images: int = 0  # images in the last user message
    tool_result: str | None = None  # the last input is a tool result with this text
    tools: tuple[str, ...] = ()  # names of the tools offered, in order
    forced_tool: str | None = None  # the tool the request insists on
    tools_off: bool = False  # tool_choice "none" (or Gemini's mode NONE)


@dataclass(frozen=True)
class Reply:
    text: str | None = None  # a text answer ...
    tool_name: str | None = None  # ... or a tool call
    tool_arguments: dict[str, Any] | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.tool_name is not None

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.tool_arguments, separators=(",", ":"), ensure_ascii=False)


def count_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: whitespace-separated words."""
    return len(_WORD.findall(text))


def cut_after_words(text: str, words: int) -> str:
    """``text`` up to the end of its ``words``-th word, spacing kept as it was."""
    for i, match in enumerate(_WORD.finditer(text), start=1):
        if i == words:
            return text[:match.end()]
    return text


def echo(user_text: str, images: int = 0) -> str:
    text = "Echo: " + cut_after_words(user_text.strip(), ECHO_MAX_WORDS)
    if images:
        text += f" [{images} image{'s' if images > 1 else ''}]"
    return text


def decide(turn: Turn, fixed_reply: str | None, tool_arguments: dict[str, Any] | None) -> Reply:
    if turn.tool_result is not None:
        return Reply(text=fixed_reply if fixed_reply is not None else "Tool said: " + turn.tool_result)
    if turn.tools and not turn.tools_off:
        name = turn.forced_tool or turn.tools[0]
        arguments = tool_arguments if tool_arguments is not None else {"input": turn.user_text.strip()}
        return Reply(tool_name=name, tool_arguments=arguments)
    return Reply(text=fixed_reply if fixed_reply is not None else echo(turn.user_text, turn.images))


@dataclass(frozen=True)
class Limited:
    """A text reply after stop sequences and the token limit."""

    text: str
    reason: str  # "end" | "stop_sequence" | "max_tokens"
    stop_sequence: str | None = None


def limit(text: str, stops: tuple[str, ...] | list[str], max_tokens: int | None) -> Limited:
    best: tuple[int, str] | None = None
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
    if best is not None:
        text = text[:best[0]]
    if max_tokens is not None and count_tokens(text) > max_tokens:
        return Limited(cut_after_words(text, max_tokens), "max_tokens")
    if best is not None:
        return Limited(text, "stop_sequence", best[1])
    return Limited(text, "end")


def split_words(content: str, words_per_chunk: int = WORDS_PER_CHUNK) -> list[str]:
    """Stream pieces of a few words each; joined they give back ``content`` exactly."""
    ends = [m.end() for m in _WORD.finditer(content)][words_per_chunk - 1::words_per_chunk]
    pieces, start = [], 0
    for end in ends:
        pieces.append(content[start:end])
        start = end
    if start < len(content):
        pieces.append(content[start:])
    return pieces


def split_fragments(text: str, size: int = ARGUMENT_FRAGMENT_CHARS) -> list[str]:
    """Tool-call arguments as streamed: at least two fragments (for 2+ characters), joined = ``text``."""
    if len(text) < 2:
        return [text]
    size = max(1, min(size, len(text) // 2))
    return [text[i:i + size] for i in range(0, len(text), size)]


def thinking_text(user_text: str) -> str:
    return "Thinking about: " + cut_after_words(user_text.strip(), ECHO_MAX_WORDS)


def signature(text: str) -> str:
    """An opaque, deterministic stand-in for a thinking block's signature."""
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def tool_result_text(content: Any) -> str:
    """The text of a tool result: a string, text blocks, or anything else as compact JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        texts = [b.get("text", "") for b in content if b.get("type") in ("text", "input_text", "output_text")]
        if texts:
            return " ".join(texts)
    if isinstance(content, dict) and len(content) == 1:
        (value,) = content.values()
        if isinstance(value, str):
            return value
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False)
