"""What the demo provider does: a mutable record that tests change while the server runs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .prompt_cache import PromptCache

# Enough history for any test's assertions, bounded so a benchmark cannot grow it forever.
MAX_RECORDED_REQUESTS = 1000


@dataclass
class Behaviour:
    models: list[str] = field(default_factory=lambda: ["demo-chat"])
    # Fail generation requests (every face) with this HTTP status and the face's error body ...
    fail_status: int | None = None
    # ... for the next N requests only (None: every request while fail_status is set).
    fail_times: int | None = None
    # Seconds; sent as Retry-After on failures and, on 429, as x-ratelimit-reset-requests (OpenAI),
    # anthropic-ratelimit-requests-reset (Anthropic) or the RetryInfo retryDelay (Gemini).
    retry_after: float | None = None
    delay_s: float = 0.0  # before the response, or before the first chunk when streaming
    chunk_delay_s: float = 0.0  # between streamed chunks
    # Streaming: drop the connection after this many content chunks (text / arguments deltas, Gemini
    # chunks), without finish or [DONE] (Anthropic: no content_block_stop, message_delta, message_stop).
    die_after_chunks: int | None = None
    # Fixed text for every text answer; None: "Echo: <last user message>" (" [N image(s)]" added),
    # or "Tool said: <result>" after a tool result. Never replaces a tool call.
    reply: str | None = None
    # Arguments of the tool calls answered when the request offers tools; None: {"input": "<last user text>"}.
    tool_arguments: dict[str, Any] | None = None
    # Usage details: OpenAI's prompt_tokens_details.cached_tokens (part of prompt_tokens; also the
    # Responses input_tokens_details and Gemini's cachedContentTokenCount) ...
    cached_tokens: int = 0
    # ... and hidden reasoning tokens, added to completion/output tokens on every face
    # (completion_tokens_details.reasoning_tokens, output_tokens_details, Gemini's thoughtsTokenCount).
    reasoning_tokens: int = 0
    # Anthropic's cache_read_input_tokens / cache_creation_input_tokens; input_tokens excludes both.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # Simulate the providers' prompt caches (prompt_cache.py) instead of the fixed numbers above: a prefix
    # seen lately is reported as cache reads, a new one as a cache write (Anthropic, at its cache_control
    # blocks) or not at all (OpenAI chat: automatic, prompts of cache_min_tokens or more).
    prompt_cache: bool = False
    cache_min_tokens: int = 1024
    cache: PromptCache = field(default_factory=PromptCache)
    # When set, requests must carry it: "Authorization: Bearer <api_key>" (OpenAI), "x-api-key"
    # (Anthropic), "x-goog-api-key" or "?key=" (Gemini).
    api_key: str | None = None
    # A prompt of more tokens than this gets the face's own context-length error (OpenAI
    # context_length_exceeded, Anthropic "prompt is too long", Gemini "input token count ... exceeds").
    context_window: int | None = None
    # Every text answer is refused on content policy: OpenAI chat finish_reason content_filter, Anthropic
    # stop_reason refusal, with no content.
    content_filter: bool = False
    # Every POST received, oldest first: {"method", "path", "headers", "body"} (Gemini: and "query").
    requests: list[dict[str, Any]] = field(default_factory=list)

    def record(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        if len(self.requests) > MAX_RECORDED_REQUESTS:
            del self.requests[0]

    def should_fail(self) -> bool:
        """Whether this request gets ``fail_status``; consumes one of ``fail_times``."""
        if self.fail_status is None:
            return False
        if self.fail_times is None:
            return True
        if self.fail_times > 0:
            self.fail_times -= 1
            return True
        return False

    def reset(self) -> None:
        """Back to the defaults (and forget recorded requests), for fixtures shared by tests."""
        defaults = Behaviour()
        for f in fields(self):
            if f.name not in ("requests", "cache"):
                setattr(self, f.name, getattr(defaults, f.name))
        self.requests.clear()  # in place: callers may hold a reference to the list
        self.cache.clear()
