"""What the demo provider does: a mutable record that tests change while the server runs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Enough history for any test's assertions, bounded so a benchmark cannot grow it forever.
MAX_RECORDED_REQUESTS = 1000


@dataclass
class Behaviour:
    models: list[str] = field(default_factory=lambda: ["demo-chat"])
    # Fail chat/embedding requests with this HTTP status and an OpenAI error body ...
    fail_status: int | None = None
    # ... for the next N requests only (None: every request while fail_status is set).
    fail_times: int | None = None
    # Seconds; sent as Retry-After on failures and as x-ratelimit-reset-requests on 429.
    retry_after: float | None = None
    delay_s: float = 0.0  # before the response, or before the first chunk when streaming
    chunk_delay_s: float = 0.0  # between streamed chunks
    # Streaming: drop the connection after this many content chunks, without finish or [DONE].
    die_after_chunks: int | None = None
    reply: str | None = None  # fixed reply text; None: "Echo: <last user message>"
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <api_key>"
    # Every POST received, oldest first: {"method", "path", "headers", "body"}.
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
            if f.name != "requests":
                setattr(self, f.name, getattr(defaults, f.name))
        self.requests.clear()  # in place: callers may hold a reference to the list
