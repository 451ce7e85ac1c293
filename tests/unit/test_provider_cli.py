"""The claude_code and gemini_cli providers against fake CLIs (tests/fake_cli) that print the real formats."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind
from llmgw_edge.core.errors import UpstreamError
from llmgw_edge.core.types import (ChatRequest, Finish, Image, Message, Start, Text, TextDelta, Thinking,
                                   ThinkingDelta, ToolSpec, UsageUpdate)
from llmgw_edge.providers import PROVIDER_TYPES, build_provider
from llmgw_edge.providers.claude_code import ClaudeCodeParser
from llmgw_edge.providers.cli import render_prompt

FAKE = Path(__file__).parent.parent / "fake_cli"
TEXT = "Hello from the fake CLI."


def make(kind: str, tmp_path: Path, command: list[str] | None | str = "fake", **over):
    if command == "fake":
        command = [str(FAKE / ("claude" if kind == "claude_code" else "gemini"))]
    cfg = ProviderConfig(id=kind.replace("_", "-"), type=kind, command=command, models=[{"name": "m"}],
                         timeout_s=over.pop("timeout_s", 10.0), **over)
    return build_provider(cfg, None, tmp_path)  # type: ignore[arg-type]  # no HTTP transport needed


def chat(*turns: tuple[str, str], **kw) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role, [Text(text)]) for role, text in turns], **kw)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


async def gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return False


def pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """Per-test files the fakes write: what they were given, their pids, their start/end times."""
    for name in ("FAKE_CLI_MODE", "FAKE_CLI_TEXT", "FAKE_CLI_DELAY", "FAKE_CLI_GRANDCHILD"):
        monkeypatch.delenv(name, raising=False)
    files = {"record": tmp_path / "record.json", "pids": tmp_path / "pids", "log": tmp_path / "log"}
    monkeypatch.setenv("FAKE_CLI_RECORD", str(files["record"]))
    monkeypatch.setenv("FAKE_CLI_PIDFILE", str(files["pids"]))
    monkeypatch.setenv("FAKE_CLI_LOG", str(files["log"]))
    return files


async def events_of(provider, req: ChatRequest, model: str = "m") -> list:
    return [e async for e in provider.chat_stream(req, model)]


# ---- the answer -----------------------------------------------------------------

def test_registered():
    assert PROVIDER_TYPES["claude_code"].__name__ == "ClaudeCodeProvider"
    assert PROVIDER_TYPES["gemini_cli"].__name__ == "GeminiCliProvider"


async def test_claude_chat(fake_env, tmp_path):
    p = make("claude_code", tmp_path)
    resp = await p.chat(chat(("user", "Say hello")), "sonnet")
    await p.close()
    assert resp.text() == TEXT and resp.finish_reason == "stop"
    assert resp.model == "sonnet" and resp.id.startswith("msg_")
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (2103, 12, 2000, 100)
    assert u.reported_cost is None  # a subscription: total_cost_usd is not what the request cost
    rec = json.loads(fake_env["record"].read_text())
    assert rec["argv"][:5] == ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
    assert rec["argv"][5:] == ["--model", "sonnet"] and rec["stdin"] == "Say hello"
    # a private, empty working directory, removed afterwards
    assert rec["cwd_files"] == [] and rec["cwd"] != os.getcwd() and not os.path.exists(rec["cwd"])


async def test_claude_stream(fake_env, tmp_path):
    p = make("claude_code", tmp_path)
    events = await events_of(p, chat(("user", "hi")), "sonnet")
    await p.close()
    assert isinstance(events[0], Start) and events[0].id.startswith("msg_") and events[0].model == "sonnet"
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1 and "".join(deltas) == TEXT  # piece by piece, and the whole message not repeated
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"
    usage = [e for e in events if isinstance(e, UsageUpdate)]
    assert len(usage) == 1 and usage[0].usage.input_tokens == 2103


async def test_claude_thinking(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "thinking")
    p = make("claude_code", tmp_path)
    events = await events_of(p, chat(("user", "hi")))
    thinking = [e for e in events if isinstance(e, ThinkingDelta)]
    assert "".join(e.text for e in thinking) == "Let me think."
    assert [e.signature for e in thinking if e.signature] == ["sig-abc"]
    resp = await p.chat(chat(("user", "hi")), "m")
    await p.close()
    assert isinstance(resp.parts[0], Thinking) and resp.parts[0].text == "Let me think."
    assert resp.parts[0].signature == "sig-abc" and resp.text() == TEXT


async def test_claude_own_tools_and_subagents(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "tools")
    p = make("claude_code", tmp_path)
    resp = await p.chat(chat(("user", "search")), "m")
    await p.close()
    assert resp.text() == "Let me look that up.\n\n" + TEXT and resp.tool_calls == []


def test_claude_parser_without_partial_messages():
    """Older CLIs (or no --include-partial-messages): whole assistant messages only."""
    parser = ClaudeCodeParser("p", "m")
    out = []
    for line in [{"type": "system", "subtype": "init", "model": "claude-x", "session_id": "s"},
                 {"type": "assistant", "message": {"id": "msg_1", "model": "claude-x",
                                                   "content": [{"type": "text", "text": "Hi "}]}},
                 {"type": "assistant", "message": {"id": "msg_1", "model": "claude-x",
                                                   "content": [{"type": "text", "text": "there"}]}},
                 {"type": "result", "subtype": "success", "is_error": False, "result": "Hi there",
                  "usage": {"input_tokens": 5, "output_tokens": 2}, "total_cost_usd": 1.5}]:
        out += parser.feed(line)
    assert isinstance(out[0], Start) and out[0].model == "claude-x"
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == "Hi there"
    assert [e.usage.reported_cost for e in out if isinstance(e, UsageUpdate)] == [None]
    assert parser.done and isinstance(out[-1], Finish)


def test_claude_parser_synthetic_limit_message_is_no_answer():
    """Older CLIs print the plan's limit as the CLI's own message and call the run a success."""
    parser = ClaudeCodeParser("p", "m")
    assert parser.feed({"type": "assistant", "message": {"id": "x", "model": "<synthetic>", "content": [
        {"type": "text", "text": "Claude AI usage limit reached|1999999999"}]}}) == []
    with pytest.raises(UpstreamError) as exc:
        parser.feed({"type": "result", "subtype": "success", "is_error": False,
                     "result": "Claude AI usage limit reached|1999999999"})
    assert exc.value.kind is FailureKind.RATE_LIMITED and exc.value.retry_after_s > 0


async def test_big_prompt_and_dash_system(fake_env, tmp_path):
    """A prompt far over a pipe's buffer goes in while the output is read; a system prompt starting
    with "-" stays a value."""
    big = "x" * (2 * 1024 * 1024)
    p = make("claude_code", tmp_path)
    resp = await p.chat(chat(("system", "- be brief"), ("user", big)), "m")
    await p.close()
    rec = json.loads(fake_env["record"].read_text())
    assert resp.text() == TEXT and rec["stdin"] == big
    assert "--append-system-prompt=- be brief" in rec["argv"]


async def test_gemini_chat_and_stream(fake_env, tmp_path):
    p = make("gemini_cli", tmp_path)
    events = await events_of(p, chat(("user", "Say hello")), "gemini-2.5-flash")
    assert isinstance(events[0], Start) and events[0].model == "gemini-2.5-flash"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == TEXT
    assert isinstance(events[-1], Finish)
    rec = json.loads(fake_env["record"].read_text())
    assert rec["argv"] == ["--output-format", "stream-json", "--model", "gemini-2.5-flash", "--prompt", ""]
    assert rec["stdin"] == "Say hello" and rec["cwd_files"] == []
    resp = await p.chat(chat(("user", "Say hello")), "gemini-2.5-flash")
    await p.close()
    u = resp.usage
    # prompt 1200 (800 cached); candidates 30 + thoughts (1290 - 1200 - 30 = 60)
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (1200, 800, 90, 60)
    assert u.reported_cost is None and resp.text() == TEXT


async def test_gemini_own_tools(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "tools")
    p = make("gemini_cli", tmp_path)
    resp = await p.chat(chat(("user", "look")), "m")
    await p.close()
    assert resp.text() == "Let me check.\n\n" + TEXT


async def test_default_command_from_path(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    for kind in ("claude_code", "gemini_cli"):
        p = make(kind, tmp_path, command=None)
        assert (await p.chat(chat(("user", "hi")), "m")).text() == TEXT
        await p.close()


async def test_claude_env_keeps_subscription_login(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-not-pass")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://localhost:1/gateway-itself")
    p = make("claude_code", tmp_path)
    await p.chat(chat(("user", "hi")), "m")
    await p.close()
    env = json.loads(fake_env["record"].read_text())["env"]
    assert env["ANTHROPIC_API_KEY"] is None and env["ANTHROPIC_BASE_URL"] is None
    assert env["HOME"] == os.environ.get("HOME")  # the rest is inherited (the CLI's own login)


# ---- the prompt -----------------------------------------------------------------

CONVERSATION = [("system", "Be brief."), ("user", "first question"), ("assistant", "first answer"),
                ("user", "second question")]


async def test_claude_system_prompt_and_transcript(fake_env, tmp_path):
    p = make("claude_code", tmp_path)
    await p.chat(chat(*CONVERSATION), "m")
    await p.close()
    rec = json.loads(fake_env["record"].read_text())
    argv = rec["argv"]
    assert argv[argv.index("--append-system-prompt") + 1] == "Be brief."
    assert rec["stdin"] == ("[Earlier turns of this conversation]\n\nUser: first question\n\n"
                            "Assistant: first answer\n\n[The user's new message]\n\nsecond question")


async def test_gemini_system_prompt_prefixed(fake_env, tmp_path):
    p = make("gemini_cli", tmp_path)
    await p.chat(chat(*CONVERSATION), "m")
    await p.close()
    rec = json.loads(fake_env["record"].read_text())
    assert "--append-system-prompt" not in rec["argv"]
    assert rec["stdin"].startswith("[System instructions]\n\nBe brief.\n\n[Earlier turns of this conversation]")
    assert rec["stdin"].endswith("User: first question\n\nAssistant: first answer\n\n"
                                 "[The user's new message]\n\nsecond question")


def test_render_prompt_rules():
    system, prompt = render_prompt(chat(("system", "S"), ("user", "only")), system_flag=True)
    assert (system, prompt) == ("S", "only")
    system, prompt = render_prompt(chat(("system", "S"), ("user", "only")), system_flag=False)
    assert system is None and prompt == "[System instructions]\n\nS\n\n[The user's message]\n\nonly"
    # consecutive user messages at the end are all "the new message"
    _, prompt = render_prompt(chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("user", "d")), True)
    assert prompt.endswith("[The user's new message]\n\nc\n\nd")
    # JSON mode becomes an instruction
    system, _ = render_prompt(chat(("user", "x"), response_format={"type": "json_object"}), True)
    assert system and "JSON" in system


@pytest.mark.parametrize("req, what", [
    (chat(("user", "hi"), tools=[ToolSpec(name="get_weather")]), "tools"),
    (ChatRequest(model="m", messages=[Message("user", [Text("what is this"), Image(url="https://x/y.png")])]),
     "images"),
    (chat(("user", "hi"), ("assistant", "Sure, ")), "end with a user message"),
    (chat(("user", "hi"), n=2), "n must be 1"),
])
async def test_unsupported_requests(fake_env, tmp_path, req, what):
    for kind in ("claude_code", "gemini_cli"):
        p = make(kind, tmp_path)
        with pytest.raises(UpstreamError) as exc:
            await p.chat(req, "m")
        assert exc.value.kind is FailureKind.UNSUPPORTED and what in exc.value.message
        with pytest.raises(UpstreamError):
            await anext(p.chat_stream(req, "m"))  # refused before the first event
    assert not fake_env["pids"].exists()  # no CLI was started


# ---- the process ----------------------------------------------------------------

async def test_concurrency_bound(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_DELAY", "0.05")
    p = make("claude_code", tmp_path, max_concurrency=2)
    answers = await asyncio.gather(*(p.chat(chat(("user", f"q{i}")), "m") for i in range(5)))
    await p.close()
    assert [a.text() for a in answers] == [TEXT] * 5
    events = []
    for line in fake_env["log"].read_text().split("\n"):
        if line:
            what, _pid, at = line.split()
            events.append((float(at), 1 if what == "start" else -1))
    running = peak = 0
    for _at, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    assert len(events) == 10 and peak == 2
    assert p._slots._value == 2  # every slot given back


async def test_timeout_kills_the_child(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "hang")
    for kind in ("claude_code", "gemini_cli"):
        fake_env["pids"].unlink(missing_ok=True)
        p = make(kind, tmp_path, timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(UpstreamError) as exc:
            await p.chat(chat(("user", "hi")), "m")
        assert exc.value.kind is FailureKind.TIMEOUT and time.monotonic() - t0 < 5
        assert await gone(pids(fake_env["pids"]), 2.0)


async def test_closing_the_stream_kills_the_child(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "slow")
    monkeypatch.setenv("FAKE_CLI_GRANDCHILD", "1")
    for kind in ("claude_code", "gemini_cli"):
        fake_env["pids"].unlink(missing_ok=True)
        p = make(kind, tmp_path)
        stream = p.chat_stream(chat(("user", "hi")), "m")
        assert isinstance(await anext(stream), Start)
        children = pids(fake_env["pids"])
        assert len(children) == 2 and all(alive(x) for x in children)
        await stream.aclose()  # the client went away
        assert await gone(children, 2.0)  # the CLI and what it started
        assert p._slots._value == p.config.max_concurrency


async def test_a_child_that_ignores_sigterm_is_killed(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "ignoreterm")
    p = make("claude_code", tmp_path, timeout_s=0.3)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat(("user", "hi")), "m")
    assert exc.value.kind is FailureKind.TIMEOUT
    assert await gone(pids(fake_env["pids"]), 1.0)


async def test_cancelling_the_request_kills_the_child(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "hang")
    p = make("gemini_cli", tmp_path)
    task = asyncio.ensure_future(p.chat(chat(("user", "hi")), "m"))
    for _ in range(100):
        if pids(fake_env["pids"]):
            break
        await asyncio.sleep(0.05)
    child = pids(fake_env["pids"])
    assert child and alive(child[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await gone(child, 2.0)


# ---- failures -------------------------------------------------------------------

async def test_nonzero_exit_is_server_with_redacted_excerpt(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "fail")
    for kind, secret in (("claude_code", "sk-ant-abcdefghijklmnop"), ("gemini_cli", "AIzaSyA0123456789")):
        p = make(kind, tmp_path)
        with pytest.raises(UpstreamError) as exc:
            await p.chat(chat(("user", "hi")), "m")
        err = exc.value
        assert err.kind is FailureKind.SERVER and err.retryable
        assert "code 1" in err.message and secret not in err.message and len(err.message) < 400


@pytest.mark.parametrize("kind", ["claude_code", "gemini_cli"])
async def test_auth_failure(fake_env, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FAKE_CLI_MODE", "auth")
    p = make(kind, tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await anext(p.chat_stream(chat(("user", "hi")), "m"))  # before the first event: the gateway fails over
    assert exc.value.kind is FailureKind.AUTH and exc.value.retryable


@pytest.mark.parametrize("kind", ["claude_code", "gemini_cli"])
async def test_usage_limit(fake_env, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FAKE_CLI_MODE", "limit")
    p = make(kind, tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat(("user", "hi")), "m")
    assert exc.value.kind is FailureKind.RATE_LIMITED
    if kind == "claude_code":  # "...usage limit reached|<reset epoch>"
        assert 3000 < exc.value.retry_after_s <= 3600


async def test_exit_without_result_is_protocol(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_MODE", "noresult")
    p = make("gemini_cli", tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(chat(("user", "hi")), "m")
    assert exc.value.kind is FailureKind.PROTOCOL


async def test_missing_executable(fake_env, tmp_path, monkeypatch):
    """Not installed: CONNECTION (fail over; counts towards the breaker, like an endpoint that never answers)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    for kind, command in (("claude_code", None), ("gemini_cli", [str(tmp_path / "nope" / "gemini")])):
        p = make(kind, tmp_path, command=command)
        with pytest.raises(UpstreamError) as exc:
            await p.chat(chat(("user", "hi")), "m")
        assert exc.value.kind is FailureKind.CONNECTION and exc.value.retryable
        assert p._slots._value == p.config.max_concurrency
