"""Pricing service: answers price look-ups over NATS and announces changes.

Wiring only; the price rules are in ``prices.py``.
"""

from __future__ import annotations

import asyncio
import logging

from nats.micro import add_service
from nats.micro.request import Request

from llmgw_common import subjects
from llmgw_common.config import ConfigError, GatewayConfig, load_config
from llmgw_common.lifecycle import wait_for_stop
from llmgw_common.logs import setup_logging
from llmgw_common.messages import PriceList, PriceLookup, PricingChanged
from llmgw_common.nats_conn import connect_nats
from llmgw_common.settings import CommonSettings

from .prices import PriceTable, all_prices, effective_price

log = logging.getLogger("llmgw.pricing")


class PricingSettings(CommonSettings):
    pass


def read_config(settings: CommonSettings) -> GatewayConfig:
    if not settings.config_path.exists():
        return GatewayConfig()
    return load_config(settings.config_path)


class PricingHandlers:
    def __init__(self, config: GatewayConfig, table: PriceTable):
        self.config = config
        self.table = table

    async def lookup(self, req: Request) -> None:
        try:
            query = PriceLookup.decode(req.data)
        except ValueError as exc:
            await req.respond_error("400", "bad price lookup: " + str(exc).splitlines()[0])
            return
        prices = [effective_price(self.config, self.table, k) for k in query.keys]
        await req.respond(PriceList(prices=prices).encode())

    async def list(self, req: Request) -> None:
        await req.respond(PriceList(prices=all_prices(self.config, self.table)).encode())


async def serve(settings: PricingSettings, stop: asyncio.Event | None = None) -> None:
    handlers = PricingHandlers(read_config(settings), PriceTable.bundled())
    nc = await connect_nats(settings.nats_url, "llmgw-pricing")

    async def on_config_changed(_msg) -> None:
        try:
            handlers.config = read_config(settings)
        except ConfigError as exc:
            log.error("ignoring config change: %s", exc)
            return
        await nc.publish(subjects.PRICING_CHANGED, PricingChanged().encode())

    service = await add_service(nc, name="pricing", version="0.1.0", description="model prices",
                                queue_group="pricing")
    await service.add_endpoint(name="lookup", subject=subjects.PRICING_LOOKUP, handler=handlers.lookup)
    await service.add_endpoint(name="list", subject=subjects.PRICING_LIST, handler=handlers.list)
    await nc.subscribe(subjects.CONFIG_CHANGED, cb=on_config_changed)
    # routers that started before us learn that prices are now available
    await nc.publish(subjects.PRICING_CHANGED, PricingChanged().encode())
    log.info("pricing ready: %d bundled prices (snapshot %s)", len(handlers.table.prices),
             handlers.table.snapshot_date)
    try:
        if stop is None:
            await wait_for_stop()
        else:
            await stop.wait()
    finally:
        await service.stop()
        await nc.drain()


def run() -> None:
    settings = PricingSettings()
    setup_logging("pricing", settings.log_level)
    asyncio.run(serve(settings))
