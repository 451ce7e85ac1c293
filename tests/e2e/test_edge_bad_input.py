"""Hostile and malformed input at the edge: always a clear 4xx in the caller's format, never a 5xx,
and the connection stays usable afterwards. Through the whole stack (real NATS, Redis, chDB)."""

from __future__ import annotations

import json
import os

import anthropic
import httpx
import openai
import pytest

from fakes import FakeProvider
from stacks import running_stack

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models:
      - name: m
      - name: tiny
        upstream: m
        limits: {{requests_per_minute: 1}}
  - id: a
    type: anthropic
    base_url: {upstream.origin}
    models: [{{name: claude-m, upstream: m}}]
edge:
  max_body_bytes: {LIMIT}
  max_json_depth: 32
routing:
  retry: {{attempts: 1, base_delay_s: 0, max_delay_s: 0}}
usage:
  batch_wait_s: 0.1
"""
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path_factory.mktemp("bad-input"), config, env) as s:
        yield s


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.edge_port}", timeout=30) as c:
        yield c


def _openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and r.headers.get("x-request-id")
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def _anthropic_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["message"] and r.headers.get("x-request-id")
    return body["error"]


def _chat(content: str = "hi", **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def test_a_body_over_the_limit_is_413_in_each_format_and_the_connection_stays_usable(http):
    big = _chat("x" * (LIMIT + 10))
    assert _openai_error(http.post("/v1/chat/completions", json=big), 413)["code"] == "request_too_large"
    anthropic_big = {"model": "claude-m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * LIMIT}]}
    assert _anthropic_error(http.post("/v1/messages", json=anthropic_big), 413)["type"] == "request_too_large"
    # the same keep-alive connection answers the next request
    assert http.post("/v1/chat/completions", json=_chat()).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(http):
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'

    _openai_error(http.post("/v1/chat/completions", content=chunks(),
                            headers={"content-type": "application/json"}), 413)
    assert http.post("/v1/chat/completions", json=_chat()).status_code == 200


def test_deeply_nested_json_is_a_400_not_a_crash(http):
    for depth in (40, 10_000):
        nested = "[" * depth + "]" * depth
        raw = ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": ' + nested + "}").encode()
        _openai_error(http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}),
                      400)
        _anthropic_error(http.post("/v1/messages", content=raw.replace(b'"model": "m"', b'"model": "claude-m"'),
                                   headers={"content-type": "application/json"}), 400)
    assert http.post("/v1/chat/completions", json=_chat()).status_code == 200


def test_a_huge_model_name_is_a_400_not_a_nats_error(http):
    body = _openai_error(http.post("/v1/chat/completions", json={**_chat(), "model": "m" * 60_000}), 400)
    assert body["param"] == "model"
    anthropic_body = {"model": "c" * 60_000, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    _anthropic_error(http.post("/v1/messages", json=anthropic_body), 400)


def test_many_and_long_headers_do_not_reach_the_router_unbounded(http):
    headers = {f"x-junk-{i}": "v" * 4000 for i in range(100)}
    assert http.post("/v1/chat/completions", json=_chat(), headers=headers).status_code == 200


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe", b'{"model": 5}',
                                 b'{"model": "m", "messages": "hi"}', b'{"model": "m", "messages": [1]}',
                                 b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}'])
def test_malformed_chat_bodies_are_400s(http, raw):
    _openai_error(http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"model": "claude-m"}', b'{"model": "claude-m", "max_tokens": "5"}',
                                 b'{"model": "claude-m", "max_tokens": 5, "messages": [{"role": "user", '
                                 b'"content": [{"type": "image", "source": {"type": "ftp"}}]}]}'])
def test_malformed_messages_bodies_are_anthropic_400s(http, raw):
    _anthropic_error(http.post("/v1/messages", content=raw, headers={"content-type": "application/json"}), 400)


def test_unknown_routes_and_methods_are_json_in_the_callers_format(http):
    assert _openai_error(http.get("/v1/nothing-here/at-all"), 404)
    assert _openai_error(http.get("/v1/chat/completions"), 405)
    assert _anthropic_error(http.get("/v1/messages"), 405)
    # no route, no codec: the gateway's default format, whatever the headers say (a route decides, not a guess)
    assert _openai_error(http.get("/v2/x", headers={"anthropic-version": "2023-06-01"}), 404)
    assert _anthropic_error(http.get("/v1/messages/count_tokens"), 405)
    assert _openai_error(http.post("/nobody/v1/chat/completions", json=_chat()), 404)["code"] == "provider_not_found"


def test_pass_through_errors_the_gateway_makes_are_in_the_providers_format(http, stack):
    # /{provider}/v1/...: the caller speaks that provider's API, so the gateway's own refusals do too
    assert _anthropic_error(http.post("/a/v1/" + "x" * 3000, json={}), 414)["type"] == "invalid_request_error"
    assert _openai_error(http.post("/p/v1/" + "x" * 3000, json={}), 414)["code"] == "uri_too_long"
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}/a", api_key="k", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:  # over edge.max_body_bytes
        client.messages.create(model="claude-m", max_tokens=5, messages=[{"role": "user", "content": "x" * LIMIT}])
    assert refused.value.status_code == 413 and refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "request_too_large"


def test_sdks_see_typed_errors(stack):
    base = f"http://127.0.0.1:{stack.edge_port}"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="m" * 1000, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):
        anthropic.Anthropic(base_url=base, api_key="k", max_retries=0).messages.create(
            model="claude-m", max_tokens=5, messages=[])


def test_errors_made_by_the_gateway_carry_request_id_and_attempts(http, upstream):
    r = http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    assert r.headers["x-request-id"] and r.headers["x-llmgw-attempts"] == "0"
    upstream.behaviour.fail_status, upstream.behaviour.fail_times = 503, 1
    try:
        ok = http.post("/v1/chat/completions", json=_chat("retried once"))
    finally:
        upstream.behaviour.fail_status = upstream.behaviour.fail_times = None
    assert ok.status_code == 200 and ok.headers["x-llmgw-attempts"] == "2"  # one retry on the same provider
    assert json.loads(ok.content)["choices"]


def test_the_gateways_own_429_says_when_to_retry(http):
    assert http.post("/v1/chat/completions", json={**_chat(), "model": "tiny"}).status_code == 200
    refused = http.post("/v1/chat/completions", json={**_chat(), "model": "tiny"})
    body = _openai_error(refused, 429)
    assert body["type"] == "rate_limit_exceeded"
    assert "model 'tiny' on provider 'p' is at its limit of 1 request per minute (retry after" in body["message"]
    # until the first request's bucket leaves the minute: at most the window plus one bucket
    assert 1 <= int(refused.headers["retry-after"]) <= 65 and refused.headers["x-request-id"]
    anthropic_refused = http.post("/v1/messages", json={"model": "p/tiny", "max_tokens": 5,
                                                       "messages": [{"role": "user", "content": "x"}]})
    assert _anthropic_error(anthropic_refused, 429)["type"] == "rate_limit_error"
    assert int(anthropic_refused.headers["retry-after"]) >= 1


def test_a_request_the_server_cannot_parse_still_gets_json(stack):
    """A URL too long for the HTTP parser: answered by the server itself, as JSON like every other error."""
    import socket

    for port in (stack.edge_port, stack.ui_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /v1/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"]["code"] == "invalid_http_request"


# ---- wrongly typed fields, every client route ----------------------------------------------------------
# Each route's valid body, and the models it is tried with: one whose provider speaks the route's format
# (the body goes through as it is) and one whose provider needs a translation (the body is parsed whole).
WRONG_VALUES = [{}, [], 7, -1, 1.5, "x", "", True, None, [{}], [7], {"a": {}}]
ROUTES = {
    "/v1/chat/completions": (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        ["m", "claude-m"],
        ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
         "messages.0.name", "messages.0.tool_calls", "tools", "tools.0", "tool_choice", "max_tokens",
         "max_completion_tokens", "stream", "stream_options", "stop", "n", "temperature", "response_format"]),
    "/v1/messages": (
        {"model": "claude-m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        ["claude-m", "m"],
        ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
         "system", "tools", "tools.0", "tool_choice", "max_tokens", "stream", "stop_sequences", "thinking",
         "metadata", "temperature"]),
    "/v1/messages/count_tokens": (
        {"model": "claude-m", "messages": [{"role": "user", "content": "hi"}]},
        ["claude-m", "m"],
        ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
         "system", "tools", "tools.0"]),
    "/v1/responses": (
        {"model": "m", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 16},
        ["m", "claude-m"],
        ["model", "input", "input.0", "input.0.role", "input.0.content", "instructions", "tools", "tools.0",
         "tool_choice", "max_output_tokens", "stream", "reasoning", "text", "temperature"]),
    "/v1/embeddings": ({"model": "m", "input": "hi"}, ["m"], ["model", "input", "input.0", "dimensions",
                                                              "encoding_format"]),
}
# (route, field, value) that are surely the wrong type: the gateway itself answers them with a 400
MUST_BE_400 = [(route, field, value) for route in ("/v1/chat/completions", "/v1/messages")
               for field in ("model", "messages", "messages.0", "messages.0.role", "max_tokens", "stream", "tools")
               for value in ({}, [7], {"a": {}}, 1.5)] + [
    ("/v1/chat/completions", "messages.0.content", value) for value in (7, {}, True, {"a": {}})] + [
    ("/v1/messages", "messages.0.content", value) for value in (7, {}, True, {"a": {}})] + [
    ("/v1/messages/count_tokens", field, value) for field in ("messages", "messages.0.role", "tools")
    for value in (7, {"a": {}})] + [
    ("/v1/responses", field, value) for field in ("model", "input", "max_output_tokens", "stream", "tools")
    for value in (7.5, {"a": {}})] + [
    ("/v1/embeddings", field, value) for field in ("model", "input", "dimensions") for value in ({}, 1.5)]


def _with(body: dict, path: str, value) -> dict:
    """A copy of ``body`` with the field at dotted ``path`` (list indexes as numbers) set to ``value``."""
    out = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node = out
    for name in parents:
        node = node[int(name)] if isinstance(node, list) else node.setdefault(name, {})
        if isinstance(node, str):  # "messages.0.content.0" on a string content: make it a list of parts
            break
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        parent = out
        for name in parents[:-1]:
            parent = parent[int(name)] if isinstance(parent, list) else parent[name]
        parent[parents[-1]] = [value]
    return out


def _is_callers_error(route: str, r: httpx.Response) -> bool:
    if route.startswith("/v1/messages"):
        return r.json().get("type") == "error" and bool(r.json()["error"]["message"])
    return set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_wrongly_typed_field_is_never_a_5xx_on_any_client_route(http):
    crashes = []
    for route, (body, models, fields) in ROUTES.items():
        for model in models:
            for field in fields:
                for value in WRONG_VALUES:
                    sent = _with({**body, "model": model}, field, value)
                    try:
                        r = http.post(route, json=sent)
                    except httpx.HTTPError as exc:  # the server dropped the connection: as bad as a 500
                        crashes.append((route, model, field, value, type(exc).__name__))
                        continue
                    if r.status_code >= 500 or (r.status_code >= 400 and not _is_callers_error(route, r)):
                        crashes.append((route, model, field, value, r.status_code, r.text[:200]))
    assert not crashes, "\n".join(sorted({str(c[:3]) + " " + str(c[4:5]) for c in crashes}))


@pytest.mark.parametrize("route,field,value", MUST_BE_400)
def test_a_field_of_the_wrong_type_is_a_400_in_the_callers_format(http, route, field, value):
    body, models, _fields = ROUTES[route]
    for model in models:
        r = http.post(route, json=_with({**body, "model": model}, field, value))
        assert r.status_code == 400 and _is_callers_error(route, r), (model, r.status_code, r.text[:300])


def test_a_role_that_is_an_object_is_a_400_for_the_sdks(stack):
    base = f"http://127.0.0.1:{stack.edge_port}"
    with pytest.raises(openai.BadRequestError, match="role must be one of .*, got an object"):
        openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="claude-m", messages=[{"role": {}, "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="role"):
        anthropic.Anthropic(base_url=base, api_key="k", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=[{"role": {}, "content": "x"}])
