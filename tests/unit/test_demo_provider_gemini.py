"""The demo provider's Gemini face (generativelanguage v1beta), driven by raw HTTP as the API documents it."""

from __future__ import annotations

import json
import time

import httpx
import pytest


CONTENTS = [{"role": "user", "parts": [{"text": "hello there you fine machine"}]}]
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "description": "Weather of a city",
                                    "parameters": {"type": "OBJECT",
                                                   "properties": {"city": {"type": "STRING"}}}},
                                   {"name": "get_time", "parameters": {"type": "OBJECT"}}]}]


@pytest.fixture
def gemini(upstream):
    with httpx.Client(base_url=upstream.gemini_url, headers={"x-goog-api-key": "AIza-test"}) as c:
        yield c


def generate(gemini, body, model="demo-chat"):
    return gemini.post(f"/models/{model}:generateContent", json=body)


def test_generate_content(gemini, upstream):
    r = generate(gemini, {"contents": CONTENTS})
    assert r.status_code == 200
    body = r.json()
    (candidate,) = body["candidates"]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "Echo: hello there you fine machine"}]}
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    usage = body["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (11, 6, 17)
    assert "cachedContentTokenCount" not in usage and "thoughtsTokenCount" not in usage
    assert body["modelVersion"] == "demo-chat" and body["responseId"]
    seen = upstream.requests[-1]
    assert seen["path"] == "/v1beta/models/demo-chat:generateContent" and seen["body"] == {"contents": CONTENTS}
    assert seen["headers"]["x-goog-api-key"] == "AIza-test"


def test_system_instruction_config_and_usage_details(gemini, upstream):
    upstream.behaviour.cached_tokens = 5
    upstream.behaviour.reasoning_tokens = 7
    body = {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"maxOutputTokens": 3, "temperature": 0.2, "thinkingConfig": {"thinkingBudget": 64}}}
    r = generate(gemini, body).json()
    assert r["candidates"][0]["content"]["parts"] == [{"text": "Echo: hello there"}]
    assert r["candidates"][0]["finishReason"] == "MAX_TOKENS"
    usage = r["usageMetadata"]
    assert usage["promptTokenCount"] == 11 + 5 and usage["candidatesTokenCount"] == 3
    assert usage["cachedContentTokenCount"] == 5 and usage["thoughtsTokenCount"] == 7
    assert usage["totalTokenCount"] == 16 + 3 + 7
    r = generate(gemini, {"contents": CONTENTS, "generationConfig": {"stopSequences": [" fine"]}}).json()
    assert r["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hello there you"
    assert r["candidates"][0]["finishReason"] == "STOP"


def test_thoughts_and_json_output(gemini):
    config = {"thinkingConfig": {"includeThoughts": True}, "responseMimeType": "application/json"}
    r = generate(gemini, {"contents": CONTENTS, "generationConfig": config}).json()
    thought, answer = r["candidates"][0]["content"]["parts"]
    assert thought == {"text": "Thinking about: hello there you fine machine", "thought": True}
    assert json.loads(answer["text"]) == "Echo: hello there you fine machine"
    assert r["usageMetadata"]["thoughtsTokenCount"] == 7


def test_inline_images_counted(gemini):
    contents = [{"role": "user", "parts": [{"text": "what is this"},
                                           {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]
    r = generate(gemini, {"contents": contents}).json()
    assert r["candidates"][0]["content"]["parts"][0]["text"] == "Echo: what is this [1 image]"


def test_function_call_and_response(gemini, upstream):
    r = generate(gemini, {"contents": CONTENTS, "tools": TOOLS}).json()
    (part,) = r["candidates"][0]["content"]["parts"]
    assert part == {"functionCall": {"name": "get_weather", "args": {"input": "hello there you fine machine"}}}
    assert r["candidates"][0]["finishReason"] == "STOP"
    upstream.behaviour.tool_arguments = {"city": "Paris"}
    config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}
    r = generate(gemini, {"contents": CONTENTS, "tools": TOOLS, "toolConfig": config}).json()
    assert r["candidates"][0]["content"]["parts"][0]["functionCall"] == {"name": "get_time",
                                                                       "args": {"city": "Paris"}}
    r = generate(gemini, {"contents": CONTENTS, "tools": TOOLS,
                          "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}).json()
    assert r["candidates"][0]["content"]["parts"][0]["text"].startswith("Echo:")
    contents = [*CONTENTS, {"role": "model", "parts": [part]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                 "response": {"result": "sunny"}}}]}]
    r = generate(gemini, {"contents": contents, "tools": TOOLS}).json()
    assert r["candidates"][0]["content"]["parts"] == [{"text": "Tool said: sunny"}]


def test_stream_sse_framing(gemini):
    with gemini.stream("POST", "/models/demo-chat:streamGenerateContent", params={"alt": "sse"},
                       json={"contents": CONTENTS}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    # each event is "data: <json>" ended by CRLF CRLF, as the real API frames it
    assert raw.endswith("\r\n\r\n")
    frames = raw.split("\r\n\r\n")[:-1]
    assert len(frames) == 2 and all(f.startswith("data: {") and "\n" not in f for f in frames)
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames]
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == "Echo: hello there you fine machine"
    assert "finishReason" not in chunks[0]["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    # usage is cumulative: the last chunk's is the call's
    assert chunks[0]["usageMetadata"]["candidatesTokenCount"] == 3
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": 11, "candidatesTokenCount": 6,
                                           "totalTokenCount": 17,
                                           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11}]}
    assert len({c["responseId"] for c in chunks}) == 1


def test_stream_without_alt_sse_is_a_json_array(gemini):
    r = gemini.post("/models/demo-chat:streamGenerateContent", json={"contents": CONTENTS})
    assert r.headers["content-type"].startswith("application/json")
    chunks = r.json()
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_stream_function_call(gemini):
    r = gemini.post("/models/demo-chat:streamGenerateContent?alt=sse", json={"contents": CONTENTS, "tools": TOOLS})
    (frame,) = r.text.split("\r\n\r\n")[:-1]
    chunk = json.loads(frame.removeprefix("data: "))
    assert chunk["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert chunk["candidates"][0]["finishReason"] == "STOP"


def test_stream_chunk_knobs(gemini, upstream):
    upstream.behaviour.die_after_chunks = 1
    with pytest.raises(httpx.RemoteProtocolError):
        with gemini.stream("POST", "/models/demo-chat:streamGenerateContent?alt=sse",
                           json={"contents": CONTENTS}) as r:
            for _ in r.iter_raw():
                pass
    upstream.behaviour.die_after_chunks = None
    upstream.behaviour.chunk_delay_s = 0.1
    start = time.monotonic()
    gemini.post("/models/demo-chat:streamGenerateContent?alt=sse", json={"contents": CONTENTS})
    assert time.monotonic() - start >= 0.2


def test_models_and_count_tokens(gemini, upstream):
    upstream.behaviour.models = ["demo-chat", "demo-big"]
    models = gemini.get("/models").json()["models"]
    assert [m["name"] for m in models] == ["models/demo-chat", "models/demo-big"]
    assert all("generateContent" in m["supportedGenerationMethods"] and m["displayName"] for m in models)
    assert gemini.get("/models/demo-big").json()["name"] == "models/demo-big"
    assert gemini.get("/models/nope").status_code == 404
    r = gemini.post("/models/demo-chat:countTokens", json={"contents": CONTENTS})
    assert r.json()["totalTokens"] == 11
    r = gemini.post("/models/demo-chat:countTokens",
                    json={"generateContentRequest": {"model": "models/demo-chat", "contents": CONTENTS}})
    assert r.json()["totalTokens"] == 11


def test_api_key(upstream):
    upstream.behaviour.api_key = "AIza-right"
    base = upstream.origin + "/v1beta/models/demo-chat:generateContent"
    r = httpx.post(base, json={"contents": CONTENTS})
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = httpx.post(base, json={"contents": CONTENTS}, headers={"x-goog-api-key": "AIza-wrong"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID" and "AIza-wrong" not in r.text
    assert httpx.post(base, json={"contents": CONTENTS}, params={"key": "AIza-right"}).status_code == 200
    assert httpx.post(base, json={"contents": CONTENTS}, headers={"x-goog-api-key": "AIza-right"}).status_code == 200
    assert upstream.requests[-2]["query"] == "key=AIza-right"


@pytest.mark.parametrize("body, message", [
    ({}, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"bogus": 1}]}]}, "required oneof field 'data'"),
    ({"contents": CONTENTS, "tools": [{"functionDeclarations": [{"description": "no name"}]}]},
     "Name cannot be empty"),
])
def test_invalid_requests(gemini, body, message):
    r = generate(gemini, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and message in error["message"]


def test_unknown_model_and_bad_json(gemini):
    r = generate(gemini, {"contents": CONTENTS}, model="gemini-nope")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    assert "models/gemini-nope is not found" in r.json()["error"]["message"]
    r = gemini.post("/models/demo-chat:generateContent", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_rate_limited_with_retry_info(gemini, upstream):
    upstream.behaviour.fail_status = 429
    upstream.behaviour.retry_after = 12
    r = generate(gemini, {"contents": CONTENTS})
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    retry = [d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]


@pytest.mark.parametrize("status, name", [(500, "INTERNAL"), (503, "UNAVAILABLE"), (404, "NOT_FOUND"),
                                          (400, "INVALID_ARGUMENT")])
def test_injected_errors(gemini, upstream, status, name):
    upstream.behaviour.fail_status = status
    upstream.behaviour.fail_times = 1
    r = generate(gemini, {"contents": CONTENTS})
    assert r.status_code == status and r.json()["error"]["status"] == name
    assert generate(gemini, {"contents": CONTENTS}).status_code == 200


def test_delay(gemini, upstream):
    upstream.behaviour.delay_s = 0.3
    with pytest.raises(httpx.ReadTimeout):
        gemini.post("/models/demo-chat:generateContent", json={"contents": CONTENTS}, timeout=0.1)
