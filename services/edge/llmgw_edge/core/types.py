"""Format-neutral types: what every inbound codec parses into and every provider builds from.

A client's wire format (OpenAI chat, Anthropic messages, OpenAI responses) and
a provider's (OpenAI, Anthropic, Gemini, a CLI) meet only here. Plain
dataclasses with slots: they are built for every translated request.

Token convention (the same as ``UsageEvent``): ``input_tokens`` is the whole
prompt, cache reads and cache writes included; ``output_tokens`` is the whole
output, reasoning included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
# why generation stopped, in one vocabulary; codecs map to their own
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "stop_sequence", "error"]


# ---- content parts ---------------------------------------------------------

# A prompt-cache breakpoint as the client marked the part (Anthropic's ``cache_control``, e.g.
# {"type": "ephemeral", "ttl": "1h"}; OpenRouter's and LiteLLM's OpenAI-format convention): carried as it
# came to providers that take it (Anthropic), in its place; others cache on their own (docs/routing.md).
CacheControl = dict[str, Any]


@dataclass(slots=True)
class Text:
    text: str
    cache_control: CacheControl | None = None


@dataclass(slots=True)
class Image:
    """An image by URL or inline (base64 ``data`` with its ``media_type``)."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None  # OpenAI's low | high | auto
    cache_control: CacheControl | None = None

    def data_url(self) -> str:
        return self.url if self.url else f"data:{self.media_type or 'image/png'};base64,{self.data}"


@dataclass(slots=True)
class Thinking:
    """Reasoning the model showed (Anthropic thinking blocks); ``redacted`` carries opaque data."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    cache_control: CacheControl | None = None  # a breakpoint on an earlier turn's call (Anthropic tool_use)


@dataclass(slots=True)
class ToolResult:
    """The answer to a tool call (OpenAI: a ``tool`` message; Anthropic: a ``tool_result`` block)."""

    tool_call_id: str
    content: list[Part]
    is_error: bool = False
    name: str | None = None  # the tool's name, when the format carries it (Gemini needs it)
    cache_control: CacheControl | None = None


Part = Text | Image | Thinking | ToolResult


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant messages only

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, Text))


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    cache_control: CacheControl | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None  # mode "tool": the one tool to call
    parallel: bool | None = None  # None: the provider's default


# ---- request ---------------------------------------------------------------

@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]  # system prompts are messages with role "system" (first, usually)
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    n: int = 1
    # {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}} (OpenAI's shape)
    response_format: dict[str, Any] | None = None
    thinking_budget: int | None = None  # reasoning tokens allowed (Anthropic thinking / Gemini thinkingBudget)
    reasoning_effort: str | None = None  # OpenAI's low | medium | high
    user: str | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    include_usage: bool = False  # the client asked for usage in the stream (OpenAI stream_options)
    prompt_cache_key: str | None = None  # OpenAI's hint of which requests share a cached prefix

    def system_text(self) -> str:
        return "\n\n".join(m.text() for m in self.messages if m.role == "system")

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.text()
        return ""


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    encoding_format: str | None = None  # float | base64
    user: str | None = None


# ---- answers ---------------------------------------------------------------

@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    reported_cost: Decimal | None = None  # USD, when the provider says what it charged (OpenRouter)

    def merge(self, other: Usage) -> None:
        """Take every figure ``other`` reports (streams report input and output at different times)."""
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                     "reasoning_tokens"):
            value = getattr(other, name)
            if value:
                setattr(self, name, value)
        if other.reported_cost is not None:
            self.reported_cost = other.reported_cost


@dataclass
class Meter:
    """What a stream has shown so far, filled while it is relayed or rendered."""

    usage: Usage = field(default_factory=Usage)
    pieces: int = 0  # content pieces seen (an aborted stream's output estimate)
    finished: bool = False  # it ended the way its format says a complete answer ends


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    parts: list[Part] = field(default_factory=list)  # Text and Thinking, in order
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: int = 0

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, Text))


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    vectors: list[list[float] | str]  # floats, or base64 strings when asked for base64
    usage: Usage = field(default_factory=Usage)


# ---- stream events ---------------------------------------------------------
# A translated stream is: Start, then any of the deltas, then Finish; UsageUpdate may come anywhere.

@dataclass(slots=True)
class Start:
    id: str
    model: str
    created: int = 0


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str = ""
    signature: str | None = None  # the block's signature, when it arrives
    redacted: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int  # the tool call's position in this answer
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a fragment of the JSON arguments


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class UsageUpdate:
    usage: Usage


StreamEvent = Start | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | Finish | UsageUpdate
