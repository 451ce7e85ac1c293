"""Edge wire helpers (pure): request validation, usage extraction, SSE handling, redaction."""

from __future__ import annotations

import json

import pytest

from llmgw_common.logs import redact
from llmgw_edge.errors import GatewayError
from llmgw_edge.openai_wire import classify_sse_data, parse_chat_request, strip_null_usage, upstream_body


def test_valid_request_passes_through_untouched():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
                      "tools": [{"type": "function", "function": {"name": "f"}}], "n": 2}).encode()
    req = parse_chat_request(raw)
    body = json.loads(upstream_body(req, "vendor/m"))
    assert body["model"] == "vendor/m" and body["tools"] and body["n"] == 2 and body["temperature"] == 0.2
    assert "stream_options" not in body


@pytest.mark.parametrize("raw,param", [
    (b"[]", None), (b"{", None), (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"m","messages":[]}', "messages"), (b'{"model":"m","messages":[{"role":"robot"}]}', "messages[0].role"),
    (b'{"model":"m","messages":[{"role":"user"}],"stream":"yes"}', "stream"),
    (b'{"model":"m","messages":[{"role":"user"}],"max_tokens":0}', "max_tokens"),
])
def test_bad_requests_are_400_with_param(raw, param):
    with pytest.raises(GatewayError) as err:
        parse_chat_request(raw)
    assert err.value.status == 400 and err.value.param == param


def test_stream_always_asks_upstream_for_usage():
    req = parse_chat_request(b'{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}')
    assert not req.client_wants_usage
    assert json.loads(upstream_body(req, "m"))["stream_options"] == {"include_usage": True}
    req = parse_chat_request(b'{"model":"m","stream":true,"stream_options":{"include_usage":true},'
                             b'"messages":[{"role":"user","content":"x"}]}')
    assert req.client_wants_usage


def test_sse_classification():
    assert classify_sse_data("[DONE]").done
    plain = classify_sse_data('{"choices":[{"delta":{"content":"x"}}],"usage":null}')
    assert plain.usage is None and not plain.usage_only
    final = classify_sse_data('{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,'
                              '"prompt_tokens_details":{"cached_tokens":2}}}')
    assert final.usage_only and (final.usage.tokens_in, final.usage.tokens_out, final.usage.tokens_cached) == (5, 7, 2)
    assert strip_null_usage('{"a":1,"usage":null}') == '{"a":1}'


def test_redaction_of_secrets_in_logs():
    line = 'headers={"authorization": "Bearer sk-proj-abcdefgh12345678"} key=gsk_ABCDEFGH1234 x-api-key: zzz123'
    out = redact(line)
    assert "sk-proj" not in out and "gsk_ABC" not in out and "zzz123" not in out
