"""Gemini CLI (``gemini``) run headless as a subprocess: a Google login's Gemini plan behind the gateway.

Invocation: ``gemini --output-format stream-json [--model M] --prompt ""`` with
the rendered conversation on stdin: the CLI reads piped stdin and puts
``--prompt``'s text after it, so the whole prompt travels on stdin (argv is
visible to every local user and bounded in length); ``--prompt`` selects
headless mode. The CLI has no option to add to its system prompt (only
``GEMINI_SYSTEM_MD``, which replaces it), so the system prompt is prefixed
(``cli.render_prompt``). The command's fixed part comes from the config
(``command``; default ``["gemini"]``).

Output (newline-delimited JSON, ``--output-format stream-json``):

- ``{"type": "init", "session_id", "model"}``;
- ``{"type": "message", "role": "user" | "assistant", "content", "delta": true}``:
  the assistant's text as it comes (the user echo is skipped);
- ``{"type": "tool_use" | "tool_result", ...}``: the CLI's own tools (skipped);
- ``{"type": "error", "severity", "message"}``: warnings and errors on the way;
- ``{"type": "result", "status": "success" | "error", "error"?: {"type", "message"},
  "stats": {"total_tokens", "input_tokens", "output_tokens", "cached", "input", ...}}`` last.

Usage: ``input_tokens`` is the prompt with its cached part (``cached``) in it;
``output_tokens`` is the candidates without the thoughts, which the stream's
stats do not list apart: they are ``total - input - output`` (the API's total
counts them), added to our output and kept as reasoning. Exit code 41 is the
CLI's authentication failure.
"""

from __future__ import annotations

from typing import Any

from llmgw_common.failures import FailureKind

from ..core.types import Finish, StreamEvent, TextDelta, Usage, UsageUpdate
from .cli import CliParser, CliProvider, classify_text, cli_error, nonneg

EXIT_AUTH = 41  # the CLI's FATAL_AUTHENTICATION_ERROR


def usage_from(stats: Any) -> Usage:
    if not isinstance(stats, dict):
        return Usage()
    prompt, candidates = nonneg(stats.get("input_tokens")), nonneg(stats.get("output_tokens"))
    thoughts = max(0, nonneg(stats.get("total_tokens")) - prompt - candidates)
    return Usage(input_tokens=prompt, output_tokens=candidates + thoughts,
                 cache_read_tokens=min(nonneg(stats.get("cached")), prompt), reasoning_tokens=thoughts)


class GeminiCliParser(CliParser):
    def __init__(self, provider_id: str, model: str):
        super().__init__(provider_id, model)
        self._any_text = False
        self._after_tool = False

    def feed(self, obj: dict[str, Any]) -> list[StreamEvent]:
        kind = obj.get("type")
        if kind == "message":
            if obj.get("role") != "assistant" or not obj.get("content"):
                return []
            text = str(obj["content"])
            if self._after_tool and self._any_text:
                text = "\n\n" + text  # the CLI's next turn (after one of its own tools) starts a paragraph
            self._after_tool = False
            self._any_text = True
            return [*self.start(), TextDelta(text)]
        if kind in ("tool_use", "tool_result"):
            self._after_tool = True
        elif kind == "init":
            if obj.get("session_id"):
                self._start_id = str(obj["session_id"])
            if obj.get("model"):
                self.model = str(obj["model"])
        elif kind == "error":
            if obj.get("message"):
                self.hints.append(str(obj["message"]))
        elif kind == "result":
            self.done = True
            if obj.get("status") != "success":
                error = obj.get("error") if isinstance(obj.get("error"), dict) else {}
                detail = " ".join(str(x) for x in [error.get("type") or "", error.get("message") or "",
                                                   *self.hints] if x).strip() or "the CLI reported an error"
                raise cli_error(self.provider_id, classify_text(detail), detail)
            return [*self.start(), UsageUpdate(usage_from(obj.get("stats"))), Finish("stop")]
        return []

    def exit_kind(self, code: int) -> FailureKind | None:
        return {EXIT_AUTH: FailureKind.AUTH}.get(code)


class GeminiCliProvider(CliProvider):
    type = "gemini_cli"
    genai_system = "gcp.gemini"
    error_format = "openai"
    default_command = ["gemini"]
    system_flag = False

    def argv(self, model: str, system: str | None) -> list[str]:
        args = [*self.command, "--output-format", "stream-json"]
        if model and model != "default":
            args += ["--model", model]
        return [*args, "--prompt", ""]

    def parser(self, model: str) -> GeminiCliParser:
        return GeminiCliParser(self.id, model)
