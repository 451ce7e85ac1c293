"""Chat completions: route, try candidates in order, stream or return, account.

The flow for one request: validate -> ask the router -> for each candidate,
send upstream (a retryable failure moves on to the next one; for streams, the
first upstream event must arrive before we commit to a provider) -> answer the
client -> publish one usage event after the response.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import aiohttp
from starlette.responses import Response, StreamingResponse

from llmgw_common.config import GatewayConfig
from llmgw_common.ids import new_id
from llmgw_common.messages import Attempt, Candidate, RouteDecision, RouteRequest, UsageEvent

from . import router_client
from .errors import GatewayError, UpstreamError
from .openai_wire import (ChatRequest, Usage, classify_sse_data, estimate_prompt_tokens, parse_chat_request,
                          sse_error_event, strip_null_usage, upstream_body, usage_from)
from .providers import adapter_for
from .providers.http import UpstreamResponse


@dataclass
class EdgeContext:
    """What a request needs from the running edge (built once in main.py)."""

    config: GatewayConfig
    secrets: dict[str, str | None]
    http: aiohttp.ClientSession
    nc: object
    publish: object  # callable(UsageEvent) -> None, never blocks


@dataclass
class Outcome:
    request_id: str
    started: float
    model: str
    stream: bool
    attempts: list[Attempt] = field(default_factory=list)
    route_reason: str = ""

    def event(self, status: int, candidate: Candidate | None, usage: Usage | None, error: str | None,
              ttft_ms: float | None) -> UsageEvent:
        usage = usage or Usage()
        cost = candidate.price.cost(usage.tokens_in, usage.tokens_out, usage.tokens_cached) \
            if candidate and candidate.price else 0
        return UsageEvent(
            request_id=self.request_id, provider=candidate.provider if candidate else None,
            model=self.model, upstream_model=candidate.upstream_model if candidate else None,
            stream=self.stream, tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
            tokens_cached=usage.tokens_cached, cost_usd=cost,
            latency_ms=(time.perf_counter() - self.started) * 1000, ttft_ms=ttft_ms, status=status,
            error=error, attempts=self.attempts, route_reason=self.route_reason)


def _headers(outcome: Outcome, candidate: Candidate | None) -> dict[str, str]:
    h = {"x-request-id": outcome.request_id, "x-llmgw-attempts": str(len(outcome.attempts))}
    if candidate:
        h["x-llmgw-provider"] = candidate.provider
        h["x-llmgw-route-reason"] = candidate.reason
    return h


async def chat_completions(ctx: EdgeContext, raw: bytes) -> Response:
    started = time.perf_counter()
    req = parse_chat_request(raw)
    outcome = Outcome(new_id(), started, req.model, req.stream)
    try:
        decision = await router_client.decide(ctx.nc, RouteRequest(
            request_id=outcome.request_id, model=req.model, stream=req.stream,
            estimated_prompt_tokens=estimate_prompt_tokens(req.body), max_tokens=req.max_tokens),
            timeout=ctx.config.routing.decide_timeout_s)
    except GatewayError as exc:
        # an unknown model is the client's mistake, not usage; everything else is recorded
        if exc.status != 404:
            ctx.publish(outcome.event(exc.status, None, None, exc.message, None))
        raise
    outcome.model = decision.model  # the logical name: windows and analytics group by it
    outcome.route_reason = "; ".join([f"{c.provider}: {c.reason}" for c in decision.candidates] +
                                     [f"{s.provider} skipped: {s.reason}" for s in decision.skipped])
    if req.stream:
        return await _stream(ctx, req, decision, outcome)
    return await _complete(ctx, req, decision, outcome)


def _all_failed(outcome: Outcome, last: UpstreamError | None) -> GatewayError:
    if last is not None and not last.retryable:
        return last
    tried = ", ".join(f"{a.provider} ({a.status or a.error})" for a in outcome.attempts)
    status = 429 if last is not None and last.status == 429 and all(a.status == 429 for a in outcome.attempts) else 502
    return GatewayError(status, f"Every provider failed for model `{outcome.model}`: {tried}",
                        "rate_limit_exceeded" if status == 429 else "upstream_error",
                        code="all_providers_failed", headers=last.headers if last and status == 429 else None)


def _deadline_left(ctx: EdgeContext, outcome: Outcome) -> float:
    return ctx.config.routing.total_timeout_s - (time.perf_counter() - outcome.started)


async def _try_candidates(ctx: EdgeContext, req: ChatRequest, decision: RouteDecision, outcome: Outcome,
                          first_result) -> tuple[Candidate, UpstreamResponse, object]:
    """Try candidates in order until one answers; ``first_result`` reads what commits us to it
    (the whole body, or a stream's first event). Raises the error the client should get."""
    last: UpstreamError | None = None
    for cand in decision.candidates:
        if _deadline_left(ctx, outcome) <= 0:
            break
        provider = ctx.config.provider(cand.provider)
        t0 = time.perf_counter()
        response = None
        try:
            response = await adapter_for(provider.type).send(
                ctx.http, provider, ctx.secrets.get(provider.id), "/chat/completions",
                upstream_body(req, cand.upstream_model), stream=req.stream)
            result = await first_result(response)
        except UpstreamError as exc:
            if response is not None:
                response.close()
            outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                            status=exc.status if exc.upstream_body is not None else 0,
                                            error=exc.message, latency_ms=(time.perf_counter() - t0) * 1000))
            last = exc
            if not exc.retryable:
                break
            continue
        return cand, response, (result, t0)
    err = _all_failed(outcome, last)
    ctx.publish(outcome.event(err.status, None, None, err.message, None))
    raise err


def _client_error_response(outcome: Outcome, err: GatewayError) -> Response:
    """A client error the provider diagnosed goes back with the provider's own body."""
    if isinstance(err, UpstreamError) and err.upstream_body:
        return Response(err.upstream_body, status_code=err.status, media_type="application/json",
                        headers=_headers(outcome, None))
    raise err


async def _read_json_body(response: UpstreamResponse) -> tuple[bytes, Usage | None]:
    content = await response.read()
    try:
        return content, usage_from(json.loads(content).get("usage"))
    except (ValueError, AttributeError):
        raise UpstreamError(502, "upstream sent a body that is not JSON", retryable=True) from None


async def _complete(ctx: EdgeContext, req: ChatRequest, decision: RouteDecision, outcome: Outcome) -> Response:
    try:
        cand, response, ((content, usage), t0) = await _try_candidates(ctx, req, decision, outcome, _read_json_body)
    except GatewayError as err:
        return _client_error_response(outcome, err)
    outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                    status=response.status, latency_ms=(time.perf_counter() - t0) * 1000))
    # queued, not sent: the publisher's worker does the NATS round trip off the response path
    ctx.publish(outcome.event(200, cand, usage, None, None))
    return Response(content, status_code=200, media_type="application/json", headers=_headers(outcome, cand))


async def _first_event(response: UpstreamResponse) -> tuple[AsyncIterator[str], str]:
    # commit to this provider only once its first event arrived: until then, fail over silently
    lines = response.lines()
    try:
        return lines, await _next_data(lines)
    except StopAsyncIteration:
        raise UpstreamError(502, "upstream stream ended before its first event", retryable=True) from None


async def _stream(ctx: EdgeContext, req: ChatRequest, decision: RouteDecision, outcome: Outcome) -> Response:
    try:
        cand, response, ((lines, first), t0) = await _try_candidates(ctx, req, decision, outcome, _first_event)
    except GatewayError as err:
        return _client_error_response(outcome, err)
    ttft = (time.perf_counter() - t0) * 1000
    headers = _headers(outcome, cand)
    headers["x-llmgw-attempts"] = str(len(outcome.attempts) + 1)  # this one is recorded when it ends
    headers["cache-control"] = "no-cache"
    body = _relay(ctx, req, cand, outcome, response, lines, first, t0, ttft)
    return StreamingResponse(body, status_code=200, media_type="text/event-stream", headers=headers)


async def _next_data(lines: AsyncIterator[str]) -> str:
    """The next ``data:`` payload (comments, ``event:`` and blank lines skipped)."""
    async for line in lines:
        if line.startswith("data:"):
            return line[5:].strip()
    raise StopAsyncIteration


async def _relay(ctx: EdgeContext, req: ChatRequest, cand: Candidate, outcome: Outcome,
                 response: UpstreamResponse, lines: AsyncIterator[str], first: str, t0: float,
                 ttft: float) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    status, error, done = 200, None, False
    try:
        payload: str | None = first
        while payload is not None:
            chunk = classify_sse_data(payload)
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.done:
                done = True
                yield b"data: [DONE]\n\n"
                break
            if req.client_wants_usage:
                yield b"data: " + payload.encode() + b"\n\n"
            elif not chunk.usage_only:
                # we asked for usage on the client's behalf: hide every trace of it
                yield b"data: " + strip_null_usage(payload).encode() + b"\n\n"
            try:
                payload = await _next_data(lines)
            except StopAsyncIteration:
                payload = None
        if not done:
            # the upstream closed without [DONE]: never let that look like success
            status, error = 502, "upstream closed the stream before it finished"
            yield sse_error_event(error)
    except UpstreamError as exc:
        status, error = 502, f"upstream stream broke: {exc.message}"
        yield sse_error_event(error)
    except (asyncio.CancelledError, GeneratorExit):
        # the client went away; the provider may still bill what it generated so far
        status, error = 499, "client disconnected during the stream"
        raise
    finally:
        outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                        status=200 if status in (200, 499) else 0, error=error,
                                        latency_ms=(time.perf_counter() - t0) * 1000))
        ctx.publish(outcome.event(status, cand, usage, error, ttft))
        response.close()
