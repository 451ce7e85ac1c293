"""Router service: answers ``llmgw.router.decide`` in a queue group (replicas share the load).

Wiring and handlers. The policy is pure (``policy.py``, ``outcomes.py``);
admission, health and the pin live in Redis (``store.py``) so every replica
shares them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request

from llmgw_common import metrics, subjects, tracing
from llmgw_common.config import ConfigError, GatewayConfig, load_config_or_default
from llmgw_common.keys import KeyMirror
from llmgw_common.lifecycle import wait_for_stop
from llmgw_common.logs import REQUEST_ID, setup_logging
from llmgw_common.messages import (AdmissionGiveUp, AttemptOutcome, AttemptOutcomes, ErrorInfo, LeaseRenewal,
                                   PinCommand, PriceKey, PriceList, PriceLookup, RouteDecision, RouteRequest,
                                   RouterState, Skipped, SmartCommand)
from llmgw_common.nats_conn import connect_nats, request
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings
from llmgw_common.windows import WindowReader

from .abandoned import reap_forever
from .outcomes import classify, refusal
from .policy import PriceBook, RoutingState, plan
from .state_view import router_state
from .store import Leases, RoutingStore

log = logging.getLogger("llmgw.router")
STATS_REFRESH_S = 0.5


class RouterSettings(CommonSettings):
    pass


def config_prices(config: GatewayConfig) -> PriceBook:
    """Prices known from the config alone: used until the pricing service answers."""
    return {(p.id, m.upstream_name): m.price for p in config.providers for m in p.models}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Router:
    def __init__(self, config: GatewayConfig, store: RoutingStore, windows: WindowReader):
        self.config = config
        self.prices: PriceBook = config_prices(config)
        self.store = store
        self.windows = windows
        self.state = RoutingState(smart=config.routing.smart.enabled)
        self.now_ms = _now_ms  # injectable: tests move time forward instead of sleeping for a window
        self.keys = KeyMirror()  # gateway keys: their providers and limits (started in ``serve``)
        self.leases = Leases(store.redis)
        self._tasks: set[asyncio.Task] = set()
        self.meter = metrics.RouterMeter()

    # ---- decide ----------------------------------------------------------

    def spawn(self, coro) -> None:
        """Run a handler body as its own task: a NATS subscription calls its handler one message at a
        time, and each decision waits on Redis, so handling inline would serialise every request."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle_decide(self, req: Request) -> None:
        # while tracing is on: a SERVER span, child of the edge's context in the request's headers
        self.spawn(tracing.serving(self._decide_and_reply(req), "llmgw.router", "llmgw.router.decide", req.headers))

    async def _decide_and_reply(self, req: Request) -> None:
        try:
            route_request = RouteRequest.decode(req.data)
        except ValueError as exc:
            await req.respond_error("400", "bad route request: " + str(exc).splitlines()[0])
            return
        REQUEST_ID.set(route_request.request_id)  # in this task's log lines
        t0 = time.perf_counter()
        try:
            decision = await self.decide(route_request)
        except Exception:  # a Redis outage must not leave the edge waiting for a timeout
            self.meter.decision(None, time.perf_counter() - t0)
            log.exception("decide failed for %s", route_request.request_id)
            await req.respond_error("503", "router cannot reach its shared state")
            return
        outcome = self.meter.decision(decision, time.perf_counter() - t0)
        if tracing.enabled:
            tracing.annotate({"llmgw.request_id": route_request.request_id, "llmgw.outcome": outcome,
                              "llmgw.provider": decision.candidates[0].provider if decision.candidates else ""})
        await req.respond(decision.encode())

    async def decide(self, route_request: RouteRequest) -> RouteDecision:
        self.state.rr_counter += 1
        # a key the edge accepted but this mirror has not seen yet (created a moment ago) has no limits here
        key = self.keys.records.get(route_request.key_id) if route_request.key_id else None
        p = plan(self.config, self.prices, route_request, self.state, key=key)
        decision = RouteDecision(request_id=route_request.request_id, model=p.model, skipped=list(p.skipped),
                                 strategy=p.strategy, rule=p.rule, error=p.error)
        if p.error is not None:
            return decision
        admission = await tracing.traced(  # the atomic admission (one Lua script in Redis) as its own span
            self.store.admit(p.ordered, route_request.request_id, self.now_ms(), key,
                             self.config.keys.budget_timezone, route_request.event_id,
                             self.config.routing.lease_s, attempt=len(route_request.exclude)),
            "llmgw.router", "redis admission", attributes={"db.system": "redis", "llmgw.candidates": len(p.ordered)})
        first = len(p.ordered) if admission.index is None else admission.index
        for i in range(first):
            decision.skipped.append(Skipped(provider=p.ordered[i].candidate.provider,
                                            reason=admission.reasons.get(i, "not admitted")))
        if admission.given_up:  # nobody waits for this answer any more
            decision.error = ErrorInfo(status=503, code="router_unavailable", message="the edge gave up on it")
            return decision
        if admission.index is None:
            message, wait = refusal(route_request.model, decision.skipped)
            decision.error = ErrorInfo(status=429, code="rate_limit_exceeded", message=message, retry_after_s=wait)
            return decision
        admitted = p.ordered[admission.index].candidate
        admitted.reservation = admission.reservation
        admitted.probe = admission.probe
        decision.candidates = [admitted] + [pc.candidate for pc in p.ordered[admission.index + 1:]]
        return decision

    # ---- health, pin, smart ----------------------------------------------

    async def on_outcome(self, msg) -> None:
        self.spawn(self._apply_outcome(msg))

    async def _apply_outcome(self, msg) -> None:
        try:
            outcome = AttemptOutcome.decode(msg.data)
        except ValueError:
            log.warning("ignoring an unreadable attempt outcome")
            return
        kind, cooldown_ms = classify(outcome, self.config.routing)
        try:
            result = await self.store.record_outcome(outcome, kind, cooldown_ms, self.config.routing.breaker,
                                                     self.now_ms(), self.config.keys.budget_timezone)
        except Exception:
            log.exception("could not record the outcome of %s", outcome.request_id)
            return
        if result in ("breaker_open", "cooldown"):
            log.warning("provider %s: %s after status %s", outcome.provider, result, outcome.status)

    async def on_outcomes(self, msg) -> None:
        self.spawn(self._apply_outcomes(msg))

    async def _apply_outcomes(self, msg) -> None:
        """A batch of successful attempts from one edge: one pipelined round trip to Redis."""
        try:
            batch = AttemptOutcomes.decode(msg.data)
        except ValueError:
            log.warning("ignoring an unreadable batch of attempt outcomes")
            return
        items = [(o, *classify(o, self.config.routing)) for o in batch.outcomes]
        try:
            await self.store.record_outcomes(items, self.config.routing.breaker, self.now_ms(),
                                             self.config.keys.budget_timezone)
        except Exception:
            log.exception("could not record a batch of %d outcomes", len(items))

    async def handle_give_up(self, req: Request) -> None:
        self.spawn(self._give_up(req))

    async def _give_up(self, req: Request) -> None:
        """The edge will not use the answer to this question: release it (store.GIVE_UP_LUA). The edge asks
        until a router confirms, so a failure here is an error reply, never silence."""
        try:
            give_up = AdmissionGiveUp.decode(req.data)
        except ValueError as exc:
            await req.respond_error("400", "bad give-up: " + str(exc).splitlines()[0])
            return
        try:
            released = await self.store.give_up(give_up.request_id, give_up.attempt, self.now_ms(),
                                                self.config.routing.lease_s)
        except Exception as exc:  # Redis away: the edge asks again
            await req.respond_error("503", f"router cannot reach its shared state ({type(exc).__name__})")
            return
        if released:
            log.info("released the admission of %s (attempt %d): its edge had given up on it",
                     give_up.request_id, give_up.attempt)
        give_up.released = released
        await req.respond(give_up.encode())

    async def on_lease_renewal(self, msg) -> None:
        try:
            renewal = LeaseRenewal.decode(msg.data)
        except ValueError:
            return
        try:
            await self.leases.extend(renewal.members, self.now_ms() + int(renewal.extend_s * 1000))
        except Exception as exc:
            log.warning("cannot extend admission leases (%s)", type(exc).__name__)

    async def refresh_state(self) -> None:
        ids = [p.id for p in self.config.providers]
        pinned, smart, stats = await self.store.read_stats(ids, self.now_ms())
        self.state.pinned = pinned if pinned in ids else None
        self.state.smart = self.config.routing.smart.enabled if smart is None else smart == "1"
        self.state.stats = stats
        self.meter.provider_state(stats)

    async def refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh_state()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot refresh routing state: %s", type(exc).__name__)
            await asyncio.sleep(STATS_REFRESH_S)

    async def handle_pin(self, req: Request, nc) -> None:
        try:
            cmd = PinCommand.decode(req.data)
        except ValueError:
            await req.respond_error("400", "bad pin command")
            return
        if cmd.provider is not None and self.config.provider(cmd.provider) is None:
            await req.respond_error("404", f"unknown provider {cmd.provider!r}")
            return
        await self.store.set_pin(cmd.provider)
        await nc.publish(subjects.ROUTER_REFRESH, b"")
        await self.refresh_state()
        await req.respond((await self.current_state()).encode())

    async def handle_smart(self, req: Request, nc) -> None:
        try:
            cmd = SmartCommand.decode(req.data)
        except ValueError:
            await req.respond_error("400", "bad smart command")
            return
        await self.refresh_state()
        enabled = (not self.state.smart) if cmd.enabled is None else cmd.enabled
        await self.store.set_smart(enabled)
        await nc.publish(subjects.ROUTER_REFRESH, b"")
        await self.refresh_state()
        await req.respond((await self.current_state()).encode())

    async def current_state(self) -> RouterState:
        return await router_state(self.config, self.state, self.windows)

    async def handle_state(self, req: Request) -> None:
        try:
            await self.refresh_state()
            await req.respond((await self.current_state()).encode())
        except Exception:
            log.exception("router state failed")
            await req.respond_error("503", "router cannot reach its shared state")

    # ---- prices ----------------------------------------------------------

    async def refresh_prices(self, nc) -> bool:
        keys = [PriceKey(provider=p.id, model=m.upstream_name) for p in self.config.providers for m in p.models]
        if not keys:
            return True
        try:
            answer = await request(nc, subjects.PRICING_LOOKUP, PriceLookup(keys=keys), PriceList, timeout=2.0)
        except (NatsTimeoutError, NoRespondersError) as exc:
            log.info("pricing not available yet (%s); using config prices", type(exc).__name__)
            return False
        book = config_prices(self.config)
        for info in answer.prices:
            book[(info.provider, info.model)] = info.price
        self.prices = book
        return True


async def serve(settings: RouterSettings, stop: asyncio.Event | None = None) -> None:
    redis = connect_redis(settings.redis_url)
    router = Router(load_config_or_default(settings.config_path), RoutingStore(redis), WindowReader(redis))
    nc = await connect_nats(settings.nats_url, "llmgw-router")

    async def on_pricing_changed(_msg) -> None:
        await router.refresh_prices(nc)

    async def on_config_changed(_msg) -> None:
        try:
            router.config = load_config_or_default(settings.config_path)
        except ConfigError as exc:
            log.error("ignoring config change: %s", exc)
            return
        await router.refresh_prices(nc)

    async def on_refresh(_msg) -> None:
        try:
            await router.refresh_state()
        except Exception as exc:
            log.warning("cannot refresh routing state: %s", type(exc).__name__)

    await router.keys.start(nc.jetstream())
    await nc.subscribe(subjects.PRICING_CHANGED, cb=on_pricing_changed)
    await nc.subscribe(subjects.CONFIG_CHANGED, cb=on_config_changed)
    await nc.subscribe(subjects.ROUTER_REFRESH, cb=on_refresh)
    await nc.subscribe(subjects.ROUTER_OUTCOME, queue="router", cb=router.on_outcome)
    await nc.subscribe(subjects.ROUTER_OUTCOMES, queue="router", cb=router.on_outcomes)
    await nc.subscribe(subjects.ROUTER_LEASE_RENEW, queue="router", cb=router.on_lease_renewal)
    service = await add_service(nc, name="router", version="0.2.0", description="routing decisions",
                                queue_group="router")
    await service.add_endpoint(name="decide", subject=subjects.ROUTER_DECIDE, handler=router.handle_decide)
    await service.add_endpoint(name="state", subject=subjects.ROUTER_STATE, handler=router.handle_state)
    await service.add_endpoint(name="giveup", subject=subjects.ROUTER_GIVE_UP, handler=router.handle_give_up)
    await service.add_endpoint(name="pin", subject=subjects.ROUTER_PIN, handler=lambda r: router.handle_pin(r, nc))
    await service.add_endpoint(name="smart", subject=subjects.ROUTER_SMART,
                               handler=lambda r: router.handle_smart(r, nc))
    await router.refresh_prices(nc)
    refresher = asyncio.create_task(router.refresh_loop(), name="router-state")
    reaper = asyncio.create_task(reap_forever(router.leases, nc.jetstream(), router.now_ms), name="leases")
    log.info("router ready: %d providers, strategy %s", len(router.config.providers), router.config.routing.strategy)
    try:
        if stop is None:
            await wait_for_stop()
        else:
            await stop.wait()
    finally:
        refresher.cancel()
        reaper.cancel()
        await router.keys.stop()
        await service.stop()
        if router._tasks:  # let decisions in hand answer before the connection drains
            await asyncio.wait(set(router._tasks), timeout=5)
        await nc.drain()
        await redis.aclose()


def run() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    tracing.setup("router")
    metrics.serve_from_env()  # LLMGW_METRICS_PORT
    uvloop.run(serve(settings))  # uvloop: a faster event loop, as the HTTP services use
