"""The edge's client-format routes as plain ASGI (``llmgw_edge.asgi_routes``), driven without a server: what
FastAPI's routes did (bounded body, caller's key, errors in the caller's format, a stream closed when its client
goes away) must still hold."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx

from llmgw_common.config import GatewayConfig
from llmgw_edge.api.anthropic_messages import AnthropicCodec
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.api.passthrough import error_body_for
from llmgw_edge.asgi_routes import ClientRoutes
from llmgw_edge.core.errors import GatewayError
from llmgw_edge.core.gateway import Reply
from llmgw_edge.main import rendered_error
from llmgw_edge.refusals import PER_SECOND, RefusalRecorder

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class FakeKeys:
    async def authenticate(self, headers, address):
        if headers.get("authorization") == "Bearer wrong":
            raise GatewayError(401, "Invalid API key.", code="invalid_api_key")
        return None


class FakeGateway:
    def __init__(self, reply_of):
        self.reply_of = reply_of
        self.exchanges = []

    async def handle(self, exchange, codec):
        self.exchanges.append(exchange)
        return self.reply_of(exchange)


def front(reply_of, max_body_bytes: int = 10_000):
    config = GatewayConfig.model_validate({"edge": {"max_body_bytes": max_body_bytes}})
    events: list = []
    edge = SimpleNamespace(keys=FakeKeys(), config=config, gateway=FakeGateway(reply_of), replica="edge-7",
                           refusals=RefusalRecorder(events.append), events=events)
    fallback_calls = []

    async def fallback(scope, receive, send):
        fallback_calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    routes = ClientRoutes(fallback, {"/v1/chat/completions": OpenAIChatCodec, "/v1/messages": AnthropicCodec},
                          lambda: edge, rendered_error)
    return routes, edge, fallback_calls


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


async def test_a_reply_goes_out_with_its_headers_and_other_requests_go_to_the_app():
    routes, edge, fallback_calls = front(lambda ex: Reply(200, {"x-request-id": "r1"}, "application/json",
                                                          body=b'{"ok":true}'))
    async with client(routes) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers["x-request-id"] == "r1" and r.headers["x-llmgw-edge"] == "edge-7"
        assert r.headers["content-type"] == "application/json" and r.headers["content-length"] == "11"
        assert (await c.get("/v1/chat/completions")).status_code == 404  # not a POST: FastAPI's (405 there)
        assert (await c.post("/v1/models", json={})).status_code == 404
    assert fallback_calls == ["/v1/chat/completions", "/v1/models"]
    assert edge.gateway.exchanges[0].model == "m"


async def test_errors_are_in_the_callers_format():
    routes, _edge, _ = front(lambda ex: Reply(200, {}, "application/json", body=b"{}"), max_body_bytes=1024)
    async with client(routes) as c:
        bad = await c.post("/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["message"] and "x-request-id" in bad.headers
        anthropic = await c.post("/v1/messages", content=b"[]", headers={"anthropic-version": "2023-06-01"})
        assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
        assert anthropic.json()["error"]["type"] == "invalid_request_error"
        refused = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        big = await c.post("/v1/chat/completions", json={**CHAT, "pad": "x" * 2000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # each refusal is a usage event: its status and reason, no provider, no tokens, no cost, the client's
    # request id
    events = _edge.events
    assert [(e.status, e.endpoint) for e in events] == [(400, "chat.completions"), (400, "messages"),
                                                      (401, "chat.completions"), (413, "chat.completions")]
    assert all(e.provider is None and e.tokens_in == e.tokens_out == 0 and e.cost_usd == 0 and e.requests == 1
               and e.error for e in events)
    assert events[0].request_id == bad.headers["x-request-id"] and events[3].request_id == big.headers["x-request-id"]


async def test_the_route_decides_the_error_format_not_the_headers():
    """An OpenAI client that happens to send ``anthropic-version`` still gets OpenAI's error JSON, and an
    Anthropic route answers in Anthropic's without it: the route holds the codec, the codec renders."""
    routes, _edge, _ = front(lambda ex: Reply(200, {}, "application/json", body=b"{}"))
    async with client(routes) as c:
        openai_route = await c.post("/v1/chat/completions", content=b"{not json",
                                    headers={"anthropic-version": "2023-06-01"})
        assert openai_route.status_code == 400 and "type" not in openai_route.json()
        assert openai_route.json()["error"]["type"] == "invalid_request_error"
        anthropic_route = await c.post("/v1/messages", content=b"{not json")
        assert anthropic_route.status_code == 400 and anthropic_route.json()["type"] == "error"


async def test_an_unexpected_error_is_a_500_in_the_callers_format():
    def explode(exchange):
        raise RuntimeError("bug")

    routes, _edge, _ = front(explode)
    async with client(routes) as c:
        r = await c.post("/v1/messages", json={"model": "m", "max_tokens": 5,
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error" and "bug" not in r.text


async def test_a_stream_is_sent_as_it_comes_and_closed_when_the_client_leaves():
    closed = asyncio.Event()
    sent_first = asyncio.Event()

    async def chunks():
        try:
            yield b"data: 1\n\n"
            sent_first.set()
            await asyncio.sleep(30)  # the upstream is slow: the client leaves meanwhile
            yield b"data: 2\n\n"
        finally:
            closed.set()

    routes, _edge, _ = front(lambda ex: Reply(200, {}, "text/event-stream", stream=chunks()))
    body = json.dumps({**CHAT, "stream": True}).encode()
    inbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "http.request", "body": body, "more_body": False})
    sent: list[dict] = []

    async def receive():
        return await inbox.get()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "client": ("1.2.3.4", 5)}
    task = asyncio.create_task(routes(scope, receive, send))
    await asyncio.wait_for(sent_first.wait(), 5)
    await inbox.put({"type": "http.disconnect"})
    await asyncio.wait_for(task, 5)  # ends (not cancelled) once the client is gone
    assert closed.is_set() and not task.cancelled()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]


async def test_a_finished_stream_ends_with_an_empty_last_chunk():
    async def chunks():
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    routes, _edge, _ = front(lambda ex: Reply(200, {}, "text/event-stream", stream=chunks()))
    async with client(routes) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.text == "data: 1\n\ndata: [DONE]\n\n"


async def test_a_request_routed_by_fastapi_instead_is_served_the_same_way():
    """FastAPI keeps the routes (the OpenAPI document; a path with a root-path prefix reaches them)."""
    from starlette.datastructures import Headers

    routes, _edge, _ = front(lambda ex: Reply(200, {}, "application/json", body=ex.model.encode()))
    messages = [{"type": "http.request", "body": json.dumps(CHAT).encode(), "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/gw/v1/chat/completions", "headers": [], "client": None}
    reply = await routes.handle("/v1/chat/completions", scope, Headers(scope=scope), receive)
    assert reply.body == b"m" and reply.headers["x-llmgw-edge"] == "edge-7"


async def test_a_flood_of_refusals_is_a_bounded_number_of_events_whose_counts_add_up():
    clock = {"now": 1000.0}
    events: list = []
    recorder = RefusalRecorder(events.append, clock=lambda: clock["now"])
    for second in range(3):  # 2,000 bad requests a second, two kinds, for three seconds
        for i in range(2000):
            clock["now"] = 1000 + second + i / 2000
            status = 400 if i % 4 else 401
            recorder.record(GatewayError(status, "bad"), "chat.completions", key_id="k" if status == 401 else None,
                            model=f"m{i % 3}")
    clock["now"] = 1003.5
    recorder.flush()  # the edge stops (or the second's timer fires)
    # per second and status: PER_SECOND events one by one, then one that sums the rest
    assert len(events) == 3 * 2 * (PER_SECOND + 1)
    assert sum(e.requests for e in events) == 6000
    assert sum(e.requests for e in events if e.status == 401) == 1500
    summed = [e for e in events if e.requests > 1]
    assert len(summed) == 6 and all("more like it in this second" in e.error for e in summed)
    assert {e.model for e in summed} == {"(several)"} and {e.key_id for e in summed if e.status == 401} == {"k"}
    assert all(e.provider is None and e.cost_usd == 0 and e.tokens_in == 0 for e in events)


async def test_the_rest_of_a_second_is_published_when_it_is_over_without_another_request():
    events: list = []
    recorder = RefusalRecorder(events.append, per_second=1)
    for _ in range(5):
        recorder.record(GatewayError(404, "no such model"), "messages", model="nope")
    assert [e.requests for e in events] == [1]
    for _ in range(300):  # the aggregate goes out at the second's end: wait for it, bounded
        if len(events) == 2:
            break
        await asyncio.sleep(0.01)
    assert [e.requests for e in events] == [1, 4] and events[1].model == "nope"


def test_google_error_body_is_what_gemini_sdks_read():
    body = json.loads(error_body_for("gemini")(GatewayError(429, "slow down")))
    assert body == {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    assert json.loads(error_body_for(None)(GatewayError(404, "no")))["error"]["message"] == "no"
    assert json.loads(error_body_for("anthropic")(GatewayError(401, "who")))["error"]["type"] == "authentication_error"
