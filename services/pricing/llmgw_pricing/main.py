"""Pricing service: answers price look-ups over NATS and announces changes.

Start-up never waits for the network: the service answers at once from the
cached earlier fetch (or the bundled snapshot), fetches the public source in
the background (bounded by ``pricing.fetch_timeout_s``), and announces on
``llmgw.pricing.changed`` when the fetch changed any configured model's price.
Wiring only; the price rules are in ``prices.py``, the sources in ``sources.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from pathlib import Path

from llmgw_common import metrics, service as runtime_main, subjects
from llmgw_common.config import GatewayConfig, PricingConfig
from llmgw_common.messages import PriceList, PriceLookup, PricingChanged, PricingStatus
from llmgw_common.service import ServiceRuntime
from llmgw_common.settings import CommonSettings

from .prices import PriceTable, all_prices, changed_keys, effective_price, fingerprint
from .sources import CACHE_FILE, PriceSourceError, fetch_prices, read_cache, safe_url, write_cache

log = logging.getLogger("llmgw.pricing")


class PricingSettings(CommonSettings):
    pass


def cache_path(settings: CommonSettings) -> Path:
    return settings.state_dir / "pricing" / CACHE_FILE


def load_cached_table(path: Path) -> PriceTable | None:
    try:
        cached = read_cache(path)
    except PriceSourceError as exc:
        log.warning("ignoring the price cache: %s", exc)
        return None
    if cached is None:
        return None
    prices, as_of, origin = cached
    return PriceTable(prices, "cache", as_of, str(origin.get("url", "")))


class PricingService:
    """The effective prices: config on top of the fetched (or cached) table on top of the bundled one."""

    def __init__(self, config: GatewayConfig, cache_file: Path, bundled: PriceTable | None = None):
        self.config = config
        self.cache_file = cache_file
        self.bundled = bundled or PriceTable.bundled()
        self.fetched: PriceTable | None = load_cached_table(cache_file)
        self.last_fetch_at: datetime | None = None
        self.last_fetch_ok: bool | None = None
        self.last_fetch_error: str | None = None
        self._fetch_lock = asyncio.Lock()
        self.publish = None  # async (subject, bytes) -> None, set once connected

    # ---- answers --------------------------------------------------------------

    def tables(self) -> list[PriceTable]:
        return [t for t in (self.fetched, self.bundled) if t is not None]

    def prices(self):
        return all_prices(self.config, self.tables())

    def status(self) -> PricingStatus:
        table = self.fetched or self.bundled
        url = self.config.pricing.source_url
        return PricingStatus(
            table=table.kind, table_as_of=table.as_of, table_origin=table.origin, table_size=len(table.prices),
            source_url=safe_url(url) if url else None, last_fetch_at=self.last_fetch_at,
            last_fetch_ok=self.last_fetch_ok, last_fetch_error=self.last_fetch_error,
            bundled_as_of=self.bundled.as_of, bundled_origin=self.bundled.origin)

    async def lookup(self, query: PriceLookup) -> PriceList:
        tables = self.tables()
        prices = [effective_price(self.config, tables, k) for k in query.keys]
        lookups = metrics.pricing().lookups
        for p in prices:
            lookups.labels(p.source).inc()
        return PriceList(prices=prices)

    async def list(self, _query: PriceLookup) -> PriceList:
        return PriceList(prices=self.prices(), status=self.status())

    # ---- changes --------------------------------------------------------------

    async def announce(self, reason: str, before: dict | None = None) -> None:
        changed = changed_keys(before, fingerprint(self.prices())) if before is not None else []
        if self.publish is not None:
            await self.publish(subjects.PRICING_CHANGED, PricingChanged(reason=reason, changed=changed).encode())

    async def fetch(self) -> bool:
        """Fetch the public source once; on success use it, cache it and announce what changed."""
        pricing = self.config.pricing
        url = pricing.source_url
        if not url:
            return False
        async with self._fetch_lock:
            shown = safe_url(url)
            try:
                prices = await fetch_prices(url, pricing.fetch_timeout_s)
            except PriceSourceError as exc:
                self.last_fetch_at, self.last_fetch_ok, self.last_fetch_error = _now(), False, str(exc)
                metrics.pricing().fetches.labels("failed").inc()
                using = (f"the {self.fetched.kind} prices of {_when(self.fetched.as_of)}" if self.fetched
                         else f"the bundled snapshot ({self.bundled.origin}, {self.bundled.snapshot_date})")
                log.warning("price fetch failed, using %s: %s", using, exc)
                return False
            fetched_at = _now()
            before = fingerprint(self.prices())
            self.fetched = PriceTable(prices, "remote", fetched_at, shown)
            self.last_fetch_at, self.last_fetch_ok, self.last_fetch_error = fetched_at, True, None
            metrics.pricing().fetches.labels("ok").inc()
            metrics.pricing().last_fetch.set(fetched_at.timestamp())
            try:
                await asyncio.to_thread(write_cache, self.cache_file, prices, url, fetched_at)
            except OSError as exc:
                log.warning("cannot write the price cache %s: %s", self.cache_file, exc.strerror or exc)
            log.info("fetched %d prices from %s", len(prices), shown)
            await self.announce("fetch", before)
            return True

    async def apply_config(self, config: GatewayConfig) -> bool:
        """Use a new config; returns whether the price source settings changed (fetch again)."""
        before = fingerprint(self.prices())
        source_changed = _source_settings(config.pricing) != _source_settings(self.config.pricing)
        self.config = config
        await self.announce("config", before)
        return source_changed


def _source_settings(p: PricingConfig) -> tuple:
    return (p.source_url, p.fetch_on_start)


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "an unknown date"


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def serve(settings: PricingSettings, stop: asyncio.Event | None = None) -> None:
    runtime = ServiceRuntime("pricing", "model prices", settings.nats_url, settings.config_path)
    nc = await runtime.connect()
    service = PricingService(await runtime.load_config(), cache_path(settings))
    service.publish = nc.publish
    background: set[asyncio.Task] = set()

    def spawn(coro) -> None:
        task = asyncio.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    async def cancel_background() -> None:
        for task in list(background):
            task.cancel()
        for task in list(background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def refresh_loop() -> None:
        while True:
            interval = service.config.pricing.refresh_interval_s
            await asyncio.sleep(interval or 3600)
            if interval and service.config.pricing.source_url:
                await service.fetch()

    async def on_ready() -> None:
        # routers that started before us learn that prices are now available
        await service.announce("start")
        status = service.status()
        log.info("pricing ready: %d %s prices (%s), bundled snapshot %s", status.table_size, status.table,
                 status.table_origin or "-", service.bundled.snapshot_date)
        pricing = service.config.pricing
        if pricing.fetch_on_start and pricing.source_url:
            spawn(service.fetch())  # in the background: start-up never waits for the network
        await refresh_loop()

    async def apply_config(config: GatewayConfig) -> None:
        if await service.apply_config(config) and config.pricing.fetch_on_start and config.pricing.source_url:
            spawn(service.fetch())

    runtime.endpoint("lookup", subjects.PRICING_LOOKUP, PriceLookup, service.lookup)
    runtime.endpoint("list", subjects.PRICING_LIST, PriceLookup, service.list)
    runtime.on_config(apply_config)
    runtime.loop("start", on_ready)
    runtime.on_stop("price fetches", cancel_background)
    await runtime.run(stop=stop)


def run() -> None:
    settings = PricingSettings()
    runtime_main.main("pricing", lambda: serve(settings), settings.log_level)
