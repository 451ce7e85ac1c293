"""Claude Code (``claude``) run headless as a subprocess: a Claude subscription (Pro / Max) behind the gateway.

Invocation: ``claude -p --output-format stream-json --verbose --include-partial-messages
[--model M] [--append-system-prompt S]`` with the rendered conversation on
stdin (``cli.render_prompt``). The command's fixed part comes from the config
(``command``; default ``["claude"]``): add flags there, e.g.
``["claude", "--no-session-persistence"]``.

Output (newline-delimited JSON, one object a line):

- ``{"type": "system", "subtype": "init", "session_id", "model", ...}`` first;
- ``{"type": "stream_event", "event": {...}}``: the Messages API's raw stream
  events (``message_start``, ``content_block_delta`` with ``text_delta`` /
  ``thinking_delta`` / ``signature_delta``, ``message_delta``...), present
  with ``--include-partial-messages``: text and thinking as they come;
- ``{"type": "assistant", "message": {"id", "model", "content": [...], "usage"},
  "error"?}``: each complete message (its content is skipped when its stream
  events were seen; an ``error`` marks a synthetic message reporting an API
  failure, never content);
- ``{"type": "user", ...}``: results of the CLI's own tools (skipped);
- ``{"type": "result", "subtype", "is_error", "result", "usage",
  "total_cost_usd", "api_error_status"?, ...}`` last.

Messages with a ``parent_tool_use_id`` come from a sub-agent and are skipped.
Usage is the result's (cumulative over the CLI's turns): ``input_tokens``
excludes cache reads and writes, ours includes them. ``total_cost_usd`` is
what the same tokens would cost on the API; a subscription has no marginal
cost, so it is NOT reported (``reported_cost`` stays None).
"""

from __future__ import annotations

from typing import Any

from llmgw_common.failures import FailureKind

from ..core.errors import UpstreamError
from ..core.types import Finish, StreamEvent, TextDelta, ThinkingDelta, Usage, UsageUpdate
from .cli import CliParser, CliProvider, classify_text, cli_error, kind_for_api_status, nonneg

_STOP = {"max_tokens": "length", "refusal": "content_filter", "model_context_window_exceeded": "length"}
# the ``error`` of an assistant message that reports an API failure
_ASSISTANT_ERRORS = {"authentication_failed": FailureKind.AUTH, "billing_error": FailureKind.RATE_LIMITED,
                     "rate_limit": FailureKind.RATE_LIMITED, "server_error": FailureKind.SERVER,
                     "invalid_request": FailureKind.BAD_REQUEST}


def usage_from(obj: Any) -> Usage:
    if not isinstance(obj, dict):
        return Usage()
    read, write = nonneg(obj.get("cache_read_input_tokens")), nonneg(obj.get("cache_creation_input_tokens"))
    return Usage(input_tokens=nonneg(obj.get("input_tokens")) + read + write,
                 output_tokens=nonneg(obj.get("output_tokens")), cache_read_tokens=read, cache_write_tokens=write)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text") or "") for b in content if isinstance(b, dict))
    return ""


class ClaudeCodeParser(CliParser):
    def __init__(self, provider_id: str, model: str):
        super().__init__(provider_id, model)
        self._streamed: set[str] = set()  # message ids whose content came as stream events
        self._text_message: str | None = None  # the message the last text came from
        self._stop: str | None = None
        self._error_kind: FailureKind | None = None
        self._current: str | None = None  # the message being streamed

    def _text(self, message_id: str | None, text: str) -> list[StreamEvent]:
        if not text:
            return []
        out = self.start()
        if self._text_message is not None and message_id != self._text_message:
            text = "\n\n" + text  # the CLI's next turn (after one of its own tools) starts a paragraph
        self._text_message = message_id
        out.append(TextDelta(text))
        return out

    def _identify(self, message: dict[str, Any]) -> None:
        if not self._start_id and message.get("id"):
            self._start_id = str(message["id"])
        if message.get("model"):
            self.model = str(message["model"])

    def feed(self, obj: dict[str, Any]) -> list[StreamEvent]:
        kind = obj.get("type")
        if obj.get("parent_tool_use_id"):
            return []  # a sub-agent's traffic, not the answer
        if kind == "stream_event":
            return self._stream_event(obj.get("event") or {})
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "result":
            return self._result(obj)
        if kind == "system" and obj.get("subtype") == "init":
            if obj.get("model") and not self._started:
                self.model = str(obj["model"])
        return []

    def _stream_event(self, event: dict[str, Any]) -> list[StreamEvent]:
        etype = event.get("type")
        if etype == "message_start":
            message = event.get("message") or {}
            if message.get("id"):
                self._streamed.add(str(message["id"]))
                self._current = str(message["id"])
            if not self._started:
                self._identify(message)
            return []
        current = self._current
        if etype == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text":
                return self._text(current, str(block.get("text") or ""))
            if block.get("type") == "thinking" and block.get("thinking"):
                return [*self.start(), ThinkingDelta(text=str(block["thinking"]))]
            if block.get("type") == "redacted_thinking":
                return [*self.start(), ThinkingDelta(redacted=str(block.get("data") or ""))]
        elif etype == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._text(current, str(delta.get("text") or ""))
            if dtype == "thinking_delta" and delta.get("thinking"):
                return [*self.start(), ThinkingDelta(text=str(delta["thinking"]))]
            if dtype == "signature_delta" and delta.get("signature"):
                return [*self.start(), ThinkingDelta(signature=str(delta["signature"]))]
        elif etype == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop:
                self._stop = str(stop)
        return []

    def _assistant(self, obj: dict[str, Any]) -> list[StreamEvent]:
        message = obj.get("message") or {}
        if obj.get("error") or message.get("model") == "<synthetic>":
            # the CLI's own message reporting an API failure ("Invalid API key · Please run /login"),
            # never content (older versions mark it only by its model)
            self._error_kind = _ASSISTANT_ERRORS.get(str(obj.get("error")), self._error_kind)
            self.hints.append(f"{obj.get('error') or 'error'}: {_text_of(message.get('content'))}")
            return []
        if message.get("stop_reason"):
            self._stop = str(message["stop_reason"])
        message_id = str(message.get("id") or "") or None
        if message_id in self._streamed:
            return []  # already sent, piece by piece
        if not self._started:
            self._identify(message)
        out: list[StreamEvent] = []
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                out += self._text(message_id, str(block.get("text") or ""))
            elif btype == "thinking":
                out += [*self.start(), ThinkingDelta(text=str(block.get("thinking") or ""),
                                                     signature=block.get("signature") or None)]
            elif btype == "redacted_thinking":
                out += [*self.start(), ThinkingDelta(redacted=str(block.get("data") or ""))]
            # tool_use / tool_result: the CLI's own tools at work, not part of the answer
        return out

    def _result(self, obj: dict[str, Any]) -> list[StreamEvent]:
        self.done = True
        if obj.get("is_error") or obj.get("subtype") not in (None, "success"):
            detail = " ".join(str(x) for x in [obj.get("result") or "", *(obj.get("errors") or []), *self.hints]
                              if x).strip() or str(obj.get("subtype") or "error")
            kind = (kind_for_api_status(obj.get("api_error_status")) or self._error_kind
                    or classify_text(detail))
            if obj.get("subtype") == "error_max_turns":
                detail = f"the CLI ran out of turns ({detail})"
            raise cli_error(self.provider_id, kind, detail)
        if not self._started and self.hints:
            # no answer, only the CLI's own error message (older versions call that a success)
            detail = " ".join(self.hints)
            raise cli_error(self.provider_id, self._error_kind or classify_text(detail), detail)
        stop = obj.get("stop_reason") or self._stop or "end_turn"
        return [*self.start(), UsageUpdate(usage_from(obj.get("usage"))), Finish(_STOP.get(str(stop), "stop"))]

    def failure(self, code: int, stderr: str) -> UpstreamError:
        err = super().failure(code, stderr)
        if self._error_kind is not None and code != 0:
            err.kind = self._error_kind
        return err


class ClaudeCodeProvider(CliProvider):
    type = "claude_code"
    genai_system = "anthropic"
    error_format = "anthropic"
    default_command = ["claude"]
    system_flag = True
    # an API key or base URL in the gateway's environment would make the CLI bill the API (or call this
    # gateway back) instead of using its subscription login
    drop_env = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")

    def argv(self, model: str, system: str | None) -> list[str]:
        args = [*self.command, "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
        if model and model != "default":
            args += ["--model", model]
        if system:
            system = system.replace("\x00", "")  # an argument cannot hold NUL
            # the = form: a value starting with "-" must not read as an option
            args += [f"--append-system-prompt={system}"] if system.startswith("-") else \
                ["--append-system-prompt", system]
        return args

    def parser(self, model: str) -> ClaudeCodeParser:
        return ClaudeCodeParser(self.id, model)
