"""In-process fakes for the edge core: a mock HTTP transport, a fake router, a recording publisher.

    transport = MockTransport(lambda req: MockResponse(200, json={"choices": [...]}))
    provider = build_provider(ProviderConfig(...), transport, tmp_path)

Each request the transport sees is kept (``transport.requests``) with its
method, URL, headers and body; the handler answers with a ``MockResponse``
(a whole body, or ``chunks`` for a stream) or raises ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Callable, Mapping

from llmgw_common.config import GatewayConfig, Price
from llmgw_common.messages import (AttemptOutcome, Candidate, Reservation, RouteDecision, RouteRequest,
                                   UsageEvent)
from llmgw_edge.core.errors import GatewayError
from llmgw_router.policy import resolve_targets


@dataclass
class MockRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class MockResponse:
    status: int = 200
    json: Any = None
    content: bytes | None = None
    chunks: list[bytes] | None = None  # a streamed body, chunk by chunk
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay_s: float = 0.0
    break_after: int | None = None  # raise a transport error after this many chunks

    def __post_init__(self) -> None:
        if self.content is None and self.json is not None:
            self.content = json.dumps(self.json).encode()
            self.headers.setdefault("content-type", "application/json")
        if self.chunks is not None:
            self.headers.setdefault("content-type", "text/event-stream")


class MockReply:
    def __init__(self, response: MockResponse):
        self._r = response
        self.status = response.status
        self.headers = dict(response.headers)
        self.closed = False

    async def read(self) -> bytes:
        if self._r.chunks is not None:
            return b"".join(self._r.chunks)
        return self._r.content or b""

    async def chunks(self) -> AsyncIterator[bytes]:
        from llmgw_edge.providers.http import transport_error

        for i, chunk in enumerate(self._r.chunks if self._r.chunks is not None else [self._r.content or b""]):
            if self._r.break_after is not None and i >= self._r.break_after:
                raise transport_error(ConnectionResetError())
            if self._r.chunk_delay_s:
                await asyncio.sleep(self._r.chunk_delay_s)
            yield chunk

    async def lines(self) -> AsyncIterator[str]:
        buffer = b""
        async for chunk in self.chunks():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode().rstrip("\r")
        if buffer:
            yield buffer.decode().rstrip("\r")

    def close(self) -> None:
        self.closed = True


class MockTransport:
    def __init__(self, handler: Callable[[MockRequest], MockResponse]):
        self.handler = handler
        self.requests: list[MockRequest] = []

    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                      timeout_s: float) -> MockReply:
        req = MockRequest(method, url, {k.lower(): v for k, v in headers.items()}, body)
        self.requests.append(req)
        result = self.handler(req)
        if asyncio.iscoroutine(result):
            result = await result
        return MockReply(result)

    async def close(self) -> None:
        pass


def sse(*payloads: Any, done: bool = True) -> list[bytes]:
    """OpenAI-style ``data:`` chunks (dicts are JSON-encoded), ending with ``[DONE]``."""
    out = [b"data: " + (json.dumps(p) if not isinstance(p, str) else p).encode() + b"\n\n" for p in payloads]
    return out + ([b"data: [DONE]\n\n"] if done else [])


def named_sse(*events: tuple[str, Any]) -> list[bytes]:
    """Anthropic-style ``event:`` + ``data:`` frames."""
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


class FakeRouter:
    """Admits the configured providers serving a model, in config order, minus the excluded ones. The model
    is resolved by the router's own code (aliases, ``provider/model``): only the ordering and admission are
    fake."""

    def __init__(self, config: GatewayConfig, price: Price | None = None):
        self.config = config
        self.price = price
        self.requests: list[RouteRequest] = []
        self.outcomes: list[AttemptOutcome] = []
        self.batched: list[bool] = []  # per outcome: whether the edge let it wait for a batch

    async def decide(self, request: RouteRequest) -> RouteDecision:
        self.requests.append(copy.deepcopy(request))
        model, targets = resolve_targets(self.config, request.model)
        if not targets:
            raise GatewayError(404, f"model {request.model} not found", code="model_not_found", param="model")
        cands = [Candidate(provider=t.provider.id, model=t.model, upstream_model=t.upstream_model,
                           price=t.provider.model(t.model).price or self.price, reason="fake router",
                           reservation=Reservation(provider=t.provider.id, model=t.model, at_s=0, tokens_in=1,
                                                   tokens_out=1, cost_nano=0))
                 for t in targets if t.provider.id not in request.exclude]
        if not cands:
            raise GatewayError(429, "no provider left", code="no_capacity")
        return RouteDecision(request_id=request.request_id, model=model, candidates=cands)

    def report(self, outcome: AttemptOutcome, may_batch: bool = False) -> None:
        self.outcomes.append(outcome)
        self.batched.append(may_batch)


class Events(list):
    """The usage events a gateway published."""

    def __call__(self, event: UsageEvent) -> None:
        self.append(event)

    def total_cost(self) -> Decimal:
        return sum((e.cost_usd for e in self), Decimal(0))
