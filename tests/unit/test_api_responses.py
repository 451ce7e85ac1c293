"""``POST /v1/responses``: the Responses codec, alone and through the gateway, in-process.

Parsing is checked against the core request it builds; rendering against the
official ``openai`` SDK's own types (``Response``, ``ResponseStreamEvent``) and
its clients (``responses.create`` / ``responses.stream`` on an httpx mock
transport that calls the gateway). Upstreams are faked by ``MockTransport``:
an OpenAI chat upstream (translated) and one with ``responses_api: true``
(passed through, its body coming back unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from edge_fakes import Events, FakeRouter, MockResponse, MockTransport, named_sse, sse
from llmgw_common.config import GatewayConfig, parse_config
from llmgw_common.failures import FailureKind
from llmgw_edge.api.openai_chat import error_body
from llmgw_edge.api.openai_responses import ResponsesCodec
from llmgw_edge.core.errors import GatewayError, UpstreamError
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.core.types import (ChatResponse, Finish, Image, Start, Text, TextDelta, Thinking, ThinkingDelta,
                                   ToolCall, ToolCallDelta, ToolCallStart, ToolResult, Usage, UsageUpdate)
from llmgw_edge.providers import build_provider

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "lookup", "description": "look a word up", "strict": False,
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}


def parse(body: dict[str, Any], codec: ResponsesCodec | None = None):
    return (codec or ResponsesCodec()).parse(json.dumps(body).encode(), {})


def frames(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in body.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def typed(body: bytes) -> list:
    """Every frame parsed by the SDK's event union; the SSE event name is the payload's type."""
    events = []
    for name, data in frames(body):
        assert name == data["type"]
        events.append(EVENT.validate_python(data))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


async def agen(*events) -> AsyncIterator:
    for e in events:
        yield e


async def render(codec: ResponsesCodec, *events) -> bytes:
    return b"".join([piece async for piece in codec.render_stream(agen(*events))])


# ---- parse: Responses -> core --------------------------------------------------------------

def test_string_input_with_instructions_and_options():
    codec = ResponsesCodec()
    ex = parse({"model": "m", "input": "hello there", "instructions": "be brief", "max_output_tokens": 50,
                "temperature": 0.2, "top_p": 0.9, "user": "u1", "stream": True, "store": True,
                "reasoning": {"effort": "high", "summary": "auto"}, "metadata": {"k": "v"}}, codec)
    req = ex.chat()
    assert (ex.model, ex.stream, ex.max_tokens, ex.prompt_text) == ("m", True, 50, "hello there")
    assert ex.prompt_tokens(True) > 0 and ex.raw.format == "openai_responses" and ex.raw.stream
    assert [(m.role, m.text()) for m in req.messages] == [("system", "be brief"), ("user", "hello there")]
    assert (req.max_tokens, req.temperature, req.top_p, req.user, req.reasoning_effort, req.stream) == \
        (50, 0.2, 0.9, "u1", "high", True)
    assert req.response_format is None and req.tools == [] and req.tool_choice is None


def test_every_input_item_shape():
    body = {"model": "m", "input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look at"},
            {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"},
            {"type": "input_image", "image_url": "data:image/jpeg;base64,AAAA"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "openai's"}],
         "encrypted_content": "gAAAA-openai-only"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "let me check", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"word":"a"}'},
        {"type": "function_call", "call_id": "call_2", "name": "lookup", "arguments": '{"word":"b"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "A"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "B"}]},
        {"role": "system", "content": [{"type": "input_text", "text": "late system"}]},
        {"role": "user", "content": "thanks"}]}
    req = parse(body).chat()
    roles = [m.role for m in req.messages]
    assert roles == ["system", "user", "assistant", "tool", "system", "user"]
    user = req.messages[1]
    assert user.parts[0] == Text("look at")
    assert user.parts[1] == Image(url="https://x.test/a.png", detail="low")
    assert user.parts[2] == Image(data="AAAA", media_type="image/jpeg")
    assistant = req.messages[2]  # OpenAI's own reasoning is skipped; text and both calls form one turn
    assert assistant.parts == [Text("let me check")]
    assert assistant.tool_calls == [ToolCall("call_1", "lookup", '{"word":"a"}'),
                                    ToolCall("call_2", "lookup", '{"word":"b"}')]
    assert req.messages[3].parts == [ToolResult("call_1", [Text("A")], name="lookup"),
                                     ToolResult("call_2", [Text("B")], name="lookup")]
    assert req.last_user_text() == "thanks"


def test_function_calls_without_text_form_their_own_assistant_turn():
    req = parse({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "done"}]}).chat()
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert req.messages[1].tool_calls == [ToolCall("c1", "f", "{}")]
    assert req.messages[3].tool_calls[0].name == "g" and req.messages[4].parts[0].name == "g"


def test_tools_choice_and_text_format():
    req = parse({"model": "m", "input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "lookup"},
                 "parallel_tool_calls": False,
                 "text": {"format": {"type": "json_schema", "name": "out", "strict": True,
                                     "schema": {"type": "object"}}}}).chat()
    (tool,) = req.tools
    assert (tool.name, tool.description, tool.parameters) == ("lookup", "look a word up", TOOL["parameters"])
    assert (req.tool_choice.mode, req.tool_choice.name, req.tool_choice.parallel) == ("tool", "lookup", False)
    assert req.response_format == {"type": "json_schema",
                                   "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    req = parse({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}, "tool_choice": "required",
                 "tools": [TOOL]}).chat()
    assert req.response_format == {"type": "json_object"} and req.tool_choice.mode == "required"
    other = {**TOOL, "name": "other"}
    req = parse({"model": "m", "input": "x", "tools": [TOOL, other], "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "other"}]}}).chat()
    assert [t.name for t in req.tools] == ["other"] and req.tool_choice.mode == "required"


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": ["hi"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "bot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"model": "m", "input": [{"content": "no role, no type"}]}, "input[0].type"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "temperature": "hot"}, "temperature"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "input": "x", "instructions": ["x"]}, "instructions"),
    ({"model": "m", "input": "x", "tools": {"type": "function"}}, "tools"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format"),
])
def test_bad_requests_are_400_with_param(body, param):
    with pytest.raises(GatewayError) as err:
        parse(body)
    assert err.value.status == 400 and err.value.param == param
    assert json.loads(ResponsesCodec().render_error(err.value))["error"]["param"] == param


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"conversation": {"id": "conv_123"}}, "conversation"),
    ({"background": True}, "background"),
])
def test_stored_state_is_refused_because_the_gateway_is_stateless(extra, param):
    with pytest.raises(GatewayError) as err:
        parse({"model": "m", "input": "x", **extra})
    assert err.value.status == 400 and err.value.param == param and "stateless" in err.value.message
    if param != "background":
        assert "full" in err.value.message or "whole" in err.value.message


def test_item_references_are_refused_and_store_and_background_false_are_fine():
    with pytest.raises(GatewayError) as err:
        parse({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]})
    assert err.value.status == 400 and err.value.param == "input[0]" and "stateless" in err.value.message
    assert parse({"model": "m", "input": "x", "store": True, "background": False}).chat().messages


@pytest.mark.parametrize("extra", [
    {"tools": [TOOL, {"type": "web_search"}]},
    {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
    {"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}},
    {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
    {"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]},
    {"input": None, "prompt": {"id": "pmpt_1"}},
])
def test_what_only_openai_serves_is_unsupported_when_translated(extra):
    body = {"model": "m", "input": "x", **extra}
    ex = parse(body)
    with pytest.raises(UpstreamError) as err:
        ex.chat()
    assert err.value.kind is FailureKind.UNSUPPORTED and err.value.retryable  # another provider may serve it
    assert ex.raw.body == body  # a native upstream gets it as it is


def test_our_reasoning_round_trips_as_signed_thinking_and_is_hidden_from_native_upstreams():
    ours = {"type": "reasoning", "id": "rs_x", "summary": [{"type": "summary_text", "text": "I think"}],
            "encrypted_content": "llmgw:sig:SIG=="}
    redacted = {"type": "reasoning", "id": "rs_y", "summary": [], "encrypted_content": "llmgw:redacted:OPAQUE"}
    body = {"model": "m", "input": [{"role": "user", "content": "q"}, ours, redacted,
                                    {"type": "function_call", "call_id": "toolu_1", "name": "f", "arguments": "{}"}]}
    ex = parse(body)
    (assistant,) = [m for m in ex.chat().messages if m.role == "assistant"]
    assert assistant.parts == [Thinking(text="I think", signature="SIG=="), Thinking(redacted="OPAQUE")]
    assert assistant.tool_calls[0].id == "toolu_1"
    assert ex.raw.body["input"] == [body["input"][0], body["input"][3]]


def test_items_we_rendered_go_to_native_upstreams_without_our_ids():
    codec = ResponsesCodec()
    parse({"model": "m", "input": "x"}, codec)
    rendered = json.loads(codec.render_response(ChatResponse(
        id="x", model="up", parts=[Thinking(text="t", signature="S"), Text("hi")],
        tool_calls=[ToolCall("call_1", "f", "{}")])))["output"]
    theirs = {"type": "message", "id": "msg_0123abcd", "role": "assistant", "status": "completed",
              "content": [{"type": "output_text", "text": "native", "annotations": []}]}
    body = {"model": "m", "input": [{"role": "user", "content": "q"}, *rendered, theirs,
                                    {"type": "function_call_output", "call_id": "call_1", "output": "ok"}]}
    ex = parse(body)
    native = ex.raw.body["input"]
    assert [i.get("type") for i in native] == [None, "message", "function_call", "message", "function_call_output"]
    assert "id" not in native[1] and "id" not in native[2] and native[3] == theirs
    assert native[2]["call_id"] == "call_1" and body["input"][2]["id"].startswith("msg_llmgw")  # the client's untouched
    assistant = ex.chat().messages[1]  # translated, our reasoning is thinking again
    assert assistant.parts == [Thinking(text="t", signature="S"), Text("hi")] and assistant.tool_calls[0].id == "call_1"


# ---- render: core -> Responses object ----------------------------------------------------------

def test_rendered_response_is_an_sdk_response_with_text_calls_reasoning_and_usage():
    codec = ResponsesCodec()
    parse({"model": "m", "input": "x", "instructions": "be brief", "tools": [TOOL], "temperature": 0.5,
           "max_output_tokens": 99, "metadata": {"k": "v"}}, codec)
    resp = ChatResponse(id="chatcmpl-1", model="up", parts=[Thinking(text="hmm", signature="S"), Text("Hello "),
                                                            Text("world")],
                        tool_calls=[ToolCall("call_9", "lookup", '{"word":"x"}')], finish_reason="tool_calls",
                        usage=Usage(input_tokens=100, output_tokens=20, cache_read_tokens=40, reasoning_tokens=5),
                        created=1700000000)
    r = Response.model_validate_json(codec.render_response(resp))
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Hello world" and r.model == "up" and r.created_at == 1700000000
    reasoning, message, call = r.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "hmm"
    assert reasoning.encrypted_content == "llmgw:sig:S"
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert (call.type, call.call_id, call.name, call.arguments, call.status) == \
        ("function_call", "call_9", "lookup", '{"word":"x"}', "completed")
    assert call.id.startswith("fc_")
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (100, 20, 120)
    assert (u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens) == (40, 5)
    assert (r.instructions, r.temperature, r.max_output_tokens, r.metadata) == ("be brief", 0.5, 99, {"k": "v"})
    assert r.tools[0].name == "lookup" and r.tool_choice == "auto" and r.parallel_tool_calls is True
    assert r.error is None and r.incomplete_details is None


def test_rendered_length_finish_is_incomplete():
    r = Response.model_validate_json(ResponsesCodec().render_response(
        ChatResponse(id="x", model="up", parts=[Text("cut")], finish_reason="length")))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.output_text == "cut"


def test_rendered_empty_answer_still_has_a_message():
    r = Response.model_validate_json(ResponsesCodec().render_response(ChatResponse(id="x", model="up")))
    assert r.output_text == "" and [o.type for o in r.output] == ["message"]


# ---- render: core stream -> typed events -------------------------------------------------------

async def test_text_stream_is_the_sdk_event_sequence():
    codec = ResponsesCodec()
    parse({"model": "m", "input": "x", "stream": True}, codec)
    body = await render(codec, Start("chatcmpl-1", "up", 5), TextDelta("Hel"), TextDelta("lo"), Finish("stop"),
                        UsageUpdate(Usage(input_tokens=9, output_tokens=2)))
    events = typed(body)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    created, done, completed = events[0], events[8], events[-1]
    assert created.response.status == "in_progress" and created.response.output == []
    assert events[2].item.status == "in_progress" and events[4].item_id == done.item.id
    assert events[6].text == "Hello" and done.item.content[0].text == "Hello"
    assert completed.response.id == created.response.id and completed.response.output_text == "Hello"
    assert completed.response.usage.input_tokens == 9 and completed.response.usage.total_tokens == 11


async def test_interleaved_reasoning_text_and_tool_calls_keep_their_output_index():
    codec = ResponsesCodec()
    parse({"model": "m", "input": "x", "stream": True, "tools": [TOOL]}, codec)
    body = await render(
        codec, Start("s", "up"), ThinkingDelta("plan"), ThinkingDelta(signature="SIG"), TextDelta("calling"),
        ToolCallStart(0, "call_a", "lookup"), ToolCallDelta(0, '{"word":'), ToolCallDelta(0, '"a"}'),
        ToolCallStart(1, "call_b", "lookup"), ToolCallDelta(1, '{"word":"b"}'), TextDelta("and more"),
        Finish("tool_calls"), UsageUpdate(Usage(input_tokens=3, output_tokens=4)))
    events = typed(body)
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message"), (2, "function_call"), (3, "function_call"), (4, "message")]
    done = {e.output_index: e.item for e in events if e.type == "response.output_item.done"}
    assert done[0].summary[0].text == "plan" and done[0].encrypted_content == "llmgw:sig:SIG"
    assert (done[2].call_id, done[2].arguments, done[3].call_id, done[3].arguments) == \
        ("call_a", '{"word":"a"}', "call_b", '{"word":"b"}')
    deltas = [(e.output_index, e.delta) for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas == [(2, '{"word":'), (2, '"a"}'), (3, '{"word":"b"}')]
    args_done = [(e.output_index, e.arguments) for e in events if e.type == "response.function_call_arguments.done"]
    assert args_done == [(2, '{"word":"a"}'), (3, '{"word":"b"}')]
    texts = [(e.output_index, e.delta) for e in events if e.type == "response.output_text.delta"]
    assert texts == [(1, "calling"), (4, "and more")]
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call", "function_call", "message"]
    assert final.output_text == "callingand more" and final.status == "completed"
    # every item is closed before the end, each exactly once
    assert sorted(done) == [0, 1, 2, 3, 4]


async def test_stream_cut_by_length_ends_incomplete():
    codec = ResponsesCodec()
    events = typed(await render(codec, Start("s", "up"), TextDelta("cut"), Finish("length")))
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output[0].status == "incomplete"


async def test_broken_translated_stream_ends_with_response_failed_under_the_same_id():
    codec = ResponsesCodec()
    body = await render(codec, Start("s", "up"), TextDelta("half"))  # no finish: the gateway calls stream_error
    body += codec.stream_error(UpstreamError(502, "upstream stream broke", kind=FailureKind.CONNECTION))
    events = typed(body)
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.id == events[0].response.id
    assert failed.response.status == "failed" and failed.response.error.code == "server_error"
    assert "upstream stream broke" in failed.response.error.message
    assert failed.response.output[0].status == "incomplete" and failed.response.output_text == "half"


def test_error_in_a_relayed_stream_is_an_error_event():
    (event,) = typed(ResponsesCodec().stream_error(UpstreamError(502, "boom", kind=FailureKind.PROTOCOL)))
    assert event.type == "error" and event.message == "boom" and event.code


# ---- through the gateway --------------------------------------------------------------------

def config(*providers: dict) -> GatewayConfig:
    return parse_config({"providers": list(providers),
                         "routing": {"retry": {"attempts": 0, "base_delay_s": 0, "max_delay_s": 0}}})


def openai_provider(pid: str, **extra) -> dict:
    return {"id": pid, "type": "openai", "base_url": f"http://{pid}.test/v1", "api_key": f"key-{pid}",
            "models": [{"name": "m", "upstream": f"up-{pid}"}], **extra}


def anthropic_provider(pid: str) -> dict:
    return {"id": pid, "type": "anthropic", "base_url": f"http://{pid}.test", "api_key": f"key-{pid}",
            "models": [{"name": "m", "upstream": "claude-m"}]}


class Harness:
    def __init__(self, cfg: GatewayConfig, handler):
        self.transport = MockTransport(handler)
        self.router = FakeRouter(cfg)
        self.events = Events()
        providers = {p.id: build_provider(p, self.transport, Path("/tmp")) for p in cfg.providers}
        self.gateway = Gateway(Deps(config=cfg, providers=providers,
                                    decide=self.router.decide, report=self.router.report, publish=self.events))

    async def post(self, body: dict):
        codec = ResponsesCodec()
        return await self.gateway.handle(codec.parse(json.dumps(body).encode(), {}), codec)

    def sdk(self) -> openai.AsyncOpenAI:
        """The official client, its HTTP answered in-process by this gateway (as main.py's route does)."""
        async def handle(request: httpx.Request) -> httpx.Response:
            assert request.url.path == "/v1/responses"
            codec = ResponsesCodec()
            try:
                reply = await self.gateway.handle(codec.parse(request.content, dict(request.headers)), codec)
            except GatewayError as err:
                return httpx.Response(err.status, content=error_body(err), headers={"content-type": "application/json"})
            headers = {**reply.headers, "content-type": reply.media_type}
            return httpx.Response(reply.status, headers=headers,
                                  content=reply.stream if reply.stream is not None else reply.body)

        return openai.AsyncOpenAI(api_key="client-key", base_url="http://edge.test/v1", max_retries=0,
                                  http_client=httpx.AsyncClient(transport=httpx.MockTransport(handle)))


def chat_completion(text: str | None = "hi", tool_calls=None, finish="stop") -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-a",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 2}}}


def chunk(delta: dict, finish=None, usage=None, choices=True) -> dict:
    body = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "up-a",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return body


CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"word":"gateway"}'}}


async def test_sdk_create_translated_to_an_openai_chat_upstream():
    h = Harness(config(openai_provider("a")),
                lambda req: MockResponse(json=chat_completion(None, [CALL], "tool_calls")))
    client = h.sdk()
    raw = await client.responses.with_raw_response.create(
        model="m", instructions="be brief", input="find gateway", tools=[TOOL], max_output_tokens=64,
        text={"format": {"type": "json_object"}})
    r = raw.parse()
    (sent,) = h.transport.requests
    assert sent.url == "http://a.test/v1/chat/completions"
    out = sent.json()
    assert out["model"] == "up-a" and out["max_tokens"] == 64 and out["response_format"] == {"type": "json_object"}
    assert out["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "find gateway"}]
    assert out["tools"][0]["function"]["name"] == "lookup"
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_1", "lookup", {"word": "gateway"})
    assert r.usage.input_tokens == 11 and r.usage.input_tokens_details.cached_tokens == 2
    assert raw.headers["x-llmgw-provider"] == "a"
    (event,) = h.events
    assert (event.endpoint, event.tokens_in, event.tokens_out, event.status) == ("responses", 11, 4, 200)

    # the tool's answer goes back as items, the way the SDK builds the next turn
    h.transport.handler = lambda req: MockResponse(json=chat_completion("It is a gateway."))
    r2 = await client.responses.create(model="m", input=[
        {"role": "user", "content": "find gateway"}, *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "a gateway"}], tools=[TOOL])
    assert r2.output_text == "It is a gateway."
    messages = h.transport.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1" and messages[2] == {
        "role": "tool", "tool_call_id": "call_1", "content": "a gateway"}


async def test_sdk_stream_translated_from_an_openai_chat_stream():
    chunks = sse(chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"}),
                 chunk({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                                        "function": {"name": "lookup", "arguments": ""}}]}),
                 chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"word":'}}]}),
                 chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}),
                 chunk({}, "tool_calls"),
                 chunk({}, usage={"prompt_tokens": 8, "completion_tokens": 5}, choices=False))
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(chunks=chunks))
    async with h.sdk().responses.stream(model="m", input="hi", tools=[TOOL]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    assert final.output_text == "Hello" and [o.type for o in final.output] == ["message", "function_call"]
    assert json.loads(final.output[1].arguments) == {"word": "x"} and final.usage.output_tokens == 5
    assert h.transport.requests[0].json()["stream"] is True
    (event,) = h.events
    assert (event.endpoint, event.stream, event.tokens_in, event.tokens_out) == ("responses", True, 8, 5)


async def test_raw_stream_through_the_gateway_is_sdk_typed_and_broken_streams_fail():
    h = Harness(config(openai_provider("a")),
                lambda req: MockResponse(chunks=sse(chunk({"content": "a"}), chunk({"content": "b"}), done=False),
                                         break_after=1))
    reply = await h.post({"model": "m", "input": "hi", "stream": True})
    events = typed(b"".join([piece async for piece in reply.stream]))
    assert events[-1].type == "response.failed" and events[-1].response.id == events[0].response.id
    assert h.events[0].status == 502


async def test_native_upstream_gets_the_body_and_its_answer_comes_back_unchanged():
    native = {"id": "resp_upstream", "object": "response", "created_at": 1, "status": "completed", "model": "up-b",
              "output": [{"type": "message", "id": "msg_u", "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": "native", "annotations": []}]}],
              "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "x_vendor": 1,
              "usage": {"input_tokens": 6, "output_tokens": 2, "total_tokens": 8,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 0}}}
    content = json.dumps(native).encode()
    h = Harness(config(openai_provider("b", responses_api=True)), lambda req: MockResponse(content=content))
    body = {"model": "m", "input": "hi", "tools": [TOOL, {"type": "web_search"}], "store": True,
            "include": ["reasoning.encrypted_content"]}
    reply = await h.post(body)
    (sent,) = h.transport.requests
    assert sent.url == "http://b.test/v1/responses" and sent.json() == {**body, "model": "up-b"}
    assert reply.status == 200 and reply.body == content
    (event,) = h.events
    assert (event.endpoint, event.tokens_in, event.tokens_out, event.provider) == ("responses", 6, 2, "b")


async def test_native_stream_is_relayed_event_for_event():
    upstream = named_sse(
        ("response.created", {"type": "response.created", "sequence_number": 0,
                              "response": {"id": "resp_u", "status": "in_progress", "output": []}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1,
                                        "item_id": "msg_u", "output_index": 0, "content_index": 0, "delta": "x"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 2,
                                "response": {"id": "resp_u", "status": "completed", "output": [],
                                             "usage": {"input_tokens": 4, "output_tokens": 1, "total_tokens": 5}}}))
    h = Harness(config(openai_provider("b", responses_api=True)), lambda req: MockResponse(chunks=upstream))
    reply = await h.post({"model": "m", "input": "hi", "stream": True})
    relayed = b"".join([piece async for piece in reply.stream])
    assert frames(relayed) == frames(b"".join(upstream))
    assert (h.events[0].tokens_in, h.events[0].tokens_out, h.events[0].status) == (4, 1, 200)


async def test_built_in_tools_fail_over_to_the_upstream_that_serves_responses():
    h = Harness(config(openai_provider("a"), openai_provider("b", responses_api=True)),
                lambda req: MockResponse(json={"id": "resp_b", "object": "response", "output": []}))
    reply = await h.post({"model": "m", "input": "news?", "tools": [{"type": "web_search"}]})
    assert reply.status == 200 and [r.url for r in h.transport.requests] == ["http://b.test/v1/responses"]
    assert reply.headers["x-llmgw-provider"] == "b"
    failed = h.router.outcomes[0]
    assert (failed.provider, failed.kind, failed.ok) == ("a", "unsupported", False)


async def test_built_in_tools_with_no_native_upstream_fail():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    with pytest.raises(GatewayError) as err:
        await h.post({"model": "m", "input": "news?", "tools": [{"type": "web_search"}]})
    assert err.value.status >= 400 and h.transport.requests == []


async def test_previous_response_id_is_refused_even_for_a_native_upstream():
    h = Harness(config(openai_provider("b", responses_api=True)), lambda req: MockResponse(json={}))
    with pytest.raises(GatewayError) as err:
        await h.post({"model": "m", "input": "and then?", "previous_response_id": "resp_1"})
    assert err.value.status == 400 and err.value.param == "previous_response_id"
    assert "fail" in err.value.message and h.transport.requests == []


async def test_anthropic_thinking_round_trips_through_reasoning_items():
    answers = iter([
        {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-m", "stop_reason": "tool_use",
         "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 9},
         "content": [{"type": "thinking", "thinking": "need a lookup", "signature": "SIG1"},
                     {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "w"}}]},
        {"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-m", "stop_reason": "end_turn",
         "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 3},
         "content": [{"type": "text", "text": "done"}]}])
    h = Harness(config(anthropic_provider("c")), lambda req: MockResponse(json=next(answers)))
    client = h.sdk()
    first = await client.responses.create(model="m", input="look up w", tools=[TOOL], reasoning={"effort": "low"})
    reasoning, call = first.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "need a lookup"
    assert (call.call_id, json.loads(call.arguments)) == ("toolu_1", {"word": "w"})
    second = await client.responses.create(model="m", tools=[TOOL], reasoning={"effort": "low"}, input=[
        {"role": "user", "content": "look up w"}, *[o.model_dump(exclude_none=True) for o in first.output],
        {"type": "function_call_output", "call_id": "toolu_1", "output": "found"}])
    assert second.output_text == "done"
    sent = h.transport.requests[-1].json()
    assert sent["thinking"]["type"] == "enabled"
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant" and assistant["content"][0] == {
        "type": "thinking", "thinking": "need a lookup", "signature": "SIG1"}
    assert assistant["content"][1]["type"] == "tool_use" and sent["messages"][2]["content"][0]["tool_use_id"] == \
        "toolu_1"
