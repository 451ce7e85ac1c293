"""Provider type ``copilot``: ``llmgw copilot login`` (device flow), the Copilot token exchange and its
refresh, and OpenAI chat through the Copilot API, against real HTTP servers: a fake GitHub (device flow,
token exchange, a Copilot ``/models``) and the demo provider as the Copilot chat API."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from fakes import GITHUB_TOKEN, PENDING, SUCCESS, FakeGitHub, FakeProvider
from llmgw_edge import subcommands as copilot_login
from llmgw_cli.main import main as cli_main
from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind
from llmgw_edge.core.errors import UpstreamError
from llmgw_edge.core.types import ChatRequest, EmbeddingRequest, Finish, Image, Message, Text, TextDelta
from llmgw_edge.providers import build_provider
from llmgw_edge.providers.base import RawCall
from llmgw_edge.providers.copilot import CopilotProvider
from llmgw_edge.providers.http import AiohttpTransport

@pytest.fixture(scope="module")
def github_server():
    server = FakeGitHub().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def copilot_api():
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def github(github_server, copilot_api, monkeypatch):
    github_server.reset()
    copilot_api.behaviour.reset()
    github_server.api = copilot_api.url  # the chat API the exchange points at (endpoints.api)
    monkeypatch.setenv("LLMGW_GITHUB_URL", github_server.origin)
    monkeypatch.setenv("LLMGW_GITHUB_API_URL", github_server.origin)
    yield github_server
    copilot_api.behaviour.reset()


@pytest.fixture
async def make_provider(tmp_path):
    transports: list[AiohttpTransport] = []

    def make(token_file: bool = True, **fields: Any) -> CopilotProvider:
        if token_file:
            path = tmp_path / "copilot" / "cp.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps({"github_token": GITHUB_TOKEN, "created_at": "2025-01-01T00:00:00+00:00"}))
        transport = AiohttpTransport()
        transports.append(transport)
        config = ProviderConfig(id="cp", type="copilot", models=[{"name": "demo-chat"}], **fields)
        provider = build_provider(config, transport, tmp_path)
        assert isinstance(provider, CopilotProvider)
        return provider

    yield make
    for t in transports:
        await t.close()


def _chat(text: str = "hello copilot", stream: bool = False) -> ChatRequest:
    return ChatRequest(model="demo-chat", messages=[Message("user", [Text(text)])], stream=stream)


def _clock(provider: CopilotProvider, github: FakeGitHub) -> list[float]:
    """A clock the test moves (``offset[0]`` seconds from now), for the provider and the fake GitHub."""
    start, offset = time.time(), [0.0]
    provider.clock = github.clock = lambda: start + offset[0]  # type: ignore[method-assign]
    return offset


def _auth(copilot_api: FakeProvider) -> str:
    return copilot_api.requests[-1]["headers"]["authorization"]


# ---- llmgw copilot login ---------------------------------------------------------------------------

def _login(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["copilot", "login", *argv])
    return exit_.value.code


@pytest.fixture
def sleeps(monkeypatch):
    recorded: list[float] = []
    monkeypatch.setattr(copilot_login, "_sleep", recorded.append)
    return recorded


def test_login_writes_a_private_token_file_and_never_prints_the_token(github, sleeps, tmp_path, capsys):
    config = tmp_path / "llmgw.yaml"
    config.write_text("providers:\n  - id: cp\n    type: copilot\n    models: [{name: gpt-4.1}]\n")
    state = tmp_path / "state"
    assert _login(["--config", str(config), "--state-dir", str(state)]) == 0

    out, err = capsys.readouterr()
    assert "WDJB-MJHT" in out and f"{github.origin}/login/device" in out
    assert GITHUB_TOKEN not in out + err and "copilot-token" not in out + err
    assert "Copilot access: OK" in out
    path = state / "copilot" / "cp.json"
    assert str(path) in out
    saved = json.loads(path.read_text())
    assert saved["github_token"] == GITHUB_TOKEN and saved["created_at"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["cp.json"]  # no temp file left behind

    assert github.device_requests == [{"client_id": "Iv1.b507a08c87ecfe98", "scope": "read:user"}]
    assert len(github.polls) == 3  # pending, pending, the token
    assert all(p == {"client_id": "Iv1.b507a08c87ecfe98", "device_code": "dc-123",
                     "grant_type": "urn:ietf:params:oauth:grant-type:device_code"} for p in github.polls)
    assert sleeps == [1, 1, 1]  # the interval GitHub asked for, before every poll
    assert github.exchanges == 1  # the subscription check


def test_login_honours_slow_down_and_uses_the_configured_token_file(github, sleeps, tmp_path, capsys):
    token_file = tmp_path / "secrets" / "gh.json"
    config = tmp_path / "llmgw.yaml"
    config.write_text("providers:\n  - id: other\n    models: [{name: m}]\n    base_url: http://x\n"
                      f"  - id: cp2\n    type: copilot\n    token_file: {token_file}\n    models: [{{name: gpt-4.1}}]\n")
    github.poll_answers = [{"error": "slow_down", "interval": 7}, {"error": "slow_down"}, PENDING, SUCCESS]
    assert _login(["--config", str(config), "--provider", "cp2", "--state-dir", str(tmp_path / "s"),
                   "--no-check"]) == 0
    assert sleeps == [1, 7, 12, 12]  # GitHub's new interval, then +5 s without one
    assert json.loads(token_file.read_text())["github_token"] == GITHUB_TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700  # created by the login
    assert github.exchanges == 0
    assert GITHUB_TOKEN not in "".join(capsys.readouterr())


@pytest.mark.parametrize("error, said", [("access_denied", "denied"), ("expired_token", "expired")])
def test_login_stops_on_a_denied_or_expired_code(github, sleeps, tmp_path, capsys, error, said):
    github.poll_answers = [PENDING, {"error": error}]
    assert _login(["--provider", "solo", "--config", str(tmp_path / "none.yaml"),
                   "--state-dir", str(tmp_path)]) == 1
    assert said in capsys.readouterr().err
    assert not (tmp_path / "copilot" / "solo.json").exists()


def test_login_without_a_config_and_an_account_without_copilot(github, sleeps, tmp_path, capsys):
    github.exchange_status = 403
    assert _login(["--provider", "solo", "--config", str(tmp_path / "none.yaml"),
                   "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert (tmp_path / "copilot" / "solo.json").exists()  # the token is kept; the check says what is wrong
    assert "cannot use Copilot" in err and "403" in err
    assert GITHUB_TOKEN not in out + err


def test_login_refuses_a_provider_of_another_type(github, sleeps, tmp_path, capsys):
    config = tmp_path / "llmgw.yaml"
    config.write_text("providers:\n  - id: oa\n    models: [{name: m}]\n")
    assert _login(["--config", str(config), "--provider", "oa"]) == 2
    assert "not copilot" in capsys.readouterr().err
    assert _login(["--config", str(config)]) == 2
    assert "no provider of type copilot" in capsys.readouterr().err
    assert github.device_requests == []


# ---- exchange and requests ---------------------------------------------------------------------------

async def test_chat_stream_relay_and_embeddings_carry_the_copilot_token(github, copilot_api, make_provider,
                                                                       caplog):
    caplog.set_level("DEBUG")
    provider = make_provider()

    answer = await provider.chat(_chat("hello copilot"), "demo-chat")
    assert answer.text() == "Echo: hello copilot"
    assert github.exchanges == 1 and github.issued == ["tid=test;copilot-token-1"]
    exchange = github.exchange_headers[0]
    assert exchange["authorization"] == f"token {GITHUB_TOKEN}"
    assert exchange["editor-version"].startswith("vscode/")
    assert exchange["editor-plugin-version"].startswith("copilot-chat/")
    assert exchange["user-agent"].startswith("GitHubCopilotChat/")
    sent = copilot_api.requests[-1]
    assert sent["path"] == "/v1/chat/completions"  # endpoints.api + /chat/completions
    headers = sent["headers"]
    assert headers["authorization"] == "Bearer tid=test;copilot-token-1"
    assert headers["copilot-integration-id"] == "vscode-chat"
    assert headers["openai-intent"] == "conversation-panel"
    assert headers["editor-version"].startswith("vscode/")
    assert headers["editor-plugin-version"].startswith("copilot-chat/")
    assert headers["user-agent"].startswith("GitHubCopilotChat/")
    assert headers["x-request-id"]

    events = [e async for e in provider.chat_stream(_chat("stream me", stream=True), "demo-chat")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: stream me"
    assert isinstance(events[-1], Finish)
    assert _auth(copilot_api) == "Bearer tid=test;copilot-token-1"

    body = {"model": "anything", "messages": [{"role": "user", "content": "relayed"}]}
    reply = await provider.relay(RawCall("openai_chat", body, json.dumps(body).encode()), "demo-chat")
    assert reply.status == 200 and json.loads(reply.body)["choices"][0]["message"]["content"] == "Echo: relayed"
    assert reply.usage.input_tokens > 0
    streamed = await provider.relay(RawCall("openai_chat", {**body, "stream": True}, b"", stream=True),
                                    "demo-chat")
    chunks = b"".join([c async for c in streamed.chunks])
    assert b"relayed" in chunks and chunks.endswith(b"data: [DONE]\n\n")
    assert streamed.finished and streamed.usage.output_tokens > 0
    assert _auth(copilot_api) == "Bearer tid=test;copilot-token-1"

    raw = await provider.relay(RawCall("raw", None, b"", path="/v1/models", method="GET"), None)
    assert raw.status == 200 and json.loads(raw.body)["data"][0]["id"] == "demo-chat"

    vectors = await provider.embed(EmbeddingRequest(model="demo-chat", inputs=["a", "b"]), "demo-chat")
    assert len(vectors.vectors) == 2 and copilot_api.requests[-1]["path"] == "/v1/embeddings"
    assert _auth(copilot_api) == "Bearer tid=test;copilot-token-1"

    image = ChatRequest(model="demo-chat", messages=[Message("user", [Text("look"), Image(
        data="iVBORw0KGgo=", media_type="image/png")])])
    await provider.chat(image, "demo-chat")
    assert copilot_api.requests[-1]["headers"]["copilot-vision-request"] == "true"

    assert github.exchanges == 1  # one Copilot token for all of it
    assert not provider.can_relay("openai_responses")
    assert GITHUB_TOKEN not in caplog.text and "copilot-token" not in caplog.text


async def test_the_config_base_url_and_a_pasted_api_key(github, copilot_api, make_provider):
    github.api = None  # no endpoints.api: the configured base_url
    provider = make_provider(token_file=False, api_key=GITHUB_TOKEN, base_url=copilot_api.url)
    assert (await provider.chat(_chat(), "demo-chat")).text() == "Echo: hello copilot"
    assert github.exchanges == 1 and _auth(copilot_api) == "Bearer tid=test;copilot-token-1"


async def test_the_token_is_exchanged_again_before_it_expires(github, copilot_api, make_provider):
    provider = make_provider()
    offset = _clock(provider, github)
    await provider.chat(_chat(), "demo-chat")
    offset[0] = 1400  # before refresh_in (1500)
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 1
    offset[0] = 1501  # refresh_in passed, expires_at (1800) not yet
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 2 and _auth(copilot_api) == "Bearer tid=test;copilot-token-2"

    # a short-lived token without refresh_in: exchanged again once less than 60 s are left
    github.expires_in, github.refresh_in = 75, None
    offset[0] = 3002  # token 2 (exchanged at 1501) is due at 3001
    await provider.chat(_chat(), "demo-chat")  # token 3 expires at ~ 3077
    assert github.exchanges == 3
    token = provider._token
    assert token is not None and token.refresh_at == token.expires_at - 60
    offset[0] = token.refresh_at - 1 - (provider.clock() - offset[0])
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 3
    offset[0] += 2
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 4 and _auth(copilot_api) == "Bearer tid=test;copilot-token-4"


async def test_one_exchange_for_fifty_concurrent_requests(github, copilot_api, make_provider):
    provider = make_provider()
    offset = _clock(provider, github)
    github.exchange_delay_s = 0.2  # every request arrives while the exchange is under way
    answers = await asyncio.gather(*(provider.chat(_chat(f"cold {i}"), "demo-chat") for i in range(50)))
    assert len(answers) == 50 and github.exchanges == 1

    offset[0] = 1600  # every cached token is due at once
    before = len(copilot_api.requests)
    answers = await asyncio.gather(*(provider.chat(_chat(f"due {i}"), "demo-chat") for i in range(50)))
    assert [a.text() for a in answers] == [f"Echo: due {i}" for i in range(50)]
    assert github.exchanges == 2
    assert {r["headers"]["authorization"] for r in copilot_api.requests[before:]} == \
        {"Bearer tid=test;copilot-token-2"}


async def test_a_401_from_the_chat_api_exchanges_once_and_retries_once(github, copilot_api, make_provider):
    provider = make_provider()
    copilot_api.behaviour.api_key = "tid=test;copilot-token-1"
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 1

    copilot_api.behaviour.api_key = "tid=test;copilot-token-2"  # Copilot revoked token 1 early
    assert (await provider.chat(_chat("again"), "demo-chat")).text() == "Echo: again"
    assert github.exchanges == 2 and _auth(copilot_api) == "Bearer tid=test;copilot-token-2"

    copilot_api.behaviour.api_key = "tid=test;copilot-token-3"
    events = [e async for e in provider.chat_stream(_chat("streamed", stream=True), "demo-chat")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: streamed"
    assert github.exchanges == 3

    copilot_api.behaviour.api_key = "never-issued"  # refused whatever the token: one refresh, one retry, the error
    with pytest.raises(UpstreamError) as failed:
        await provider.chat(_chat(), "demo-chat")
    assert failed.value.status == 401 and failed.value.kind == FailureKind.AUTH
    assert github.exchanges == 4

    # concurrent 401s for the same token: one exchange between them
    copilot_api.behaviour.api_key = "tid=test;copilot-token-5"
    github.exchange_delay_s = 0.1
    answers = await asyncio.gather(*(provider.chat(_chat(f"c{i}"), "demo-chat") for i in range(10)))
    assert len(answers) == 10 and github.exchanges == 5


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_exchange_is_an_auth_error_that_says_how_to_log_in(github, make_provider, tmp_path,
                                                                           status):
    github.exchange_status = status
    provider = make_provider()
    with pytest.raises(UpstreamError) as failed:
        await provider.chat(_chat(), "demo-chat")
    err = failed.value
    assert err.kind == FailureKind.AUTH and err.status == status
    assert "llmgw copilot login" in err.message and str(tmp_path / "copilot" / "cp.json") in err.message
    assert GITHUB_TOKEN not in err.message and "Bad credentials" in err.message
    assert github.exchanges == 1


async def test_no_token_file_is_an_auth_error_naming_the_path(github, make_provider, tmp_path):
    provider = make_provider(token_file=False)
    with pytest.raises(UpstreamError) as failed:
        await provider.chat(_chat(), "demo-chat")
    assert failed.value.kind == FailureKind.AUTH
    assert str(tmp_path / "copilot" / "cp.json") in failed.value.message
    assert "llmgw copilot login --provider cp" in failed.value.message
    assert github.exchanges == 0


async def test_a_failed_exchange_keeps_a_token_that_still_works(github, copilot_api, make_provider):
    provider = make_provider()
    offset = _clock(provider, github)
    await provider.chat(_chat(), "demo-chat")
    github.exchange_status = 503
    offset[0] = 1600  # due, not expired
    assert (await provider.chat(_chat("still"), "demo-chat")).text() == "Echo: still"
    assert github.exchanges == 2 and _auth(copilot_api) == "Bearer tid=test;copilot-token-1"
    await provider.chat(_chat(), "demo-chat")
    assert github.exchanges == 2  # not asked again for a while
    offset[0] = 1795  # expired by our margin: the failure is the request's
    with pytest.raises(UpstreamError) as failed:
        await provider.chat(_chat(), "demo-chat")
    assert failed.value.kind == FailureKind.OVERLOADED


async def test_model_list(github, make_provider):
    github.api = github.origin  # this fake serves the Copilot /models
    provider = make_provider()
    assert await provider.list_models() == ["gpt-4.1", "claude-sonnet-4", "text-embedding-3-small"]
    assert provider.model_info["gpt-4.1"]["capabilities"]["supports"]["tool_calls"] is True
    assert github.models_requests[-1]["copilot-integration-id"] == "vscode-chat"
    assert await provider.list_models() == ["gpt-4.1", "claude-sonnet-4", "text-embedding-3-small"]
    assert len(github.models_requests) == 1  # cached
    assert github.exchanges == 1


def test_the_token_never_shows_in_a_repr():
    from llmgw_edge.providers.copilot import CopilotToken

    assert "secret" not in repr(CopilotToken("secret", 1.0, 1.0, None))


def test_token_path(tmp_path):
    from llmgw_edge.providers.copilot import token_path

    base = ProviderConfig(id="cp", type="copilot", models=[{"name": "m"}])
    assert token_path(base, tmp_path) == tmp_path / "copilot" / "cp.json"
    own = ProviderConfig(id="cp", type="copilot", models=[{"name": "m"}], token_file="~/gh.json")
    assert token_path(own, tmp_path) == Path("~/gh.json").expanduser()
