"""Chat completions: route, try providers (retry, fail over), stream or return, account.

One request: validate -> (a ``proxy-cli`` command is answered here) -> ask
the router, which admits one provider (reserving capacity atomically) ->
send upstream, retrying transient failures on the same provider with backoff
-> on a retryable failure, ask the router again with that provider excluded
-> answer the client -> publish one usage event and every attempt's outcome.
A stream commits to a provider only once its first event has arrived.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from starlette.responses import Response, StreamingResponse

from llmgw_common import subjects
from llmgw_common.config import GatewayConfig
from llmgw_common.ids import new_id
from llmgw_common.messages import Attempt, AttemptOutcome, Candidate, RouteDecision, RouteRequest, UsageEvent

from . import router_client
from .commands import CommandError, completion_response, parse_command, run_command
from .errors import GatewayError, UpstreamError
from .openai_wire import (ChatRequest, Usage, classify_sse_data, parse_chat_request, sse_error_event,
                          strip_null_usage, upstream_body, usage_from)
from .prompt_class import classify, last_user_text
from .providers import adapter_for
from .providers.http import UpstreamResponse
from .ratelimit_headers import retry_after_seconds
from .tokens import estimate_prompt_tokens

# never forwarded to the router (it sees routing-relevant headers only, never credentials)
_SECRET_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
_TRANSIENT = {0, 408, 500, 502, 503, 504}  # worth retrying on the same provider


@dataclass
class EdgeContext:
    """What a request needs from the running edge (built once in main.py)."""

    config: GatewayConfig
    secrets: dict[str, str | None]
    http: aiohttp.ClientSession
    nc: object
    publish: Callable[[UsageEvent], None]  # never blocks
    recent_requests: Callable[[int], Awaitable[str]] | None = None
    classify_with_model: Callable[[str], Awaitable[str | None]] | None = None


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
        if usage.reported_cost is not None:
            cost = usage.reported_cost  # the provider's own figure wins (OpenRouter reports it)
        elif candidate and candidate.price:
            cost = candidate.price.cost(usage.tokens_in, usage.tokens_out, usage.tokens_cached)
        else:
            cost = Decimal(0)
        return UsageEvent(
            request_id=self.request_id, provider=candidate.provider if candidate else None,
            model=self.model, upstream_model=candidate.upstream_model if candidate else None,
            stream=self.stream, tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
            tokens_cached=usage.tokens_cached, cost_usd=cost,
            latency_ms=(time.perf_counter() - self.started) * 1000, ttft_ms=ttft_ms, status=status,
            error=error, attempts=self.attempts, route_reason=self.route_reason,
            reservation=candidate.reservation if candidate else None)


def _headers(outcome: Outcome, candidate: Candidate | None, attempts: int | None = None) -> dict[str, str]:
    h = {"x-request-id": outcome.request_id,
         "x-llmgw-attempts": str(len(outcome.attempts) if attempts is None else attempts)}
    if candidate:
        h["x-llmgw-provider"] = candidate.provider
    if outcome.route_reason:
        # header values must be latin-1; keep it one line and bounded
        h["x-llmgw-route-reason"] = outcome.route_reason.encode("ascii", "replace").decode()[:1000]
    return h


def routing_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        n = name.lower()
        if n not in _SECRET_HEADERS and len(out) < 64:
            out[n] = value[:256]
    return out


async def chat_completions(ctx: EdgeContext, raw: bytes, headers: Mapping[str, str]) -> Response:
    started = time.perf_counter()
    req = parse_chat_request(raw)
    command = parse_command(req.body)
    if command is not None:
        try:
            text = await run_command(ctx, command, ctx.recent_requests or _no_logs)
        except CommandError as exc:
            text = f"proxy-cli: {exc}"
        return completion_response(req, text)

    outcome = Outcome(new_id(), started, req.model, req.stream)
    route_request = RouteRequest(
        request_id=outcome.request_id, model=req.model, stream=req.stream,
        estimated_prompt_tokens=estimate_prompt_tokens(req.body), max_tokens=req.max_tokens,
        headers=routing_headers(headers), prompt_class=await _prompt_class(ctx, req, headers))
    try:
        cand, response, result, t0 = await _admit_and_send(ctx, req, route_request, outcome)
    except GatewayError as err:
        if isinstance(err, UpstreamError) and err.upstream_body:
            # a client error the provider diagnosed: its own body goes back
            return Response(err.upstream_body, status_code=err.status, media_type="application/json",
                            headers=_headers(outcome, None))
        raise
    if req.stream:
        lines, first = result
        ttft = (time.perf_counter() - t0) * 1000
        headers_out = _headers(outcome, cand, attempts=len(outcome.attempts) + 1)  # this one is recorded at the end
        headers_out["cache-control"] = "no-cache"
        body = _relay(ctx, req, cand, outcome, response, lines, first, t0, ttft)
        return StreamingResponse(body, status_code=200, media_type="text/event-stream", headers=headers_out)
    content, usage = result
    latency = (time.perf_counter() - t0) * 1000
    outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model, status=200,
                                    latency_ms=latency))
    _report(ctx, outcome, cand, ok=True, status=200, latency_ms=latency)
    ctx.publish(outcome.event(200, cand, usage, None, None))
    return Response(content, status_code=200, media_type="application/json", headers=_headers(outcome, cand))


async def _no_logs(_n: int) -> str:
    return "the request log is not available"


async def _prompt_class(ctx: EdgeContext, req: ChatRequest, headers: Mapping[str, str]) -> str | None:
    text = last_user_text(req.body)
    if not text:
        return None
    smart = ctx.config.routing.smart
    if smart.enabled and smart.classifier_model and ctx.classify_with_model \
            and headers.get("x-llmgw-internal") != "classifier":
        found = await ctx.classify_with_model(text)
        if found:
            return found
    return classify(text)


def _deadline_left(ctx: EdgeContext, outcome: Outcome) -> float:
    return ctx.config.routing.total_timeout_s - (time.perf_counter() - outcome.started)


async def _read_json_body(response: UpstreamResponse) -> tuple[bytes, Usage | None]:
    content = await response.read()
    try:
        return content, usage_from(json.loads(content).get("usage"))
    except (ValueError, AttributeError):
        raise UpstreamError(502, "upstream sent a body that is not JSON", retryable=True) from None


async def _first_event(response: UpstreamResponse) -> tuple[AsyncIterator[str], str]:
    lines = response.lines()
    try:
        return lines, await _next_data(lines)
    except StopAsyncIteration:
        raise UpstreamError(502, "upstream stream ended before its first event", retryable=True) from None


async def _admit_and_send(ctx: EdgeContext, req: ChatRequest, route_request: RouteRequest, outcome: Outcome):
    """Ask the router for one admitted provider at a time until one answers."""
    last: UpstreamError | None = None
    while _deadline_left(ctx, outcome) > 0:
        try:
            decision = await router_client.decide(ctx.nc, route_request, ctx.config.routing.decide_timeout_s)
        except GatewayError as exc:
            if last is None:
                # an unknown model is the client's mistake, not usage; other refusals are recorded
                if exc.status != 404:
                    ctx.publish(outcome.event(exc.status, None, None, exc.message, None))
                raise
            break  # nobody left to fail over to: the client gets the last upstream error
        outcome.model = decision.model  # the logical name: windows and analytics group by it
        if not route_request.exclude:
            outcome.route_reason = _route_reason(decision)
        cand = decision.candidates[0]
        route_request.exclude = [*route_request.exclude, cand.provider]
        try:
            response, result, t0 = await _send_with_retries(ctx, req, cand, outcome)
            return cand, response, result, t0
        except UpstreamError as exc:
            last = exc
            if not exc.retryable:
                break
    err = _all_failed(outcome, last)
    ctx.publish(outcome.event(err.status, None, None, err.message, None))
    raise err


async def _send_with_retries(ctx: EdgeContext, req: ChatRequest, cand: Candidate, outcome: Outcome):
    provider = ctx.config.provider(cand.provider)
    adapter = adapter_for(provider.type)
    retry = ctx.config.routing.retry
    first_result = _first_event if req.stream else _read_json_body
    body = upstream_body(req, cand.upstream_model)
    tries = 0
    t_first = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        response = None
        try:
            left = _deadline_left(ctx, outcome)
            if left <= 0:
                raise UpstreamError(504, "the request's total timeout was reached", retryable=False)
            async with asyncio.timeout(left):
                response = await adapter.send(ctx.http, provider, ctx.secrets.get(provider.id), "/chat/completions",
                                              body, stream=req.stream)
                result = await first_result(response)
            return response, result, t0
        except (UpstreamError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = UpstreamError(504, "the request's total timeout was reached", retryable=False)
            if response is not None:
                response.close()
            no_response = exc.upstream_body is None
            status = 0 if no_response and exc.status != 504 else exc.status
            if (exc.retryable and status in _TRANSIENT and tries < retry.attempts
                    and _deadline_left(ctx, outcome) > 0):
                tries += 1
                delay = min(retry.max_delay_s, retry.base_delay_s * 2 ** (tries - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # full jitter, at least half
                continue
            latency = (time.perf_counter() - t_first) * 1000
            outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                            status=status, error=exc.message, latency_ms=latency, retries=tries))
            _report(ctx, outcome, cand, ok=False, status=status, latency_ms=latency,
                    retry_after_s=retry_after_seconds(exc.headers) if exc.status == 429 else None,
                    release=True)
            raise exc


def _report(ctx: EdgeContext, outcome: Outcome, cand: Candidate, ok: bool, status: int, latency_ms: float,
            retry_after_s: float | None = None, release: bool = False) -> None:
    """Tell the routers how the attempt went (fire and forget: core NATS, off the response path)."""
    msg = AttemptOutcome(request_id=outcome.request_id, provider=cand.provider, model=cand.model, ok=ok,
                         status=status, latency_ms=latency_ms, retry_after_s=retry_after_s,
                         reservation=cand.reservation if release else None)
    task = asyncio.get_running_loop().create_task(_publish_outcome(ctx.nc, msg.encode()))
    # the loop keeps only a weak reference to a task: hold it until it is done
    _outcome_tasks.add(task)
    task.add_done_callback(_outcome_tasks.discard)


_outcome_tasks: set[asyncio.Task] = set()


async def _publish_outcome(nc, data: bytes) -> None:
    try:
        await nc.publish(subjects.ROUTER_OUTCOME, data)
    except Exception:  # NATS away: health learning is best effort; reservations expire with their window
        pass


def _route_reason(decision: RouteDecision) -> str:
    parts = [f"{c.provider}: {c.reason}" for c in decision.candidates[:3]]
    parts += [f"{s.provider} skipped: {s.reason}" for s in decision.skipped]
    if decision.rule:
        parts.insert(0, f"rule {decision.rule}")
    return "; ".join(parts)


def _all_failed(outcome: Outcome, last: UpstreamError | None) -> GatewayError:
    if last is not None and not last.retryable:
        return last
    tried = ", ".join(f"{a.provider} ({a.status or a.error})" for a in outcome.attempts) or "none"
    all_429 = bool(outcome.attempts) and all(a.status == 429 for a in outcome.attempts)
    status = 429 if all_429 else 502
    return GatewayError(status, f"Every provider failed for model `{outcome.model}`: {tried}",
                        "rate_limit_exceeded" if status == 429 else "upstream_error",
                        code="all_providers_failed", headers=last.headers if last and status == 429 else None)


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
        latency = (time.perf_counter() - t0) * 1000
        ok = status in (200, 499)
        outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                        status=200 if ok else 0, error=error, latency_ms=latency))
        # a stream that broke after its first byte still used the provider: the usage event settles
        # its reservation, so the outcome does not release it
        _report(ctx, outcome, cand, ok=ok, status=200 if ok else 0, latency_ms=ttft)
        ctx.publish(outcome.event(status, cand, usage, error, ttft))
        response.close()
