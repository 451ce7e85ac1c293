"""Router service: answers ``llmgw.router.decide`` in a queue group (replicas share the load).

Wiring and handlers, run by the service runtime (``llmgw_common.service``). The policy is pure
(``policy.py``, ``outcomes.py``); admission, health and the pin live in Redis (``store.py``) so every
replica shares them. ``Router.load`` reads the gateway keys, the pin, the smart flag and the prices before
the runtime subscribes: a replica started (or restarted after kill -9) never answers without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import msgspec

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import health, metrics, service, subjects, tracing
from llmgw_common.capacity import LeaseAsk, LeaseGrant, LeaseReturn, LeaseReturned, LeaseUses
from llmgw_common.config import GatewayConfig
from llmgw_common.keys import KeyMirror
from llmgw_common.logs import REQUEST_ID
from llmgw_common.messages import (AdmissionGiveUps, AttemptOutcome, AttemptOutcomes, ErrorInfo, LeaseRenewal,
                                   PinCommand, PLAN_ONLY_ENDPOINT, PriceKey, PriceList, PriceLookup, RouteDecision,
                                   RouteRequest, RouterState, RouterStateQuery, Skipped, SmartCommand)
from llmgw_common.nats_conn import request
from llmgw_common.redis_conn import connect_redis
from llmgw_common.redis_keys import AFFINITY_PREFIX
from llmgw_common.service import ServiceError, ServiceRuntime
from llmgw_common.settings import CommonSettings
from llmgw_common.windows import WINDOWS, WindowReader, usd_to_nano

from . import cache_affinity
from .abandoned import reap_forever
from .capacity_leases import CapacityLeases, LeaseRoute
from .dead_edges import DeadEdges
from .outcomes import classify, refusal
from .policy import (EDGE_STRATEGIES, CapabilityBook, Plan, PriceBook, RoutingState, is_free, plan, plan_groups,
                     plan_reusable, unavailable)
from .state_view import router_state
from .store import Leases, RoutingStore

log = logging.getLogger("llmgw.router")
STATS_REFRESH_S = 0.5
CAPACITY_REAP_EVERY_S = 0.5
# a reaped capacity lease's tombstone lasts as long as the longest window it drew on: a late event of it
# then counts in full, not as a settlement (capacity_leases.REAP_LUA)
CAPACITY_TOMBSTONE_S = max(w.seconds + w.bucket_s for w in WINDOWS)


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
        self.capabilities: CapabilityBook = {}  # what the price tables say each model can serve
        self.store = store
        self.windows = windows
        self.state = RoutingState(smart=config.routing.smart.enabled)
        self.now_ms = _now_ms  # injectable: tests move time forward instead of sleeping for a window
        # gateway keys: their providers and limits (started in ``serve``); a key changed here may change
        # whether its plans are reusable: announced like any other change
        self.keys = KeyMirror(on_change=lambda: self.spawn(self.announce_change()))
        self.leases = Leases(store.redis)
        self.capacity = CapacityLeases(store.redis)  # capacity leases of routes with limits (issue 20)
        self.dead_edges = DeadEdges()
        self._tasks: set[asyncio.Task] = set()
        self.meter = metrics.RouterMeter()
        self.nc = None  # the NATS connection, set by ``serve`` (tests that call ``decide`` need none)

    # ---- decide ----------------------------------------------------------

    def spawn(self, coro) -> None:
        """Run work as its own task: a NATS subscription calls its handler one message at a time, and each
        outcome waits on Redis, so handling inline would serialise them."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish_tasks(self) -> None:
        if self._tasks:  # outcomes in hand reach Redis before the connections close
            await asyncio.wait(set(self._tasks), timeout=5)

    def observe_decision(self, route_request: RouteRequest, decision: RouteDecision | None, seconds: float) -> None:
        """After each ``llmgw.router.decide`` answer (decision None: it failed), inside its span."""
        outcome = self.meter.decision(decision, seconds)
        if tracing.enabled and decision is not None:
            tracing.annotate({"llmgw.request_id": route_request.request_id, "llmgw.outcome": outcome,
                              "llmgw.provider": decision.candidates[0].provider if decision.candidates else ""})

    async def decide(self, route_request: RouteRequest) -> RouteDecision:
        REQUEST_ID.set(route_request.request_id)  # in this task's log lines
        self.state.rr_counter += 1
        # a key the edge accepted but this mirror has not seen yet (created a moment ago) has no limits here
        key = self.keys.records.get(route_request.key_id) if route_request.key_id else None
        p = plan(self.config, self.prices, route_request, self.state, key=key, capabilities=self.capabilities)
        decision = RouteDecision(request_id=route_request.request_id, model=p.model, skipped=list(p.skipped),
                                 strategy=p.strategy, rule=p.rule, error=p.error, fallback=p.fallback)
        if p.error is not None:
            return decision
        if route_request.endpoint == PLAN_ONLY_ENDPOINT:
            return self._plan_only(route_request, p, decision)
        affinity = await self._cache_affinity(route_request, p)
        admission = await tracing.traced(  # the atomic admission (one Lua script in Redis) as its own span
            self.store.admit(p.ordered, route_request.request_id, self.now_ms(), key,
                             self.config.keys.budget_timezone, route_request.event_id,
                             self.config.routing.lease_s, attempt=len(route_request.exclude)),
            "llmgw.router", "redis admission", attributes={"db.system": "redis", "llmgw.candidates": len(p.ordered)})
        first = len(p.ordered) if admission.index is None else admission.index
        for i in range(first):
            decision.skipped.append(Skipped(provider=p.ordered[i].candidate.provider,
                                            reason=admission.reasons.get(i, "not admitted")))
        if affinity is not None and admission.index != 0:
            cache_affinity.note_refused(decision.skipped, p.ordered[0].candidate.provider)
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
        # the whole plan, its first provider healthy (admitted, not as the breaker's probe), nothing limited, and
        # not reordered for this conversation's cached prefix
        if (admission.index == 0 and not admission.probe and affinity != "moved"
                and plan_reusable(self.config, p, route_request, key, self.state)):
            decision.reusable_s = self.config.routing.plan_max_age_s
            if p.strategy in EDGE_STRATEGIES:
                decision.groups = plan_groups(p, self.state, route_request)
        return decision

    async def _cache_affinity(self, route_request: RouteRequest, p: Plan) -> str | None:
        """Put the provider holding this request's prefix in its prompt cache first, when that is cheaper
        (cache_affinity.py): "moved", "first" (it was first anyway) or None (no affinity, or ignored)."""
        if route_request.prefix_key is None or len(p.ordered) < 2 or not self.config.routing.cache_affinity.enabled:
            return None
        held = await self.store.redis.get(AFFINITY_PREFIX + route_request.prefix_key)
        found = cache_affinity.parse(held)
        if found is None:
            return None
        return cache_affinity.prefer(self.config, p, found, route_request.prefix_tokens, self.state, self.now_ms())

    def _plan_only(self, route_request: RouteRequest, p: Plan, decision: RouteDecision) -> RouteDecision:
        """A question that needs no capacity (count_tokens): the candidates in order, cooling and broken
        providers skipped, nothing reserved in any window and nothing in flight."""
        for pc in p.ordered:
            why = unavailable(self.state.stats.get(pc.candidate.provider))
            if why is None:
                decision.candidates.append(pc.candidate)
            else:
                decision.skipped.append(Skipped(provider=pc.candidate.provider, reason=why))
        if not decision.candidates:
            message, wait = refusal(route_request.model, decision.skipped)
            decision.error = ErrorInfo(status=429, code="rate_limit_exceeded", message=message, retry_after_s=wait)
        return decision

    async def give_up(self, give_ups: AdmissionGiveUps) -> AdmissionGiveUps:
        """The edge will not use the answers to these questions: release them (store.GIVE_UP_LUA). The edge
        asks until a router confirms, so a Redis failure is an error reply (the endpoint's), never silence."""
        give_ups.released = await self.store.give_up([(q.request_id, q.attempt) for q in give_ups.items],
                                                     self.now_ms(), self.config.routing.lease_s)
        if give_ups.released:
            log.info("released %d admissions of %d routing questions their edge gave up on", give_ups.released,
                     len(give_ups.items))
        return give_ups

    # ---- capacity leases (routes with limits: the edge admits from them) ---

    async def grant_lease(self, ask: LeaseAsk) -> LeaseGrant:
        """Reserve capacity for ``ask.wanted`` requests (or fewer, or one: ``capacity_leases.GRANT_LUA``) on
        one route, at the asking request's estimate; with the route's prices, so that the edge estimates each
        request it admits from the lease as this router would."""
        provider = self.config.provider(ask.provider)
        model = provider.model(ask.model) if provider is not None else None
        if not self.config.routing.leases or provider is None or model is None:
            return LeaseGrant(lease_id=ask.lease_id, n=0, reason="no lease for this route: ask per request")
        for back in ask.returns:  # what those leases did not use is back before this grant is counted
            await self.return_lease(back)
        key = self.keys.records.get(ask.key_id) if ask.key_id else None
        price = self.prices.get((provider.id, model.upstream_name))
        free = is_free(provider, price) or price is None
        est_cost = Decimal(0) if free or price is None else price.cost(ask.tokens_in, ask.tokens_out)
        route = LeaseRoute(provider.id, model.name, provider.limits, model.limits, ask.tokens_in, ask.tokens_out,
                           est_cost)
        now_ms = self.now_ms()
        routing = self.config.routing
        granted = await self.capacity.grant(ask.lease_id, ask.edge, route, ask.wanted, now_ms,
                                            int(routing.lease_ttl_s * 1000), int(routing.lease_s * 1000), key,
                                            self.config.keys.budget_timezone)
        grant = LeaseGrant(lease_id=ask.lease_id, n=granted.n, until_ms=granted.until_ms, at_s=now_ms // 1000,
                           key_id=key.id if key is not None else None, tokens_in=ask.tokens_in,
                           tokens_out=ask.tokens_out, cost_nano=usd_to_nano(est_cost), free=free,
                           reason=granted.reason)
        if price is not None and not free:
            grant = msgspec.structs.replace(grant, input_per_mtok=price.input_per_mtok,
                                            output_per_mtok=price.output_per_mtok, per_request=price.per_request)
        return grant

    async def return_lease(self, back: LeaseReturn) -> LeaseReturned:
        """What the edge did not admit goes back now; the record stays for the events still to come."""
        state = await self.capacity.give_back(back.lease_id, back.admitted, back.tokens_in, back.tokens_out,
                                              back.cost_nano, self.now_ms(), int(self.config.routing.lease_s * 1000))
        return LeaseReturned(lease_id=back.lease_id, state=state)

    async def on_lease_uses(self, msg) -> None:
        self.spawn(self._note_lease_uses(msg))

    async def _note_lease_uses(self, msg) -> None:
        """What an edge admitted so far from its live leases: the windows' views show that, not the leases'
        unused part (best effort: a report lost shows a lease whole until its give-back)."""
        try:
            uses = LeaseUses.decode(msg.data).uses
        except ValueError:
            log.warning("ignoring an unreadable report of capacity lease use")
            return
        try:
            await self.capacity.note_use([(u.lease_id, u.seq, u.admitted, u.tokens_in, u.tokens_out, u.cost_nano)
                                          for u in uses])
        except Exception as exc:  # Redis away: the next report says it all again
            log.warning("cannot note the use of %d capacity leases (%s)", len(uses), type(exc).__name__)

    async def reap_leases_forever(self) -> None:
        """Every replica: leases their edges never gave back, ``routing.abandoned_after_s`` after they ended."""
        while True:
            await asyncio.sleep(CAPACITY_REAP_EVERY_S)
            try:
                reaped = await self.capacity.reap(self.now_ms(), CAPACITY_TOMBSTONE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the leases wait for the next round
                log.warning("cannot reap capacity leases (%s)", type(exc).__name__)
                continue
            if reaped:
                log.info("reaped %d capacity leases their edges never gave back or never settled", reaped)
            try:
                await self.reap_leases_of_dead_edges()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot reap the capacity leases of dead edges (%s)", type(exc).__name__)

    async def reap_leases_of_dead_edges(self) -> None:
        """Leases past their end whose edge process is gone (``dead_edges``): back now, not after the grace."""
        ended = await self.capacity.ended(self.now_ms())
        if not ended:
            return
        dead = await self.dead_edges.gone(self.nc, {edge for _id, edge in ended})
        lease_ids = [lease_id for lease_id, edge in ended if edge in dead]
        reaped = await self.capacity.reap_dead_edge(lease_ids, self.now_ms(), CAPACITY_TOMBSTONE_S)
        if reaped:
            log.info("returned %d capacity leases of edges that are gone (%s)", reaped, ", ".join(sorted(dead)))

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
        await self._record_affinity([outcome])
        try:
            result = await self.store.record_outcome(outcome, kind, cooldown_ms, self.config.routing.breaker,
                                                     self.now_ms(), self.config.keys.budget_timezone)
        except Exception:
            log.exception("could not record the outcome of %s", outcome.request_id)
            return
        if result in ("breaker_open", "cooldown"):
            log.warning("provider %s: %s after status %s", outcome.provider, result, outcome.status)
            await self.announce_change()

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
        await self._record_affinity(batch.outcomes)
        try:
            await self.store.record_outcomes(items, self.config.routing.breaker, self.now_ms(),
                                             self.config.keys.budget_timezone)
        except Exception:
            log.exception("could not record a batch of %d outcomes", len(items))

    async def _record_affinity(self, outcomes: list[AttemptOutcome]) -> None:
        """Successful answers for a cacheable prefix: their provider holds it now (off the request's path: the
        edge reports after the answer)."""
        served = [(o.prefix_key, o.provider) for o in outcomes if o.ok and o.prefix_key]
        if not served:
            return
        try:
            await cache_affinity.record(self.store.redis, self.config, served, self.now_ms())
        except Exception as exc:  # a lost record costs one cache miss, never an answer
            log.warning("cannot record prompt-cache affinity (%s)", type(exc).__name__)

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

    async def handle_pin(self, cmd: PinCommand) -> RouterState:
        if cmd.provider is not None and self.config.provider(cmd.provider) is None:
            raise ServiceError(404, f"unknown provider {cmd.provider!r}")
        await self.store.set_pin(cmd.provider)
        return await self._announce_state()

    async def handle_smart(self, cmd: SmartCommand) -> RouterState:
        await self.refresh_state()
        enabled = (not self.state.smart) if cmd.enabled is None else cmd.enabled
        await self.store.set_smart(enabled)
        return await self._announce_state()

    async def _announce_state(self) -> RouterState:
        """After a pin or smart change: every replica reads the shared state again; the new state."""
        await self.nc.publish(subjects.ROUTER_REFRESH, b"")
        await self.refresh_state()
        await self.announce_change()
        return await self.current_state()

    async def announce_change(self) -> None:
        """Edges drop the plans they reuse. Each replica says it once it has applied the change itself, so an
        edge that asks again right after is not answered from a replica that has not."""
        if self.nc is None:
            return
        try:
            await self.nc.publish(subjects.ROUTER_CHANGED, b"")
        except Exception as exc:  # NATS away: the edges' plans age out (routing.plan_max_age_s)
            log.warning("cannot announce a routing change (%s)", type(exc).__name__)

    async def current_state(self) -> RouterState:
        return await router_state(self.config, self.state, self.windows)

    async def handle_state(self, _query: RouterStateQuery) -> RouterState:
        try:
            await self.refresh_state()
            return await self.current_state()
        except Exception:
            log.exception("router state failed")
            raise ServiceError(503, "router cannot reach its shared state") from None

    async def on_refresh(self, _msg) -> None:
        try:
            await self.refresh_state()
        except Exception as exc:
            log.warning("cannot refresh routing state: %s", type(exc).__name__)
        await self.announce_change()

    async def on_pricing_changed(self, _msg) -> None:
        await self.refresh_prices()
        await self.announce_change()

    async def apply_config(self, config: GatewayConfig) -> None:
        self.config = config
        await self.refresh_prices()
        await self.announce_change()

    async def load(self) -> None:
        """What every answer depends on, before the first: gateway keys, the pin and smart flag, prices."""
        await self.keys.start(self.nc.jetstream())
        await self.refresh_state()
        await self.refresh_prices()

    # ---- prices ----------------------------------------------------------

    async def refresh_prices(self) -> bool:
        keys = [PriceKey(provider=p.id, model=m.upstream_name) for p in self.config.providers for m in p.models]
        if not keys:
            return True
        try:
            answer = await request(self.nc, subjects.PRICING_LOOKUP, PriceLookup(keys=keys), PriceList, timeout=2.0)
        except (NatsTimeoutError, NoRespondersError) as exc:
            log.info("pricing not available yet (%s); using config prices", type(exc).__name__)
            return False
        book = config_prices(self.config)
        known: CapabilityBook = {}
        for info in answer.prices:
            book[(info.provider, info.model)] = info.price
            if info.capabilities:
                known[(info.provider, info.model)] = info.capabilities
        self.prices, self.capabilities = book, known
        return True


async def serve(settings: RouterSettings, stop: asyncio.Event | None = None) -> None:
    runtime = ServiceRuntime("router", "routing decisions", settings.nats_url, settings.config_path)
    redis = connect_redis(settings.redis_url)
    runtime.on_close("redis", redis.aclose)
    nc = await runtime.connect()
    router = Router(await runtime.load_config(), RoutingStore(redis), WindowReader(redis, admitted=True))
    router.nc = nc

    # each decision in its own task (each waits on Redis); a Redis outage is a prompt 503, never a timeout
    runtime.endpoint("decide", subjects.ROUTER_DECIDE, RouteRequest, router.decide, concurrent=True,
                     span="llmgw.router.decide", observe=router.observe_decision,
                     failure=ServiceError(503, "router cannot reach its shared state"))
    runtime.endpoint("giveup", subjects.ROUTER_GIVE_UP, AdmissionGiveUps, router.give_up, concurrent=True,
                     failure=ServiceError(503, "router cannot reach its shared state"))
    runtime.endpoint("lease", subjects.ROUTER_LEASE_GRANT, LeaseAsk, router.grant_lease, concurrent=True,
                     failure=ServiceError(503, "router cannot reach its shared state"))
    runtime.endpoint("leaseback", subjects.ROUTER_LEASE_RETURN, LeaseReturn, router.return_lease, concurrent=True,
                     failure=ServiceError(503, "router cannot reach its shared state"))
    runtime.endpoint("state", subjects.ROUTER_STATE, RouterStateQuery, router.handle_state)
    runtime.endpoint("pin", subjects.ROUTER_PIN, PinCommand, router.handle_pin)
    runtime.endpoint("smart", subjects.ROUTER_SMART, SmartCommand, router.handle_smart)
    runtime.subscribe(subjects.PRICING_CHANGED, router.on_pricing_changed)
    runtime.subscribe(subjects.ROUTER_REFRESH, router.on_refresh)
    runtime.subscribe(subjects.ROUTER_OUTCOME, router.on_outcome, queue="router")
    runtime.subscribe(subjects.ROUTER_OUTCOMES, router.on_outcomes, queue="router")
    runtime.subscribe(subjects.ROUTER_LEASE_RENEW, router.on_lease_renewal, queue="router")
    runtime.subscribe(subjects.ROUTER_LEASE_USED, router.on_lease_uses, queue="router")
    runtime.on_config(router.apply_config)
    runtime.health_check("redis", health.redis_ping(redis))  # ready: NATS and Redis (admission lives there)
    runtime.loop("state", router.refresh_loop)
    runtime.loop("leases", lambda: reap_forever(router.leases, router.nc.jetstream(), router.now_ms))
    runtime.loop("capacity leases", router.reap_leases_forever)
    runtime.on_stop("key mirror", router.keys.stop)
    runtime.on_stop("outcomes in hand", router.finish_tasks)
    log.info("router starting: %d providers, strategy %s", len(router.config.providers),
             router.config.routing.strategy)
    await runtime.run(load=router.load, stop=stop)


def run() -> None:
    settings = RouterSettings()
    service.main("router", lambda: serve(settings), settings.log_level)
