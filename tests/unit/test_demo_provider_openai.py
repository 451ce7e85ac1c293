"""The demo provider's OpenAI faces beyond plain text: chat tool calls, usage details, images, and
the Responses API, driven by the official openai SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest


USER = [{"role": "user", "content": "hello there you fine machine"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                  {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]


@pytest.fixture
def client(upstream):
    with openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as c:
        yield c


# ---------------------------------------------------------------- chat: tool calls


def test_tool_call(client, upstream):
    r = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": "hello there you fine machine"}
    assert r.usage.completion_tokens == 1 + 5  # the name plus the arguments' words
    assert upstream.requests[-1]["body"]["tools"] == TOOLS


def test_tool_choice_named_required_and_none(client, upstream):
    upstream.behaviour.tool_arguments = {"city": "Paris"}
    r = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"city": "Paris"}
    r = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    r = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == "Echo: hello there you fine machine"
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo-chat", messages=USER, tool_choice="auto")
    assert e.value.body["param"] == "tool_choice"


def test_tool_result_round_trip(client, upstream):
    first = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = [*USER, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    r = client.chat.completions.create(model="demo-chat", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "Tool said: sunny, 21C" and r.choices[0].finish_reason == "stop"
    upstream.behaviour.reply = "fixed"  # a fixed reply replaces every text answer
    r = client.chat.completions.create(model="demo-chat", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "fixed"


def test_streamed_tool_call_reassembles(client, upstream):
    upstream.behaviour.tool_arguments = {"city": "Paris", "note": "long enough to need several fragments"}
    plain = client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS)
    chunks = list(client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    (head,) = first.tool_calls
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == "get_weather" and head.function.arguments == ""
    fragments = [c.choices[0].delta.tool_calls[0].function.arguments
                 for c in chunks[1:] if c.choices and c.choices[0].delta.tool_calls]
    assert len(fragments) >= 2
    assert all(c.choices[0].delta.tool_calls[0].id is None for c in chunks[1:] if c.choices and
               c.choices[0].delta.tool_calls)
    assert "".join(fragments) == plain.choices[0].message.tool_calls[0].function.arguments
    assert json.loads("".join(fragments)) == upstream.behaviour.tool_arguments
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_streamed_tool_call_wire_format(upstream):
    body = {"model": "demo-chat", "messages": USER, "tools": TOOLS, "stream": True}
    with httpx.stream("POST", upstream.url + "/chat/completions", json=body) as r:
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert payloads[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                              "arguments": ""}
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_die_after_chunks_in_a_tool_call(client, upstream):
    upstream.behaviour.die_after_chunks = 1
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="demo-chat", messages=USER, tools=TOOLS, stream=True):
            received.append(chunk)
    assert len(received) == 2 and all(c.choices[0].finish_reason is None for c in received)


# ---------------------------------------------------------------- chat: usage details and images


def test_a_simulated_prompt_cache_reads_the_longest_prefix_seen_before(client, upstream):
    upstream.behaviour.prompt_cache = True
    upstream.behaviour.cache_min_tokens = 10
    system = {"role": "system", "content": "one two three four five six seven eight"}
    first = client.chat.completions.create(model="demo-chat", messages=[system, *USER])
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # nothing seen yet
    turn2 = [system, *USER, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    second = client.chat.completions.create(model="demo-chat", messages=turn2)
    # the first turn's whole prompt was seen: 3 priming + (3 + 8) + (3 + 5)
    assert second.usage.prompt_tokens_details.cached_tokens == 22


def test_cached_and_reasoning_tokens(client, upstream):
    upstream.behaviour.cached_tokens = 8
    upstream.behaviour.reasoning_tokens = 20
    r = client.chat.completions.create(model="demo-chat", messages=USER)
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (11, 6 + 20, 37)
    assert u.prompt_tokens_details.cached_tokens == 8
    assert u.completion_tokens_details.reasoning_tokens == 20
    chunks = list(client.chat.completions.create(model="demo-chat", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage == u


def test_images_are_counted_in_the_echo(client):
    parts = [{"type": "text", "text": "compare"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "text", "text": "these"},
             {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "low"}}]
    r = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content == "Echo: compare these [2 images]"
    r = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": parts[1:2]}])
    assert r.choices[0].message.content == "Echo:  [1 image]"


# ---------------------------------------------------------------- responses


def test_responses_plain(client, upstream):
    upstream.behaviour.cached_tokens = 4
    upstream.behaviour.reasoning_tokens = 2
    r = client.responses.create(model="demo-chat", input="hello there you fine machine", instructions="be brief")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.model == "demo-chat" and r.instructions == "be brief"
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    assert r.output_text == "Echo: hello there you fine machine"
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (11 + 5, 6 + 2, 24)  # instructions count too
    assert u.input_tokens_details.cached_tokens == 4 and u.output_tokens_details.reasoning_tokens == 2
    seen = upstream.requests[-1]
    assert seen["path"] == "/v1/responses" and seen["body"]["input"] == "hello there you fine machine"


def test_responses_items_images_and_limit(client):
    r = client.responses.create(model="demo-chat", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "look at"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert r.output_text == "Echo: look at [1 image]"
    long = " ".join(f"w{i}" for i in range(40))
    r = client.responses.create(model="demo-chat", input=long, max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="demo-chat", input="x", max_output_tokens=8)
    assert e.value.body["code"] == "integer_below_min_value"


def test_responses_function_call_round_trip(client, upstream):
    r = client.responses.create(model="demo-chat", input="weather in Paris", tools=RESPONSE_TOOLS,
                                tool_choice={"type": "function", "name": "get_time"})
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_time" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"input": "weather in Paris"}
    r = client.responses.create(model="demo-chat", tools=RESPONSE_TOOLS, input=[
        {"role": "user", "content": "weather in Paris"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert r.output_text == "Tool said: sunny"


def test_responses_stream(client):
    with client.responses.stream(model="demo-chat", input="hello there you fine machine") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 2 and "".join(deltas) == "Echo: hello there you fine machine"
    assert final.output_text == "Echo: hello there you fine machine" and final.usage.total_tokens == 17
    assert events[0].response.status == "in_progress" and events[0].response.usage is None


def test_responses_stream_function_call(client, upstream):
    upstream.behaviour.tool_arguments = {"city": "Paris", "units": "metric"}
    events = list(client.responses.create(model="demo-chat", input="weather?", tools=RESPONSE_TOOLS, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2 and json.loads("".join(deltas)) == {"city": "Paris", "units": "metric"}
    assert events[-1].response.output[0].name == "get_weather"


def test_responses_wire_format(upstream):
    with httpx.stream("POST", upstream.url + "/responses", json={"model": "demo-chat", "input": "hi",
                                                                 "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    for i, frame in enumerate(frames[:-1]):
        event_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == "event: " + data["type"] and data["sequence_number"] == i


def test_responses_errors(client, upstream):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    upstream.behaviour.fail_status = 429
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="demo-chat", input="x")
    upstream.behaviour.fail_status = None
    r = httpx.post(upstream.url + "/responses", json={"model": "demo-chat"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
