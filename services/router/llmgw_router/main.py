"""Router service: answers ``llmgw.router.decide`` in a queue group (replicas share the load).

Wiring and handlers; the policy itself is pure and lives in ``policy.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request

from llmgw_common import subjects
from llmgw_common.config import ConfigError, GatewayConfig, load_config
from llmgw_common.lifecycle import wait_for_stop
from llmgw_common.logs import setup_logging
from llmgw_common.messages import PriceKey, PriceList, PriceLookup, RouteRequest
from llmgw_common.nats_conn import connect_nats, request
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings
from llmgw_common.windows import WindowReader

from .policy import PriceBook, decide, resolve_targets, scopes_for

log = logging.getLogger("llmgw.router")


class RouterSettings(CommonSettings):
    pass


def read_config(settings: CommonSettings) -> GatewayConfig:
    if not settings.config_path.exists():
        return GatewayConfig()
    return load_config(settings.config_path)


def config_prices(config: GatewayConfig) -> PriceBook:
    """Prices known from the config alone: used until the pricing service answers."""
    return {(p.id, m.upstream_name): m.price for p in config.providers for m in p.models}


class Router:
    def __init__(self, config: GatewayConfig, windows: WindowReader):
        self.config = config
        self.prices: PriceBook = config_prices(config)
        self.windows = windows

    async def handle_decide(self, req: Request) -> None:
        try:
            route_request = RouteRequest.decode(req.data)
        except ValueError as exc:
            await req.respond_error("400", "bad route request: " + str(exc).splitlines()[0])
            return
        try:
            _, targets = resolve_targets(self.config, route_request.model)
            scopes = scopes_for(targets)
            totals = await self.windows.read(scopes, int(time.time())) if scopes else {}
            decision = decide(self.config, self.prices, route_request, totals)
        except Exception:  # a Redis outage must not leave the edge waiting for a timeout
            log.exception("decide failed for %s", route_request.request_id)
            await req.respond_error("503", "router cannot read its live windows")
            return
        await req.respond(decision.encode())

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
    router = Router(read_config(settings), WindowReader(redis))
    nc = await connect_nats(settings.nats_url, "llmgw-router")

    async def on_pricing_changed(_msg) -> None:
        await router.refresh_prices(nc)

    async def on_config_changed(_msg) -> None:
        try:
            router.config = read_config(settings)
        except ConfigError as exc:
            log.error("ignoring config change: %s", exc)
            return
        await router.refresh_prices(nc)

    await nc.subscribe(subjects.PRICING_CHANGED, cb=on_pricing_changed)
    await nc.subscribe(subjects.CONFIG_CHANGED, cb=on_config_changed)
    service = await add_service(nc, name="router", version="0.1.0", description="routing decisions",
                                queue_group="router")
    await service.add_endpoint(name="decide", subject=subjects.ROUTER_DECIDE, handler=router.handle_decide)
    await router.refresh_prices(nc)
    log.info("router ready: %d providers", len(router.config.providers))
    try:
        if stop is None:
            await wait_for_stop()
        else:
            await stop.wait()
    finally:
        await service.stop()
        await nc.drain()
        await redis.aclose()


def run() -> None:
    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    asyncio.run(serve(settings))
