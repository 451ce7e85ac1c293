"""The gateway: admit -> send -> retry / fail over -> account, for every format and provider.

One request: an inbound codec has parsed it into an ``Exchange`` -> (a
``proxy-cli`` command is answered here) -> ask the router, which admits one
provider (reserving capacity atomically) -> send through that provider's
adapter, byte for byte when it speaks the client's format, else translated
through core types -> retry transient failures on the same provider with
backoff -> on a failure another provider may not have, ask the router again
with that provider excluded -> answer in the client's format (the codec
renders) -> publish one usage event and every attempt's outcome.

A stream commits to a provider once its first upstream event has arrived; a
stream that breaks later ends with the codec's error event. No web framework
here: the HTTP layer turns a ``Reply`` into a response, and tests drive this
module in-process with fake providers and a fake router.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol

import msgspec

from llmgw_common import tracing
from llmgw_common.capacity import estimate
from llmgw_common.config import GatewayConfig
from llmgw_common.failures import CLIENT_KINDS, FailureKind
from llmgw_common.ids import new_id
from llmgw_common.leases import lease_member
from llmgw_common.logs import REQUEST_ID
from llmgw_common.messages import (PLAN_ONLY_ENDPOINT, Attempt, AttemptOutcome, Candidate, RouteDecision, RouteRequest,
                                   Skipped, UsageEvent)
from llmgw_common.windows import NANO

from . import fallbacks
from .cache_prefix import cacheable_prefix
from .capacity import CapacityCache, Refusal
from .errors import GatewayError, UpstreamError
from .plans import PlanCache
from .strategies import EdgeLoad, ordered
from .provider import Provider, RawCall
from .tokens import needs_exact
from .types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Finish, Meter, Start, StreamEvent,
                    Text, TextDelta, ThinkingDelta, ToolCallDelta, Usage, UsageUpdate)

# never forwarded to the router (it sees routing-relevant headers only, never credentials)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                            "cookie"})


class Codec(Protocol):
    """What the gateway needs from an inbound codec (``api/``): rendering in the client's format."""

    format: str  # openai_chat | anthropic_messages | openai_responses | embeddings | raw
    error_format: str  # openai | anthropic: the shape of its error bodies
    endpoint: str  # the usage event's endpoint name

    @staticmethod
    def render_error(err: GatewayError) -> bytes:
        """An error answer's body in the client's format."""
        ...

    def render_response(self, resp: ChatResponse) -> bytes: ...

    def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]: ...

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes: ...

    def stream_error(self, err: GatewayError) -> bytes: ...


@dataclass
class Exchange:
    """One client request, parsed by its codec."""

    model: str
    stream: bool
    raw: RawCall  # the client's own body, for providers that speak its format
    # chat-like requests: the core request, built only when a provider needs a translation
    build_chat: Callable[[], ChatRequest] | None = None
    embedding: EmbeddingRequest | None = None
    estimated_prompt_tokens: int = 0  # when counting costs nothing (else ``count_prompt``)
    count_prompt: Callable[[bool], int] | None = None  # (exact) -> the prompt's tokens: core/tokens.py
    exact_tokens: bool = False  # the caller's key counts tokens or cost: admission needs the exact count
    max_tokens: int | None = None
    prompt_text: str = ""  # the last user message (smart routing, proxy-cli)
    headers: Mapping[str, str] = field(default_factory=dict)
    provider: str | None = None  # /{provider}/v1/...: this provider only
    routed: bool = True  # False: straight to ``provider``, no admission (a raw call naming no configured model)
    key_id: str | None = None  # the caller's gateway key (limits, rules and usage per key)
    # a question the gateway answers itself when the admitted provider cannot take it as it is (count_tokens:
    # the estimate); nothing is generated, so no tokens are recorded
    answer_here: Callable[[], bytes] | None = None
    # False: a question about the prompt (count_tokens) that needs the router's plan only, never capacity
    uses_capacity: bool = True
    _chat: ChatRequest | None = None

    def prompt_tokens(self, exact: bool) -> int:
        return self.estimated_prompt_tokens if self.count_prompt is None else self.count_prompt(exact)

    @property
    def is_chat(self) -> bool:
        return self.build_chat is not None

    def chat(self) -> ChatRequest:
        if self._chat is None:
            assert self.build_chat is not None
            self._chat = self.build_chat()
        return self._chat


@dataclass
class Reply:
    """What the HTTP layer sends: a whole body or a stream of byte chunks."""

    status: int
    headers: dict[str, str]
    media_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Deps:
    config: GatewayConfig
    providers: Mapping[str, Provider]
    decide: Callable[[RouteRequest], Awaitable[RouteDecision]]  # raises GatewayError
    report: Callable[[AttemptOutcome, bool], None]  # (outcome, may wait for a batch); never blocks
    publish: Callable[[UsageEvent], None]  # never blocks
    classify_prompt: Callable[[str, Mapping[str, str]], Awaitable[str | None]] | None = None
    command: Callable[[str], Awaitable[str | None]] | None = None  # proxy-cli: the answer, or None
    # the caller's current key record (an object that changes when the key does): plans are made per record
    key_record: Callable[[str | None], object] = lambda _key_id: None
    # routes with limits on a reused plan: admitted from this edge's capacity leases (None: by the router)
    capacity: CapacityCache | None = None


@dataclass
class _Sent:
    """A successful attempt: a whole body, or a committed stream."""

    status: int
    media_type: str
    headers: dict[str, str]
    body: bytes | None = None
    usage: Usage | None = None
    stream: AsyncIterator[bytes] | None = None
    meter: Meter | None = None
    upstream: AsyncIterator[Any] | None = None  # the provider's own stream, closed when the client's ends
    retries: int = 0  # failed tries on the same provider before this one
    span: Any = None  # tracing on: a stream's attempt span, ended with the stream


class DeadlineReached(UpstreamError):
    """The request's total timeout ran out: nothing is left to fail over with."""

    def __init__(self) -> None:
        super().__init__(504, "the request's total timeout was reached", kind=FailureKind.TIMEOUT)

    @property
    def retryable(self) -> bool:
        return False


class _Outcome:
    """The request's account: attempts, route reason, the usage event at the end."""

    def __init__(self, exchange: Exchange, endpoint: str):
        self.request_id = new_id()
        # chosen before admission: the router's lease names it, so an abandoned event would share it
        self.event_id = new_id()
        self.started = time.perf_counter()
        self.exchange = exchange
        self.endpoint = endpoint
        self.model = exchange.model
        self.attempts: list[Attempt] = []
        self.route_reason = ""
        self.fallback: str | None = None  # routing.fallbacks kind that chose the model that served
        self.prefix_key: str | None = None  # its cacheable prefix (cache_prefix.py): reported with a success

    def event(self, status: int, candidate: Candidate | None, usage: Usage | None, error: str | None,
              ttft_ms: float | None) -> UsageEvent:
        usage = usage or Usage()
        saved = Decimal(0)
        if usage.reported_cost is not None:
            cost = usage.reported_cost  # the provider's own figure wins (OpenRouter reports it)
        elif candidate and candidate.price:
            cost = candidate.price.cost(usage.input_tokens, usage.output_tokens, cached_in=usage.cache_read_tokens,
                                        reasoning=usage.reasoning_tokens, cache_write=usage.cache_write_tokens)
            saved = candidate.price.cache_read_saving(usage.cache_read_tokens)
        else:
            cost = Decimal(0)
        return UsageEvent(
            id=self.event_id, request_id=self.request_id, endpoint=self.endpoint, key_id=self.exchange.key_id,
            provider=candidate.provider if candidate else None,
            model=self.model, upstream_model=candidate.upstream_model if candidate else None,
            stream=self.exchange.stream, tokens_in=usage.input_tokens, tokens_out=usage.output_tokens,
            tokens_cached=usage.cache_read_tokens, tokens_cache_write=usage.cache_write_tokens,
            tokens_reasoning=usage.reasoning_tokens, cost_usd=cost, cache_saved_usd=saved,
            latency_ms=(time.perf_counter() - self.started) * 1000, ttft_ms=ttft_ms, status=status,
            error=error, attempts=self.attempts, route_reason=self.route_reason,
            reservation=candidate.reservation if candidate else None)

    def upstream_calls(self) -> int:
        """Every call made upstream: each attempt and the retries on its provider."""
        return sum(1 + a.retries for a in self.attempts)

    def headers(self, candidate: Candidate | None, attempts: int | None = None) -> dict[str, str]:
        h = {"x-request-id": self.request_id,
             "x-llmgw-attempts": str(self.upstream_calls() if attempts is None else attempts)}
        if candidate:
            h["x-llmgw-provider"] = candidate.provider
            h["x-llmgw-model"] = candidate.upstream_model.encode("ascii", "replace").decode()[:200]
        if self.fallback:
            h["x-llmgw-fallback"] = self.fallback
        if self.route_reason:
            # header values must be latin-1; keep it one line and bounded
            h["x-llmgw-route-reason"] = self.route_reason.encode("ascii", "replace").decode()[:1000]
        return h


# what travels to the router over NATS is bounded, whatever the client sent
MAX_MODEL_CHARS = 256
MAX_ROUTING_HEADERS = 64
MAX_HEADER_NAME_CHARS = 64
MAX_HEADER_VALUE_CHARS = 256


def routing_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        n = name.lower()
        if n not in SECRET_HEADERS and len(n) <= MAX_HEADER_NAME_CHARS and len(out) < MAX_ROUTING_HEADERS:
            out[n] = value[:MAX_HEADER_VALUE_CHARS]
    return out


class Gateway:
    def __init__(self, deps: Deps):
        self.deps = deps
        # streams being relayed, as admission lease members: their leases are renewed while they run
        self.running: set[str] = set()
        self.plans = PlanCache()  # routes without limits: the router's plans, reused (plans.py)
        self.load = EdgeLoad()  # this edge's in flight and latency per provider: strategies on those plans
        self._limited_for: GatewayConfig | None = None  # the config ``_limited_routes`` was read from
        self._limited_routes: dict[tuple[str, str], bool] = {}

    @property
    def config(self) -> GatewayConfig:
        return self.deps.config

    async def handle(self, exchange: Exchange, codec: Codec) -> Reply:
        if exchange.is_chat and self.deps.command is not None:
            answer = await self.deps.command(exchange.prompt_text)
            if answer is not None:
                return self._command_reply(exchange, codec, answer)
        if len(exchange.model) > MAX_MODEL_CHARS:
            raise GatewayError(400, f"The model name is longer than {MAX_MODEL_CHARS} characters.", param="model",
                               code="invalid_model")
        if exchange.provider is not None and not exchange.routed:
            return await self._direct(exchange, codec)
        outcome = _Outcome(exchange, codec.endpoint)
        route_request = RouteRequest(
            request_id=outcome.request_id, model=exchange.model, stream=exchange.stream,
            estimated_prompt_tokens=exchange.prompt_tokens(exchange.exact_tokens or needs_exact(self.config)),
            max_tokens=exchange.max_tokens,
            headers=routing_headers(exchange.headers), key_id=exchange.key_id, event_id=outcome.event_id,
            endpoint=_route_endpoint(exchange),
            prompt_class=await self._prompt_class(exchange),
            needs=fallbacks.needs(exchange.raw, exchange.embedding is not None))
        if exchange.provider is not None:  # a raw call to one provider, admitted under provider/model
            route_request.model = f"{exchange.provider}/{exchange.model}"
        else:
            self._mark_prefix(exchange, route_request)
        outcome.prefix_key = route_request.prefix_key
        _tag(outcome.request_id)
        try:
            cand, sent, t0 = await self._admit_and_send(exchange, codec, route_request, outcome)
        except UpstreamError as err:
            if err.kind in CLIENT_KINDS and err.upstream_body and err.upstream_format == codec.error_format:
                # a client error the provider diagnosed, in the client's own format: its body goes back
                return Reply(err.status, outcome.headers(None), "application/json", body=err.upstream_body)
            err.headers = {**err.headers, **outcome.headers(None)}
            raise
        except GatewayError as err:
            err.headers = {**err.headers, **outcome.headers(None)}
            raise
        if sent.stream is not None:
            ttft = (time.perf_counter() - t0) * 1000
            # this attempt is recorded when the stream ends: count it now
            headers = outcome.headers(cand, attempts=outcome.upstream_calls() + sent.retries + 1)
            headers.update(sent.headers)
            headers["cache-control"] = "no-cache"
            body = self._relay(codec, cand, outcome, sent, t0, ttft)
            return Reply(sent.status, headers, sent.media_type, stream=body)
        latency = (time.perf_counter() - t0) * 1000
        outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                        status=sent.status, latency_ms=latency, retries=sent.retries))
        self._report(outcome, cand, ok=True, status=sent.status, latency_ms=latency)
        usage = self._with_estimates(exchange, sent.usage or Usage(), None)
        self.deps.publish(outcome.event(sent.status, cand, usage, None, None))
        headers = outcome.headers(cand)
        headers.update(sent.headers)
        return Reply(sent.status, headers, sent.media_type, body=sent.body)

    async def _direct(self, exchange: Exchange, codec: Codec) -> Reply:
        """A raw call to one provider without admission; counted when its answer says its usage."""
        outcome = _Outcome(exchange, codec.endpoint)
        _tag(outcome.request_id)
        outcome.route_reason = f"{exchange.provider}: direct pass-through"
        provider = self.deps.providers.get(exchange.provider or "")
        if provider is None:
            raise GatewayError(404, f"No provider `{exchange.provider}` is configured.", code="provider_not_found")
        cand = Candidate(provider=provider.id, model=exchange.model, upstream_model=exchange.model,
                         reason="direct pass-through")
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.routing.total_timeout_s):
                sent = await _attempt(provider, exchange, codec, exchange.model)
        except TimeoutError:
            raise DeadlineReached() from None
        except GatewayError as err:
            err.headers = {**err.headers, **outcome.headers(None)}
            raise
        headers = {**outcome.headers(cand, attempts=1), **sent.headers}
        if sent.stream is not None:
            return Reply(sent.status, headers, sent.media_type,
                         stream=self._relay(codec, cand, outcome, sent, t0, (time.perf_counter() - t0) * 1000,
                                            report=False))
        usage = sent.usage or Usage()
        if usage.input_tokens or usage.output_tokens:
            outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                            status=sent.status, latency_ms=(time.perf_counter() - t0) * 1000))
            self.deps.publish(outcome.event(sent.status, cand, usage, None, None))
        return Reply(sent.status, headers, sent.media_type, body=sent.body)

    # ---- routing ------------------------------------------------------------

    async def _prompt_class(self, exchange: Exchange) -> str | None:
        if not exchange.prompt_text or self.deps.classify_prompt is None:
            return None
        return await self.deps.classify_prompt(exchange.prompt_text, exchange.headers)

    def _deadline_left(self, outcome: _Outcome) -> float:
        return self.config.routing.total_timeout_s - (time.perf_counter() - outcome.started)

    async def _admit_and_send(self, exchange: Exchange, codec: Codec, route_request: RouteRequest,
                              outcome: _Outcome) -> tuple[Candidate, _Sent, float]:
        """Ask the router for one admitted provider at a time until one answers."""
        last: UpstreamError | None = None
        while self._deadline_left(outcome) > 0:
            try:
                decision = await self._decision(exchange, route_request)
            except GatewayError:
                if last is None:
                    raise  # refused before any attempt: the edge records it with its other refusals (refusals.py)
                break  # nobody left to fail over to: the client gets the last upstream error
            outcome.model = decision.model  # the logical name: windows and analytics group by it
            if not route_request.exclude:
                outcome.route_reason = _route_reason(decision)
            elif len(route_request.exclude) == route_request.exclude_from:  # the first plan of a fallback
                outcome.route_reason += "; " + _route_reason(decision)
            outcome.fallback = decision.fallback or outcome.fallback
            cand = decision.candidates[0]
            route_request.exclude = [*route_request.exclude, cand.provider]
            try:
                sent, t0 = await self._send_with_retries(exchange, codec, cand, outcome)
                if sent.stream is None and fallbacks.fallback_for(self.config, FailureKind.CONTENT_FILTER, cand,
                                                                  route_request):
                    self._refuse_filtered(codec, cand, outcome, sent, t0)
                return cand, sent, t0
            except UpstreamError as exc:
                last = exc
                self.plans.expire(cand.provider)
                outcome.route_reason += f"; {cand.provider} failed: {exc.kind.value} {exc.status or ''}".rstrip()
                models = fallbacks.fallback_for(self.config, exc.kind, cand, route_request)
                if models:  # refused for what the request is: its configured fallback models, never silently
                    route_request.fallback = fallbacks.FALLBACK_KINDS[exc.kind]
                    route_request.exclude_from = len(route_request.exclude)
                    outcome.route_reason += (f"; falling back to {', '.join(models)} "
                                             f"(routing.fallbacks.{route_request.fallback})")
                    continue
                if not exc.retryable:
                    break
        err = _all_failed(outcome, last)
        self.deps.publish(outcome.event(err.status, None, None, err.message, None))
        err.recorded = True
        raise err

    async def _decision(self, exchange: Exchange, route_request: RouteRequest) -> RouteDecision:
        """The router's decision, or a plan it made reusable (a route without limits: no round trip). A
        failover always asks: the router knows what the failure changed."""
        if not exchange.uses_capacity or route_request.exclude:
            return await self.deps.decide(route_request)
        key_record = self.deps.key_record(route_request.key_id)
        plan = self.plans.fresh(route_request, key_record)
        if plan is not None and not (route_request.prefix_key and self._affinity_may_reorder(plan)):
            local = await self._admit_on_plan(ordered(plan, self.load, self.config), exchange, route_request,
                                              key_record)
            if local is not None:
                return local
        generation = self.plans.generation
        try:
            decision = await self.deps.decide(route_request)
        except GatewayError as err:
            # the control plane is away: a route without limits keeps serving on the plan it had, one with
            # limits from the capacity leases this edge still holds
            if err.code == "router_unavailable" and (plan := self.plans.stale(route_request, key_record)):
                local = await self._admit_on_plan(ordered(plan, self.load, self.config), exchange, route_request,
                                                  key_record)
                if local is not None:
                    return local
            raise
        self.plans.keep(route_request, key_record, decision, generation)
        return decision

    def _refuse_filtered(self, codec: Codec, cand: Candidate, outcome: _Outcome, sent: _Sent, t0: float) -> None:
        """A whole answer that ended with a content-filter finish, where a fallback is configured: recorded as
        this provider's refusal (its reservation released, the answer not sent) and raised to fall back."""
        if not fallbacks.filtered_answer(codec.format, sent.body):
            return
        latency = (time.perf_counter() - t0) * 1000
        outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                        status=sent.status, error="content_filter finish", latency_ms=latency,
                                        retries=sent.retries))
        self._report(outcome, cand, ok=False, status=sent.status, latency_ms=latency,
                     kind=FailureKind.CONTENT_FILTER, release=True)
        raise UpstreamError(400, f"provider {cand.provider} refused the answer on content policy",
                            kind=FailureKind.CONTENT_FILTER)

    def _mark_prefix(self, exchange: Exchange, route_request: RouteRequest) -> None:
        """A chat request whose prefix is long enough for a provider to cache carries its hash, so the router
        can send it where that prefix is cached (docs/routing.md, "Prompt-cache affinity")."""
        affinity = self.config.routing.cache_affinity
        if (not affinity.enabled or route_request.endpoint != "chat"
                or route_request.estimated_prompt_tokens < affinity.min_prefix_tokens):
            return  # the prefix is part of the prompt: a short prompt has no prefix worth hashing
        found = cacheable_prefix(exchange.raw, exchange.model)
        if found is not None and found[1] >= affinity.min_prefix_tokens:
            route_request.prefix_key, route_request.prefix_tokens = found

    def _affinity_may_reorder(self, plan: RouteDecision) -> bool:
        """Whether the router's affinity could put another provider first than this plan does: only then is
        a request with a cacheable prefix worth a router round trip. A plan whose order the edge makes itself
        (``groups``) may put any candidate first."""
        affinity = self.config.routing.cache_affinity
        caching = []
        for c in plan.candidates:
            provider = self.config.provider(c.provider)
            caching.append(provider is not None and affinity.ttl_for(provider.type) > 0)
        if plan.groups:
            return len(caching) > 1 and any(caching)
        return any(caching[1:])

    async def _admit_on_plan(self, plan: RouteDecision, exchange: Exchange, route_request: RouteRequest,
                             key_record: object) -> RouteDecision | None:
        """The plan's candidates in order: one without limits is taken as it is, one with limits only with a
        reservation from this edge's capacity leases (core/capacity.py); one refused there is skipped, as the
        router would skip it. None: the router decides this request."""
        key_limits = getattr(key_record, "limits", None)
        key_limited = key_limits is not None and _has_limits(key_limits)
        if not key_limited and not any(self._route_limited(c) for c in plan.candidates):
            return plan  # a route without limits (the usual plan): nothing to reserve
        capacity = self.deps.capacity
        if capacity is None or not self.config.routing.leases:
            return None
        tokens_in, tokens_out = estimate(route_request.estimated_prompt_tokens, route_request.max_tokens,
                                         self.config.routing.default_max_tokens, exchange.embedding is not None)
        # a lease is for the caller's key only when that key has limits: every key without limits shares the
        # route's lease (one lease per edge and route, not per key, on a small limit such as a free tier); its
        # requests still count in the key's own windows, in full, when their usage events settle
        lease_key = route_request.key_id if key_limited else None
        refused: list[tuple[str, Refusal]] = []
        for i, cand in enumerate(plan.candidates):
            if key_limited or self._route_limited(cand):
                got = await capacity.take((cand.provider, cand.model, lease_key), tokens_in, tokens_out,
                                          basis=(self.config, key_record if key_limited else None))
                if isinstance(got, Refusal):
                    if got.ask_router:
                        return None
                    refused.append((cand.provider, got))
                    continue
                cand = msgspec.structs.replace(cand, reservation=got, reason=_own_estimate(cand.reason, got.cost_nano))
            skipped = [*plan.skipped, *(Skipped(provider=p, reason=r.reason) for p, r in refused)]
            return msgspec.structs.replace(plan, candidates=[cand, *plan.candidates[i + 1:]], skipped=skipped)
        # every candidate was refused for want of a router (a full limit is the router's to refuse: ask_router)
        wait = str(max(1, math.ceil(max(r.retry_after_s for _p, r in refused))))
        why = "; ".join(f"{p}: {r.reason}" for p, r in refused)
        raise GatewayError(503, f"The gateway's router cannot be reached and no capacity is left for "
                                f"`{plan.model}`: {why}", code="router_unavailable", headers={"retry-after": wait})

    def _route_limited(self, cand: Candidate) -> bool:
        """Whether ``cand``'s provider or model has a limit (one unknown here: the router knows); looked up
        once per config, not per request."""
        config = self.config
        if self._limited_for is not config:
            self._limited_for, self._limited_routes = config, {}
        route = (cand.provider, cand.model)
        limited = self._limited_routes.get(route)
        if limited is None:
            provider = config.provider(cand.provider)
            model = provider.model(cand.model) if provider is not None else None
            limited = provider is None or model is None or _has_limits(provider.limits) or _has_limits(model.limits)
            self._limited_routes[route] = limited
        return limited

    async def _send_with_retries(self, exchange: Exchange, codec: Codec, cand: Candidate,
                                 outcome: _Outcome) -> tuple[_Sent, float]:
        provider = self.deps.providers.get(cand.provider)
        if provider is None:  # the router knows a provider this edge's config does not (a reload in between)
            raise UpstreamError(503, f"provider {cand.provider} is not configured on this edge",
                                kind=FailureKind.UNSUPPORTED)
        self.load.started(cand.provider)  # until its answer is whole or its stream is relayed (_relay)
        try:
            return await self._tries(exchange, codec, cand, outcome, provider)
        finally:
            self.load.ended(cand.provider)

    async def _tries(self, exchange: Exchange, codec: Codec, cand: Candidate, outcome: _Outcome,
                     provider: Provider) -> tuple[_Sent, float]:
        retry = self.config.routing.retry
        tries = 0
        t_first = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                left = self._deadline_left(outcome)
                if left <= 0:
                    raise TimeoutError
                per_attempt = asyncio.timeout(provider.config.total_timeout_s)
                async with asyncio.timeout(left):
                    async with per_attempt:
                        sent = await _attempt(provider, exchange, codec, cand.upstream_model)
                sent.retries = tries
                return sent, t0
            except (UpstreamError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    # this provider's own bound: the next one may be quicker; the request's: nothing is left
                    exc = UpstreamError(504, f"upstream did not answer within {provider.config.total_timeout_s:g}s",
                                        kind=FailureKind.TIMEOUT) if per_attempt.expired() else DeadlineReached()
                if (exc.retry_here and tries < retry.attempts and not isinstance(exc, DeadlineReached)
                        and self._deadline_left(outcome) > 0):
                    tries += 1
                    delay = min(retry.max_delay_s, retry.base_delay_s * 2 ** (tries - 1))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # full jitter, at least half
                    continue
                status = 0 if exc.upstream_body is None and exc.kind is FailureKind.CONNECTION else exc.status
                latency = (time.perf_counter() - t_first) * 1000
                outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                                status=status, error=exc.message, latency_ms=latency, retries=tries))
                self._report(outcome, cand, ok=False, status=status, latency_ms=latency, kind=exc.kind,
                             retry_after_s=exc.retry_after_s, release=True)
                raise exc

    def _report(self, outcome: _Outcome, cand: Candidate, ok: bool, status: int, latency_ms: float,
                kind: FailureKind | None = None, retry_after_s: float | None = None, release: bool = False) -> None:
        # a success is news the router can take a moment later, in a batch; a failure (cooldowns, breakers),
        # the breaker's probe, or who now holds a prompt prefix (the conversation's next turn may come at
        # once, and should find it) must reach it now
        if ok and not outcome.exchange.uses_capacity:
            return  # nothing was admitted and its latency is no model's (count_tokens): only failures are news
        if ok:
            self.load.succeeded(cand.provider, latency_ms)
        reservation = cand.reservation if release else None
        if reservation is not None and reservation.lease is not None:
            # admitted from a capacity lease: the failed request goes back into it (while this edge holds it);
            # the router never releases it on its own, or the lease's give-back would return it a second time
            if self.deps.capacity is not None:
                self.deps.capacity.release(reservation)
            reservation = None
        self.deps.report(AttemptOutcome(
            request_id=outcome.request_id, provider=cand.provider, model=cand.model, ok=ok, status=status,
            latency_ms=latency_ms, retry_after_s=retry_after_s, kind=kind.value if kind else None,
            reservation=reservation, prefix_key=outcome.prefix_key if ok else None),
            ok and not cand.probe and outcome.prefix_key is None)

    # ---- streams ------------------------------------------------------------

    def _with_estimates(self, exchange: Exchange, usage: Usage, meter: Meter | None) -> Usage:
        """Never zero: a provider that reported nothing (a stream cut short, a server without usage)
        is counted with the prompt estimate and the pieces of output seen."""
        if exchange.answer_here is not None:  # a question about the prompt: nothing was generated
            return usage
        if not usage.input_tokens:
            usage.input_tokens = exchange.prompt_tokens(exact=True)  # recorded: as exact as we can
        if not usage.output_tokens and meter is not None:
            usage.output_tokens = meter.pieces
        return usage

    async def _relay(self, codec: Codec, cand: Candidate, outcome: _Outcome, sent: _Sent, t0: float,
                     ttft: float, report: bool = True) -> AsyncIterator[bytes]:
        status, error = sent.status, None
        meter = sent.meter
        assert sent.stream is not None and meter is not None
        lease = lease_member(outcome.request_id, cand.provider)
        self.running.add(lease)
        if report:  # a routed stream is in flight while it is relayed
            self.load.started(cand.provider)
        try:
            async for piece in sent.stream:
                yield piece
            if not meter.finished:
                # the upstream closed without its end marker: never let that look like success
                status, error = 502, "upstream closed the stream before it finished"
                yield codec.stream_error(UpstreamError(502, error, kind=FailureKind.PROTOCOL))
        except UpstreamError as exc:
            status, error = 502, f"upstream stream broke: {exc.message}"
            yield codec.stream_error(UpstreamError(502, error, kind=exc.kind))
        except (asyncio.CancelledError, GeneratorExit):
            # the client went away; the provider may still bill what it generated so far
            status, error = 499, "client disconnected during the stream"
            raise
        finally:
            self.running.discard(lease)
            if report:  # a routed stream: its attempt was in flight until now
                self.load.ended(cand.provider)
            latency = (time.perf_counter() - t0) * 1000
            ok = status < 400 or status == 499
            outcome.attempts.append(Attempt(provider=cand.provider, upstream_model=cand.upstream_model,
                                            status=200 if ok else 0, error=error, latency_ms=latency,
                                            retries=sent.retries))
            # a stream that broke after its first byte still used the provider: the usage event settles
            # its reservation, so the outcome does not release it
            if report:
                self._report(outcome, cand, ok=ok, status=200 if ok else 0, latency_ms=ttft,
                             kind=None if ok else FailureKind.PROTOCOL)
                usage = self._with_estimates(outcome.exchange, meter.usage, meter)
                self.deps.publish(outcome.event(status, cand, usage, error, ttft))
            elif meter.usage.input_tokens or meter.usage.output_tokens:  # a direct call: counted when readable
                self.deps.publish(outcome.event(status, cand, meter.usage, error, ttft))
            if sent.span is not None:  # tracing on: the attempt's span ends with its stream
                _end_attempt_span(sent.span, None if ok else error, sent.status, meter.usage)
            # close the whole chain now, not when the garbage collector gets to it: a CLI provider's
            # child process or an upstream connection must not outlive the client's stream
            for stream in (sent.stream, sent.upstream):
                await _close(stream)

    def _command_reply(self, exchange: Exchange, codec: Codec, text: str) -> Reply:
        headers = {"x-llmgw-provider": "proxy-cli", "x-llmgw-attempts": "0"}
        resp = ChatResponse(id=new_id().lower(), model="proxy-cli", parts=[Text(text)], created=int(time.time()))
        if not exchange.stream:
            return Reply(200, headers, "application/json", body=codec.render_response(resp))

        async def events() -> AsyncIterator[StreamEvent]:
            yield Start(resp.id, resp.model, resp.created)
            yield TextDelta(text)
            yield Finish("stop")
            yield UsageUpdate(Usage())

        return Reply(200, headers, "text/event-stream", stream=codec.render_stream(events()))


def _has_limits(limits: Any) -> bool:
    return any(v is not None for v in limits.__dict__.values())


def _route_endpoint(exchange: Exchange) -> str:
    """What the router is asked for: capacity for a chat or embeddings request, or only a plan."""
    if not exchange.uses_capacity:
        return PLAN_ONLY_ENDPOINT
    return "embeddings" if exchange.embedding else "chat"


def _tag(request_id: str) -> None:
    """The request id in this task's log lines and on the request's span (tracing on)."""
    REQUEST_ID.set(request_id)
    if tracing.enabled:
        tracing.annotate({"llmgw.request_id": request_id})


async def _attempt(provider: Provider, exchange: Exchange, codec: Codec, model: str) -> _Sent:
    """One try at one provider (``_send_once``); while tracing is on, inside a GenAI client span."""
    if not tracing.enabled:
        return await _send_once(provider, exchange, codec, model)
    operation = "embeddings" if exchange.embedding is not None else "chat"
    span = tracing.start("llmgw.edge", f"{operation} {model}", tracing.CLIENT, {
        "gen_ai.operation.name": operation, "gen_ai.system": provider.genai_system,
        "gen_ai.request.model": model, "llmgw.provider": provider.id,
        # the model asked for: a pass-through answer's body is not parsed for its own
        "gen_ai.response.model": model, "llmgw.passthrough": provider.can_relay(exchange.raw.format)})
    try:
        with tracing.using(span):
            sent = await _send_once(provider, exchange, codec, model)
    except BaseException as exc:  # also a cancellation: the attempt's own timeout
        kind = getattr(exc, "kind", None)
        tracing.end(span, getattr(exc, "message", None) or type(exc).__name__, {
            "error.type": kind.value if kind is not None else type(exc).__name__,
            "http.response.status_code": getattr(exc, "status", 0) or 0})
        raise
    if sent.stream is None:
        _end_attempt_span(span, None, sent.status, sent.usage)
    else:
        sent.span = span
    return sent


def _end_attempt_span(span: Any, error: str | None, status: int, usage: Usage | None) -> None:
    attributes: dict[str, Any] = {"http.response.status_code": status}
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
    tracing.end(span, error, attributes)


async def _send_once(provider: Provider, exchange: Exchange, codec: Codec, model: str) -> _Sent:
    """One try at one provider: pass-through when it speaks the client's format, else translated.
    Returns once the answer is whole (or, for a stream, once its first event is in)."""
    if provider.can_relay(exchange.raw.format):
        reply = await provider.relay(exchange.raw, None if exchange.raw.format == "raw" else model)
        if reply.chunks is None:
            return _Sent(reply.status, reply.media_type, reply.headers, body=reply.body, usage=reply.usage)
        first = await _first(reply.chunks, reply.chunks)
        return _Sent(reply.status, reply.media_type, reply.headers, stream=_chain(first, reply.chunks), meter=reply,
                     upstream=reply.chunks)
    if exchange.answer_here is not None:
        return _Sent(200, "application/json", {"x-llmgw-provider": "estimate"}, body=exchange.answer_here())
    if exchange.embedding is not None:
        embedded = await provider.embed(exchange.embedding, model)
        return _Sent(200, "application/json", {}, body=codec.render_embeddings(embedded), usage=embedded.usage)
    if not exchange.is_chat:
        raise UpstreamError(400, f"provider {provider.id} cannot take this request as it is",
                            kind=FailureKind.UNSUPPORTED)
    if not exchange.stream:
        resp = await provider.chat(exchange.chat(), model)
        return _Sent(200, "application/json", {}, body=codec.render_response(resp), usage=resp.usage)
    meter = Meter()
    upstream = provider.chat_stream(exchange.chat(), model)
    events = _metered(upstream, meter)
    first = await _first(events, upstream)
    return _Sent(200, "text/event-stream", {}, stream=codec.render_stream(_chain(first, events)), meter=meter,
                 upstream=upstream)


async def _first(items: AsyncIterator[Any], upstream: AsyncIterator[Any] | None = None) -> Any:
    """The first item of a stream: the moment the answer commits to this provider."""
    try:
        return await anext(items)
    except StopAsyncIteration:
        raise UpstreamError(502, "upstream stream ended before its first event", kind=FailureKind.PROTOCOL) from None
    except BaseException:
        await _close(upstream)
        raise


async def _close(stream: AsyncIterator[Any] | None) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken stream may raise its own error again: it is over either way
            pass


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _metered(events: AsyncIterator[StreamEvent], meter: Meter) -> AsyncIterator[StreamEvent]:
    async for event in events:
        if isinstance(event, UsageUpdate):
            meter.usage.merge(event.usage)
        elif isinstance(event, (TextDelta, ThinkingDelta, ToolCallDelta)):
            meter.pieces += 1
        elif isinstance(event, Finish):
            meter.finished = True
        yield event


_ESTIMATE = re.compile(r"est\. \$[0-9.]+")


def _own_estimate(reason: str, cost_nano: int) -> str:
    """A leased candidate's reason from the reused plan, with this request's estimated cost (as the router
    says it when it admits a request itself: ``policy._reason``), not the one of the request the plan was
    made for."""
    if "est. $" not in reason:
        return reason
    return _ESTIMATE.sub(f"est. ${Decimal(cost_nano) / NANO:.6f}", reason, count=1)


def _route_reason(decision: RouteDecision) -> str:
    parts = [f"{c.provider}: {c.reason}" for c in decision.candidates[:3]]
    parts += [f"{s.provider} skipped: {s.reason}" for s in decision.skipped]
    if decision.rule:
        parts.insert(0, f"rule {decision.rule}")
    return "; ".join(parts)


def _all_failed(outcome: _Outcome, last: UpstreamError | None) -> GatewayError:
    if last is not None and not last.retryable:
        return last
    if last is not None and last.kind is FailureKind.UNSUPPORTED and all(a.status == 400 for a in outcome.attempts):
        # no provider can serve this kind of request (a built-in tool, n > 1...): say why, as a 400
        return GatewayError(400, f"No provider for model `{outcome.model}` can serve this request: {last.message}",
                            code="unsupported_request", kind=FailureKind.UNSUPPORTED)
    tried = ", ".join(f"{a.provider} ({a.status or a.error})" for a in outcome.attempts) or "none"
    all_429 = bool(outcome.attempts) and all(a.status == 429 for a in outcome.attempts)
    status = 429 if all_429 else 502
    headers = dict(last.headers) if last and status == 429 else {}
    if status == 429 and last is not None and last.retry_after_s and "retry-after" not in headers:
        headers["retry-after"] = str(max(1, int(last.retry_after_s + 0.999)))
    return GatewayError(status, f"Every provider failed for model `{outcome.model}`: {tried}",
                        code="all_providers_failed", headers=headers,
                        kind=FailureKind.RATE_LIMITED if status == 429 else last.kind if last else FailureKind.SERVER)
