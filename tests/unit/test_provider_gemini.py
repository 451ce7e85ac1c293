"""Provider type ``gemini`` (Google's native Gemini API, v1beta): request bodies built from core types,
answers and streams parsed into them, errors classified (RetryInfo -> cooldown), embeddings, raw relay.
In-process against ``MockTransport``; one test through the demo provider's Gemini face over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_fakes import MockResponse, MockTransport
from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind
from llmgw_edge.core.errors import UpstreamError
from llmgw_edge.core.types import (ChatRequest, EmbeddingRequest, Finish, Image, Message, Start, Text, TextDelta,
                                   Thinking, ToolCall, ToolCallStart, ToolChoice, ToolResult, ToolSpec, UsageUpdate)
from llmgw_edge.providers import build_provider
from llmgw_edge.providers.base import RawCall, error_message
from llmgw_edge.providers.gemini import (DAILY_QUOTA_MAX_WAIT_S, SKIP_SIGNATURE, GeminiProvider, clean_schema,
                                         quota_wait_s, seconds_to_pacific_midnight)

KEY = "AIza-test-secret-key"
BASE = "https://generativelanguage.googleapis.com/v1beta"


def provider(handler, tmp_path: Path, base_url: str | None = None, model: str = "gemini-x") -> GeminiProvider:
    config = ProviderConfig(id="gem", type="gemini", api_key=KEY, base_url=base_url, models=[{"name": model}])
    p = build_provider(config, MockTransport(handler), tmp_path)
    assert isinstance(p, GeminiProvider)
    return p


def answer(parts: list[dict[str, Any]], finish: str | None = "STOP", usage: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-x-001", "responseId": "resp-1",
                            **extra}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def sse(*chunks: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


RETRY_37S = google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota. Please retry in 37.2s.", [
    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
        {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
         "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "10"}]},
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}])
KEY_INVALID = google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
     "metadata": {"service": "generativelanguage.googleapis.com"}}])


# ---- request bodies ---------------------------------------------------------------------------------

async def test_request_body_system_images_tools_results_and_config(tmp_path):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path)
    weather_schema = {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "City", "format": "uri-reference", "minLength": 1},
            "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
            "days": {"anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}]},
            "where": {"$ref": "#/$defs/Place"},
            "tags": {"type": "array", "items": {"type": "string", "const": "x"}, "uniqueItems": True}},
        "required": ["city", "ghost"], "strict": True,
        "$defs": {"Place": {"type": "object", "additionalProperties": {"type": "string"},
                            "properties": {"lat": {"type": "number", "exclusiveMinimum": -90}}}}}
    req = ChatRequest(
        model="gemini-x",
        messages=[
            Message("system", [Text("be brief")]),
            Message("system", [Text("be kind")]),
            Message("user", [Text("look"), Image(data="aGVsbG8=", media_type="image/jpeg"),
                             Image(url="data:image/webp;base64,d2VicA=="),
                             Image(url="gs://bucket/cat.png"), Image(url="https://example.com/dog.PNG?x=1")]),
            Message("user", [Text("and tell me the weather")]),
            Message("assistant", [Thinking(text="hmm", signature="sig"), Text("checking")],
                    tool_calls=[ToolCall("call_a", "get_weather", '{"city": "Oslo"}'),
                                ToolCall("call_b", "get_time", "")]),
            Message("tool", [ToolResult("call_a", [Text('{"temp": 3}')])]),
            Message("tool", [ToolResult("call_b", [Text("12:00")])]),
            Message("user", [ToolResult("call_c", [Text("boom")], is_error=True, name="named_tool"),
                             Text("thanks")]),
        ],
        max_tokens=100, temperature=0.3, top_p=0.9, top_k=40, stop=["END"], n=2, seed=7, presence_penalty=0.0,
        frequency_penalty=0.5,
        tools=[ToolSpec("get_weather", "Weather of a city", weather_schema),
               ToolSpec("get_time", None, {"type": "object", "properties": {}})],
        tool_choice=ToolChoice("tool", name="get_weather"),
        response_format={"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
            "type": "object", "properties": {"t": {"type": "number"}}, "additionalProperties": False}}},
        thinking_budget=2048)
    resp = await p.chat(req, "gemini-x")
    assert resp.text() == "ok"

    (r,) = seen
    assert r.method == "POST" and r.url == f"{BASE}/models/gemini-x:generateContent"
    assert r.headers["x-goog-api-key"] == KEY and KEY not in r.url and "key=" not in r.url
    assert "authorization" not in r.headers
    body = r.json()
    assert body["systemInstruction"] == {"parts": [{"text": "be brief\n\nbe kind"}]}
    user, model_turn, results = body["contents"]
    assert user == {"role": "user", "parts": [  # the two user messages merged into one turn
        {"text": "look"}, {"inlineData": {"mimeType": "image/jpeg", "data": "aGVsbG8="}},
        {"inlineData": {"mimeType": "image/webp", "data": "d2VicA=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/dog.PNG?x=1"}},
        {"text": "and tell me the weather"}]}
    assert model_turn == {"role": "model", "parts": [  # thinking is not sent back
        {"text": "checking"},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
        {"functionCall": {"name": "get_time", "args": {}}}]}
    assert results == {"role": "user", "parts": [  # tool results by their function's name, then the text
        {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
        {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}},
        {"functionResponse": {"name": "named_tool", "response": {"error": "boom"}}},
        {"text": "thanks"}]}

    (tool,) = body["tools"]
    weather, clock = tool["functionDeclarations"]
    assert clock == {"name": "get_time"}  # no parameters: Gemini refuses an OBJECT without properties
    assert weather["name"] == "get_weather" and weather["description"] == "Weather of a city"
    assert weather["parameters"] == {
        "type": "object", "required": ["city"],
        "properties": {
            "city": {"type": "string", "description": "City", "minLength": 1},
            "unit": {"type": "string", "nullable": True, "enum": ["C", "F"]},
            "days": {"type": "integer", "format": "int32", "nullable": True},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["x"]}}}}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 100 + 2048,  # the thoughts count against maxOutputTokens
        "temperature": 0.3, "topP": 0.9, "topK": 40, "seed": 7, "frequencyPenalty": 0.5, "stopSequences": ["END"],
        "candidateCount": 2,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"t": {"type": "number"}}},
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}}


@pytest.mark.parametrize("mode, expected", [("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}),
                                            ("required", {"mode": "ANY"})])
async def test_tool_choice_modes(tmp_path, mode, expected):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path)
    await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])], tools=[ToolSpec("f")],
                             tool_choice=ToolChoice(mode)), "gemini-x")
    assert seen[0].json()["toolConfig"] == {"functionCallingConfig": expected}


@pytest.mark.parametrize("effort, budget, thoughts", [("low", 1024, True), ("medium", 8192, True),
                                                      ("high", 24576, True), ("none", 0, False)])
async def test_reasoning_effort_becomes_a_thinking_budget(tmp_path, effort, budget, thoughts):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path)
    await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])], reasoning_effort=effort), "gemini-x")
    config = seen[0].json()["generationConfig"]["thinkingConfig"]
    assert config == ({"thinkingBudget": budget, "includeThoughts": True} if thoughts else {"thinkingBudget": 0})


async def test_plain_request_has_no_optional_fields(tmp_path):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path)
    await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert seen[0].json() == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


async def test_gemini_3_replayed_calls_carry_the_signature_sentinel(tmp_path):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path,
                 model="gemini-3-pro-preview")
    messages = [Message("user", [Text("go")]),
                Message("assistant", [], tool_calls=[ToolCall("call_0", "a", "{}"), ToolCall("call_1", "b", "{}")]),
                Message("tool", [ToolResult("call_0", [Text("1")])]),
                Message("tool", [ToolResult("call_1", [Text("2")])])]
    await p.chat(ChatRequest("g3", messages), "gemini-3-pro-preview")
    await p.chat(ChatRequest("g2", messages), "gemini-2.5-flash")
    g3, g25 = (r.json()["contents"][1]["parts"] for r in seen)
    # the first call of a step carries it (as Gemini signs parallel calls); older models get none
    assert [part.get("thoughtSignature") for part in g3] == [SKIP_SIGNATURE, None]
    assert all("thoughtSignature" not in part for part in g25)


async def test_plain_http_image_url_is_unsupported(tmp_path):
    p = provider(lambda r: MockResponse(200, json=answer([{"text": "ok"}])), tmp_path)
    req = ChatRequest("gemini-x", [Message("user", [Text("see"), Image(url="http://example.com/a.png")])])
    with pytest.raises(UpstreamError) as exc:
        await p.chat(req, "gemini-x")
    assert exc.value.kind is FailureKind.UNSUPPORTED and exc.value.retryable  # the gateway fails over


@pytest.mark.parametrize("configured, expected", [
    (None, BASE), ("https://generativelanguage.googleapis.com", BASE),
    ("https://generativelanguage.googleapis.com/", BASE), (BASE + "/", BASE),
    ("https://generativelanguage.googleapis.com/v1", "https://generativelanguage.googleapis.com/v1"),
    ("http://127.0.0.1:9000/proxy", "http://127.0.0.1:9000/proxy/v1beta")])
async def test_base_url_with_or_without_version(tmp_path, configured, expected):
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, json=answer([{"text": "ok"}])), tmp_path,
                 base_url=configured)
    await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert seen[0].url == f"{expected}/models/gemini-x:generateContent"


def test_schema_cleaning_keeps_only_the_gemini_subset():
    schema = {"type": "object", "title": "T", "properties": {
        "mode": {"oneOf": [{"type": "string", "const": "a"}, {"type": "string", "const": "b"}]},
        "both": {"allOf": [{"properties": {"x": {"type": "string"}}, "required": ["x"]},
                           {"properties": {"y": {"type": "integer"}}}], "type": "object"},
        "pair": {"type": ["string", "integer"]},
        "loop": {"$ref": "#/definitions/Node"}},
        "definitions": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/Node"}}}},
        "patternProperties": {"^x": {}}, "examples": [{}], "$id": "x"}
    cleaned = clean_schema(schema)
    assert set(cleaned) == {"type", "title", "properties"}
    props = cleaned["properties"]
    assert props["mode"] == {"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "string", "enum": ["b"]}]}
    assert props["both"] == {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}},
                             "required": ["x"]}
    assert props["pair"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    depth, node = 0, props["loop"]  # a recursive $ref is inlined to a bounded depth
    while "properties" in node:
        node, depth = node["properties"]["next"], depth + 1
    assert node == {"type": "object"} and 1 < depth <= 10
    assert "$" not in json.dumps(cleaned)


# ---- answers ---------------------------------------------------------------------------------------

async def test_response_text_thoughts_calls_and_usage(tmp_path):
    usage = {"promptTokenCount": 120, "cachedContentTokenCount": 100, "candidatesTokenCount": 30,
             "thoughtsTokenCount": 50, "totalTokenCount": 200}
    body = answer([{"text": "let me think", "thought": True, "thoughtSignature": "c2ln"},
                   {"text": "Calling."},
                   {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"},
                   {"functionCall": {"name": "get_time", "args": {}}},
                   {"functionCall": {"id": "fc-9", "name": "get_date"}}], usage=usage)
    p = provider(lambda r: MockResponse(200, json=body), tmp_path)
    resp = await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert resp.id == "resp-1" and resp.model == "gemini-x-001" and resp.created > 0
    assert resp.parts == [Thinking(text="let me think"), Text("Calling.")]  # no Gemini signature leaks out
    assert [(c.id, c.name, json.loads(c.arguments)) for c in resp.tool_calls] == [
        ("call_0", "get_weather", {"city": "Oslo"}), ("call_1", "get_time", {}), ("fc-9", "get_date", {})]
    assert resp.finish_reason == "tool_calls"
    u = resp.usage
    # input includes the cached tokens (as promptTokenCount does); output includes the thoughts
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) == (120, 80, 100, 50)


@pytest.mark.parametrize("reason, expected", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop"), (None, "stop")])
async def test_finish_reasons(tmp_path, reason, expected):
    parts = [] if reason == "SAFETY" else [{"text": "x"}]
    p = provider(lambda r: MockResponse(200, json=answer(parts, finish=reason)), tmp_path)
    resp = await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert resp.finish_reason == expected


async def test_blocked_prompt_is_an_answer_not_an_error(tmp_path):
    body = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-x-001"}
    p = provider(lambda r: MockResponse(200, json=body), tmp_path)
    resp = await p.chat(ChatRequest("gemini-x", [Message("user", [Text("bad")])]), "gemini-x")
    assert resp.finish_reason == "content_filter" and resp.text() == "" and not resp.tool_calls
    assert resp.usage.input_tokens == 9


async def test_no_candidates_without_a_reason_is_a_protocol_failure(tmp_path):
    p = provider(lambda r: MockResponse(200, json={"modelVersion": "x"}), tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert exc.value.kind is FailureKind.PROTOCOL


# ---- streams ----------------------------------------------------------------------------------------

async def collect(p: GeminiProvider, req: ChatRequest | None = None) -> list:
    req = req or ChatRequest("gemini-x", [Message("user", [Text("hi")])], stream=True)
    return [e async for e in p.chat_stream(req, "gemini-x")]


async def test_stream_events_in_order_with_usage(tmp_path):
    u1 = {"promptTokenCount": 10, "candidatesTokenCount": 1, "thoughtsTokenCount": 4, "totalTokenCount": 15}
    u2 = {"promptTokenCount": 10, "cachedContentTokenCount": 6, "candidatesTokenCount": 9,
          "thoughtsTokenCount": 4, "totalTokenCount": 23}
    chunks = sse(answer([{"text": "pondering", "thought": True}], finish=None, usage=u1),
                 answer([{"text": "Hel"}], finish=None),
                 answer([{"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}], finish=None),
                 answer([{"functionCall": {"name": "g", "args": {}}}], finish="STOP", usage=u2))
    seen = []
    p = provider(lambda r: seen.append(r) or MockResponse(200, chunks=chunks), tmp_path)
    events = await collect(p)
    assert seen[0].url == f"{BASE}/models/gemini-x:streamGenerateContent?alt=sse"
    assert seen[0].headers["x-goog-api-key"] == KEY and seen[0].headers["accept"] == "text/event-stream"
    start, *rest = events
    assert isinstance(start, Start) and start.id == "resp-1" and start.model == "gemini-x-001"
    shapes = [(type(e).__name__, getattr(e, "text", None) or getattr(e, "name", None)
               or getattr(e, "arguments", None) or getattr(e, "reason", None)) for e in rest if
              not isinstance(e, UsageUpdate)]
    assert shapes == [("ThinkingDelta", "pondering"), ("TextDelta", "Hel"), ("TextDelta", "lo"),
                      ("ToolCallStart", "f"), ("ToolCallDelta", '{"a": 1}'),
                      ("ToolCallStart", "g"), ("ToolCallDelta", "{}"), ("Finish", "tool_calls")]
    calls = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(c.index, c.id) for c in calls] == [(0, "call_0"), (1, "call_1")]
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    assert [(u.input_tokens, u.output_tokens, u.reasoning_tokens, u.cache_read_tokens) for u in usages] == [
        (10, 5, 4, 0), (10, 13, 4, 6)]
    assert isinstance(events[-2], UsageUpdate) and events[-1] == Finish("tool_calls")  # usage before the finish


async def test_stream_without_finish_reason_is_a_protocol_failure(tmp_path):
    p = provider(lambda r: MockResponse(200, chunks=sse(answer([{"text": "Hel"}], finish=None))), tmp_path)
    events: list = []
    with pytest.raises(UpstreamError) as exc:
        async for e in p.chat_stream(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x"):
            events.append(e)
    assert exc.value.kind is FailureKind.PROTOCOL and events == [events[0], TextDelta("Hel")]


async def test_stream_blocked_prompt_finishes_with_content_filter(tmp_path):
    chunks = sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "r",
                  "usageMetadata": {"promptTokenCount": 5}})
    p = provider(lambda r: MockResponse(200, chunks=chunks), tmp_path)
    events = await collect(p)
    assert isinstance(events[0], Start) and events[-1] == Finish("content_filter")


async def test_stream_error_in_a_data_line_is_classified(tmp_path):
    p = provider(lambda r: MockResponse(200, chunks=sse(RETRY_37S)), tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await collect(p)
    assert exc.value.kind is FailureKind.RATE_LIMITED and exc.value.retry_after_s == 37.0
    chunks = sse(answer([{"text": "Hi"}], finish=None),
                 google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
    p = provider(lambda r: MockResponse(200, chunks=chunks), tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await collect(p)
    assert exc.value.kind is FailureKind.OVERLOADED


# ---- errors ------------------------------------------------------------------------------------------

async def test_429_retry_info_sets_the_cooldown(tmp_path):
    p = provider(lambda r: MockResponse(429, json=RETRY_37S), tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    err = exc.value
    assert err.status == 429 and err.kind is FailureKind.RATE_LIMITED and err.retry_after_s == 37.0
    assert err.retryable and not err.retry_here and err.upstream_format == "gemini"
    assert "exceeded your current quota" in err.message


@pytest.mark.parametrize("detail, expected", [
    ({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}, 1.5),
    ({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}, 0.25),
    ({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": {"seconds": 2, "nanos": 500000000}}, 2.5)])
def test_retry_delay_formats(detail, expected):
    assert quota_wait_s([detail]) == expected


def test_retry_in_message_when_no_retry_info():
    assert quota_wait_s([], "Quota exceeded. Please retry in 12.5s.") == 12.5
    assert quota_wait_s([], "Resource has been exhausted (e.g. check quota).") is None


def test_daily_quota_waits_longer():
    daily = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
        {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
         "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "250"}]}
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"}
    noon = datetime(2026, 3, 2, 20, 0, tzinfo=timezone.utc)  # 12:00 in Los Angeles: 12 hours to the reset
    late = datetime(2026, 3, 3, 7, 30, tzinfo=timezone.utc)  # 23:30 in Los Angeles
    assert seconds_to_pacific_midnight(noon) == 12 * 3600
    assert quota_wait_s([daily], now=noon) == DAILY_QUOTA_MAX_WAIT_S  # capped: the cooldown is the whole key's
    assert quota_wait_s([daily, retry], now=late) == 1800  # until the reset, not the 40 s of its RetryInfo
    assert quota_wait_s([retry], now=late) == 40
    # the night the clocks go back (1 November 2026 in Los Angeles): 25 hours from midnight to midnight
    assert seconds_to_pacific_midnight(datetime(2026, 11, 1, 7, 0, tzinfo=timezone.utc)) == 25 * 3600


@pytest.mark.parametrize("status, body, kind", [
    (400, KEY_INVALID, FailureKind.AUTH),
    (400, google_error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n"),
     FailureKind.BAD_REQUEST),
    (400, google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
     FailureKind.AUTH),
    (403, google_error(403, "PERMISSION_DENIED", "The caller does not have permission"), FailureKind.AUTH),
    (404, google_error(404, "NOT_FOUND", "models/nope is not found for API version v1beta"), FailureKind.NOT_FOUND),
    (429, google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"), FailureKind.RATE_LIMITED),
    (500, google_error(500, "INTERNAL", "An internal error has occurred."), FailureKind.SERVER),
    (503, google_error(503, "UNAVAILABLE", "The model is overloaded."), FailureKind.OVERLOADED),
    (504, google_error(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), FailureKind.TIMEOUT),
    (502, b"<html>Bad Gateway</html>", FailureKind.SERVER),
])
async def test_errors_classified(tmp_path, status, body, kind):
    reply = MockResponse(status, content=body) if isinstance(body, bytes) else MockResponse(status, json=body)
    p = provider(lambda r: reply, tmp_path)
    with pytest.raises(UpstreamError) as exc:
        await p.chat(ChatRequest("gemini-x", [Message("user", [Text("hi")])]), "gemini-x")
    assert exc.value.kind is kind and exc.value.status == status
    if kind is FailureKind.BAD_REQUEST:  # the client's mistake: Gemini's own body, for a Gemini-format client
        assert exc.value.upstream_body == json.dumps(body).encode() and not exc.value.retryable
    if status == 429:
        assert exc.value.retry_after_s is None  # nothing said: the router's default cooldown


# ---- embeddings -----------------------------------------------------------------------------------------

async def test_embeddings(tmp_path):
    seen = []

    def handler(r):
        seen.append(r)
        n = len(r.json()["requests"])
        return MockResponse(200, json={"embeddings": [{"values": [0.5, -1.0, float(i)]} for i in range(n)]})

    p = provider(handler, tmp_path)
    texts = [f"text {i}" for i in range(130)]
    resp = await p.embed(EmbeddingRequest("text-embedding-004", texts, dimensions=3), "text-embedding-004")
    assert [r.url for r in seen] == [f"{BASE}/models/text-embedding-004:batchEmbedContents"] * 2
    first = seen[0].json()["requests"]
    assert len(first) == 100 and len(seen[1].json()["requests"]) == 30  # at most 100 a batch
    assert first[0] == {"model": "models/text-embedding-004", "content": {"parts": [{"text": "text 0"}]},
                        "outputDimensionality": 3}
    assert len(resp.vectors) == 130 and resp.vectors[0] == [0.5, -1.0, 0.0] and resp.vectors[100] == [0.5, -1.0, 0.0]
    assert resp.usage.input_tokens >= 130 * 2  # estimated: Gemini does not count embedding tokens

    resp = await p.embed(EmbeddingRequest("e", ["x"], encoding_format="base64"), "models/e")
    assert seen[-1].url == f"{BASE}/models/e:batchEmbedContents"
    assert struct.unpack("<3f", base64.b64decode(resp.vectors[0])) == (0.5, -1.0, 0.0)

    with pytest.raises(UpstreamError) as exc:
        await p.embed(EmbeddingRequest("e", [[1, 2, 3]]), "e")
    assert exc.value.kind is FailureKind.UNSUPPORTED


# ---- raw relay ----------------------------------------------------------------------------------------------

async def test_raw_relay_keeps_the_version_path_and_hides_the_client_key(tmp_path):
    seen = []
    usage = {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10}

    def handler(r):
        seen.append(r)
        if "stream" in r.url:
            return MockResponse(200, chunks=sse(answer([{"text": "a"}], finish=None),
                                                answer([{"text": "b"}], usage=usage)))
        return MockResponse(200, json=answer([{"text": "ok"}], usage=usage))

    p = provider(handler, tmp_path)
    assert p.can_relay("raw") and not p.can_relay("openai_chat")
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()
    out = await p.relay(RawCall("raw", json.loads(body), body, path="/v1beta/models/gemini-x:generateContent"
                                "?key=client-gateway-key&foo=1", headers={"content-type": "application/json"}),
                        None)
    assert seen[-1].url == f"{BASE}/models/gemini-x:generateContent?foo=1"
    assert seen[-1].headers["x-goog-api-key"] == KEY
    assert out.status == 200 and json.loads(out.body)["responseId"] == "resp-1"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (7, 3)

    out = await p.relay(RawCall("raw", None, body, stream=True,
                                path="/v1/models/gemini-x:streamGenerateContent?alt=sse&key=k"), None)
    assert seen[-1].url == "https://generativelanguage.googleapis.com/v1/models/gemini-x:streamGenerateContent?alt=sse"
    relayed = b"".join([c async for c in out.chunks])
    assert relayed.count(b"data: ") == 2 and out.finished
    assert (out.usage.input_tokens, out.usage.output_tokens) == (7, 3)


# ---- through the demo provider's Gemini face, over real HTTP ------------------------------------------------

def _demo_face(up) -> bool:
    try:
        r = httpx.post(f"{up.origin}/v1beta/models/gemini-x:generateContent", headers={"x-goog-api-key": "k"},
                       json={"contents": [{"role": "user", "parts": [{"text": "ping"}]}]}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "candidates" in r.json()


async def test_through_the_demo_providers_gemini_face(tmp_path):
    from fakes import FakeProvider
    from llmgw_edge.providers.http import AiohttpTransport

    with FakeProvider(models=["gemini-x"]) as up:
        if not _demo_face(up):
            pytest.skip("the demo provider has no Gemini face yet")
        up.behaviour.reset()
        up.behaviour.models = ["gemini-x"]
        up.behaviour.api_key = KEY
        up.behaviour.reasoning_tokens = 4
        transport = AiohttpTransport()
        try:
            config = ProviderConfig(id="gem", type="gemini", api_key=KEY, base_url=up.origin + "/v1beta",
                                    models=[{"name": "gemini-x"}])
            p = build_provider(config, transport, tmp_path)
            req = ChatRequest("gemini-x", [Message("system", [Text("be brief")]),
                                           Message("user", [Text("hello there machine")])])
            resp = await p.chat(req, "gemini-x")
            assert resp.text() == "Echo: hello there machine" and resp.finish_reason == "stop"
            assert resp.usage.input_tokens > 0 and resp.usage.reasoning_tokens == 4
            assert resp.usage.output_tokens == resp.usage.reasoning_tokens + 4
            seen = up.requests[-1]
            assert seen["path"] == "/v1beta/models/gemini-x:generateContent" and seen["query"] == ""
            assert seen["headers"]["x-goog-api-key"] == KEY
            assert seen["body"]["systemInstruction"] == {"parts": [{"text": "be brief"}]}

            events = [e async for e in p.chat_stream(req, "gemini-x")]
            assert isinstance(events[0], Start) and events[-1] == Finish("stop")
            assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: hello there machine"
            assert any(isinstance(e, UsageUpdate) and e.usage.output_tokens for e in events)
            assert up.requests[-1]["query"] == "alt=sse"

            # a tool round trip: the call, then its result answered by name
            tools = [ToolSpec("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "additionalProperties": False})]
            resp = await p.chat(ChatRequest("gemini-x", [Message("user", [Text("weather in Oslo")])], tools=tools),
                                "gemini-x")
            (call,) = resp.tool_calls
            assert call.name == "get_weather" and resp.finish_reason == "tool_calls"
            followup = ChatRequest("gemini-x", [Message("user", [Text("weather in Oslo")]),
                                                Message("assistant", [], tool_calls=[call]),
                                                Message("tool", [ToolResult(call.id, [Text("sunny")])])],
                                   tools=tools)
            resp = await p.chat(followup, "gemini-x")
            assert "sunny" in resp.text()
            assert up.requests[-1]["body"]["contents"][-1]["parts"][0]["functionResponse"]["name"] == "get_weather"

            # a 429 with RetryInfo puts the provider in cooldown for exactly that long
            up.behaviour.fail_status, up.behaviour.retry_after = 429, 7
            with pytest.raises(UpstreamError) as exc:
                await p.chat(req, "gemini-x")
            assert exc.value.kind is FailureKind.RATE_LIMITED and exc.value.retry_after_s == 7.0
            up.behaviour.fail_status = None

            # a wrong key is our credential's fault (a 400 from Google), not the client's
            bad = build_provider(config.model_copy(update={"api_key": "AIza-wrong"}), transport, tmp_path)
            with pytest.raises(UpstreamError) as exc:
                await bad.chat(req, "gemini-x")
            assert exc.value.status == 400 and exc.value.kind is FailureKind.AUTH
        finally:
            await transport.close()


def test_gemini_reads_its_own_error_bodies_also_inside_an_array(tmp_path):
    """streamGenerateContent without alt=sse answers errors as a JSON array: gemini.py reads that shape,
    the shared base reads only the plain ``{"error": ...}`` object."""
    p = provider(lambda req: MockResponse(json={}), tmp_path)
    body = b'[{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}]'
    err = p.classify(429, body, {})
    assert err.message == "upstream 429: Resource has been exhausted" and err.kind is FailureKind.RATE_LIMITED
    assert p.classify(400, b'{"error": {"message": "bad field", "status": "INVALID_ARGUMENT"}}', {}).message \
        == "upstream 400: bad field"
    assert error_message(429, body) == "upstream 429"
