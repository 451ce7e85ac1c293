"""Shared plumbing for providers that run an installed CLI (Claude Code, Gemini CLI) as a subprocess.

A subscription CLI takes one prompt, runs one non-interactive session and
prints newline-delimited JSON. This module owns everything both adapters
share:

- **the prompt**: a conversation rendered into one text (earlier turns as a
  transcript, the last user turn last), the system prompt handed back for a
  flag or prefixed; client tools, images, prefill and ``n > 1`` are
  ``unsupported`` (the gateway fails over to a provider that can).
- **the child**: ``CliRun`` spawns the argument list (never a shell) in a new
  session (its own process group), in a private empty temp directory, with
  the prompt on stdin and the environment inherited (the CLI has its own
  login); ``timeout_s`` bounds the time to the first line and between lines;
  whenever the run ends (a result, an error, a timeout, the consumer closing
  the stream) the group is sent SIGTERM, then SIGKILL after a short grace, so
  no child outlives its request. ``max_concurrency`` children at once.
- **failures**: exit codes and stderr classified into ``FailureKind`` (login
  trouble -> AUTH, usage limits -> RATE_LIMITED, else SERVER); stderr reaches
  clients only as a redacted, bounded excerpt.

Each adapter supplies its argument list and a parser from its JSON lines to
core stream events (``CliParser``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from typing import Any, AsyncIterator, ClassVar, Mapping

from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind, kind_for_status
from llmgw_common.logs import redact

from ..core.errors import UpstreamError, unsupported
from ..core.types import (ChatRequest, ChatResponse, Finish, Image, Message, Start, StreamEvent, Text, TextDelta,
                          Thinking, ThinkingDelta, ToolResult, UsageUpdate)
from .base import BaseProvider, ProviderContext

log = logging.getLogger(__name__)

GRACE_S = 2.0  # SIGTERM -> SIGKILL; and how long a child may take to exit after its result
LINE_LIMIT = 32 * 1024 * 1024  # one JSON line (a whole assistant message) may be long
STDERR_KEEP = 16 * 1024  # the tail of stderr kept for error messages
EXCERPT = 300  # characters of CLI output a client may see in an error message
SYSTEM_FLAG_MAX = 64 * 1024  # a longer system prompt goes into the prompt (argv strings are bounded)

# what a CLI says when it is not logged in / out of its plan's allowance / busy
_AUTH_TEXT = re.compile(r"not logged in|log ?in (again|required)|/login\b|invalid api key|api key not valid|"
                        r"authentication|authenticate\b|unauthori[sz]ed|token (has )?expired|"
                        r"oauth\S*\s+token.*(expired|invalid|revoked)|credentials?\b.*(expired|invalid|missing)|"
                        r"auth method", re.I)
_LIMIT_TEXT = re.compile(r"usage limit|rate.?limit|limit reached|hit your limit|quota|resource.?exhausted|"
                         r"too many requests|billing|credit balance", re.I)
_BUSY_TEXT = re.compile(r"overloaded|unavailable", re.I)
# Claude Code's subscription limit message ends with the reset time: "...usage limit reached|1750000000"
_RESET_AT = re.compile(r"limit reached\|(\d{9,11})\b")


# ---- prompt ------------------------------------------------------------------

_RESPONSE_FORMAT_NOTE = "Respond with a single JSON object and nothing else."


def _turn_text(m: Message) -> str:
    """One message as transcript text (tool calls and results written out: they cannot be replayed)."""
    pieces: list[str] = []
    for p in m.parts:
        if isinstance(p, Text):
            if p.text:
                pieces.append(p.text)
        elif isinstance(p, ToolResult):
            body = "".join(q.text for q in p.content if isinstance(q, Text))
            label = f"Result of tool {p.name}" if p.name else f"Result of tool call {p.tool_call_id}"
            pieces.append(f"[{label}{' (error)' if p.is_error else ''}]\n{body}")
        # Thinking parts stay out: the CLI cannot take another model's reasoning back
    for c in m.tool_calls:
        pieces.append(f"[Called tool {c.name} with arguments {c.arguments}]")
    return "\n\n".join(pieces)


def render_prompt(req: ChatRequest, system_flag: bool) -> tuple[str | None, str]:
    """``(system, prompt)``: the conversation as one prompt for a CLI.

    ``system_flag``: the CLI takes a system prompt in an option (returned apart);
    otherwise it is prefixed to the prompt and ``None`` is returned.
    """
    if req.tools:
        raise unsupported("a CLI provider cannot call the client's tools (the CLI runs its own)")
    if req.n != 1:
        raise unsupported("a CLI provider answers one choice per request (n must be 1)")
    for m in req.messages:
        if any(isinstance(p, Image) for p in m.parts) or any(
                isinstance(p, ToolResult) and any(isinstance(q, Image) for q in p.content) for p in m.parts):
            raise unsupported("a CLI provider takes text only (the request has images)")
    system = req.system_text().strip()
    fmt = req.response_format or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema")
        note = _RESPONSE_FORMAT_NOTE + (" It must match this JSON schema: " + json.dumps(schema) if schema else "")
        system = f"{system}\n\n{note}" if system else note
    turns = [m for m in req.messages if m.role != "system"]
    last_assistant = max((i for i, m in enumerate(turns) if m.role == "assistant"), default=-1)
    history, tail = turns[:last_assistant + 1], turns[last_assistant + 1:]
    current = "\n\n".join(t for t in (_turn_text(m) for m in tail) if t)
    if not current:
        raise unsupported("a CLI provider needs the conversation to end with a user message")
    lines: list[str] = []
    if history:
        lines.append("[Earlier turns of this conversation]")
        for m in history:
            text = _turn_text(m)
            if text:
                lines.append(f"{'Assistant' if m.role == 'assistant' else 'User'}: {text}")
        lines.append("[The user's new message]")
    lines.append(current)
    prompt = "\n\n".join(lines)
    if system and (not system_flag or len(system.encode()) > SYSTEM_FLAG_MAX):
        prompt = f"[System instructions]\n\n{system}\n\n{prompt}" if history else \
            f"[System instructions]\n\n{system}\n\n[The user's message]\n\n{prompt}"
        system = ""
    return (system or None) if system_flag else None, prompt


# ---- failures ------------------------------------------------------------------

def excerpt(text: str, limit: int = EXCERPT) -> str:
    """Redacted, one line, bounded: the most of a CLI's output a client may see."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return redact(text)


def classify_text(text: str, default: FailureKind = FailureKind.SERVER) -> FailureKind:
    if _AUTH_TEXT.search(text):
        return FailureKind.AUTH
    if _LIMIT_TEXT.search(text):
        return FailureKind.RATE_LIMITED
    if _BUSY_TEXT.search(text):
        return FailureKind.OVERLOADED
    return default


_STATUS = {FailureKind.AUTH: 401, FailureKind.RATE_LIMITED: 429, FailureKind.OVERLOADED: 503,
           FailureKind.TIMEOUT: 504, FailureKind.BAD_REQUEST: 400, FailureKind.UNSUPPORTED: 400,
           FailureKind.NOT_FOUND: 404}


def cli_error(provider_id: str, kind: FailureKind, detail: str, status: int | None = None) -> UpstreamError:
    retry_after = None
    if kind is FailureKind.RATE_LIMITED:
        reset = _RESET_AT.search(detail)
        if reset:
            retry_after = max(1.0, int(reset.group(1)) - time.time())
    text = excerpt(detail)
    return UpstreamError(status or _STATUS.get(kind, 502), f"provider {provider_id}: {text or kind.value}",
                         kind=kind, retry_after_s=retry_after)


def kind_for_api_status(status: Any) -> FailureKind | None:
    """The kind of an HTTP status a CLI reports from its API (None: it did not say)."""
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
        return kind_for_status(status)
    return None


# ---- the child -------------------------------------------------------------------

class CliRun:
    """One CLI child process for one request; ``async with`` it, read ``lines()``, then ``finish()``.

    Leaving the block always ends the child: after its result it gets ``GRACE_S``
    to exit by itself; in every other case (an error, a timeout, the generator
    closed or cancelled) its process group gets SIGTERM at once and SIGKILL
    after ``GRACE_S``. The slot and the temp directory are given back when the
    child is gone.
    """

    def __init__(self, provider_id: str, argv: list[str], stdin: bytes, timeout_s: float,
                 slots: asyncio.Semaphore, env: Mapping[str, str] | None = None, reapers: set | None = None):
        self.provider_id = provider_id
        self.argv = argv
        self.stdin = stdin
        self.timeout_s = timeout_s
        self.slots = slots
        self.env = env
        self.reapers = reapers if reapers is not None else set()
        self.proc: asyncio.subprocess.Process | None = None
        self.cwd: str | None = None
        self.completed = False  # the CLI printed its result: let it exit by itself
        self._stderr = bytearray()
        self._tasks: list[asyncio.Task] = []

    # ---- life cycle ----

    async def __aenter__(self) -> CliRun:
        await self.slots.acquire()  # cancelled while waiting: nothing to give back
        try:
            self.cwd = tempfile.mkdtemp(prefix="llmgw-cli-")
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=self.cwd, env=self.env, start_new_session=True,
                    limit=LINE_LIMIT)
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                # not installed (or not executable): like an endpoint that does not answer. CONNECTION:
                # the gateway fails over, the failure counts towards the breaker (which opens and keeps
                # the provider out until it is installed), and a retry here costs only the spawn
                raise UpstreamError(502, f"provider {self.provider_id}: cannot run {self.argv[0]!r} "
                                    f"({type(exc).__name__}: {exc.strerror or 'not found'})",
                                    kind=FailureKind.CONNECTION) from None
            except OSError as exc:
                raise UpstreamError(502, f"provider {self.provider_id}: cannot start {self.argv[0]!r} "
                                    f"({type(exc).__name__})", kind=FailureKind.CONNECTION) from None
        except BaseException:
            self._cleanup_dir()
            self.slots.release()
            raise
        self._tasks = [asyncio.ensure_future(self._feed()), asyncio.ensure_future(self._drain_stderr())]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self.completed and self.proc is not None and self.proc.returncode is None:
            # the answer is complete: the caller need not wait for the CLI's own clean-up
            task = asyncio.ensure_future(self._end(stop=False))
            self.reapers.add(task)
            task.add_done_callback(self.reapers.discard)
            return
        await self._end(stop=not self.completed)

    async def _end(self, stop: bool) -> None:
        """Stop (or, after a result, await) the child, then give back its slot and directory."""
        proc = self.proc
        try:
            if proc is not None:
                if stop and proc.returncode is None:
                    self._signal(signal.SIGTERM)  # at once, before any await: a second cancel cannot skip it
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), GRACE_S)
                except TimeoutError:
                    if not stop:
                        self._signal(signal.SIGTERM)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(proc.wait()), GRACE_S)
                finally:
                    # whatever happened (a second cancellation included): nothing of the group survives;
                    # the leader is reaped by asyncio's child watcher even if we are cancelled here
                    self._signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), GRACE_S)
        finally:
            for task in self._tasks:
                task.cancel()
            self._cleanup_dir()
            self.slots.release()

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the child leads its own group
        except (ProcessLookupError, PermissionError):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _cleanup_dir(self) -> None:
        if self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)
            self.cwd = None

    async def _feed(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        stdin = self.proc.stdin
        try:
            stdin.write(self.stdin)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child exited without reading: its exit code says why
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            chunk = await self.proc.stderr.read(65536)
            if not chunk:
                return
            self._stderr += chunk
            if len(self._stderr) > 2 * STDERR_KEEP:
                del self._stderr[:-STDERR_KEEP]

    # ---- output ----

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """stdout's JSON objects, one per line; lines that are not JSON objects are skipped.

        ``timeout_s`` bounds the wait for every line: a silent CLI is a TIMEOUT.
        """
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives as the
                # line does (the client gone), and the child would then live until the next line's timeout
                async with asyncio.timeout(self.timeout_s):
                    line = await stdout.readline()
            except TimeoutError:
                raise UpstreamError(504, f"provider {self.provider_id}: the CLI printed nothing for "
                                    f"{self.timeout_s:g}s", kind=FailureKind.TIMEOUT) from None
            except (ValueError, asyncio.LimitOverrunError):
                raise UpstreamError(502, f"provider {self.provider_id}: the CLI printed a line over "
                                    f"{LINE_LIMIT} bytes", kind=FailureKind.PROTOCOL) from None
            if not line:
                return
            line = line.strip()
            if not line.startswith(b"{"):
                if line:
                    log.debug("provider %s: skipped a line that is not JSON: %s", self.provider_id,
                              excerpt(line.decode("utf-8", "replace"), 200))
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                log.debug("provider %s: skipped a line that is not JSON", self.provider_id)
                continue
            if isinstance(obj, dict):
                yield obj

    async def finish(self) -> int:
        """The exit code, once stdout has ended (bounded by the timeout)."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                code = await self.proc.wait()
        except TimeoutError:
            raise UpstreamError(504, f"provider {self.provider_id}: the CLI closed its output but did not exit",
                                kind=FailureKind.TIMEOUT) from None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tasks[1]), 1.0)  # the rest of stderr
        return code

    @property
    def stderr(self) -> str:
        return bytes(self._stderr[-STDERR_KEEP:]).decode("utf-8", "replace")


# ---- the provider ------------------------------------------------------------------

class CliParser:
    """One run's JSON lines -> core stream events. ``feed`` raises ``UpstreamError`` for an error result."""

    def __init__(self, provider_id: str, model: str):
        self.provider_id = provider_id
        self.model = model
        self.done = False  # the CLI's result arrived
        self.hints: list[str] = []  # error text seen on the way (for a run that ends without a result)
        self._started = False
        self._start_id = ""

    def start(self) -> list[StreamEvent]:
        """``Start`` before the first content: nothing is sent before the CLI has produced an answer,
        so login and limit failures (which print no content) can still fail over."""
        if self._started:
            return []
        self._started = True
        return [Start(id=self._start_id or f"cli-{os.urandom(8).hex()}", model=self.model, created=int(time.time()))]

    def feed(self, obj: dict[str, Any]) -> list[StreamEvent]:
        raise NotImplementedError

    def failure(self, code: int, stderr: str) -> UpstreamError:
        """The run ended without a result."""
        detail = "\n".join([*self.hints, stderr]).strip()
        if code == 0:
            return cli_error(self.provider_id, FailureKind.PROTOCOL,
                             f"the CLI exited without a result. {detail}".strip())
        kind = self.exit_kind(code) or classify_text(detail)
        return cli_error(self.provider_id, kind, f"the CLI exited with code {code}: {detail or 'no output'}")

    def exit_kind(self, code: int) -> FailureKind | None:
        return None


class CliProvider(BaseProvider):
    """A provider that is a CLI: ``argv`` and ``parser`` per CLI, the rest shared."""

    default_command: ClassVar[list[str]]
    system_flag: ClassVar[bool] = False  # the CLI takes a system prompt in an option
    # never passed to the child: the CLI must use its own (subscription) login, and must not be pointed
    # back at this gateway by a variable meant for the gateway's other clients
    drop_env: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ProviderConfig, ctx: ProviderContext):
        super().__init__(config, ctx)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._reapers: set[asyncio.Task] = set()

    @property
    def command(self) -> list[str]:
        return list(self.config.command or self.default_command)

    def argv(self, model: str, system: str | None) -> list[str]:
        raise NotImplementedError

    def parser(self, model: str) -> CliParser:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        if not any(name in os.environ for name in self.drop_env):
            return None  # inherited as it is
        return {k: v for k, v in os.environ.items() if k not in self.drop_env}

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse:
        return await collect(self.chat_stream(req, model), model)

    async def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        system, prompt = render_prompt(req, self.system_flag)
        parser = self.parser(model)
        async with CliRun(self.id, self.argv(model, system), prompt.encode(), self.config.timeout_s,
                          self._slots, self.environment(), self._reapers) as run:
            async with contextlib.aclosing(run.lines()) as lines:
                async for obj in lines:
                    for event in parser.feed(obj):
                        yield event
                    if parser.done:
                        run.completed = True
                        return
            code = await run.finish()
            err = parser.failure(code, run.stderr)
            if run.stderr.strip():
                log.warning("provider %s: CLI exited with code %s: %s", self.id, code, excerpt(run.stderr, 2000))
            raise err

    async def close(self) -> None:
        if self._reapers:
            await asyncio.gather(*list(self._reapers), return_exceptions=True)


async def collect(events: AsyncIterator[StreamEvent], model: str) -> ChatResponse:
    """A whole answer from a stream of events (``chat`` for the CLIs, which always stream)."""
    resp = ChatResponse(id="", model=model, created=int(time.time()))
    text: list[str] = []
    thinking: Thinking | None = None

    def flush_text() -> None:
        if text:
            resp.parts.append(Text("".join(text)))
            text.clear()

    try:
        async for event in events:
            if isinstance(event, Start):
                resp.id, resp.model, resp.created = event.id, event.model, event.created or resp.created
            elif isinstance(event, TextDelta):
                thinking = None
                text.append(event.text)
            elif isinstance(event, ThinkingDelta):
                flush_text()
                if thinking is None or (event.redacted is not None) or thinking.redacted is not None:
                    thinking = Thinking()
                    resp.parts.append(thinking)
                thinking.text += event.text
                if event.signature:
                    thinking.signature = (thinking.signature or "") + event.signature
                if event.redacted is not None:
                    thinking.redacted = event.redacted
            elif isinstance(event, UsageUpdate):
                resp.usage.merge(event.usage)
            elif isinstance(event, Finish):
                resp.finish_reason, resp.stop_sequence = event.reason, event.stop_sequence
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    flush_text()
    return resp


def nonneg(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

