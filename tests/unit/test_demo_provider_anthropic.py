"""The demo provider's Anthropic Messages face, driven by the official anthropic SDK."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import anthropic
import httpx
import pytest


USER = [{"role": "user", "content": "hello there you fine machine"}]
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
         {"name": "get_time", "description": "Time of a city", "input_schema": {"type": "object"}}]
THINKING = {"type": "enabled", "budget_tokens": 1024}
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def client(upstream):
    with anthropic.Anthropic(base_url=upstream.anthropic_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


def test_plain_message(client, upstream):
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "demo-chat"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "Echo: hello there you fine machine"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    # same count as the OpenAI face: 3 priming + (3 per message + 5 words); reply has 6 words
    assert (m.usage.input_tokens, m.usage.output_tokens) == (11, 6)
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    assert m.usage.service_tier == "standard"
    seen = upstream.requests[-1]
    assert seen["method"] == "POST" and seen["path"] == "/v1/messages"
    assert seen["body"] == {"model": "demo-chat", "max_tokens": 100, "messages": USER}
    # the SDK sends the key as x-api-key or (recent versions) as a bearer token
    assert "sk-ant-test" in (seen["headers"].get("x-api-key"), seen["headers"].get("authorization", "")[7:])
    assert seen["headers"]["anthropic-version"]


def test_system_blocks_images_and_anthropic_beta_recorded(client, upstream):
    content = [{"type": "text", "text": "what is this"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}]
    m = client.messages.create(model="demo-chat", max_tokens=50, system=[{"type": "text", "text": "be brief"}],
                               messages=[{"role": "user", "content": content}],
                               extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert m.content[0].text == "Echo: what is this [2 images]"
    assert m.usage.input_tokens == 3 + (3 + 2) + (3 + 3)  # system counts like a message
    assert upstream.requests[-1]["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"


def test_cache_tokens_are_taken_out_of_input_tokens(client, upstream):
    upstream.behaviour.cache_read_tokens = 6
    upstream.behaviour.cache_write_tokens = 2
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER)
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (3, 6, 2)
    upstream.behaviour.cache_read_tokens = 50  # more than the prompt: input floors at 0
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER)
    assert m.usage.input_tokens == 0 and m.usage.cache_read_input_tokens == 50


def test_a_simulated_prompt_cache_writes_at_the_breakpoint_then_reads_it(client, upstream):
    upstream.behaviour.prompt_cache = True
    system = [{"type": "text", "text": "one two three four five", "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model="demo-chat", max_tokens=100, system=system, messages=USER)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (5, 0)
    turn2 = USER + [{"role": "assistant", "content": first.content[0].text}, {"role": "user", "content": "more"}]
    second = client.messages.create(model="demo-chat", max_tokens=100, system=system, messages=turn2)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 5)
    unmarked = client.messages.create(model="demo-chat", max_tokens=100, system="one two three four five",
                                      messages=turn2)  # no breakpoint: Anthropic caches nothing
    assert (unmarked.usage.cache_creation_input_tokens, unmarked.usage.cache_read_input_tokens) == (0, 0)


def test_max_tokens_and_stop_sequences(client):
    m = client.messages.create(model="demo-chat", max_tokens=3, messages=USER)
    assert m.content[0].text == "Echo: hello there" and m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 3
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER, stop_sequences=["zzz", " fine"])
    assert m.content[0].text == "Echo: hello there you"
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " fine"


def test_stream_helper(client, upstream):
    with client.messages.stream(model="demo-chat", max_tokens=100, messages=USER) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Echo: hello there you fine machine" and len(texts) == 2
    assert final.content[0].text == "Echo: hello there you fine machine"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 6)
    assert upstream.requests[-1]["body"]["stream"] is True


def test_stream_true_event_sequence(client):
    events = list(client.messages.create(model="demo-chat", max_tokens=100, messages=USER, stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]  # the SDK drops ping
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert (start.usage.input_tokens, start.usage.output_tokens) == (11, 1)
    assert events[1].content_block.type == "text" and events[1].content_block.text == ""
    assert all(e.delta.type == "text_delta" for e in events[2:4])
    delta = events[5]
    assert delta.delta.stop_reason == "end_turn" and delta.delta.stop_sequence is None
    assert delta.usage.output_tokens == 6 and delta.usage.input_tokens == 11


def test_stream_wire_format_is_exactly_anthropic(upstream):
    body = {"model": "demo-chat", "max_tokens": 100, "messages": USER, "stream": True}
    with httpx.stream("POST", upstream.origin + "/v1/messages", json=body, headers=VERSION) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["request-id"].startswith("req_")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    names = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name  # the event name repeats the data's type
        names.append(name)
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]


def test_tool_use(client, upstream):
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]
    call = m.content[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == {"input": "hello there you fine machine"}
    # forced tool and fixed arguments
    upstream.behaviour.tool_arguments = {"city": "Paris", "days": [1, 2]}
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS,
                               tool_choice={"type": "tool", "name": "get_time"})
    assert m.content[0].name == "get_time" and m.content[0].input == {"city": "Paris", "days": [1, 2]}
    # tool_choice none: text
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS,
                               tool_choice={"type": "none"})
    assert m.stop_reason == "end_turn" and m.content[0].text.startswith("Echo:")


def test_tool_result_round_trip(client):
    first = client.messages.create(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS)
    call = first.content[0]
    messages = [*USER, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": [{"type": "text", "text": "sunny, 21C"}]}]}]
    m = client.messages.create(model="demo-chat", max_tokens=100, messages=messages, tools=TOOLS)
    assert m.stop_reason == "end_turn" and m.content[0].text == "Tool said: sunny, 21C"


def test_streamed_tool_use_reassembles_the_input(client, upstream):
    upstream.behaviour.tool_arguments = {"city": "Paris", "note": "a fairly long note to split"}
    events = list(client.messages.create(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS,
                                         stream=True))
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.input == {}
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert all(e.delta.type == "input_json_delta" for e in events if e.type == "content_block_delta")
    assert len([p for p in pieces if p]) >= 2
    assert json.loads("".join(pieces)) == {"city": "Paris", "note": "a fairly long note to split"}
    assert next(e for e in events if e.type == "message_delta").delta.stop_reason == "tool_use"
    with client.messages.stream(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Paris", "note": "a fairly long note to split"}


def test_thinking(client, upstream):
    m = client.messages.create(model="demo-chat", max_tokens=2048, messages=USER, thinking=THINKING)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Thinking about: hello there you fine machine" and m.content[0].signature
    assert m.usage.output_tokens == 7 + 6  # the thinking is output too
    upstream.behaviour.reasoning_tokens = 10
    with client.messages.stream(model="demo-chat", max_tokens=2048, messages=USER, thinking=THINKING) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and "signature_delta" in deltas and deltas[-1] == "text_delta"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == m.content[0].thinking and final.content[0].signature == m.content[0].signature
    assert final.usage.output_tokens == 7 + 6 + 10


def test_count_tokens(client, upstream):
    r = client.messages.count_tokens(model="demo-chat", messages=USER)
    assert r.input_tokens == 11
    r = client.messages.count_tokens(model="demo-chat", messages=USER, system="be brief", tools=TOOLS)
    assert r.input_tokens == 11 + 3 + 2
    assert upstream.requests[-1]["path"] == "/v1/messages/count_tokens"


@pytest.mark.parametrize("body, message", [
    ({"max_tokens": 5, "messages": USER}, "model: Field required"),
    ({"model": "demo-chat", "messages": USER}, "max_tokens: Field required"),
    ({"model": "demo-chat", "max_tokens": 0, "messages": USER}, "max_tokens: Input should be greater than"),
    ({"model": "demo-chat", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
    ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     'Unexpected role "system"'),
    ({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages.0.content.0: Input tag 'video'"),
    ({"model": "demo-chat", "max_tokens": 5, "messages": USER, "tools": [{"name": "x"}]},
     "tools.0.custom.input_schema: Field required"),
    ({"model": "demo-chat", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "maybe"}}, "tool_choice"),
    ({"model": "demo-chat", "max_tokens": 1000, "messages": USER, "thinking": THINKING},
     "`max_tokens` must be greater than `thinking.budget_tokens`"),
    ({"model": "demo-chat", "max_tokens": 5000, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 5}},
     "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
])
def test_invalid_requests(client, body, message):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post("/v1/messages", cast_to=object, body=body)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error" and e.value.body["request_id"].startswith("req_")
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert message in e.value.body["error"]["message"]
    assert e.value.request_id == e.value.body["request_id"]  # the request-id header


def test_version_header_and_json_required(upstream):
    r = httpx.post(upstream.origin + "/v1/messages", json={"model": "demo-chat", "max_tokens": 5, "messages": USER})
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "anthropic-version: header is required"}
    r = httpx.post(upstream.origin + "/v1/messages", content=b"{nope", headers=VERSION)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert len(upstream.requests) == 2  # recorded, failed ones too


def test_api_key(upstream):
    upstream.behaviour.api_key = "sk-ant-right"
    with anthropic.Anthropic(base_url=upstream.anthropic_url, api_key="sk-ant-wrong", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError) as e:
            c.messages.create(model="demo-chat", max_tokens=5, messages=USER)
    assert e.value.body["error"]["type"] == "authentication_error" and "sk-ant-wrong" not in str(e.value.body)
    body = {"model": "demo-chat", "max_tokens": 5, "messages": USER}
    r = httpx.post(upstream.origin + "/v1/messages", headers=VERSION, json=body)
    assert r.status_code == 401 and r.json()["error"]["message"] == "x-api-key header is required"
    r = httpx.post(upstream.origin + "/v1/messages", headers={**VERSION, "x-api-key": "nope"}, json=body)
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid x-api-key"
    r = httpx.post(upstream.origin + "/v1/messages", headers={**VERSION, "x-api-key": "sk-ant-right"}, json=body)
    assert r.status_code == 200
    with anthropic.Anthropic(base_url=upstream.anthropic_url, api_key="sk-ant-right", max_retries=0) as c:
        assert c.messages.create(model="demo-chat", max_tokens=5, messages=USER).content


def test_unknown_model(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-nope", max_tokens=5, messages=USER)
    assert e.value.body["error"] == {"type": "not_found_error", "message": "model: claude-nope"}


def test_rate_limited(client, upstream):
    upstream.behaviour.fail_status = 429
    upstream.behaviour.retry_after = 7
    before = time.time()
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="demo-chat", max_tokens=5, messages=USER)
    assert e.value.status_code == 429 and e.value.body["error"]["type"] == "rate_limit_error"
    headers = e.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["anthropic-ratelimit-requests-limit"] == "50"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.strptime(headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(reset.replace(tzinfo=timezone.utc).timestamp() - (before + 7)) < 2


@pytest.mark.parametrize("status, error_type", [(500, "api_error"), (529, "overloaded_error")])
def test_server_errors(client, upstream, status, error_type):
    upstream.behaviour.fail_status = status
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model="demo-chat", max_tokens=5, messages=USER)
    assert isinstance(e.value, anthropic.InternalServerError)
    assert e.value.status_code == status and e.value.body["error"]["type"] == error_type
    if status == 529:
        assert e.value.body["error"]["message"] == "Overloaded"


@pytest.mark.parametrize("status, error_class", [(403, anthropic.PermissionDeniedError),
                                                 (413, anthropic.APIStatusError)])
def test_other_injected_errors(client, upstream, status, error_class):
    upstream.behaviour.fail_status = status
    with pytest.raises(error_class) as e:
        client.messages.create(model="demo-chat", max_tokens=5, messages=USER)
    assert e.value.status_code == status
    assert e.value.body["error"]["type"] == {403: "permission_error", 413: "request_too_large"}[status]


def test_sdk_retries_honour_the_failure_budget(upstream):
    upstream.behaviour.fail_status = 529
    upstream.behaviour.fail_times = 1
    upstream.behaviour.retry_after = 0
    with anthropic.Anthropic(base_url=upstream.anthropic_url, api_key="k", max_retries=2) as c:
        assert c.messages.create(model="demo-chat", max_tokens=5, messages=USER).content
    assert len(upstream.requests) == 2


def test_die_after_chunks_and_delays(client, upstream):
    upstream.behaviour.die_after_chunks = 1
    received = []
    with pytest.raises(Exception) as e:
        for event in client.messages.create(model="demo-chat", max_tokens=100, messages=USER, stream=True):
            received.append(event)
    # the SDK lets the transport's error through for a body broken mid-stream
    assert isinstance(e.value, anthropic.APIConnectionError) or type(e.value).__name__ == "RemoteProtocolError"
    kinds = [e.type for e in received]
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]  # then nothing
    upstream.behaviour.die_after_chunks = None
    upstream.behaviour.delay_s = 0.3
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model="demo-chat", max_tokens=5, messages=USER, timeout=0.1)
    upstream.behaviour.delay_s = 0.0
    upstream.behaviour.chunk_delay_s = 0.1
    start = time.monotonic()
    with client.messages.stream(model="demo-chat", max_tokens=100, messages=USER) as stream:
        assert stream.get_final_text() == "Echo: hello there you fine machine"
    assert time.monotonic() - start >= 0.2


async def test_async_client(upstream):
    async with anthropic.AsyncAnthropic(base_url=upstream.anthropic_url, api_key="k", max_retries=0) as c:
        m = await c.messages.create(model="demo-chat", max_tokens=100, messages=USER)
        assert m.content[0].text == "Echo: hello there you fine machine"
        async with c.messages.stream(model="demo-chat", max_tokens=100, messages=USER, tools=TOOLS) as stream:
            final = await stream.get_final_message()
        assert final.content[0].type == "tool_use" and final.stop_reason == "tool_use"
