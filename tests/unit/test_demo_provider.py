"""The demo provider, driven by the official openai SDK exactly as the gateway's users drive OpenAI."""

from __future__ import annotations

import json
import math
import time

import httpx
import openai
import pytest

from fakes import FakeProvider
from llmgw_demo_provider import Behaviour, wire

USER = [{"role": "user", "content": "hello there you fine machine"}]


@pytest.fixture
def client(upstream):
    # no SDK retries: each test sees exactly what the server answered
    with openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(upstream):
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as c:
        yield c


def test_models_list(client, upstream):
    upstream.behaviour.models = ["demo-chat", "demo-big"]
    models = client.models.list()
    assert [m.id for m in models.data] == ["demo-chat", "demo-big"]
    assert all(m.object == "model" and m.owned_by and m.created for m in models.data)


def test_plain_completion(client, upstream):
    r = client.chat.completions.create(model="demo-chat", messages=USER)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "demo-chat"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello there you fine machine"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    # 3 priming + (3 per message + 5 words); reply has 6 words
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 6, 17)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    # the upstream sees exactly what was sent, headers included
    seen = upstream.requests[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"] == {"model": "demo-chat", "messages": USER}
    assert seen["headers"]["authorization"] == "Bearer sk-test"


def test_deterministic_and_fixed_reply(client, upstream):
    a = client.chat.completions.create(model="demo-chat", messages=USER)
    b = client.chat.completions.create(model="demo-chat", messages=USER)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage
    upstream.behaviour.reply = "one two three"
    r = client.chat.completions.create(model="demo-chat", messages=USER)
    assert r.choices[0].message.content == "one two three" and r.usage.completion_tokens == 3


def test_multipart_content_and_long_prompt_truncated(client):
    parts = [{"type": "text", "text": "describe"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    r = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content == "Echo: describe [1 image]"  # text parts echoed, images counted
    long = " ".join(f"w{i}" for i in range(500))
    r = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": long}])
    assert r.usage.completion_tokens == 1 + wire.ECHO_MAX_WORDS


def test_n_choices(client):
    r = client.chat.completions.create(model="demo-chat", messages=USER, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content
    assert r.usage.completion_tokens == 12


def test_max_tokens_and_stop(client):
    r = client.chat.completions.create(model="demo-chat", messages=USER, max_tokens=3)
    assert r.choices[0].message.content == "Echo: hello there"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = client.chat.completions.create(model="demo-chat", messages=USER, max_completion_tokens=2)
    assert r.choices[0].message.content == "Echo: hello" and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="demo-chat", messages=USER, stop=[" fine", "you"])
    assert r.choices[0].message.content == "Echo: hello there "
    assert r.choices[0].finish_reason == "stop"


def test_stream_without_usage(client, upstream):
    chunks = list(client.chat.completions.create(model="demo-chat", messages=USER, stream=True))
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Echo: hello there you fine machine"
    assert len([c for c in chunks if c.choices[0].delta.content]) == 2  # a few words per chunk
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_stream_with_usage(client, upstream):
    stream = client.chat.completions.create(model="demo-chat", messages=USER, stream=True,
                                            stream_options={"include_usage": True}, max_tokens=4)
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 4)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_stream_wire_format_is_exactly_openai(upstream):
    body = {"model": "demo-chat", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", upstream.url + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    payloads = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert all(f.startswith("data: {") for f in frames[:-2])
    assert all("usage" in p and p["usage"] is None for p in payloads[:-1])  # present and null
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] == 17


async def test_async_client(aclient, upstream):
    r = await aclient.chat.completions.create(model="demo-chat", messages=USER)
    assert r.choices[0].message.content.startswith("Echo:")
    stream = await aclient.chat.completions.create(model="demo-chat", messages=USER, stream=True, n=2,
                                                   stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    usage = None
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
        usage = chunk.usage or usage
    assert texts[0] == texts[1] == "Echo: hello there you fine machine"
    assert usage.completion_tokens == 12


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=USER)
    assert e.value.status_code == 404
    assert e.value.body["code"] == "model_not_found"
    assert e.value.body["message"] == "The model `gpt-nope` does not exist or you do not have access to it."


def test_bad_bodies(client, upstream):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo-chat", messages=[])
    assert e.value.body["code"] == "empty_array" and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "robot", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
    r = httpx.post(upstream.url + "/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(upstream.url + "/chat/completions", json={"model": "demo-chat", "messages": USER,
                                                             "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = httpx.get(upstream.origin + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (GET /v1/nothing)"


def test_rate_limited_with_retry_after(client, upstream):
    upstream.behaviour.fail_status = 429
    upstream.behaviour.retry_after = 1.5
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="demo-chat", messages=USER)
    assert e.value.body["code"] == "rate_limit_exceeded" and e.value.body["type"] == "requests"
    headers = e.value.response.headers
    assert headers["retry-after"] == "1.5" and headers["x-ratelimit-reset-requests"] == "1.5s"
    assert headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(client, upstream, status):
    upstream.behaviour.fail_status = status
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="demo-chat", messages=USER)
    assert e.value.status_code == status and e.value.body["type"] == "server_error"


def test_fail_times_then_recovers(client, upstream):
    upstream.behaviour.fail_status = 503
    upstream.behaviour.fail_times = 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="demo-chat", messages=USER)
    assert client.chat.completions.create(model="demo-chat", messages=USER).choices[0].message.content
    assert len(upstream.requests) == 3  # every attempt is recorded, failed ones too


def test_sdk_retries_honour_the_failure_budget(upstream):
    upstream.behaviour.fail_status = 500
    upstream.behaviour.fail_times = 1
    upstream.behaviour.retry_after = 0
    with openai.OpenAI(base_url=upstream.url, api_key="k", max_retries=2) as c:
        assert c.chat.completions.create(model="demo-chat", messages=USER).choices
    assert len(upstream.requests) == 2


def test_api_key_required(upstream):
    upstream.behaviour.api_key = "sk-right"
    with openai.OpenAI(base_url=upstream.url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
    assert "sk-wrong" not in e.value.message and e.value.body["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=upstream.url, api_key="sk-right", max_retries=0) as c:
        assert c.chat.completions.create(model="demo-chat", messages=USER).choices


def test_die_after_chunks_breaks_the_stream(client, upstream):
    upstream.behaviour.die_after_chunks = 1
    received = []
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps the broken chunked body
        for chunk in client.chat.completions.create(model="demo-chat", messages=USER, stream=True):
            received.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in received)
    assert text == "Echo: hello there"  # one content chunk, then nothing: no finish, no [DONE]
    assert all(c.choices[0].finish_reason is None for c in received)
    # the server itself is unharmed
    assert client.chat.completions.create(model="demo-chat", messages=USER).choices


async def test_die_after_chunks_async(aclient, upstream):
    upstream.behaviour.die_after_chunks = 0
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps the broken chunked body
        async for _chunk in await aclient.chat.completions.create(model="demo-chat", messages=USER, stream=True):
            pass


def test_delays(client, upstream):
    upstream.behaviour.delay_s = 0.3
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="demo-chat", messages=USER, timeout=0.1)
    upstream.behaviour.delay_s = 0.0
    upstream.behaviour.chunk_delay_s = 0.1
    start = time.monotonic()
    chunks = list(client.chat.completions.create(model="demo-chat", messages=USER, stream=True))
    assert time.monotonic() - start >= 0.2 and len(chunks) == 4  # role, 2 content, finish


def test_embeddings(client, upstream):
    r = client.embeddings.create(model="demo-chat", input=["alpha", "beta"])  # the SDK asks for base64
    assert [d.index for d in r.data] == [0, 1]
    vec = r.data[0].embedding
    assert len(vec) == wire.EMBEDDING_DIMENSIONS and math.isclose(sum(x * x for x in vec), 1.0, rel_tol=1e-5)
    again = client.embeddings.create(model="demo-chat", input="alpha", encoding_format="float", dimensions=16)
    assert again.data[0].embedding == pytest.approx(vec, abs=1e-6)
    assert r.usage.prompt_tokens == 2
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_requests_history_is_bounded():
    b = Behaviour()
    for i in range(1500):
        b.record({"i": i})
    assert len(b.requests) == 1000 and b.requests[0]["i"] == 500


def test_split_chunks_round_trips():
    for text in ["", "one", "  lead and trail  ", "a b c d e f g", "x\n\ny  z"]:
        assert "".join(wire.split_chunks(text)) == text


def test_provider_restarts_quickly():
    start = time.monotonic()
    for _ in range(3):
        with FakeProvider(models=["m"]) as fake:
            assert httpx.get(fake.url + "/models").json()["data"][0]["id"] == "m"
    assert time.monotonic() - start < 5
